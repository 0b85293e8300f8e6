"""Device registry: files, validation and pairing (fetching from the API: test_registry_fetch.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from carewatch.gateway.registry import load_registry, pair, save_registry, unpair
from carewatch.registry import BTHOME, GATT, DeviceRegistry, RegisteredDevice, RegistryError
from carewatch.wire import DeviceKind

KEY = "231d39c1d7cc1ab1aee224cd096db932"

YAML = f"""
devices:
  - address: "a4-c1-38-00-00-01"
    device_id: ox-101
    kind: pulse_oximeter
    resident_id: r-101
  - address: A4C138000002
    device_id: door-front
    kind: door_sensor
    room: hall
    role: front_door
    bind_key: {KEY.upper()}
  - address: "A4:C1:38:00:00:03"
    device_id: ox-cheap
    kind: pulse_oximeter
    source: berrymed
"""


def test_load_yaml_normalises_and_derives(tmp_path: Path) -> None:
    path = tmp_path / "registry.yaml"
    path.write_text(YAML)
    registry = load_registry(path)
    assert len(registry) == 3
    ox = registry.get("A4:C1:38:00:00:01")
    assert ox is not None and ox.source == GATT and ox.gatt_characteristics == ("2a5e", "2a5f", "2a19")
    assert registry.get("a4:c1:38:00:00:01") is ox
    door = registry.get("A4:C1:38:00:00:02")
    assert door is not None and door.source == BTHOME and door.bind_key == KEY
    assert registry.bind_keys() == {"A4:C1:38:00:00:02": bytes.fromhex(KEY)}
    cheap = registry.get("A4:C1:38:00:00:03")
    assert cheap is not None and cheap.accepts("berrymed") and not cheap.accepts("2a5e")
    assert ox.accepts("2a5f") and not ox.accepts("bthome")
    assert registry.get("not a mac") is None
    assert load_registry(tmp_path / "missing.yaml").devices == []


@pytest.mark.parametrize(
    ("entry", "complaint"),
    [
        ({"address": "nope", "device_id": "x", "kind": "thermometer"}, "MAC"),
        (
            {"address": "A4:C1:38:00:00:09", "device_id": "x", "kind": "door_sensor", "bind_key": "abcd"},
            "16 bytes",
        ),
        (
            {"address": "A4:C1:38:00:00:09", "device_id": "x", "kind": "thermometer", "source": "zigbee"},
            "source",
        ),
        ({"address": "A4:C1:38:00:00:09", "device_id": "bad id!", "kind": "thermometer"}, "device_id"),
        (
            {"address": "A4:C1:38:00:00:09", "device_id": "x", "kind": "motion_sensor", "source": "gatt"},
            "characteristics",
        ),
    ],
)
def test_bad_entries_are_refused_with_a_reason(entry: dict, complaint: str) -> None:
    with pytest.raises(RegistryError, match=complaint):
        DeviceRegistry.from_document({"devices": [entry]})


def test_duplicates_are_refused() -> None:
    a = {"address": "A4:C1:38:00:00:01", "device_id": "a", "kind": "thermometer"}
    with pytest.raises(RegistryError, match="twice"):
        DeviceRegistry.from_document([a, {**a, "device_id": "b"}])
    with pytest.raises(RegistryError, match="two devices"):
        DeviceRegistry.from_document([a, {**a, "address": "A4:C1:38:00:00:02"}])


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_pair_adds_replaces_and_round_trips(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"devices{suffix}"
    pair(path, "a4:c1:38:00:00:01", "thermometer", "th-1", resident_id="r-1")
    pair(path, "A4:C1:38:00:00:02", DeviceKind.MOTION_SENSOR, "pir-1", room="lounge", bind_key=KEY)
    replaced = pair(path, "A4:C1:38:00:00:01", "thermometer", "th-2", resident_id="r-1")
    registry = load_registry(path)
    assert [d.device_id for d in registry] == ["pir-1", "th-2"]
    assert registry.get("A4:C1:38:00:00:01") == replaced
    if suffix == ".json":
        assert json.loads(path.read_text())["devices"][1]["device_id"] == "th-2"
    assert not list(tmp_path.glob(".devices*")), "atomic save left a temp file behind"
    with pytest.raises(RegistryError, match="two devices"):
        pair(path, "A4:C1:38:00:00:05", "thermometer", "th-2")
    assert unpair(path, "A4:C1:38:00:00:02")
    assert not unpair(path, "A4:C1:38:00:00:02")
    assert [d.device_id for d in load_registry(path)] == ["th-2"]


def test_broken_file_names_the_problem(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("devices: [ {address: ")
    with pytest.raises(RegistryError, match="not valid YAML"):
        load_registry(path)


def test_save_then_load_is_identity(tmp_path: Path) -> None:
    registry = DeviceRegistry(
        [
            RegisteredDevice(
                address="A4:C1:38:00:00:01", device_id="bp-1", kind="bp_cuff", resident_id="r-1"
            ),
            RegisteredDevice(
                address="A4:C1:38:00:00:02",
                device_id="plug-1",
                kind="plug",
                room="kitchen",
                characteristics=(),
            ),
        ]
    )
    save_registry(registry, tmp_path / "r.yaml")
    assert load_registry(tmp_path / "r.yaml").devices == registry.devices


def test_the_shared_registry_model_names_exactly_the_formats_the_parsers_decode() -> None:
    """carewatch/registry.py (the contract the API uses without the BLE stack) lists the formats by name; the
    parsers are the truth."""
    from carewatch.gateway.gatt import DECODERS
    from carewatch.gateway.oximeters import FORMATS
    from carewatch.registry import GATT_CHARACTERISTICS, OXIMETER_FORMATS

    assert frozenset(DECODERS) == GATT_CHARACTERISTICS
    assert frozenset(FORMATS) == OXIMETER_FORMATS
