"""A reading the device distrusts, from its bytes to the score: stored with its flags, set aside, never lost.

Real frames (PLX spot-checks marked questionable / invalid / sensor fault, a clean thermometer reading) go
through the real gateway (pipeline, SQLite outbox, publisher) to real Mosquitto, the real ingest worker writes
them to PostgreSQL, and the real scorer builds the observation round: the flagged values are in ``readings``
with their flags, the round leaves them out and names them in ``inputs.set_aside``.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from carewatch.firmware_sim.frames import encode_plx_spot_check, encode_temperature
from carewatch.gateway.service import Gateway
from carewatch.gateway.transport import Notification, ReplayTransport
from carewatch.ingest.consumer import IngestWorker
from carewatch.registry import DeviceRegistry, RegisteredDevice
from carewatch.scoring.engine import evaluate_subjects
from carewatch.settings import Settings
from carewatch.wire import DeviceKind

pytestmark = pytest.mark.slow

OX, TH = "A4:C1:38:30:00:01", "A4:C1:38:30:00:02"
QUESTIONABLE, INVALID = 1 << 14, 1 << 15  # PLX Measurement Status bits
SENSOR_DISCONNECTED = 1 << 15  # PLX Device and Sensor Status bit


def _register(conn: psycopg.Connection, uid: str) -> dict[str, str]:
    ids = {"site": f"site-{uid}", "gateway": f"gw-{uid}", "resident": f"res-{uid}", "ox": f"ox-{uid}",
           "th": f"th-{uid}"}
    with conn.transaction():
        conn.execute("INSERT INTO sites (site_id, kind, name) VALUES (%s, 'care_home', 'Flag test home')",
                     (ids["site"],))
        conn.execute("INSERT INTO residents (resident_id, site_id, display_name, date_of_birth) "
                     "VALUES (%s, %s, 'Test Person', '1940-01-01')", (ids["resident"], ids["site"]))
        conn.execute("INSERT INTO gateways (gateway_id, site_id) VALUES (%s, %s)", (ids["gateway"], ids["site"]))
        for device, kind in ((ids["ox"], "pulse_oximeter"), (ids["th"], "thermometer")):
            conn.execute("INSERT INTO devices (device_id, site_id, gateway_id, kind, resident_id, active) "
                         "VALUES (%s, %s, %s, %s, %s, true)", (device, ids["site"], ids["gateway"], kind,
                                                               ids["resident"]))
    return ids


def _stored(dsn: str, gateway_id: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT seq, metric, value, flags FROM readings WHERE gateway_id = %s ORDER BY seq",
                            (gateway_id,)).fetchall()


def test_distrusted_readings_are_stored_flagged_and_set_aside_by_the_scorer(
    database: str, db: psycopg.Connection, mqtt_url: str, uid: str, scratch_dir: Path
) -> None:
    ids = _register(db, uid)
    registry = DeviceRegistry([
        RegisteredDevice(address=OX, device_id=ids["ox"], kind=DeviceKind.PULSE_OXIMETER,
                         resident_id=ids["resident"]),
        RegisteredDevice(address=TH, device_id=ids["th"], kind=DeviceKind.THERMOMETER, resident_id=ids["resident"]),
    ])
    taken = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)
    stamp = taken.replace(tzinfo=None)  # the devices' clocks, in UTC as the gateway sets them
    frames = [
        (OX, "2a5e", encode_plx_spot_check(84, 118, timestamp=stamp, measurement_status=QUESTIONABLE)),
        (OX, "2a5e", encode_plx_spot_check(86, 116, timestamp=stamp + timedelta(minutes=1),
                                           measurement_status=INVALID)),
        (OX, "2a5e", encode_plx_spot_check(88, 114, timestamp=stamp + timedelta(minutes=2),
                                           device_and_sensor_status=SENSOR_DISCONNECTED)),
        (TH, "2a1c", encode_temperature(37.1, timestamp=stamp + timedelta(minutes=3), temp_type=6)),
    ]
    received = taken + timedelta(minutes=4)
    transport = ReplayTransport([Notification(a, s, data, received) for a, s, data in frames])
    settings = Settings(mqtt_url=mqtt_url, site_id=ids["site"], gateway_id=ids["gateway"],
                        outbox_path=scratch_dir / f"outbox-{uid}.sqlite", state_dir=scratch_dir / f"state-{uid}",
                        publish_batch_ms=20)
    worker = IngestWorker(Settings(database_url=database, mqtt_url=mqtt_url, metrics_port=0),
                          worker_id=f"flag{uid}", shared=False, batch_ms=50, resend=False)
    worker.start()
    try:
        assert worker.subscribed.wait(10)
        with Gateway(settings, transport, registry=registry) as gateway:
            deadline = time.monotonic() + 30
            while len(_stored(database, ids["gateway"])) < 7 and time.monotonic() < deadline:
                time.sleep(0.1)
            counters = gateway.counters
    finally:
        worker.stop()
    assert (counters.readings_accepted, counters.readings_flagged, counters.dead_letters) == (7, 6, 0)
    stored = _stored(database, ids["gateway"])
    assert [(metric, value, sorted(flags)) for _, metric, value, flags in stored] == [
        ("spo2", 84, ["questionable"]), ("pulse_rate", 118, ["questionable"]),
        ("spo2", 86, ["invalid"]), ("pulse_rate", 116, ["invalid"]),
        ("spo2", 88, ["sensor_fault"]), ("pulse_rate", 114, ["sensor_fault"]),
        ("temperature", 37.1, []),
    ]
    assert [seq for seq, *_ in stored] == list(range(1, 8))  # nothing lost on the way

    evaluate_subjects(db, [ids["resident"]], received + timedelta(minutes=1))
    spo2, pulse, temperature, inputs, missing = db.execute(
        "SELECT spo2, pulse, temperature, inputs, missing FROM observation_sets WHERE resident_id = %s",
        (ids["resident"],)).fetchone()
    # only the clean value is scored; the distrusted ones are left out, and named
    assert (spo2, pulse, temperature) == (None, None, 37.1)
    assert {"spo2", "pulse"} <= set(missing)
    notes = " ".join(inputs["set_aside"])
    assert len(inputs["set_aside"]) == 6
    assert "questionable" in notes and "invalid" in notes and "sensor_fault" in notes
