"""Publisher against a real broker: ordered QoS 1 batches, delete after PUBACK, window, urgency, status."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from waiting import wait_until

from carewatch.gateway.outbox import Outbox
from carewatch.gateway.pipeline import ReadingDraft
from carewatch.gateway.publisher import Publisher, encode_rows
from carewatch.mqtt import MqttTarget
from carewatch.wire import METRICS, DeviceKind, Metric, QualityFlag, decode_batch, encode_batch

AT = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def drafts(n: int, *, value: float = 97, urgent: bool = False) -> list[ReadingDraft]:
    return [
        ReadingDraft(
            "ox-1",
            DeviceKind.PULSE_OXIMETER,
            Metric.SPO2,
            value,
            "%",
            AT + timedelta(seconds=i),
            AT + timedelta(seconds=i),
            (QualityFlag.CLOCK_NOT_SET,) if i % 2 else (),
            urgent,
        )
        for i in range(n)
    ]


@pytest.fixture
def outbox(scratch_dir: Path, uid: str) -> Iterator[Outbox]:
    with Outbox(scratch_dir / f"pub-{uid}.sqlite", site_id=f"site-{uid}", gateway_id=f"gw-{uid}") as box:
        yield box


def make_publisher(outbox: Outbox, url: str, **kw: Any) -> Publisher:
    kw.setdefault("batch_ms", 20)
    return Publisher(outbox, MqttTarget(url), site_id=outbox.site_id, gateway_id=outbox.gateway_id, **kw)


def test_encode_rows_is_byte_identical_to_encode_batch(outbox: Outbox) -> None:
    stored = outbox.append(
        [
            *drafts(7),
            ReadingDraft(
                "th-1",
                DeviceKind.THERMOMETER,
                Metric.TEMPERATURE,
                37.25,
                METRICS[Metric.TEMPERATURE].unit,
                AT,
                AT,
            ),
        ]
    )
    sent_at = datetime(2025, 3, 1, 12, 5, tzinfo=UTC)
    fast = encode_rows(outbox.site_id, outbox.gateway_id, outbox.peek_rows(100), sent_at)
    assert fast == encode_batch(outbox.site_id, outbox.gateway_id, stored, sent_at)
    assert decode_batch(fast).good == stored


def test_drains_in_order_and_deletes_only_after_puback(
    outbox: Outbox, mqtt_url: str, uid: str, collector_factory: Any
) -> None:
    collector = collector_factory(mqtt_url, outbox.site_id, outbox.gateway_id, f"sub-{uid}")
    outbox.append(drafts(1234))
    publisher = make_publisher(outbox, mqtt_url, batch_size=100, inflight=3)
    in_flight_at_publish: list[int] = []
    original = publisher.client.publish

    def spy(topic: str, payload: Any = None, qos: int = 0, retain: bool = False, **kw: Any) -> Any:
        if topic.endswith("/readings"):
            in_flight_at_publish.append(publisher._readings_in_flight())
        assert topic.startswith(f"carewatch/v1/{outbox.site_id}/{outbox.gateway_id}/"), "only our own topics"
        return original(topic, payload, qos, retain, **kw)

    publisher.client.publish = spy  # type: ignore[method-assign]
    publisher.start()
    try:
        collector.wait_for(lambda: collector.unique() == 1234, 30, "all readings")
        assert publisher.wait_drained(10)
    finally:
        assert publisher.stop()
    collector.assert_exactly_once_in_order(1234)
    assert all(len(b["readings"]) <= 100 for b in collector.batches)
    assert max(in_flight_at_publish) < 3, "never more than `inflight` batches unacknowledged"
    assert outbox.depth() == 0
    assert publisher.counters.readings_acked == 1234
    for batch in collector.batches:
        assert decode_batch(json.dumps(batch)).rejected == []


class Link:
    """A TCP relay between a publisher and the broker that fails like a network: it can swallow what the publisher
    sends (the broker never sees it, so no PUBACK comes back) and cut every connection, refusing new ones until
    restored."""

    def __init__(self, broker_url: str) -> None:
        target = MqttTarget(broker_url)
        self.target = (target.host, target.port)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"mqtt://127.0.0.1:{self.server.getsockname()[1]}"
        self.up = True
        self.swallow = False
        self.lock = threading.Lock()
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return  # closed
            if not self.up:
                client.close()
                continue
            upstream = socket.create_connection(self.target)
            with self.lock:
                self.sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_publisher: bool) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if not (from_publisher and self.swallow):
                    dst.sendall(data)
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.up = False
        with self.lock:
            sockets, self.sockets = self.sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def restore(self) -> None:
        self.swallow = False
        self.up = True

    def close(self) -> None:
        self.server.close()
        self.cut()


def test_after_a_reconnect_the_unacknowledged_batch_goes_before_anything_newer(
    outbox: Outbox, mqtt_url: str, uid: str, collector_factory: Any
) -> None:
    """The broker outage of the fault tests, made deterministic: one batch is in flight and never acknowledged when
    the connection fails, newer readings wait in the outbox, and paho's network thread is slow between telling us
    it is connected (``on_connect``) and re-sending its session's unacknowledged messages, as it is on a loaded
    machine. The newer batch must not overtake the re-sent one."""
    collector = collector_factory(mqtt_url, outbox.site_id, outbox.gateway_id, f"sub-{uid}")
    link = Link(mqtt_url)
    publisher = make_publisher(outbox, link.url, batch_size=100, inflight=8, reconnect_max_s=1)
    publisher.start()
    try:
        assert publisher.wait_connected(10)
        link.swallow = True
        outbox.append(drafts(100))
        publisher.notify()
        wait_until(lambda: publisher.counters.batches_sent == 1, 5, "the first batch handed to paho")
        time.sleep(0.3)
        assert publisher.counters.batches_acked == 0, "the broker never saw it"
        link.cut()
        wait_until(lambda: not publisher.connected, 5, "the publisher to notice the cut")
        outbox.append(drafts(100))  # newer readings, waiting while the link is down
        publisher.notify()

        connected = publisher.client.on_connect

        def slow_network_thread(*args: Any) -> None:
            connected(*args)
            time.sleep(0.5)  # paho re-sends its in-flight messages only after on_connect returns

        publisher.client.on_connect = slow_network_thread
        link.restore()
        collector.wait_for(lambda: collector.unique() == 200, 15, "both batches")
        assert publisher.wait_drained(10)
    finally:
        publisher.stop()
        link.close()
    collector.assert_exactly_once_in_order(200)
    assert publisher.counters.batches_sent == 2, "the first batch was re-sent by paho's session, not by us"
    assert publisher.counters.readings_acked == 200 and outbox.depth() == 0


def test_nothing_is_deleted_without_a_broker(outbox: Outbox, scratch_dir: Path) -> None:
    from carewatch.embedded import free_port

    outbox.append(drafts(50))
    publisher = make_publisher(outbox, f"mqtt://127.0.0.1:{free_port()}")
    publisher.start()
    time.sleep(1.0)
    assert not publisher.connected
    assert not publisher.stop(flush_timeout=0.5)
    assert outbox.depth() == 50


def test_urgent_reading_skips_the_batch_delay(
    outbox: Outbox, mqtt_url: str, uid: str, collector_factory: Any
) -> None:
    collector = collector_factory(mqtt_url, outbox.site_id, outbox.gateway_id, f"sub-{uid}")
    publisher = make_publisher(outbox, mqtt_url, batch_size=200, batch_ms=60_000)
    publisher.start()
    try:
        assert publisher.wait_connected(10)
        outbox.append(drafts(3))
        publisher.notify()
        time.sleep(1.0)
        assert collector.unique() == 0, "a part batch waits for batch_ms"
        outbox.append(drafts(1, value=85, urgent=True))
        publisher.notify(urgent=True)
        collector.wait_for(lambda: collector.unique() == 4, 5, "the urgent flush")
    finally:
        publisher.stop()
    collector.assert_exactly_once_in_order(4)


def test_status_is_retained_and_will_says_offline(
    outbox: Outbox, mqtt_url: str, uid: str, collector_factory: Any
) -> None:
    outbox.append(drafts(5))
    publisher = make_publisher(outbox, mqtt_url, keepalive=5, batch_ms=60_000)
    publisher.start()
    assert publisher.wait_connected(10)
    deadline = time.monotonic() + 5
    while publisher.counters.status_sent == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    # a late subscriber still sees the retained status
    late = collector_factory(mqtt_url, outbox.site_id, outbox.gateway_id, f"late-{uid}")
    late.wait_for(lambda: bool(late.statuses), 5, "retained status")
    retained, status = late.statuses[0]
    assert retained and status["state"] == "online" and status["gateway_id"] == outbox.gateway_id
    first = publisher.connected_at
    assert first is not None and datetime.fromisoformat(status["connected_at"]) == first

    def wills() -> list[dict[str, Any]]:
        return [s for _, s in late.statuses if s["state"] == "offline"]

    # the network goes (no DISCONNECT): the broker publishes the will registered on that connection
    publisher.set_uplink(False)
    late.wait_for(lambda: len(wills()) == 1, 10, "last will")
    # a will claims only what is true whenever it is sent: offline, written when its connection opened
    assert wills()[0] == {"v": 1, "site_id": outbox.site_id, "gateway_id": outbox.gateway_id, "state": "offline",
                          "at": wills()[0]["connected_at"], "connected_at": wills()[0]["connected_at"],
                          "uptime_s": None, "outbox_depth": None, "outbox_bytes": None, "outbox_budget_pct": None,
                          "oldest_unsent": None, "last_seq": None, "devices": []}
    assert datetime.fromisoformat(wills()[0]["at"]) == first
    publisher.set_uplink(True)
    assert publisher.wait_connected(10)
    second = publisher.connected_at
    assert second is not None and second > first
    # die without a DISCONNECT: this time's will carries this connection's time, not the first one's
    publisher._stopping.set()
    publisher.client.loop_stop()
    publisher.client.socket().close()  # type: ignore[union-attr]
    late.wait_for(lambda: len(wills()) == 2, 10, "second last will")
    assert datetime.fromisoformat(wills()[1]["at"]) == second
    assert outbox.depth() == 5, "unsent readings stay in the outbox"


def test_credentials_and_tls_come_from_the_url(outbox: Outbox) -> None:
    publisher = make_publisher(outbox, "mqtts://gw-1:s3cr%40t@broker.example:8884")
    assert publisher.client._username == b"gw-1" and publisher.client._password == b"s3cr@t"
    assert publisher.client._ssl_context is not None
    assert publisher.client._client_id == outbox.gateway_id.encode() and not publisher.client._clean_session
    plain = make_publisher(outbox, "mqtt://broker.example")
    assert plain.client._ssl_context is None and plain.client._username is None


# ------------------------------------------------------------------------------------------------------------
# Gap recovery: resend requests on the gateway's own topic
# ------------------------------------------------------------------------------------------------------------
def send_raw(url: str, topic: str, payload: bytes, client_id: str) -> None:
    """Publish like ingest does (QoS 1, waits for the PUBACK)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    target = MqttTarget(url)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
    client.connect(target.host, target.port)
    client.loop_start()
    try:
        info = client.publish(topic, payload, qos=1)
        info.wait_for_publish(5)
        assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


def test_resend_request_replays_kept_readings_in_order_and_reports_the_rest(
    outbox: Outbox, mqtt_url: str, uid: str, collector_factory: Any
) -> None:
    from carewatch.wire import Channel, ResendRequest, topic

    collector = collector_factory(mqtt_url, outbox.site_id, outbox.gateway_id, f"sub-{uid}")
    outbox.append(drafts(300))
    originals = {json.loads(r.payload)["seq"]: json.loads(r.payload) for r in outbox.peek_rows(300)}
    publisher = make_publisher(outbox, mqtt_url, batch_size=4, inflight=2)
    resend_topic = topic(outbox.site_id, outbox.gateway_id, Channel.RESEND)

    def ask(ranges: list[list[int]], *, site: str | None = None) -> None:
        request = ResendRequest(site_id=site or outbox.site_id, gateway_id=outbox.gateway_id,
                                requested_at=AT, ranges=ranges)
        send_raw(mqtt_url, resend_topic, request.model_dump_json().encode(), f"ingest-{uid}")

    publisher.start()
    try:
        collector.wait_for(lambda: collector.unique() == 300, 30, "the first drain")
        assert publisher.wait_drained(10)
        assert outbox.depth() == 0 and outbox.kept_sent() == 300
        first_pass = len(collector.batches)
        outbox.delete(range(15, 18))  # as if pruned: no longer kept

        # bad requests are refused and logged, and never stop the gateway
        send_raw(mqtt_url, resend_topic, b"\x00 not json", f"ingest-{uid}")
        ask([[1, 2]], site="another-site")
        ask([[10, 20], [40, 45], [290, 310]])
        collector.wait_for(lambda: sum(len(b["readings"]) for b in collector.batches[first_pass:]) == 25, 15,
                           "the replayed readings")
        wait = time.monotonic() + 10
        while not collector.events and time.monotonic() < wait:
            time.sleep(0.05)
        assert publisher.wait_drained(10)
    finally:
        publisher.stop()
    replayed = [r for b in collector.batches[first_pass:] for r in b["readings"]]
    assert [r["seq"] for r in replayed] == [*range(10, 15), *range(18, 21), *range(40, 46), *range(290, 301)]
    assert all(r == originals[r["seq"]] for r in replayed), "replays carry the original readings and seq"
    assert all(len(b["readings"]) <= 4 for b in collector.batches[first_pass:]), "the normal batch size"
    [event] = collector.events
    assert event["kind"] == "replay_unavailable"
    assert event["detail"]["ranges"] == [[15, 17], [301, 310]] and event["detail"]["readings"] == 13
    assert "no longer keeps" in event["message"]
    c = publisher.counters
    assert (c.resend_requests, c.resend_refused, c.readings_replayed, c.replays_acked, c.replay_unavailable) == (
        1, 2, 25, 25, 13)
    assert outbox.depth() == 0 and outbox.kept_sent() == 297, "a replay changes nothing in the outbox"
