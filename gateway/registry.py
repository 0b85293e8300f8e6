"""Which devices this gateway listens to, and who or where each one belongs to.

The registry maps a BLE MAC to a device id, a :class:`~carewatch.wire.DeviceKind`, the byte format it speaks
(``gatt``, a proprietary oximeter format, or ``bthome``), the resident or room it serves and, for encrypted
BTHome sensors, the bind key. It lives in a YAML/JSON file on the gateway (``CAREWATCH_DEVICE_REGISTRY``) and
may be fetched from the API (``GET /gateways/{gateway_id}/registry``, which answers in this same format) into
that file; anything not in it is dead-lettered, never guessed.

The model (``RegisteredDevice``, ``DeviceRegistry``) is a shared contract in ``carewatch/registry.py``; this module
is the gateway's side: the file, the fetch from the API, pairing.

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
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from carewatch.registry import (
    DeviceRegistry,
    RegisteredDevice,
    RegistryError,
)
from carewatch.wire import DeviceKind

if TYPE_CHECKING:
    import httpx

    from carewatch.settings import Settings


class RegistryFetchError(RegistryError):
    """The API could not be reached or refused; the message says which and what to check."""


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
