"""The embedded servers the demo (and, where none is reachable, the test suite) start for themselves."""

from __future__ import annotations

import time
from pathlib import Path

import paho.mqtt.client as mqtt
import psycopg
import pytest

from carewatch.embedded import EmbeddedBroker, EmbeddedPostgres, free_port, port_open


def test_private_postgres_starts_restarts_and_keeps_data(scratch_dir: Path, uid: str) -> None:
    pg = EmbeddedPostgres(scratch_dir / f"pg-{uid}", free_port())
    dsn = pg.start()
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE kept (x int)")
            conn.execute("INSERT INTO kept VALUES (42)")
        pg.restart()
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT x FROM kept").fetchone() == (42,)
    finally:
        pg.stop()
    assert not port_open("127.0.0.1", pg.port)


@pytest.mark.parametrize("prefer", ["mosquitto", "amqtt"])
def test_private_broker_round_trips_a_qos1_message(scratch_dir: Path, uid: str, prefer: str) -> None:
    broker = EmbeddedBroker(scratch_dir / f"mqtt-{prefer}-{uid}", free_port(), prefer=prefer)
    if prefer == "mosquitto" and broker.kind != "mosquitto":
        pytest.skip("mosquitto is not installed")
    broker.start()
    got: list[bytes] = []
    try:
        sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        sub.on_message = lambda _c, _u, msg: got.append(msg.payload)
        sub.connect("127.0.0.1", broker.port)
        sub.subscribe("carewatch/test", qos=1)
        sub.loop_start()
        time.sleep(0.3)
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()
        pub.publish("carewatch/test", b"hello", qos=1).wait_for_publish(5)
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            time.sleep(0.05)
        pub.loop_stop()
        sub.loop_stop()
    finally:
        broker.stop()
    assert got == [b"hello"]
    assert broker.supports_shared == (prefer == "mosquitto")
