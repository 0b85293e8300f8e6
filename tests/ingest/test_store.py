"""store_batch against the real PostgreSQL: idempotency, gaps, latest values, dead letters, NOTIFY."""

from __future__ import annotations

import json
import threading
from datetime import timedelta

import psycopg
import pytest

from carewatch.ingest.store import (
    NOTIFY_VERSION,
    DirectoryCache,
    HistoryReading,
    load_history,
    missing_below,
    store_batch,
)
from carewatch.ingest.validate import EventRecord, ReadingsMessage, classify_event, classify_status
from carewatch.subjects import Subject, SubjectKind, parse_subject_key
from carewatch.wire import Channel, GatewayEvent, GatewayStatus, Metric, encode_batch, topic, utcnow

from .conftest import BASE_TIME, Estate, register_estate, stored_seqs


def msg(est: Estate, payload: bytes, *, site: str | None = None, gateway: str | None = None) -> ReadingsMessage:
    return ReadingsMessage.from_payload(est.readings_topic(gateway, site), payload)


def dead_letters(db: psycopg.Connection, gateway_id: str) -> list[tuple]:
    return db.execute(
        "SELECT reason_class, seq, device_id, reason, raw, stage FROM dead_letters WHERE gateway_id = %s "
        "ORDER BY dl_id", (gateway_id,)).fetchall()


def gateway_row(db: psycopg.Connection, gateway_id: str) -> tuple:
    return db.execute("SELECT last_seq, missing_seqs, state, last_seen FROM gateways WHERE gateway_id = %s",
                      (gateway_id,)).fetchone()


def runs(db: psycopg.Connection, gateway_id: str) -> list[tuple[int, int]]:
    return db.execute("SELECT first_seq, last_seq FROM gateway_seq_runs WHERE gateway_id = %s ORDER BY first_seq",
                      (gateway_id,)).fetchall()


def test_good_and_bad_readings_in_one_message(db: psycopg.Connection, database: str, estate: Estate) -> None:
    readings = [estate.reading(1, value=97), estate.reading(2, value=94),
                estate.reading(3, device=estate.motion, metric=Metric.MOTION, value=1),
                estate.reading(5, device=f"ghost-{estate.site_id}"), estate.reading(6, device=estate.inactive)]
    payload = json.loads(encode_batch(estate.site_id, estate.gateway_id, readings))
    payload["readings"].insert(3, estate.reading(4).model_dump(mode="json") | {"value": 300})  # implausible
    result = store_batch(db, [msg(estate, json.dumps(payload).encode())])

    assert (result.readings_in, result.stored, result.duplicates, result.dead_letters) == (6, 3, 0, 3)
    assert stored_seqs(database, estate.gateway_id) == [1, 2, 3]
    rows = db.execute("SELECT seq, subject_id, site_id, value FROM readings WHERE gateway_id = %s ORDER BY seq",
                      (estate.gateway_id,)).fetchall()
    assert rows == [(1, estate.resident_id, estate.site_id, 97), (2, estate.resident_id, estate.site_id, 94),
                    (3, estate.site_id, estate.site_id, 1)]
    letters = dead_letters(db, estate.gateway_id)
    assert [(c, s) for c, s, *_ in letters] == [("invalid_reading", 4), ("unknown_device", 5),
                                                ("device_inactive", 6)]
    assert "spo2=300 % is outside the plausible range 40-100" in letters[0][3]
    assert json.loads(letters[0][4])["value"] == 300
    assert "is not registered" in letters[1][3] and letters[1][2] == f"ghost-{estate.site_id}"
    # newest value per subject and metric, and device liveness
    latest = db.execute("SELECT value, measured_at FROM latest_readings WHERE subject_id = %s AND metric = 'spo2'",
                        (estate.resident_id,)).fetchone()
    assert latest == (94, BASE_TIME + timedelta(seconds=2))
    seen = db.execute("SELECT last_seen FROM devices WHERE device_id = %s", (estate.oximeter,)).fetchone()[0]
    assert seen == BASE_TIME + timedelta(seconds=2, milliseconds=300)
    assert gateway_row(db, estate.gateway_id)[:2] == (3, 0)
    counts = db.execute("SELECT reason_class, n FROM dead_letter_counts WHERE gateway_id = %s ORDER BY 1",
                        (estate.gateway_id,)).fetchall()
    assert counts == [("device_inactive", 1), ("invalid_reading", 1), ("unknown_device", 1)]


def test_wrong_site_topic_and_foreign_gateway_are_rejected(db: psycopg.Connection, database: str,
                                                           estate: Estate) -> None:
    # our gateway's payload on another site's topic; another site's gateway claiming our site
    spoofed_topic = msg(estate, estate.batch(range(1, 4)), site=estate.other_site)
    intruder = msg(estate, encode_batch(estate.site_id, estate.other_gateway, [estate.reading(1)]),
                   gateway=estate.other_gateway)
    stranger = msg(estate, encode_batch(estate.site_id, "never-registered", [estate.reading(1)]),
                   gateway="never-registered")
    result = store_batch(db, [spoofed_topic, intruder, stranger, msg(estate, estate.batch([10]))])
    assert result.stored == 1 and result.dead_letters == 3
    assert dict(result.dead_letters_by_class) == {"topic_mismatch": 1, "gateway_site_mismatch": 1,
                                                  "unknown_gateway": 1}
    assert stored_seqs(database, estate.gateway_id) == [10]
    assert stored_seqs(database, estate.other_gateway) == []
    assert db.execute("SELECT count(*) FROM readings WHERE site_id = %s", (estate.other_site,)).fetchone()[0] == 0


def test_foreign_device_is_dead_lettered(db: psycopg.Connection, estate: Estate) -> None:
    result = store_batch(db, [msg(estate, encode_batch(estate.site_id, estate.gateway_id,
                                                       [estate.reading(1, device=estate.other_device)]))])
    assert result.stored == 0
    [(reason_class, *_)] = dead_letters(db, estate.gateway_id)
    assert reason_class == "device_site_mismatch"


def test_redelivery_is_stored_once_and_counted(db: psycopg.Connection, database: str, estate: Estate) -> None:
    payload = estate.batch(range(1, 6))
    first = store_batch(db, [msg(estate, payload), msg(estate, payload)])  # twice in one batch
    again = store_batch(db, [msg(estate, payload)])  # and once more later
    assert (first.stored, first.duplicates) == (5, 5)
    assert (again.stored, again.duplicates) == (0, 5)
    # same seq with another timestamp is still the same reading: (gateway, seq) identifies it
    shifted = encode_batch(estate.site_id, estate.gateway_id, [estate.reading(3, at=BASE_TIME + timedelta(days=40))])
    assert store_batch(db, [msg(estate, shifted)]).duplicates == 1
    assert stored_seqs(database, estate.gateway_id) == [1, 2, 3, 4, 5]
    assert again.subjects == []


def test_rows_the_sequence_runs_forgot_fall_back_to_the_conflict_tolerant_path(
        db: psycopg.Connection, database: str, estate: Estate) -> None:
    store_batch(db, [msg(estate, estate.batch(range(1, 4)))])
    with db.transaction():  # the runs are lost by hand
        db.execute("DELETE FROM gateway_seq_runs WHERE gateway_id = %s", (estate.gateway_id,))
    result = store_batch(db, [msg(estate, estate.batch(range(2, 6)))])  # 2-3 are stored already, 4-5 are new
    assert (result.stored, result.duplicates, result.dead_letters) == (2, 2, 0)
    assert stored_seqs(database, estate.gateway_id) == [1, 2, 3, 4, 5]
    assert result.subjects == [Subject(SubjectKind.RESIDENT, estate.resident_id)]
    latest = db.execute("SELECT value, measured_at FROM latest_readings WHERE subject_id = %s AND metric = 'spo2'",
                        (estate.resident_id,)).fetchone()
    assert latest == (96, BASE_TIME + timedelta(seconds=5))


def test_gaps_are_detected_and_closed(db: psycopg.Connection, estate: Estate) -> None:
    store_batch(db, [msg(estate, estate.batch(range(1, 6)))])
    result = store_batch(db, [msg(estate, estate.batch([9, 10]))])
    assert result.missing_seqs == {estate.gateway_id: 3} and result.new_gaps == {estate.gateway_id: 3}
    assert gateway_row(db, estate.gateway_id)[:2] == (10, 3)
    assert runs(db, estate.gateway_id) == [(1, 5), (9, 10)]
    store_batch(db, [msg(estate, estate.batch([7]))])
    assert runs(db, estate.gateway_id) == [(1, 5), (7, 7), (9, 10)]
    late = store_batch(db, [msg(estate, estate.batch([6, 8]))])  # the late ones arrive
    assert late.missing_seqs == {estate.gateway_id: 0} and late.new_gaps == {}
    assert runs(db, estate.gateway_id) == [(1, 10)]
    assert gateway_row(db, estate.gateway_id)[:2] == (10, 0)


def test_notify_tells_the_scorer_after_commit(db: psycopg.Connection, database: str, estate: Estate) -> None:
    with psycopg.connect(database, autocommit=True) as listener:
        listener.execute("LISTEN carewatch_readings")
        payload = encode_batch(estate.site_id, estate.gateway_id, [
            estate.reading(1), estate.reading(2, device=estate.motion, metric=Metric.MOTION, value=0)])
        store_batch(db, [msg(estate, payload)])
        notes = [json.loads(n.payload) for n in listener.notifies(timeout=5, stop_after=1)]
    assert len(notes) == 1
    # each subject with its kind (ids are unique per kind only): the resident's oximeter, the home's room sensor
    assert notes[0]["v"] == NOTIFY_VERSION
    assert sorted(notes[0]["subjects"]) == sorted([f"resident:{estate.resident_id}", f"site:{estate.site_id}"])
    assert sorted(map(parse_subject_key, notes[0]["subjects"])) == sorted(
        [Subject(SubjectKind.RESIDENT, estate.resident_id), Subject(SubjectKind.SITE, estate.site_id)])
    assert notes[0]["max_received_at"] == (BASE_TIME + timedelta(seconds=2, milliseconds=300)).isoformat()


def test_no_notify_when_nothing_new(db: psycopg.Connection, database: str, estate: Estate) -> None:
    store_batch(db, [msg(estate, estate.batch([1]))])
    with psycopg.connect(database, autocommit=True) as listener:
        listener.execute("LISTEN carewatch_readings")
        store_batch(db, [msg(estate, estate.batch([1]))])
        assert list(listener.notifies(timeout=0.5)) == []


def test_directory_cache_sees_new_devices(db: psycopg.Connection, estate: Estate) -> None:
    cache = DirectoryCache(max_age_s=3600, miss_refresh_s=0)
    newcomer = f"new-{estate.site_id}"
    first = store_batch(db, [msg(estate, encode_batch(estate.site_id, estate.gateway_id,
                                                      [estate.reading(1, device=newcomer)]))], directory=cache)
    assert first.dead_letters_by_class == {"unknown_device": 1}
    db.execute("INSERT INTO devices (device_id, site_id, kind, resident_id) VALUES (%s, %s, 'pulse_oximeter', %s)",
               (newcomer, estate.site_id, estate.resident_id))
    db.commit()
    second = store_batch(db, [msg(estate, encode_batch(estate.site_id, estate.gateway_id,
                                                       [estate.reading(2, device=newcomer)]))], directory=cache)
    assert second.stored == 1


def test_status_events_and_gateway_dead_letters(db: psycopg.Connection, estate: Estate) -> None:
    cache = DirectoryCache()
    directory = cache.get(db)
    db.commit()
    at = utcnow().replace(microsecond=0)
    online = GatewayStatus(site_id=estate.site_id, gateway_id=estate.gateway_id, state="online", at=at, last_seq=9,
                           devices=[{"device_id": estate.oximeter, "battery_pct": 81, "rssi_dbm": -67},
                                    {"device_id": estate.other_device, "battery_pct": 5}])
    status_topic = topic(estate.site_id, estate.gateway_id, Channel.STATUS)
    events_topic = topic(estate.site_id, estate.gateway_id, Channel.EVENTS)
    update = classify_status(status_topic, online.model_dump_json().encode(), directory)
    frame = GatewayEvent(site_id=estate.site_id, gateway_id=estate.gateway_id, at=at, kind="dead_letter",
                         device_id=estate.oximeter, message="PLX frame failed its CRC", raw_hex="0102ff")
    alarm = GatewayEvent(site_id=estate.site_id, gateway_id=estate.gateway_id, at=at, kind="outbox_alarm",
                         message="outbox at 91% of its budget", detail={"pct": 91})
    gw_letter = classify_event(events_topic, frame.model_dump_json().encode(), directory)
    alarm_rec = classify_event(events_topic, alarm.model_dump_json().encode(), directory)
    assert isinstance(alarm_rec, EventRecord)
    for _ in range(2):  # re-delivered: stored once
        store_batch(db, [], directory=directory, statuses=[update], events=[alarm_rec], dead_letters=[gw_letter])

    state, status, status_at = db.execute("SELECT state, status, status_at FROM gateways WHERE gateway_id = %s",
                                          (estate.gateway_id,)).fetchone()
    assert (state, status["last_seq"], status_at) == ("online", 9, at)
    assert db.execute("SELECT battery_pct, rssi_dbm FROM devices WHERE device_id = %s",
                      (estate.oximeter,)).fetchone() == (81, -67)
    # a status may not touch another site's device
    assert db.execute("SELECT battery_pct FROM devices WHERE device_id = %s",
                      (estate.other_device,)).fetchone() == (None,)
    assert [(r[0], r[3], r[4], r[5]) for r in dead_letters(db, estate.gateway_id)] == [
        ("gateway_frame", "PLX frame failed its CRC", "0102ff", "gateway")]
    events = db.execute("SELECT kind, message, detail FROM gateway_events WHERE gateway_id = %s",
                        (estate.gateway_id,)).fetchall()
    assert events == [("outbox_alarm", "outbox at 91% of its budget", {"pct": 91})]

    # the last will (set up at connect time, so older than the latest status) still marks it offline ...
    will = online.model_copy(update={"state": "offline", "at": at - timedelta(hours=1), "devices": []})
    store_batch(db, [], directory=directory,
                statuses=[classify_status(status_topic, will.model_dump_json().encode(), directory)])
    assert gateway_row(db, estate.gateway_id)[2] == "offline"
    # ... but a stale retained copy delivered on (re)subscribe does not overwrite a newer status
    store_batch(db, [], directory=directory, statuses=[update])
    stale = online.model_copy(update={"state": "offline", "at": at - timedelta(minutes=5), "devices": []})
    store_batch(db, [], directory=directory, statuses=[
        classify_status(status_topic, stale.model_dump_json().encode(), directory, retained=True)])
    assert gateway_row(db, estate.gateway_id)[2] == "online"


@pytest.mark.parametrize("workers", [3])
def test_concurrent_writers_never_store_twice(db: psycopg.Connection, database: str, uid: str,
                                              workers: int) -> None:
    """Shared-subscription workers get overlapping re-deliveries of several gateways at once."""
    est = register_estate(db, f"c{uid}", extra_gateways=2)
    gateways = [est.gateway_id, *est.extra_gateways]
    errors: list[BaseException] = []

    def work(offset: int) -> None:
        try:
            with psycopg.connect(database, autocommit=True) as conn:
                for start in range(1, 200, 20):
                    msgs = [ReadingsMessage.from_payload(est.readings_topic(gw), est.batch(
                        range(start + offset, start + offset + 25), gateway_id=gw)) for gw in gateways[::-1 if
                                                                                                     offset else 1]]
                    store_batch(conn, msgs)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i * 5,)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for gw in gateways:
        seqs = stored_seqs(database, gw)
        assert seqs == sorted(set(seqs)), "a reading was stored twice"
        assert set(seqs) == set(range(1, 181 + 10 + 24 + 1))
        assert gateway_row(db, gw)[:2] == (max(seqs), 0)
        assert missing_below(runs(db, gw)) == 0 and runs(db, gw) == [(1, max(seqs))]


def history(est: Estate, seq: int, *, device: str | None = None, metric: str = "spo2", value: float = 96,
            gateway: str | None = None) -> HistoryReading:
    at = BASE_TIME + timedelta(seconds=seq)
    return HistoryReading(gateway or est.gateway_id, seq, est.site_id, device or est.oximeter, metric, value, at, at)


def test_history_load_appends_keeps_bookkeeping_and_dead_letters_the_rest(
        db: psycopg.Connection, database: str, estate: Estate) -> None:
    store_batch(db, [msg(estate, estate.batch(range(1, 4)))])  # live readings 1-3 already stored
    rows = [history(estate, 4, value=95), history(estate, 5, value=300),  # implausible
            history(estate, 3), history(estate, 6, device=estate.inactive),  # not an append; unbound device
            history(estate, 7, device=estate.motion, metric="motion", value=1),
            history(estate, 9, value=91),  # seq 8 never arrives: a gap
            history(estate, 10, gateway=estate.other_gateway)]  # a gateway this load may not write
    result = load_history(db, [estate.gateway_id], iter(rows))

    assert (result.readings_in, result.stored, result.dead_letters) == (7, 3, 4)
    assert stored_seqs(database, estate.gateway_id) == [1, 2, 3, 4, 7, 9]
    assert runs(db, estate.gateway_id) == [(1, 4), (7, 7), (9, 9)]
    letters = {seq: (cls, reason) for cls, seq, _, reason, *_ in dead_letters(db, estate.gateway_id)}
    assert letters[5][0] == "invalid_reading" and "outside the plausible range" in letters[5][1]
    assert letters[3][0] == "invalid_reading" and "only appends" in letters[3][1]
    assert letters[6][0] == "device_inactive"
    assert "not one this load may write" in dead_letters(db, estate.other_gateway)[0][3]
    # seq 5, 6 and 8 never stored: three missing below 9
    assert gateway_row(db, estate.gateway_id)[:2] == (9, 3)
    latest = db.execute("SELECT value FROM latest_readings WHERE subject_id = %s AND metric = 'spo2'",
                        (estate.resident_id,)).fetchone()
    assert latest == (91,)
    # a live batch afterwards continues normally and the gap closes when seq 8 arrives
    store_batch(db, [msg(estate, encode_batch(estate.site_id, estate.gateway_id, [estate.reading(8)]))])
    assert gateway_row(db, estate.gateway_id)[:2] == (9, 2)


def test_latest_values_and_devices_are_kept_in_one_statement_each(db: psycopg.Connection, estate: Estate) -> None:
    """``_apply_newest`` writes every subject's newest value (its flags too) and every device's last-seen and
    battery in one statement each: a newer stored value is not replaced by an older one, a device without a
    battery reading keeps its battery, and the newest of two battery readings wins."""
    store_batch(db, [msg(estate, encode_batch(estate.site_id, estate.gateway_id,
                                              [estate.reading(50, value=93, at=BASE_TIME + timedelta(hours=2))]))])
    db.execute("UPDATE devices SET battery_pct = 64 WHERE device_id = %s", (estate.motion,))
    at = BASE_TIME + timedelta(seconds=60)
    rows = [HistoryReading(estate.gateway_id, 60, estate.site_id, estate.oximeter, "pulse_rate", 71, at, at,
                           ("clock_skewed", "motion_artifact")),
            HistoryReading(estate.gateway_id, 61, estate.site_id, estate.oximeter, "spo2", 97, at, at),  # older
            HistoryReading(estate.gateway_id, 62, estate.site_id, estate.oximeter, "battery", 40, at, at),
            HistoryReading(estate.gateway_id, 63, estate.site_id, estate.oximeter, "battery", 38,
                           at + timedelta(seconds=1), at + timedelta(seconds=1)),
            HistoryReading(estate.gateway_id, 64, estate.site_id, estate.motion, "motion", 1, at, at)]
    assert load_history(db, [estate.gateway_id], iter(rows)).stored == 5
    latest = {metric: rest for metric, *rest in db.execute(
        "SELECT metric, value, measured_at, flags FROM latest_readings WHERE subject_kind = 'resident' "
        "AND subject_id = %s", (estate.resident_id,)).fetchall()}
    assert latest["pulse_rate"] == [71, at, ["clock_skewed", "motion_artifact"]]
    assert latest["spo2"] == [93, BASE_TIME + timedelta(hours=2), []]  # the stored value two hours newer stays
    assert latest["battery"] == [38, at + timedelta(seconds=1), []]
    devices = {d: rest for d, *rest in db.execute(
        "SELECT device_id, battery_pct, last_seen FROM devices WHERE device_id = ANY(%s)",
        ([estate.oximeter, estate.motion],)).fetchall()}
    assert devices[estate.motion] == [64, at] and devices[estate.oximeter][0] == 38
    assert devices[estate.oximeter][1] == BASE_TIME + timedelta(hours=2, milliseconds=300)  # live newer: kept
    db.rollback()
