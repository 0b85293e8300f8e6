"""Drain rate of a large outbox backlog to a local broker, beside raw paho publishing of the same payloads.

    .venv/bin/python bench/bench_drain.py [--readings 100000] [--mqtt-url mqtt://127.0.0.1:1883]

Target: >= 20,000 readings/s draining 500k (``--readings 500000``). The baseline publishes the very same
batch payloads with paho QoS 1 and the same in-flight window, with no outbox (no SQLite reads, no deletes,
no encoding): the gap between the two is what durability costs on the way out. Both are timed from
connect to the last PUBACK. Uses CAREWATCH_TEST_MQTT, else Mosquitto on 127.0.0.1:1883, else starts a
private Mosquitto/amqtt.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
import uuid
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

import paho.mqtt.client as mqtt

from carewatch.embedded import EmbeddedBroker, free_port, port_open
from carewatch.gateway.outbox import Outbox
from carewatch.gateway.pipeline import ReadingDraft
from carewatch.gateway.publisher import Publisher, encode_rows
from carewatch.mqtt import MqttTarget, make_client
from carewatch.settings import Settings
from carewatch.wire import Channel, DeviceKind, Metric, topic


def fill(outbox: Outbox, readings: int) -> float:
    now = datetime.now(UTC)
    metrics = [(Metric.SPO2, 96.0, "%"), (Metric.PULSE_RATE, 72.0, "/min")]
    chunk = [
        ReadingDraft(f"ox-{i % 20}", DeviceKind.PULSE_OXIMETER, m, v, u, now, now)
        for i in range(500)
        for m, v, u in metrics
    ][:1000]
    start = time.perf_counter()
    left = readings
    while left > 0:
        outbox.append(chunk[: min(left, len(chunk))])
        left -= len(chunk)
    return readings / (time.perf_counter() - start)


def baseline(
    target: MqttTarget, payloads: list[bytes], count: int, inflight: int, site: str, gw: str
) -> float:
    """Raw paho QoS 1 with a window of ``inflight`` messages; returns readings/s."""
    window = threading.Semaphore(inflight)
    done = threading.Event()
    acked = [0]

    def on_publish(client: mqtt.Client, userdata: object, mid: int, rc: object, props: object) -> None:
        acked[0] += 1
        window.release()
        if acked[0] == len(payloads):
            done.set()

    connected = threading.Event()
    client = make_client(target, client_id=f"{gw}-raw", max_inflight=inflight + 1)
    client.on_publish = on_publish
    client.on_connect = lambda *a: connected.set()
    name = topic(site, gw, Channel.READINGS)
    start = time.perf_counter()
    client.connect(target.host, target.port)
    client.loop_start()
    connected.wait(10)
    for payload in payloads:
        window.acquire()
        client.publish(name, payload, qos=1)
    done.wait(600)
    elapsed = time.perf_counter() - start
    client.disconnect()
    client.loop_stop()
    return count / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--readings", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--inflight", type=int, default=32)
    parser.add_argument("--mqtt-url", default=Settings().test_mqtt)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()

    with ExitStack() as stack:
        url = args.mqtt_url
        if url is None and port_open("127.0.0.1", 1883):
            url = "mqtt://127.0.0.1:1883"
        if url is None:
            tmp_broker = stack.enter_context(tempfile.TemporaryDirectory())
            broker = EmbeddedBroker(Path(tmp_broker), free_port())
            broker.start()
            stack.callback(broker.stop)
            url = broker.url
        target = MqttTarget(url)
        tmp = stack.enter_context(tempfile.TemporaryDirectory(dir=args.dir))
        run = uuid.uuid4().hex[:8]
        site, gw = "bench", f"bench-drain-{run}"
        outbox = stack.enter_context(
            Outbox(Path(tmp) / "outbox.sqlite", site_id=site, gateway_id=gw, max_bytes=4 * 1024**3)
        )
        print(
            f"broker {target!r}; backlog {args.readings:,} readings; batch {args.batch_size}, "
            f"window {args.inflight}"
        )
        print(f"fill:      {fill(outbox, args.readings):>10,.0f} readings/s appended (1000 per transaction)")

        rows = outbox.peek_rows(args.readings)
        sent_at = datetime.now(UTC)
        payloads = [
            encode_rows(site, gw, rows[i : i + args.batch_size], sent_at)
            for i in range(0, len(rows), args.batch_size)
        ]
        raw = baseline(target, payloads, len(rows), args.inflight, site, gw)
        del rows, payloads

        publisher = Publisher(
            outbox,
            target,
            site_id=site,
            gateway_id=gw,
            batch_size=args.batch_size,
            batch_ms=50,
            inflight=args.inflight,
            status_interval_s=3600,
        )
        start = time.perf_counter()
        publisher.start()
        drained = publisher.wait_drained(timeout=3600)
        elapsed = time.perf_counter() - start
        publisher.stop(flush_timeout=1)
        rate = publisher.counters.readings_acked / elapsed
        print(f"baseline:  {raw:>10,.0f} readings/s  raw paho QoS 1, same payloads and window, no outbox")
        print(
            f"outbox:    {rate:>10,.0f} readings/s  Publisher draining the SQLite outbox "
            f"({'drained' if drained else 'NOT drained'}, depth now {outbox.depth()})"
        )
        print(
            f"ratio:     {rate / raw:>10.2f} of baseline; target >= 20,000 readings/s "
            f"({'met' if rate >= 20_000 else 'NOT met'} on this machine)"
        )


if __name__ == "__main__":
    main()
