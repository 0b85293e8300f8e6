"""The MQTT worker end to end: Mosquitto -> IngestWorker -> PostgreSQL, acknowledged after commit."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator

import psycopg
import pytest

from carewatch.embedded import EmbeddedBroker, free_port
from carewatch.ingest import metrics
from carewatch.ingest.consumer import IngestWorker, broker_delivers_shared
from carewatch.ingest.service import run_ingest
from carewatch.wire import Channel, GatewayEvent, GatewayStatus, encode_batch, topic, utcnow

from .conftest import Estate, stored_seqs, worker_settings


@pytest.fixture
def worker(database: str, private_broker: EmbeddedBroker, uid: str) -> Iterator[IngestWorker]:
    w = IngestWorker(worker_settings(database, private_broker.url), worker_id=f"t{uid}", shared=True,
                     batch_ms=100)
    w.start()
    assert w.connected.wait(10) and w.subscribed.wait(10)
    yield w
    w.stop()


def test_worker_stores_validates_and_counts(worker: IngestWorker, private_broker: EmbeddedBroker,
                                            database: str, estate: Estate, publisher_factory, uid: str) -> None:
    pub = publisher_factory(private_broker.url, f"pub-{uid}")
    mixed = json.loads(estate.batch(range(1, 4)))
    mixed["readings"].append(estate.reading(4).model_dump(mode="json") | {"value": 5})
    pub.publish(estate.readings_topic(), json.dumps(mixed).encode())
    pub.publish(estate.readings_topic(site=estate.other_site), estate.batch(range(5, 7)))  # wrong-site topic
    pub.publish(estate.readings_topic(), estate.batch(range(1, 4)))  # re-delivery of seqs 1-3
    pub.publish(estate.readings_topic(), estate.batch([8]))  # seq 5-7 missing -> gap
    assert worker.wait_until(lambda c: c.messages >= 4, timeout=15), worker.counters

    c = worker.counters
    assert (c.readings_in, c.stored, c.duplicates, c.dead_letters) == (10, 4, 3, 2)
    assert c.missing_seqs == {estate.gateway_id: 4}  # 4, 5, 6, 7 never stored
    assert c.acked == c.messages == 4
    assert stored_seqs(database, estate.gateway_id) == [1, 2, 3, 8]
    with psycopg.connect(database) as conn:
        classes = conn.execute("SELECT reason_class FROM dead_letters WHERE gateway_id = %s ORDER BY dl_id",
                               (estate.gateway_id,)).fetchall()
        assert classes == [("invalid_reading",), ("topic_mismatch",)]
        assert conn.execute("SELECT missing_seqs FROM gateways WHERE gateway_id = %s",
                            (estate.gateway_id,)).fetchone() == (4,)
    text = metrics.REGISTRY.get_sample_value("carewatch_ingest_duplicates_total", {"worker": worker.worker_id})
    assert text == 3


def test_worker_notifies_and_handles_status_and_events(worker: IngestWorker, private_broker: EmbeddedBroker,
                                                       database: str, estate: Estate, publisher_factory,
                                                       uid: str) -> None:
    pub = publisher_factory(private_broker.url, f"pub-{uid}")
    now = utcnow()
    with psycopg.connect(database, autocommit=True) as listener:
        listener.execute("LISTEN carewatch_readings")
        pub.publish(estate.readings_topic(), estate.batch(range(1, 3)))
        notes = [json.loads(n.payload) for n in listener.notifies(timeout=10, stop_after=1)]
    assert notes and notes[0]["subjects"] == [f"resident:{estate.resident_id}"]

    status = GatewayStatus(site_id=estate.site_id, gateway_id=estate.gateway_id, state="offline", at=now)
    frame = GatewayEvent(site_id=estate.site_id, gateway_id=estate.gateway_id, at=now, kind="dead_letter",
                         device_id=estate.oximeter, message="bad frame", raw_hex="00ff")
    pub.publish(topic(estate.site_id, estate.gateway_id, Channel.STATUS), status.model_dump_json().encode())
    pub.publish(topic(estate.site_id, estate.gateway_id, Channel.EVENTS), frame.model_dump_json().encode())
    assert worker.wait_until(lambda c: c.messages >= 3, timeout=15), worker.counters
    with psycopg.connect(database) as conn:
        assert conn.execute("SELECT state FROM gateways WHERE gateway_id = %s",
                            (estate.gateway_id,)).fetchone() == ("offline",)
        assert conn.execute("SELECT stage, raw FROM dead_letters WHERE gateway_id = %s",
                            (estate.gateway_id,)).fetchall() == [("gateway", "00ff")]


def test_graceful_stop_commits_the_open_batch(database: str, private_broker: EmbeddedBroker, estate: Estate,
                                              publisher_factory, uid: str) -> None:
    # a long batch window: the batch is still open when we stop
    w = IngestWorker(worker_settings(database, private_broker.url), worker_id=f"g{uid}", shared=True,
                     batch_ms=60_000, idle_close_ms=60_000)
    w.start()
    assert w.subscribed.wait(10)
    pub = publisher_factory(private_broker.url, f"pub-{uid}")
    for start in range(1, 50, 10):
        pub.publish(estate.readings_topic(), estate.batch(range(start, start + 10)))
    assert w.wait_until(lambda c: c.received == 5, timeout=10)
    assert stored_seqs(database, estate.gateway_id) == []  # nothing committed yet
    w.stop()
    assert stored_seqs(database, estate.gateway_id) == list(range(1, 51))
    assert w.counters.acked == 5


def test_run_ingest_serves_metrics_and_stops_on_event(database: str, private_broker: EmbeddedBroker,
                                                      estate: Estate, publisher_factory, uid: str) -> None:
    import threading

    port = free_port()
    settings = worker_settings(database, private_broker.url).model_copy(update={"metrics_port": port})
    stop = threading.Event()
    box: dict[str, IngestWorker] = {}
    thread = threading.Thread(target=lambda: box.setdefault("w", run_ingest(settings, worker_id=f"r{uid}",
                                                                             stop_event=stop)))
    thread.start()
    pub = publisher_factory(private_broker.url, f"pub-{uid}")
    try:
        deadline_ok = False
        for _ in range(100):
            pub.publish(estate.readings_topic(), estate.batch([1]))
            if stored_seqs(database, estate.gateway_id) == [1]:
                deadline_ok = True
                break
            stop.wait(0.1)
        assert deadline_ok
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert f'carewatch_ingest_rows_stored_total{{worker="r{uid}"}} 1.0' in body
    finally:
        stop.set()
        thread.join(30)
    assert box["w"].counters.stored == 1


def test_unknown_gateway_publishing_is_dead_lettered(worker: IngestWorker, private_broker: EmbeddedBroker,
                                                     database: str, estate: Estate, publisher_factory,
                                                     uid: str) -> None:
    pub = publisher_factory(private_broker.url, f"pub-{uid}")
    ghost = f"ghost-{uid}"
    pub.publish(topic(estate.site_id, ghost, Channel.READINGS),
                encode_batch(estate.site_id, ghost, [estate.reading(1)]))
    pub.publish(topic(estate.site_id, ghost, Channel.READINGS), b"\x00\x01 garbage")
    assert worker.wait_until(lambda c: c.dead_letters >= 2, timeout=15)
    with psycopg.connect(database) as conn:
        rows = conn.execute("SELECT reason_class, reason FROM dead_letters WHERE gateway_id = %s ORDER BY dl_id",
                            (ghost,)).fetchall()
    assert [r[0] for r in rows] == ["unknown_gateway", "bad_message"]
    assert "is not registered" in rows[0][1]


def test_shared_none_probes_the_broker(database: str, scratch_dir, private_broker: EmbeddedBroker,
                                       estate: Estate, publisher_factory, uid: str) -> None:
    """amqtt grants $share subscriptions but never delivers on them: ingest must notice and subscribe plainly."""
    assert broker_delivers_shared(worker_settings(database, private_broker.url)) is True
    amqtt = EmbeddedBroker(scratch_dir / f"amqtt-{uid}", free_port(), prefer="amqtt")
    amqtt.start()
    try:
        settings = worker_settings(database, amqtt.url)
        assert broker_delivers_shared(settings) is False
        with IngestWorker(settings, worker_id=f"a{uid}", shared=None, batch_ms=50) as w:
            assert w.subscribed.wait(10)
            assert w._filters()[0] == "carewatch/v1/+/+/readings"
            publisher_factory(amqtt.url, f"pub-{uid}").publish(estate.readings_topic(), estate.batch([1, 2]))
            assert w.wait_until(lambda c: c.stored == 2, timeout=15)
    finally:
        amqtt.stop()
    assert broker_delivers_shared(settings, timeout=1) is None  # broker gone


def test_consumer_lag_keeps_growing_while_the_database_stalls(worker: IngestWorker, private_broker: EmbeddedBroker,
                                                              database: str, estate: Estate, publisher_factory,
                                                              uid: str) -> None:
    """A commit stuck behind a lock (as behind a database outage): the lag gauges move at scrape time, then
    drop to zero once the batch commits."""
    import time

    def sample(name: str) -> float | None:
        return metrics.REGISTRY.get_sample_value(name, {"worker": worker.worker_id})

    assert sample("carewatch_ingest_oldest_pending_seconds") == 0.0
    pub = publisher_factory(private_broker.url, f"pub-{uid}")
    with psycopg.connect(database) as blocker:
        blocker.execute("LOCK TABLE readings IN ACCESS EXCLUSIVE MODE")  # held until this transaction ends
        pub.publish(estate.readings_topic(), estate.batch(range(1, 4)))
        assert worker.wait_until(lambda c: c.received == 1, timeout=10)
        time.sleep(1.5)
        first = sample("carewatch_ingest_oldest_pending_seconds")
        time.sleep(1.0)
        later = sample("carewatch_ingest_oldest_pending_seconds")
        assert first is not None and later is not None and 1.0 <= first < later
        assert sample("carewatch_ingest_queue_depth") == 1
        assert worker.counters.acked == 0  # (reading the table here would wait for the lock too)
    assert worker.wait_until(lambda c: c.acked == 1, timeout=15)
    assert stored_seqs(database, estate.gateway_id) == [1, 2, 3]
    assert sample("carewatch_ingest_oldest_pending_seconds") == 0.0
    assert sample("carewatch_ingest_queue_depth") == 0
