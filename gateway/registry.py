"""Which devices this gateway listens to, and who or where each one belongs to.

The registry maps a BLE MAC to a device id, a :class:`~carewatch.wire.DeviceKind`, the byte format it speaks
(``gatt``, a proprietary oximeter format, or ``bthome``), the resident or room it serves and, for encrypted
BTHome sensors, the bind key. It lives in a YAML/JSON file on the gateway (``CAREWATCH_DEVICE_REGISTRY``) and
may be fetched from the API (``GET /gateways/{gateway_id}/registry``, which answers in this same format) into
that file; anything not in it is dead-lettered, never guessed.

File format (YAML or JSON)::

    devices:
      - address: "A4:C1:38:00:00:01"
        device_id: ox-101
        kind: pulse_oximeter
        source: gatt            # gatt | bthome | berrymed | contec | jks50f | emay | pc60fw | o2ring | jumper
        resident_id: r-101
      - address: "A4:C1:38:00:00:02"
        device_id: door-front
        kind: door_sensor
        source: bthome
        room: hall
        role: front_door
        bind_key: 231d39c1d7cc1ab1aee224cd096db932
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from carewatch.gateway.bthome import normalise_mac
from carewatch.gateway.gatt import DECODERS as GATT_DECODERS
from carewatch.gateway.oximeters import FORMATS as OXIMETER_FORMATS
from carewatch.wire import DeviceKind, Ident

if TYPE_CHECKING:
    import httpx

    from carewatch.settings import Settings

GATT = "gatt"
BTHOME = "bthome"
SOURCE_FORMATS = frozenset({GATT, BTHOME, *OXIMETER_FORMATS})

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


class RegistryFetchError(RegistryError):
    """The API could not be reached or refused; the message says which and what to check."""


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
            return source in GATT_DECODERS
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


# ------------------------------------------------------------------------------------------------------------
# Files and the API
# ------------------------------------------------------------------------------------------------------------
def load_registry(path: Path | str) -> DeviceRegistry:
    """Read a YAML (``.yaml``/``.yml``) or JSON registry file; a missing file is an empty registry."""
    path = Path(path)
    if not path.exists():
        return DeviceRegistry()
    text = path.read_text()
    try:
        doc = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise RegistryError(
            f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}"
        ) from None
    return DeviceRegistry.from_document(doc or {}, origin=str(path))


def save_registry(registry: DeviceRegistry, path: Path | str) -> None:
    """Write atomically (temp file, fsync, rename): a power cut leaves the old or the new file, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = registry.to_document()
    text = (
        json.dumps(doc, indent=2) + "\n"
        if path.suffix.lower() == ".json"
        else yaml.safe_dump(doc, sort_keys=False)
    )
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def fetch_registry(
    api_url: str, gateway_id: str, token: str, *, client: httpx.Client | None = None, timeout: float = 10.0
) -> DeviceRegistry:
    """``GET {api_url}/gateways/{gateway_id}/registry`` with a bearer token.

    The answer is ``{"devices": [...]}`` (or a bare list) of entries in the file format above. Raises
    httpx.HTTPError on transport/HTTP failures and RegistryError on a malformed answer; the caller keeps the
    registry it has (and its file) when either happens.
    """
    import httpx  # only gateways that fetch their registry load an HTTP client

    url = f"{api_url.rstrip('/')}/gateways/{gateway_id}/registry"
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    if client is None:
        with httpx.Client(timeout=timeout) as own:
            response = own.get(url, headers=headers)
    else:
        response = client.get(url, headers=headers)
    response.raise_for_status()
    try:
        doc = response.json()
    except ValueError as exc:
        raise RegistryError(f"{url}: answer is not JSON: {exc}") from None
    return DeviceRegistry.from_document(doc, origin=url)


def sign_in(client: httpx.Client, api_url: str, username: str, password: str) -> str:
    """An access token for the gateway's own API account (``POST {api_url}/auth/token``, OAuth2 password flow).

    Raises httpx.HTTPStatusError (401 wrong credentials, 429 too many failures) or httpx.TransportError.
    """
    response = client.post(
        f"{api_url.rstrip('/')}/auth/token", data={"username": username, "password": password}
    )
    response.raise_for_status()
    try:
        return str(response.json()["access_token"])
    except (ValueError, KeyError, TypeError):
        raise RegistryError(f"{api_url}/auth/token: answer has no access_token") from None


@dataclass(frozen=True)
class RegistrySource:
    """Where and as whom a gateway fetches its registry: the API, with the gateway's own account."""

    api_url: str
    gateway_id: str
    username: str
    password: str = field(repr=False)
    timeout: float = 10.0

    @classmethod
    def from_settings(cls, settings: Settings) -> RegistrySource | None:
        """None when ``registry_url`` is unset; RegistryError when it is set without credentials."""
        if not settings.registry_url:
            return None
        if not settings.registry_username or settings.registry_password is None:
            raise RegistryError(
                "CAREWATCH_REGISTRY_URL is set but CAREWATCH_REGISTRY_USERNAME / CAREWATCH_REGISTRY_PASSWORD "
                "are not: the gateway needs its own API account to fetch its registry"
            )
        return cls(
            settings.registry_url,
            settings.gateway_id,
            settings.registry_username,
            settings.registry_password.get_secret_value(),
        )

    def fetch(self) -> DeviceRegistry:
        """Sign in and fetch. Raises RegistryFetchError (unreachable, refused) or RegistryError (bad answer)."""
        import httpx

        try:
            with httpx.Client(timeout=self.timeout) as client:
                token = sign_in(client, self.api_url, self.username, self.password)
                return fetch_registry(self.api_url, self.gateway_id, token, client=client)
        except httpx.HTTPError as exc:
            raise RegistryFetchError(describe_fetch_error(exc)) from exc


def describe_fetch_error(exc: Exception) -> str:
    """One line for the log saying why a fetch failed and what to check."""
    import httpx

    if isinstance(exc, httpx.HTTPStatusError):
        code = exc.response.status_code
        hint = {
            401: "the API refused the gateway's username/password",
            403: "the gateway's account may not read gateway registries (use a care_staff account of its site)",
            404: "no such gateway in the API, or it belongs to another site than the gateway's account",
            429: "too many failed sign-ins; the API asks to wait",
        }.get(code, "the API answered with an error")
        return f"{code} from {exc.request.url}: {hint}"
    if isinstance(exc, httpx.TransportError):
        return f"API unreachable ({type(exc).__name__}: {exc})"
    return str(exc)


def refresh_registry_file(source: RegistrySource, path: Path | str) -> tuple[DeviceRegistry, bool]:
    """Fetch the registry and save it to ``path`` (atomically) when it differs from the file.

    Returns (registry, changed). On any failure the file is left exactly as it was and the error is raised
    (RegistryFetchError, RegistryError, OSError): a gateway that cannot reach the API keeps listening to the devices
    it has.
    """
    fetched = source.fetch()
    try:
        current = load_registry(path).to_document()
    except RegistryError:
        current = None  # a broken local file is replaced by the API's answer
    if current == fetched.to_document() and Path(path).exists():
        return fetched, False
    save_registry(fetched, path)
    return fetched, True


def pair(
    registry_path: Path | str,
    mac: str,
    kind: DeviceKind | str,
    device_id: str,
    *,
    source: str = "",
    resident_id: str | None = None,
    room: str | None = None,
    role: str | None = None,
    bind_key: str | None = None,
    characteristics: Iterable[str] = (),
    name: str | None = None,
) -> RegisteredDevice:
    """Add (or replace, by MAC) one device in the registry file and save it. Returns the saved entry.

    Raises RegistryError when the entry is invalid or its device_id is already used by another MAC.
    """
    try:
        device = RegisteredDevice(
            address=mac,
            device_id=device_id,
            kind=DeviceKind(kind),
            source=source,
            resident_id=resident_id,
            room=room,
            role=role,
            bind_key=bind_key,
            characteristics=tuple(characteristics),
            name=name,
        )
    except ValueError as exc:
        raise RegistryError(f"cannot pair {mac}: {exc}") from None
    registry = load_registry(registry_path).with_device(device)
    save_registry(registry, registry_path)
    return device


def unpair(registry_path: Path | str, mac: str) -> bool:
    """Remove a device from the registry file; False when it was not there."""
    registry = load_registry(registry_path)
    if mac not in registry:
        return False
    save_registry(registry.without(mac), registry_path)
    return True
