"""The registry fetched from the API, end to end: the real API app served by uvicorn over the test PostgreSQL,
the gateway signing in with its own account over real HTTP, the file saved atomically, and kept as it was
whenever the API is unreachable or refuses."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from serving import serve
from waiting import wait_until

from carewatch.api.app import create_app
from carewatch.api.users import create_user
from carewatch.firmware_sim.transport import SimTransport
from carewatch.gateway.registry import (
    RegistrySource,
    describe_fetch_error,
    fetch_registry,
    load_registry,
    refresh_registry_file,
    sign_in,
)
from carewatch.gateway.service import Gateway
from carewatch.gateway.transport import Notification
from carewatch.registry import BTHOME, GATT, DeviceRegistry, RegistryError
from carewatch.settings import Settings, process_env

PASSWORD = "gateway account pw 1"
KEY = "231d39c1d7cc1ab1aee224cd096db932"


@dataclass
class Estate:
    site: str
    gateway: str
    other_gateway: str
    account: str  # care_staff of the gateway's site: the gateway's own API account
    other_account: str  # care_staff of another site
    oximeter_mac: str = "A4:C1:38:10:00:01"


@contextmanager
def serve_api(database: str, state_dir: Path) -> Iterator[str]:
    """The real API app on a free port (uvicorn in a thread); stops when the block ends."""
    settings = Settings(database_url=database, jwt_secret="registry-" + "k" * 40, state_dir=state_dir)
    with serve(create_app(settings)) as url:
        yield url


@pytest.fixture(scope="module")
def live_api(database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve_api(database, tmp_path_factory.mktemp("registry-api")) as url:
        yield url


@pytest.fixture
def estate(db: psycopg.Connection, uid: str) -> Estate:
    e = Estate(site=f"rh-{uid}", gateway=f"gw-rh-{uid}", other_gateway=f"gw-other-{uid}",
               account=f"gwacct-{uid}", other_account=f"otheracct-{uid}")
    other_site = f"other-{uid}"
    for site in (e.site, other_site):
        db.execute("INSERT INTO sites (site_id, kind, name) VALUES (%s, 'care_home', %s)", (site, f"Home {site}"))
    db.execute("INSERT INTO gateways (gateway_id, site_id) VALUES (%s, %s), (%s, %s)",
               (e.gateway, e.site, e.other_gateway, other_site))
    db.execute("""INSERT INTO residents (resident_id, site_id, display_name, date_of_birth)
                  VALUES (%s, %s, 'Resident', %s)""", (f"r-{uid}", e.site, date(1936, 5, 1)))
    devices = [
        # device_id, site, gateway, kind, model, mac, bind_key, resident, room, role, active
        (f"ox-{uid}", e.site, e.gateway, "pulse_oximeter", "PO3", e.oximeter_mac, None, f"r-{uid}", None, None, True),
        (f"door-{uid}", e.site, e.gateway, "door_sensor", "SBDW-002C", "a4-c1-38-10-00-02", KEY.upper(), None,
         "hall", "front_door", True),
        (f"bci-{uid}", e.site, e.gateway, "pulse_oximeter", "BerryMed", "A4C138100003", None, f"r-{uid}", None, None,
         True),
        (f"nomac-{uid}", e.site, e.gateway, "thermometer", None, None, None, f"r-{uid}", None, None, True),
        (f"badkey-{uid}", e.site, e.gateway, "motion_sensor", None, "A4:C1:38:10:00:05", "not-a-key", None,
         "lounge", None, True),
        (f"retired-{uid}", e.site, e.gateway, "thermometer", None, "A4:C1:38:10:00:06", None, None, "lounge", None,
         False),
        (f"elsewhere-{uid}", other_site, e.other_gateway, "thermometer", None, "A4:C1:38:10:00:07", None, None,
         "lounge", None, True),
    ]
    db.cursor().executemany(
        """INSERT INTO devices (device_id, site_id, gateway_id, kind, model, mac, bind_key, resident_id, room, role,
                                active) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""", devices)
    create_user(db, e.account, "care_staff", password=PASSWORD, site_id=e.site, gateway_id=e.gateway)
    create_user(db, e.other_account, "care_staff", password=PASSWORD, site_id=other_site)
    db.commit()
    return e


def source(api: str, e: Estate, *, username: str | None = None, password: str = PASSWORD) -> RegistrySource:
    return RegistrySource(api, e.gateway, username or e.account, password)


# ------------------------------------------------------------------------------------------------------------
def test_api_answers_in_the_registry_file_format(live_api: str, estate: Estate, tmp_path: Path, uid: str) -> None:
    with httpx.Client(timeout=10) as client:
        token = sign_in(client, live_api, estate.account, PASSWORD)
        raw = client.get(f"{live_api}/gateways/{estate.gateway}/registry",
                         headers={"Authorization": f"Bearer {token}"}).json()
        registry = fetch_registry(live_api, estate.gateway, token, client=client)
    assert registry.to_document() == DeviceRegistry.from_document(raw).to_document()
    by_id = {d.device_id: d for d in registry}
    assert set(by_id) == {f"ox-{uid}", f"door-{uid}", f"bci-{uid}"}  # inactive and other sites' devices left out
    assert (by_id[f"ox-{uid}"].source, by_id[f"ox-{uid}"].resident_id) == (GATT, f"r-{uid}")
    door = by_id[f"door-{uid}"]
    assert (door.address, door.source, door.bind_key, door.room, door.role) == (
        "A4:C1:38:10:00:02", BTHOME, KEY, "hall", "front_door")
    assert by_id[f"bci-{uid}"].source == "berrymed"  # a model naming a frame format sets it
    skipped = {s["device_id"]: s["reason"] for s in raw["skipped"]}
    assert set(skipped) == {f"nomac-{uid}", f"badkey-{uid}"}
    assert "no MAC" in skipped[f"nomac-{uid}"] and "bind_key must be hex" in skipped[f"badkey-{uid}"]

    path = tmp_path / "registry.yaml"
    fetched, changed = refresh_registry_file(source(live_api, estate), path)
    assert changed and load_registry(path).to_document() == fetched.to_document() == registry.to_document()
    mtime = path.stat().st_mtime_ns
    assert refresh_registry_file(source(live_api, estate), path)[1] is False  # same answer: file untouched
    assert path.stat().st_mtime_ns == mtime


def test_refusals_keep_the_file_and_say_why(live_api: str, estate: Estate, tmp_path: Path) -> None:
    path = tmp_path / "registry.json"
    path.write_text('{"devices": [{"address": "A4:C1:38:99:00:01", "device_id": "kept", "kind": "thermometer"}]}\n')
    before = path.read_bytes()
    cases = [
        (source(live_api, estate, password="wrong password"), "401", "username/password"),
        (source(live_api, estate, username=estate.other_account), "404", "another site"),  # another site's account
        (RegistrySource("http://127.0.0.1:9", estate.gateway, estate.account, PASSWORD), "unreachable", "ConnectError"),
    ]
    for src, code, hint in cases:
        with pytest.raises((httpx.HTTPError, RegistryError)) as caught:
            refresh_registry_file(src, path)
        message = describe_fetch_error(caught.value)
        assert code in message and hint in message, message
        assert path.read_bytes() == before


def test_gateway_fetches_at_start_periodically_and_keeps_the_file_when_the_api_is_down(
    database: str, estate: Estate, scratch_dir: Path, tmp_path: Path, uid: str, mqtt_url: str, gw: Any,
    db: psycopg.Connection,
) -> None:
    registry_file = tmp_path / "gw-registry.yaml"
    with serve_api(database, tmp_path / "api") as api:
        settings = gw.make_settings(
            scratch_dir, uid, mqtt_url, site_id=estate.site, gateway_id=estate.gateway, registry_url=api,
            registry_username=estate.account, registry_password=PASSWORD, registry_fetch_s=1,
            device_registry=registry_file)
        transport = SimTransport()
        with Gateway(settings, transport) as gateway:
            wait_until(lambda: len(gateway.registry) == 3, 15, "the registry fetched at start")
            assert load_registry(registry_file).to_document() == gateway.registry.to_document()
            assert transport.wait_ready(10)
            transport.push([Notification(estate.oximeter_mac, "2a5e", gw.plx_spot_check(96, 72), gw.now(), -60)])
            wait_until(lambda: gateway.counters.readings_accepted == 2, 10, "readings from the fetched oximeter")

            # a device assigned in the API reaches the gateway on the next periodic fetch
            db.execute("""INSERT INTO devices (device_id, site_id, gateway_id, kind, mac, room)
                          VALUES (%s, %s, %s, 'motion_sensor', 'A4:C1:38:10:00:08', 'kitchen')""",
                       (f"pir-{uid}", estate.site, estate.gateway))
            db.commit()
            wait_until(lambda: gateway.registry.get("A4:C1:38:10:00:08") is not None, 15, "the new device")
            assert len(load_registry(registry_file)) == 4
            saved = registry_file.read_bytes()
        # (the gateway stopped; now the API goes away and the gateway starts again from its file)
    with Gateway(settings, SimTransport()) as gateway:
        assert len(gateway.registry) == 4  # the file is read at once, before any fetch
        wait_until(lambda: gateway.counters.registry_fetch_failures >= 2, 15, "failed fetches")
        assert registry_file.read_bytes() == saved
        assert len(gateway.registry) == 4 and gateway.counters.registry_fetches == 0
        gateway.transport.wait_ready(10)
        gateway.transport.push([Notification(estate.oximeter_mac, "2a5e", gw.plx_spot_check(95, 70), gw.now())])
        wait_until(lambda: gateway.counters.readings_accepted == 2, 10, "readings while the API is down")


def test_registry_url_without_credentials_is_refused(scratch_dir: Path, uid: str, mqtt_url: str, gw: Any) -> None:
    settings = gw.make_settings(scratch_dir, uid, mqtt_url, registry_url="http://127.0.0.1:9")
    with pytest.raises(RegistryError, match="CAREWATCH_REGISTRY_USERNAME"):
        Gateway(settings, SimTransport())


def test_cli_fetch_registry(live_api: str, estate: Estate, tmp_path: Path) -> None:
    path = tmp_path / "cli-registry.yaml"
    env = process_env(CAREWATCH_REGISTRY_USERNAME=estate.account, CAREWATCH_REGISTRY_PASSWORD=PASSWORD,
                      CAREWATCH_GATEWAY_ID=estate.gateway, CAREWATCH_STATE_DIR=str(tmp_path / "state"))
    env.pop("CAREWATCH_REGISTRY_URL", None)

    def run(url: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "carewatch", "gateway", "fetch-registry", "--registry-url", url,
             "--registry", str(path)], capture_output=True, text=True, env=env, timeout=120, check=False)

    ok = run(live_api)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == f"saved: 3 devices in {path}"
    saved = path.read_bytes()
    down = run("http://127.0.0.1:9")
    assert down.returncode == 1
    assert "API unreachable" in down.stderr and "unchanged" in down.stderr
    assert path.read_bytes() == saved
