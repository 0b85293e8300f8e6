"""BTHome home sensors (service data for UUID 0xFCD2), decoded by the ``bthome-ble`` library.

We do not parse BTHome objects ourselves: ``BTHomeBluetoothDeviceData`` does, including AES-CCM decryption,
packet-id de-duplication, encryption-counter replay checks and encryption-downgrade detection. This module
keeps one library state object per MAC, turns the library's Home-Assistant-shaped ``SensorUpdate`` into a
:class:`DecodedFrame` with our metric names, and turns the library's silent failures (it logs and returns
nothing) into :class:`FrameError` with a reason.

Legacy BTHome v1 (UUIDs 0x181C / 0x181E) is passed through to the library as well (``uuid16=``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from bthome_ble import BTHomeBluetoothDeviceData
from bthome_ble.event import BUTTON_EVENTS
from habluetooth import BluetoothServiceInfoBleak

from carewatch.gateway.frames import DecodedFrame, FrameError
from carewatch.registry import normalise_mac
from carewatch.wire import Metric

SERVICE_UUIDS = {
    "fcd2": "0000fcd2-0000-1000-8000-00805f9b34fb",  # BTHome v2
    "181c": "0000181c-0000-1000-8000-00805f9b34fb",  # BTHome v1, plain
    "181e": "0000181e-0000-1000-8000-00805f9b34fb",  # BTHome v1, encrypted
}

# library key -> (our field, our metric); the first key present wins when several map to one field.
SENSOR_FIELDS: dict[str, tuple[str, Metric | None]] = {
    "packet_id": ("packet_id", None),
    "battery": ("battery_pct", Metric.BATTERY),
    "temperature": ("temperature_c", Metric.ROOM_TEMPERATURE),
    "temperature_1": ("temperature_c", Metric.ROOM_TEMPERATURE),
    "humidity": ("humidity_pct", Metric.HUMIDITY),
    "humidity_1": ("humidity_pct", Metric.HUMIDITY),
    "illuminance": ("illuminance_lux", Metric.ILLUMINANCE),
    "power": ("power_w", Metric.POWER),
}
BINARY_FIELDS: dict[str, tuple[str, Metric]] = {
    "motion": ("motion", Metric.MOTION),
    "occupancy": ("occupancy", Metric.OCCUPANCY),
    "door": ("door_open", Metric.DOOR_OPEN),
    "opening": ("door_open", Metric.DOOR_OPEN),  # generic "opening" contact sensors are fitted to doors here
    "window": ("window_open", Metric.WINDOW_OPEN),
    "power": ("power_on", Metric.POWER_ON),
}
BUTTON_EVENT_CODES: dict[str, int] = {name: code for code, name in BUTTON_EVENTS.items() if name}


def _full_uuid(uuid: str) -> str:
    """'181a' or '0x181A' -> the 128-bit form the service-info dict is keyed by."""
    short = uuid.lower().removeprefix("0x")
    return f"0000{short}-0000-1000-8000-00805f9b34fb" if len(short) == 4 else short


class _DeviceState(BTHomeBluetoothDeviceData):
    """The library's per-device state, instrumented to say *why* a frame produced nothing.

    The library reports problems only through its logger; these overrides record a reason at the points it
    gives up, without changing what it does.
    """

    def begin_frame(self) -> None:
        self.problem: str | None = None
        self.duplicate = False
        # The library accumulates entity values across updates (Home Assistant keeps entity state); we want
        # what *this* advertisement said, so start each frame with empty update dicts.
        self._sensor_values_updates.clear()
        self._sensor_descriptions_updates.clear()
        self._binary_sensor_values_updates.clear()
        self._binary_sensor_descriptions_updates.clear()

    def _is_same_as_last(self, service_info: BluetoothServiceInfoBleak) -> bool:
        same = super()._is_same_as_last(service_info)
        self.duplicate = self.duplicate or same
        return same

    def _skip_old_or_duplicated_advertisement(self, new_packet_id: float, adv_time: float) -> bool:
        skip = super()._skip_old_or_duplicated_advertisement(new_packet_id, adv_time)
        if skip:
            self.duplicate = True
            self.duplicate_packet_id = int(new_packet_id)
        return skip

    def _check_bind_key(self) -> None:
        if not self.bindkey:
            self.problem = "encrypted BTHome frame but no bind key is configured for this device"
        elif len(self.bindkey) != 16:
            self.problem = f"bind key is {len(self.bindkey)} bytes; BTHome AES-CCM keys are 16"
        super()._check_bind_key()

    def _check_encryption_counter(self, new_encryption_counter: float) -> None:
        try:
            super()._check_encryption_counter(new_encryption_counter)
        except ValueError:
            self.problem = (
                f"encryption counter went back from {int(self.encryption_counter)} to "
                f"{int(new_encryption_counter)}: possible replay, frame ignored"
            )
            raise

    def _check_minimum_length(self, bthome_data: Any, payload: bytes) -> None:
        try:
            super()._check_minimum_length(bthome_data, payload)
        except ValueError:
            self.problem = f"encrypted frame too short: {len(payload)} bytes of ciphertext"
            raise

    def _handle_decryption_error(self, error: Any, encrypted_payload: bytes, nonce: bytes, mic: bytes) -> None:
        self.problem = "decryption failed (MIC check): wrong bind key for this device, or a corrupted frame"
        super()._handle_decryption_error(error, encrypted_payload, nonce, mic)


class BTHomeDecoder:
    """Decode BTHome advertisements, one library state per device MAC (bind keys per device).

    ``decode`` returns a DecodedFrame, one with ``duplicate=True`` for a repeated packet id (the same
    advertisement heard again, not a new reading), or raises FrameError: wrong/missing key, encryption
    downgrade (a plaintext frame from a device that has a key), a replayed counter, or an unusable frame.
    """

    def __init__(self, bindkeys: Mapping[str, bytes] | None = None) -> None:
        self._keys: dict[str, bytes] = {normalise_mac(m): bytes(k) for m, k in (bindkeys or {}).items()}
        self._devices: dict[str, _DeviceState] = {}

    def set_bindkey(self, mac: str, bindkey: bytes | None) -> None:
        mac = normalise_mac(mac)
        if bindkey is None:
            self._keys.pop(mac, None)
        else:
            self._keys[mac] = bytes(bindkey)
        if mac in self._devices:
            self._devices[mac].set_bindkey(self._keys.get(mac))

    def forget(self, mac: str) -> None:
        """Drop a device's state (packet ids, counters), e.g. when it is unpaired."""
        self._devices.pop(normalise_mac(mac), None)

    def _state(self, mac: str) -> _DeviceState:
        state = self._devices.get(mac)
        if state is None:
            state = self._devices[mac] = _DeviceState(bindkey=self._keys.get(mac))
        return state

    def decode(
        self,
        mac: str,
        service_data: bytes,
        *,
        uuid16: str = "fcd2",
        at: float | None = None,
        other_service_data: Mapping[str, bytes] | None = None,
    ) -> DecodedFrame:
        """Decode the service data (from the device-information byte on) heard from ``mac``.

        ``at`` is a monotonic time in seconds (default now): the library treats a repeated packet id more
        than 4 s after the previous advertisement as a new reading.
        """
        try:
            mac = normalise_mac(mac)
        except ValueError as exc:
            raise FrameError(str(exc)) from None
        uuid = SERVICE_UUIDS.get(uuid16.lower().removeprefix("0x"))
        if uuid is None:
            raise FrameError(f"not a BTHome service UUID: {uuid16!r} (expected fcd2, 181c or 181e)")
        data = bytes(service_data)
        if not data:
            raise FrameError("empty BTHome service data (no device-information byte)")
        encrypted = uuid.startswith("0000181e") or (uuid.startswith("0000fcd2") and bool(data[0] & 0x01))
        if uuid.startswith("0000fcd2"):
            version = data[0] >> 5
            if version != 2:
                raise FrameError(f"device-information byte 0x{data[0]:02X} says BTHome version {version}, not 2")
            if encrypted and len(data) < 1 + 8 + 1 + (6 if data[0] & 0x02 else 0):
                raise FrameError(f"encrypted BTHome frame is {len(data)} bytes: too short for counter and MIC")
        state = self._state(mac)
        service = {uuid: data}
        service.update({_full_uuid(k): bytes(v) for k, v in (other_service_data or {}).items()})
        info = BluetoothServiceInfoBleak(
            name=mac,
            address=mac,
            rssi=-60,
            manufacturer_data={},
            service_data=service,
            service_uuids=list(service),
            source="carewatch",
            device=None,  # type: ignore[arg-type]  # the parser never touches the BLEDevice
            advertisement=None,
            connectable=False,
            time=time.monotonic() if at is None else at,
            tx_power=None,
        )
        state.begin_frame()
        try:
            update = state.update(info)
        except Exception as exc:  # third-party code on untrusted bytes: nothing but FrameError may escape
            raise FrameError(f"bthome-ble could not parse the frame: {type(exc).__name__}: {exc}") from exc
        if state.downgrade_detected:
            raise FrameError(
                f"plaintext BTHome frame from {mac}, which has a bind key: possible encryption downgrade, ignored"
            )
        if state.problem:
            raise FrameError(state.problem)
        return _to_frame(update, encrypted=encrypted, duplicate=state.duplicate, state=state)


def _to_frame(update: Any, *, encrypted: bool, duplicate: bool, state: _DeviceState) -> DecodedFrame:
    sensors = {
        key.key: value.native_value
        for key, value in update.entity_values.items()
        if key.key != "signal_strength"  # the RSSI we made up for the service info
    }
    binary = {key.key: value.native_value for key, value in update.binary_entity_values.items()}
    events = {
        key.key: {"event_type": event.event_type, "event_properties": event.event_properties}
        for key, event in update.events.items()
    }
    details: dict[str, Any] = {
        "sensors": sensors,
        "binary_sensors": binary,
        "events": events,
        "encrypted": encrypted,
        "bthome_version": state.bthome_version.value,
        "device_type_id": state.device_type_id,
        "device_sw_version": getattr(update.devices.get(None), "sw_version", None),
    }
    if duplicate:
        packet_id = getattr(state, "duplicate_packet_id", None)
        return DecodedFrame(
            source="bthome",
            fields={} if packet_id is None else {"packet_id": packet_id},
            details=details,
            duplicate=True,
        )
    fields: dict[str, Any] = {}
    measurements: list[tuple[Metric, float]] = []
    for key, (name, metric) in SENSOR_FIELDS.items():
        value = sensors.get(key)
        if name in fields or not isinstance(value, int | float):
            continue
        fields[name] = int(value) if name == "packet_id" else value
        if metric is not None:
            measurements.append((metric, float(value)))
    for key, (name, metric) in BINARY_FIELDS.items():
        value = binary.get(key)
        if name in fields or value is None:
            continue
        fields[name] = bool(value)
        measurements.append((metric, 1.0 if value else 0.0))
    button = next((e for k, e in sorted(events.items()) if k == "button" or k.startswith("button_")), None)
    if button is not None:
        fields["button"] = button["event_type"]
        measurements.append((Metric.BUTTON, float(BUTTON_EVENT_CODES.get(button["event_type"], 0))))
    timestamp = sensors.get("timestamp")
    return DecodedFrame(
        source="bthome",
        fields=fields,
        measurements=tuple(measurements),
        device_time=timestamp if isinstance(timestamp, datetime) else None,
        details=details,
    )
