"""The one MQTT client factory (carewatch/mqtt.py), against the real broker of the test run (Mosquitto)."""

from __future__ import annotations

import ast
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from carewatch.mqtt import MqttTarget, Will, describe_connect_error, make_client

ROOT = Path(__file__).resolve().parents[2]


def test_urls_are_parsed_with_defaults_and_escaped_credentials() -> None:
    plain = MqttTarget("mqtt://broker")
    assert (plain.host, plain.port, plain.tls, plain.username) == ("broker", 1883, False, None)
    tls = MqttTarget("mqtts://gw%2D1:p%40ss%3Aword@broker.example:9883")
    assert (tls.host, tls.port, tls.tls) == ("broker.example", 9883, True)
    assert (tls.username, tls.password) == ("gw-1", "p@ss:word")
    assert "p@ss" not in repr(tls)
    with pytest.raises(ValueError, match="mqtt:// or mqtts://"):
        MqttTarget("http://broker")


def test_an_unreadable_ca_file_is_refused_before_connecting(tmp_path: Path) -> None:
    bad = tmp_path / "ca.crt"
    bad.write_text("not a certificate")
    with pytest.raises(ValueError, match="cannot load CA certificates"):
        make_client("mqtts://127.0.0.1:8883", client_id="x", ca_file=bad)
    with pytest.raises(ValueError, match="cannot load CA certificates"):
        make_client("mqtts://127.0.0.1:8883", client_id="x", ca_file=tmp_path / "missing.crt")
    make_client("mqtt://127.0.0.1", client_id="x", ca_file=bad)  # unused with mqtt:// (logged, not fatal)


def test_connection_errors_are_described_with_what_to_check() -> None:
    target = MqttTarget("mqtt://127.0.0.1:1")
    assert "broker down, or wrong port" in describe_connect_error(target, ConnectionRefusedError())
    assert "cannot connect to 127.0.0.1:1" in describe_connect_error(target, TimeoutError("slow"))


def _connected(client: mqtt.Client, url: str) -> threading.Event:
    ready = threading.Event()
    client.on_connect = lambda *_: ready.set()
    target = MqttTarget(url)
    client.connect(target.host, target.port, keepalive=10)
    client.loop_start()
    assert ready.wait(10), "no CONNACK"
    return ready


def test_clients_from_the_factory_talk_through_the_real_broker_and_the_last_will_arrives(
    mqtt_url: str, uid: str
) -> None:
    topic = f"carewatch-test/mqtt-factory/{uid}"
    got: list[tuple[str, bytes, bool]] = []
    arrived = threading.Event()
    subscribed = threading.Event()

    def on_message(_c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        got.append((msg.topic, msg.payload, bool(msg.retain)))
        if len(got) == 2:
            arrived.set()

    listener = make_client(mqtt_url, client_id=f"listener-{uid}", reconnect=(0.25, 5))
    listener.on_message = on_message
    listener.on_subscribe = lambda *_: subscribed.set()
    _connected(listener, mqtt_url)
    talker = make_client(mqtt_url, client_id=f"talker-{uid}", clean_session=False, max_inflight=4,
                         will=Will(f"{topic}/will", b"gone", qos=1, retain=False))
    try:
        listener.subscribe(f"{topic}/#", qos=1)
        assert subscribed.wait(10)
        _connected(talker, mqtt_url)
        talker.publish(f"{topic}/hello", b"hi", qos=1).wait_for_publish(10)
        talker.loop_stop()
        talker.socket().close()  # vanish without a DISCONNECT: the broker publishes the will
        assert arrived.wait(10), got
        assert got == [(f"{topic}/hello", b"hi", False), (f"{topic}/will", b"gone", False)]
    finally:
        listener.disconnect()
        listener.loop_stop()


def test_no_paho_client_is_made_outside_the_factory() -> None:
    """Every production and benchmark paho client comes from carewatch/mqtt.py (tests may make raw ones, e.g. a
    rogue client the broker must refuse)."""
    makers = []
    for folder in ("carewatch", "gateway", "ingest", "scoring", "api", "dashboard", "firmware_sim", "notify", "bench"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "Client"
                        and isinstance(node.func.value, ast.Name) and node.func.value.id == "mqtt"):
                    makers.append(path.relative_to(ROOT).as_posix())
    assert makers == ["carewatch/mqtt.py"]
