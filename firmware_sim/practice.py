"""The practice resident's kit, driven by the simulator (issue 17, practice mode for new staff).

Each care home has a practice resident ("Practice: Pat Example") and a practice kit (``ingest/kit_sessions.py``
makes them; ``docs/kits.md``). Nobody can put a real oximeter on Pat, so the simulator plays the practice kit's three
devices: when a trainee opens a session for Pat on the practice kit (the tablet, in practice mode), the devices
"measure" Pat and notify the home's gateway like any kit device, and the readings reach Pat through the same path
as a real kit's (gateway, MQTT, ingest, session attribution). What they measure follows what the trainer asked:
``well`` (NEWS2 0) or ``deteriorating`` (NEWS2 high: low SpO2, fast pulse, fever, low blood pressure).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from carewatch.firmware_sim import frames
from carewatch.firmware_sim.devices import ID_PREFIX, VITAL_SOURCE, SimDevice, mac_for
from carewatch.gateway.transport import Notification
from carewatch.ingest.kit_sessions import practice_ids
from carewatch.wire import DeviceKind

#: (SpO2 %, pulse /min, temperature °C, systolic, diastolic mmHg) of Pat, well and deteriorating.
VITALS = {"well": (97, 72, 36.7, 128, 78), "deteriorating": (89, 124, 39.2, 96, 58)}


def practice_devices(site_id: str) -> list[SimDevice]:
    """The practice kit's three simulated devices (an oximeter, a thermometer and a cuff)."""
    _, kit_id = practice_ids(site_id)
    return [SimDevice(f"{ID_PREFIX[kind]}-{kit_id}", site_id, kind, source, mac_for(f"{ID_PREFIX[kind]}-{kit_id}"),
                      kit_id=kit_id) for kind, source in VITAL_SOURCE.items()]


def register_practice_kit(conn: Any, site_id: str, gateway_id: str) -> list[SimDevice]:
    """The home's practice resident and kit (made if missing) and the kit's devices behind ``gateway_id``."""
    from carewatch.ingest.kit_sessions import ensure_practice

    ensure_practice(conn, site_id)
    devices = practice_devices(site_id)
    conn.cursor().executemany(
        """INSERT INTO devices (device_id, site_id, gateway_id, kind, model, mac, kit_id)
           VALUES (%(device_id)s, %(site_id)s, %(gateway_id)s, %(kind)s, %(model)s, %(mac)s, %(kit_id)s)
           ON CONFLICT (device_id) DO UPDATE SET gateway_id = EXCLUDED.gateway_id, kit_id = EXCLUDED.kit_id""",
        [{**d.record(), "gateway_id": gateway_id} for d in devices])
    return devices


def practice_frames(condition: str, at: datetime, rng: random.Random) -> dict[DeviceKind, bytes]:
    """What each practice device sends for one measurement of Pat at ``at`` (device clocks in UTC)."""
    spo2, pulse, temp, sbp, dbp = VITALS["deteriorating" if condition == "deteriorating" else "well"]
    stamp = at.astimezone(UTC).replace(tzinfo=None)
    spo2 += rng.choice((-1, 0, 0, 1)) if spo2 < 97 else rng.choice((-1, 0))
    pulse += rng.randint(-3, 3)
    temp = round(temp + rng.uniform(-0.1, 0.1), 1)
    return {
        DeviceKind.PULSE_OXIMETER: frames.encode_plx_spot_check(spo2, pulse, timestamp=stamp),
        DeviceKind.THERMOMETER: frames.encode_temperature(temp, timestamp=stamp, temp_type=6),
        DeviceKind.BP_CUFF: frames.encode_blood_pressure(sbp, dbp, round((sbp + 2 * dbp) / 3), timestamp=stamp,
                                                         pulse_rate=pulse),
    }


@dataclass
class PracticeKit:
    """Measures Pat once per practice session: ``poll`` looks for an open session on the home's practice kit that
    has no reading yet, and the devices send one measurement each through ``push`` (the gateway's transport)."""

    site_id: str
    connect: Callable[[], Any]  # a database connection (context manager), e.g. partial(psycopg.connect, dsn)
    push: Callable[[Sequence[Notification]], None]
    seed: int = 0
    measured: set[int] | None = None

    def __post_init__(self) -> None:
        self.devices = practice_devices(self.site_id)
        self.rng = random.Random(self.seed)
        self.measured = set() if self.measured is None else self.measured

    def poll(self, now: datetime | None = None) -> int:
        """One look; returns how many devices measured (0 or 3)."""
        _, kit_id = practice_ids(self.site_id)
        with self.connect() as conn:
            row = conn.execute(
                """SELECT s.session_id, r.practice_condition FROM kit_sessions s
                   JOIN residents r ON r.resident_id = s.resident_id AND r.practice
                   WHERE s.kit_id = %s AND s.ended_at IS NULL AND s.last_reading_at IS NULL""", (kit_id,)).fetchone()
        assert self.measured is not None
        if row is None or row[0] in self.measured:
            return 0
        self.measured.add(row[0])
        at = now or datetime.now(UTC)
        sent = practice_frames(row[1], at, self.rng)
        self.push([Notification(d.address, d.source, sent[d.kind], at, -55) for d in self.devices])
        return len(self.devices)
