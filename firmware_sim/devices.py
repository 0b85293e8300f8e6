"""The simulator's device layer: value-level events become the real bytes real devices send.

Each resident has their own pulse oximeter (PLX Spot-Check 0x2A5E), thermometer (0x2A1C) and blood-pressure
cuff (0x2A35); each household has BTHome v2 sensors (some encrypted with a bind key). :class:`DeviceLayer`
turns :class:`VitalSample` / :class:`SensorEvent` into :class:`Notification` bytes using the encoders in
``firmware_sim/frames.py`` and acts out device faults (garbage frames, duplicate notifications, unset or wrong
clocks, disconnect storms). :class:`SimTransport` hands those notifications to the real gateway code.

A care home either gives each resident their own devices (bound) or, as most do, shares one kit (``kit-01``: an
oximeter, a thermometer and a cuff) between residents and picks the resident on the tablet: ``world_devices(world,
shared_sites=...)`` says which homes share kits. A shared kit's readings carry the kit device's id and the platform
attributes them through the tablet's measurement sessions (``firmware_sim/kit_round.py`` plays the carers). Faults
follow the kit: a fault on ``kit-01`` touches only readings taken with kit-01, and a draining kit notifies its
Battery Level (0x2A19).
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from carewatch.firmware_sim import frames
from carewatch.firmware_sim.household import SENSORS, SensorEvent
from carewatch.firmware_sim.physiology import VitalSample
from carewatch.firmware_sim.scenarios import FAULT_DEFAULTS, DeviceFault, FaultKind
from carewatch.gateway.transport import Notification, TransportEvent
from carewatch.registry import DeviceRegistry, RegisteredDevice
from carewatch.wire import DeviceKind, Metric, QualityFlag

#: The GATT characteristic each bedside device kind notifies.
VITAL_SOURCE = {
    DeviceKind.PULSE_OXIMETER: "2a5e",
    DeviceKind.THERMOMETER: "2a1c",
    DeviceKind.BP_CUFF: "2a35",
}
ID_PREFIX = {DeviceKind.PULSE_OXIMETER: "oxi", DeviceKind.THERMOMETER: "thermo", DeviceKind.BP_CUFF: "bp"}
#: Household sensor roles that are sold encrypted (their bind key is provisioned at pairing).
ENCRYPTED_ROLES = frozenset({"bathroom", "front_door"})

#: Our metric -> the BTHome field name the encoder (and the gateway's decoder) use.
BTHOME_FIELD = {
    Metric.MOTION: "motion",
    Metric.OCCUPANCY: "occupancy",
    Metric.DOOR_OPEN: "door_open",
    Metric.WINDOW_OPEN: "window_open",
    Metric.ROOM_TEMPERATURE: "temperature_c",
    Metric.HUMIDITY: "humidity_pct",
    Metric.ILLUMINANCE: "illuminance_lux",
    Metric.POWER: "power_w",
    Metric.POWER_ON: "power_on",
    Metric.BATTERY: "battery_pct",
}

# PLX status bits (Bluetooth PLX Service spec): measurement status and device-and-sensor status.
_PLX_QUESTIONABLE = 1 << 14
_PLX_LOW_PERFUSION = 1 << 5
_PLX_ERRATIC_SIGNAL = 1 << 6
# Blood Pressure Measurement Status bit 0: body movement detected (the cuff's retry after the resident moved).
_BP_BODY_MOVEMENT = 1 << 0


def mac_for(device_id: str) -> str:
    digest = hashlib.sha1(device_id.encode()).digest()
    return ":".join(f"{b:02X}" for b in (0xC0, *digest[:5]))


def bind_key_for(device_id: str, seed: int) -> bytes:
    return hashlib.sha256(f"{seed}:{device_id}".encode()).digest()[:16]


@dataclass(frozen=True)
class SimDevice:
    device_id: str
    site_id: str
    kind: DeviceKind
    source: str
    address: str
    resident_id: str | None = None
    room: str | None = None
    role: str | None = None
    bind_key: bytes | None = None
    kit_id: str | None = None  # a shared kit's device: measures whoever the tablet's session names

    def registered(self) -> RegisteredDevice:
        return RegisteredDevice(
            address=self.address, device_id=self.device_id, kind=self.kind,
            source="bthome" if self.source == "bthome" else "gatt", resident_id=self.resident_id,
            room=self.room, role=self.role, bind_key=self.bind_key.hex() if self.bind_key else None,
        )

    def record(self) -> dict[str, Any]:
        """A row for the platform's devices table."""
        return {"device_id": self.device_id, "site_id": self.site_id, "kind": self.kind.value,
                "model": f"sim-{self.source}", "mac": self.address, "resident_id": self.resident_id,
                "room": self.room, "role": self.role, "bind_key": self.bind_key.hex() if self.bind_key else None,
                "kit_id": self.kit_id}


def resident_devices(resident_id: str, site_id: str) -> list[SimDevice]:
    return [
        SimDevice(f"{ID_PREFIX[kind]}-{resident_id}", site_id, kind, source,
                  mac_for(f"{ID_PREFIX[kind]}-{resident_id}"), resident_id=resident_id)
        for kind, source in VITAL_SOURCE.items()
    ]


def kit_id_for(site_id: str, kit: str) -> str:
    """The estate-wide id of a home's kit ('oakview', 'kit-01' -> 'oakview-kit-01')."""
    return f"{site_id}-{kit}"


def kit_devices(site_id: str, kit: str) -> list[SimDevice]:
    """A shared kit's three bedside devices."""
    kit_id = kit_id_for(site_id, kit)
    return [SimDevice(f"{ID_PREFIX[kind]}-{kit_id}", site_id, kind, source, mac_for(f"{ID_PREFIX[kind]}-{kit_id}"),
                      kit_id=kit_id)
            for kind, source in VITAL_SOURCE.items()]


def household_devices(household_id: str, roles: dict[str, DeviceKind], seed: int) -> list[SimDevice]:
    out = []
    for role, kind in roles.items():
        device_id = f"{household_id}-{role.replace('_', '-')}"
        room = role.split("_")[0]  # 'bathroom', 'kitchen_motion' -> 'kitchen', 'front_door' -> 'front'
        out.append(SimDevice(device_id, household_id, kind, "bthome", mac_for(device_id), room=room, role=role,
                             bind_key=bind_key_for(device_id, seed) if role in ENCRYPTED_ROLES else None))
    return out


#: A notification or link event, with the site whose gateway hears it.
Routed = tuple[str, Notification | TransportEvent]


def world_devices(world: Any, shared_sites: Collection[str] = ()) -> list[SimDevice]:
    """Every device of a simulated world: each kit's three devices in the homes of ``shared_sites``, three bedside
    devices per resident elsewhere, and the sensors of each household."""
    roles = {role: spec.device_kind for role, spec in SENSORS.items()}
    shared = set(shared_sites)
    out = [d for r in world.residents if r.site_id not in shared for d in resident_devices(r.id, r.site_id)]
    kits = sorted({(r.site_id, r.kit) for r in world.residents if r.site_id in shared})
    out += [d for site, kit in kits for d in kit_devices(site, kit)]
    out += [d for h in world.households for d in household_devices(h.id, roles, world.seed)]
    return out


@dataclass
class _DeviceState:
    packet_id: int = 0
    counter: int = 0
    last_emit: datetime | None = None


@dataclass
class DeviceLayer:
    """Turns value-level events into notifications, device by device, acting out active faults."""

    devices: list[SimDevice]
    seed: int = 0
    _by_resident: dict[tuple[str, DeviceKind], SimDevice] = field(init=False)
    _by_kit: dict[tuple[str, DeviceKind], SimDevice] = field(init=False)
    _by_role: dict[tuple[str, str], SimDevice] = field(init=False)
    _state: dict[str, _DeviceState] = field(init=False)
    _faults: list[DeviceFault] = field(init=False, default_factory=list)
    _pending: list[VitalSample] = field(init=False, default_factory=list)
    rng: np.random.Generator = field(init=False)

    def __post_init__(self) -> None:
        self._by_resident = {(d.resident_id, d.kind): d for d in self.devices if d.resident_id}
        self._by_kit = {(d.kit_id, d.kind): d for d in self.devices if d.kit_id}
        self._by_role = {(d.site_id, d.role): d for d in self.devices if d.role}
        self._state = {d.device_id: _DeviceState() for d in self.devices}
        self.rng = np.random.default_rng([self.seed, 0xDE71CE])

    def registry(self, site_id: str) -> DeviceRegistry:
        return DeviceRegistry(d.registered() for d in self.devices if d.site_id == site_id)

    # -- faults -------------------------------------------------------------------------------------------
    def add_fault(self, fault: DeviceFault) -> None:
        self._faults.append(fault)

    def _active(self, device: SimDevice, at: datetime, kit: str | None = None) -> dict[FaultKind, DeviceFault]:
        """Faults acting on ``device`` at ``at``. A care-home fault names a kit (``kit-01``): it only touches
        measurements taken with that kit (``kit``), not every device of that kind at the site."""
        active: dict[FaultKind, DeviceFault] = {}
        for fault in self._faults:
            ref = fault.device
            if ref.site_id != device.site_id or ref.device_kind != device.kind:
                continue
            role = device.role or kit
            if role is not None and ref.role not in (role, "*"):
                continue
            if fault.at <= at and (fault.until is None or at < fault.until):
                active[fault.kind] = fault
        return active

    # -- events -> notifications --------------------------------------------------------------------------
    def feed(self, event: VitalSample | SensorEvent) -> list[Routed]:
        """Notifications ready to deliver after this event (vital samples of one measurement are grouped)."""
        out: list[Routed] = []
        if self._pending and (not isinstance(event, VitalSample) or self._group_key(event) != self._group_key(
                self._pending[0])):
            out.extend(self.flush())
        if isinstance(event, VitalSample):
            self._pending.append(event)
        else:
            out.extend(self._sensor(event))
        return out

    def flush(self) -> list[Routed]:
        if not self._pending:
            return []
        samples, self._pending = self._pending, []
        return self._vital(samples)

    @staticmethod
    def _group_key(sample: VitalSample) -> tuple[str, DeviceKind, datetime]:
        return sample.resident_id, sample.device_kind, sample.at

    @staticmethod
    def _param(faults: dict[FaultKind, DeviceFault], kind: FaultKind, name: str) -> float:
        """A fault parameter as the scenario declared it, its kind's default otherwise."""
        return float(faults[kind].params.get(name, FAULT_DEFAULTS[kind][name]))

    def _device_time(self, faults: dict[FaultKind, DeviceFault], at: datetime) -> datetime | None:
        """The Date Time the device stamps on a measurement: its clock in UTC (the gateway sets it through the
        Current Time Service), off by ``skew_s`` while clock_wrong, None ("unknown", year 0) while clock_unset."""
        if FaultKind.CLOCK_UNSET in faults:
            return None
        if FaultKind.CLOCK_WRONG in faults:
            skew = self._param(faults, FaultKind.CLOCK_WRONG, "skew_s")
            return (at + timedelta(seconds=skew)).replace(tzinfo=None)
        return at.replace(tzinfo=None)

    def _vital(self, samples: list[VitalSample]) -> list[Routed]:
        first = samples[0]
        device = self._by_resident.get((first.resident_id, first.device_kind)) or self._by_kit.get(
            (kit_id_for(first.site_id, first.device), first.device_kind))
        if device is None:
            return []
        values = {s.metric: s.value for s in samples}
        flags = frozenset().union(*(s.flags for s in samples))
        faults = self._active(device, first.at, kit=first.device)
        # every bedside frame carries its Time Stamp; an unset clock sends the spec's "unknown" (year 0)
        stamp = self._device_time(faults, first.at)
        if device.kind == DeviceKind.PULSE_OXIMETER:
            status = _PLX_QUESTIONABLE if QualityFlag.QUESTIONABLE in flags else 0
            dss = (_PLX_LOW_PERFUSION if QualityFlag.LOW_PERFUSION in flags else 0) | (
                _PLX_ERRATIC_SIGNAL if QualityFlag.MOTION_ARTEFACT in flags else 0)
            data = frames.encode_plx_spot_check(
                round(values.get(Metric.SPO2, float("nan"))), round(values.get(Metric.PULSE_RATE, float("nan"))),
                timestamp=stamp, with_timestamp=True, device_clock_not_set=stamp is None,
                measurement_status=status or None, device_and_sensor_status=dss or None,
                pulse_amplitude_index=values.get(Metric.PERFUSION_INDEX),
            )
        elif device.kind == DeviceKind.THERMOMETER:
            data = frames.encode_temperature(round(values[Metric.TEMPERATURE], 2), timestamp=stamp,
                                             with_timestamp=True, temp_type=6)
        else:
            sbp, dbp = values.get(Metric.SYSTOLIC_BP), values.get(Metric.DIASTOLIC_BP)
            if sbp is None or dbp is None:
                return []
            data = frames.encode_blood_pressure(
                round(sbp), round(dbp), round(dbp + (sbp - dbp) / 3), timestamp=stamp, with_timestamp=True,
                pulse_rate=values.get(Metric.PULSE_RATE),
                measurement_status=_BP_BODY_MOVEMENT if QualityFlag.MOTION_ARTEFACT in flags else None,
            )
        out = self._emit(device, data, first.at, faults)
        if FaultKind.FLAT_BATTERY in faults:
            out.extend(self._battery(device, faults, first.at))
        return out

    def _battery(self, device: SimDevice, faults: dict[FaultKind, DeviceFault], at: datetime) -> list[Routed]:
        """A draining kit notifies its Battery Level (0x2A19) with each measurement: ``start_pct`` at onset,
        falling linearly to 0 at ``dead_at`` (the value layer stops its measurements from then on)."""
        start = self._param(faults, FaultKind.FLAT_BATTERY, "start_pct")
        hours = self._param(faults, FaultKind.FLAT_BATTERY, "hours_to_flat")
        left = 1.0 - (at - faults[FaultKind.FLAT_BATTERY].at).total_seconds() / (hours * 3600.0)
        level = max(0.0, min(100.0, start * left))
        return [(device.site_id, Notification(device.address, "2a19", frames.encode_battery_level(level), at,
                                              int(-55 - self.rng.integers(0, 30))))]

    def _sensor(self, event: SensorEvent) -> list[Routed]:
        device = self._by_role.get((event.household_id, event.sensor))
        name = BTHOME_FIELD.get(event.metric)
        if device is None or name is None:
            return []
        state = self._state[device.device_id]
        state.packet_id = (state.packet_id + 1) % 256
        state.counter += 1
        value: float | bool = bool(event.value) if event.metric in (Metric.MOTION, Metric.DOOR_OPEN,
                                                                  Metric.POWER_ON, Metric.OCCUPANCY) else event.value
        data = frames.encode_bthome({name: value}, packet_id=state.packet_id, bindkey=device.bind_key,
                                    mac=device.address, counter=state.counter)
        return self._emit(device, data, event.at, self._active(device, event.at))

    def _emit(self, device: SimDevice, data: bytes, at: datetime,
              faults: dict[FaultKind, DeviceFault]) -> list[Routed]:
        site = device.site_id
        out: list[Routed] = []
        state = self._state[device.device_id]
        if FaultKind.DISCONNECT_STORM in faults:
            # the link flaps per_minute times a minute; a device is only heard when it sends, so the flaps since
            # its last frame (at least one, at most an hour's worth) come out together
            since = faults[FaultKind.DISCONNECT_STORM].at if state.last_emit is None else max(
                state.last_emit, faults[FaultKind.DISCONNECT_STORM].at)
            per_minute = self._param(faults, FaultKind.DISCONNECT_STORM, "per_minute")
            flaps = max(1, min(int(per_minute * 60), round(per_minute * (at - since).total_seconds() / 60)))
            for i in range(flaps):
                out.append((site, TransportEvent(device.address, "disconnected", at, detail=f"storm {i}")))
                out.append((site, TransportEvent(device.address, "connected", at, detail=f"storm {i}")))
        state.last_emit = at
        if FaultKind.GARBAGE_FRAMES in faults and self.rng.random() < self._param(
                faults, FaultKind.GARBAGE_FRAMES, "fraction"):
            cut = int(self.rng.integers(1, max(2, len(data))))
            data = data[:cut] if self.rng.random() < 0.5 else bytes(self.rng.integers(0, 256, len(data), np.uint8))
        rssi = int(-55 - self.rng.integers(0, 30))
        note = Notification(device.address, device.source, data, at, rssi)
        out.append((site, note))
        if FaultKind.DUPLICATE_NOTIFICATIONS in faults:  # the same notification arrives ``copies`` times in all
            out.extend([(site, note)] * (int(self._param(faults, FaultKind.DUPLICATE_NOTIFICATIONS, "copies")) - 1))
        return out


def notifications(layer: DeviceLayer, events: Iterable[Any]) -> Iterator[Routed]:
    """All notifications for a stream of events (non-device events are skipped); for tests and backfill."""
    for event in events:
        if isinstance(event, DeviceFault):
            layer.add_fault(event)
        elif isinstance(event, VitalSample | SensorEvent):
            yield from layer.feed(event)
    yield from layer.flush()
