"""The device registry model: which devices a gateway listens to, and who or where each one belongs to.

A shared contract (beside ``carewatch/wire.py``): the gateway reads it from its registry file
(``carewatch.gateway.registry`` loads, saves, fetches and pairs), and the API answers
``GET /gateways/{gateway_id}/registry`` in this same format, without importing the BLE parser stack.
The file format is described in ``carewatch/gateway/registry.py``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from carewatch.wire import DeviceKind, Ident

_MAC = re.compile(r"^[0-9A-F]{2}(:[0-9A-F]{2}){5}$")


def normalise_mac(mac: str) -> str:
    """``a4-c1-38-00-00-01`` or ``a4c138000001`` -> ``A4:C1:38:00:00:01``; ValueError if it is not a MAC."""
    text = mac.strip().upper().replace("-", ":")
    if len(text) == 12 and ":" not in text:
        text = ":".join(text[i : i + 2] for i in range(0, 12, 2))
    if not _MAC.match(text):
        raise ValueError(f"not a MAC address: {mac!r}")
    return text


GATT = "gatt"
BTHOME = "bthome"
#: The proprietary oximeter stream formats (``carewatch.gateway.oximeters.FORMATS`` decodes exactly these; a gateway
#: test holds the two equal).
OXIMETER_FORMATS = frozenset({"berrymed", "contec", "jks50f", "emay", "pc60fw", "o2ring", "jumper"})
SOURCE_FORMATS = frozenset({GATT, BTHOME, *OXIMETER_FORMATS})
#: The GATT characteristics (short UUIDs) a ``gatt`` device may notify (``carewatch.gateway.gatt.DECODERS`` decodes
#: exactly these; a gateway test holds the two equal).
GATT_CHARACTERISTICS = frozenset({"2a5e", "2a5f", "2a60", "2a1c", "2a1d", "2a35", "2a36", "2a37", "2a9d", "2a19"})

#: Characteristics a GATT device of each kind is subscribed to when its entry does not list its own (0x2A19 is
#: the Battery Service's level, which most bedside devices notify).
DEFAULT_CHARACTERISTICS: dict[DeviceKind, tuple[str, ...]] = {
    DeviceKind.PULSE_OXIMETER: ("2a5e", "2a5f", "2a19"),
    DeviceKind.THERMOMETER: ("2a1c", "2a19"),
    DeviceKind.BP_CUFF: ("2a35", "2a36", "2a19"),
    DeviceKind.HEART_RATE: ("2a37", "2a19"),
    DeviceKind.WEIGHT_SCALE: ("2a9d", "2a19"),
}

#: Kinds that are BTHome advertisers unless an entry says otherwise.
HOME_SENSOR_KINDS = frozenset(
    {
        DeviceKind.MOTION_SENSOR,
        DeviceKind.DOOR_SENSOR,
        DeviceKind.BATHROOM_SENSOR,
        DeviceKind.FRIDGE_SENSOR,
        DeviceKind.PLUG,
        DeviceKind.CLIMATE_SENSOR,
        DeviceKind.BUTTON,
    }
)


class RegistryError(ValueError):
    """The registry file or API answer is unusable; the message says which entry and why."""


class RegisteredDevice(BaseModel):
    """One paired device."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    address: str
    device_id: Ident
    kind: DeviceKind
    source: str = ""  # empty: derived from kind (gatt for medical devices, bthome for home sensors)
    resident_id: Ident | None = None
    room: str | None = None
    role: str | None = None
    bind_key: str | None = Field(default=None, description="BTHome AES-CCM key, 32 hex digits.")
    characteristics: tuple[str, ...] = ()  # GATT/UART characteristic UUIDs to subscribe; empty: defaults
    name: str | None = None

    @field_validator("address")
    @classmethod
    def _mac(cls, value: str) -> str:
        return normalise_mac(value)

    @field_validator("bind_key")
    @classmethod
    def _key(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        text = value.strip().lower()
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raise ValueError("bind_key must be hex") from None
        if len(raw) != 16:
            raise ValueError(f"bind_key must be 16 bytes (32 hex digits), got {len(raw)}")
        return text

    @model_validator(mode="after")
    def _source(self) -> RegisteredDevice:
        source = (self.source or (BTHOME if self.kind in HOME_SENSOR_KINDS else GATT)).lower()
        if source not in SOURCE_FORMATS:
            raise ValueError(f"source {self.source!r} is not one of {', '.join(sorted(SOURCE_FORMATS))}")
        object.__setattr__(self, "source", source)
        if source == GATT and not self.characteristics and self.kind not in DEFAULT_CHARACTERISTICS:
            raise ValueError(
                f"a {self.kind.value} has no standard GATT characteristics; list `characteristics`"
            )
        return self

    @property
    def bind_key_bytes(self) -> bytes | None:
        return bytes.fromhex(self.bind_key) if self.bind_key else None

    @property
    def gatt_characteristics(self) -> tuple[str, ...]:
        """The characteristics to subscribe to (GATT devices and UART-streaming oximeters)."""
        if self.characteristics:
            return self.characteristics
        return DEFAULT_CHARACTERISTICS.get(self.kind, ()) if self.source == GATT else ()

    def accepts(self, source: str) -> bool:
        """Whether a notification from ``source`` is something this device can send."""
        if self.source == GATT:
            return source in GATT_CHARACTERISTICS
        return source == self.source


class DeviceRegistry:
    """An immutable MAC → device map (replace it whole to change it; readers never see it half-updated)."""

    def __init__(self, devices: Iterable[RegisteredDevice] = ()) -> None:
        by_address: dict[str, RegisteredDevice] = {}
        ids: set[str] = set()
        for device in devices:
            if device.address in by_address:
                raise RegistryError(f"{device.address} is registered twice")
            if device.device_id in ids:
                raise RegistryError(f"device_id {device.device_id!r} is used by two devices")
            by_address[device.address] = device
            ids.add(device.device_id)
        self._by_address = by_address

    def get(self, address: str) -> RegisteredDevice | None:
        try:
            return self._by_address.get(normalise_mac(address))
        except ValueError:
            return None

    def __iter__(self) -> Iterator[RegisteredDevice]:
        return iter(self._by_address.values())

    def __len__(self) -> int:
        return len(self._by_address)

    def __contains__(self, address: object) -> bool:
        return isinstance(address, str) and self.get(address) is not None

    @property
    def devices(self) -> list[RegisteredDevice]:
        return list(self._by_address.values())

    def bind_keys(self) -> dict[str, bytes]:
        return {d.address: key for d in self if (key := d.bind_key_bytes) is not None}

    def with_device(self, device: RegisteredDevice) -> DeviceRegistry:
        """A copy with ``device`` added, replacing any entry with the same MAC."""
        return DeviceRegistry([*(d for d in self if d.address != device.address), device])

    def without(self, address: str) -> DeviceRegistry:
        mac = normalise_mac(address)
        return DeviceRegistry(d for d in self if d.address != mac)

    def to_document(self) -> dict[str, Any]:
        return {"devices": [d.model_dump(mode="json", exclude_defaults=True) for d in self]}

    @classmethod
    def from_document(cls, doc: Any, *, origin: str = "registry") -> DeviceRegistry:
        """Build from ``{"devices": [...]}`` or a bare list; errors name the entry that is wrong."""
        entries = doc.get("devices") if isinstance(doc, dict) else doc
        if entries is None:
            entries = []
        if not isinstance(entries, list):
            raise RegistryError(f"{origin}: expected a list of devices under 'devices'")
        devices = []
        for index, entry in enumerate(entries):
            try:
                devices.append(RegisteredDevice.model_validate(entry))
            except ValueError as exc:
                label = entry.get("device_id") or entry.get("address") if isinstance(entry, dict) else index
                raise RegistryError(f"{origin}: device #{index} ({label}): {exc}") from None
        return cls(devices)
