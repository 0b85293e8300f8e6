"""Shared-kit attribution on the real PostgreSQL (issue 17): a kit reading belongs to the resident of the session
covering its measurement time; nothing is guessed; sessions of one kit never overlap."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from carewatch.ingest import kit_sessions
from carewatch.ingest.attribution import IDLE, SessionWindow, attribute, claimable, identity_doubts
from carewatch.ingest.store import HistoryReading, load_history, store_batch, sweep_into_session
from carewatch.ingest.validate import ReadingsMessage
from carewatch.wire import DeviceKind, Metric, QualityFlag, Reading, encode_batch

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)


@dataclass
class Home:
    site_id: str
    gateway_id: str
    kit_id: str
    oximeter: str
    thermometer: str
    mary: str
    john: str


@pytest.fixture
def home(db: psycopg.Connection, uid: str) -> Home:
    h = Home(f"kh-{uid}", f"kgw-{uid}", f"kh-{uid}-kit-01", f"koxi-{uid}", f"kthermo-{uid}", f"mary-{uid}",
             f"john-{uid}")
    with db.transaction():
        db.execute("INSERT INTO sites (site_id, kind, name) VALUES (%s, 'care_home', 'Kit home')", (h.site_id,))
        for rid, name in ((h.mary, "Mary Smith"), (h.john, "John Jones")):
            db.execute("INSERT INTO residents (resident_id, site_id, display_name, date_of_birth) "
                       "VALUES (%s, %s, %s, '1938-05-01')", (rid, h.site_id, name))
        db.execute("INSERT INTO gateways (gateway_id, site_id) VALUES (%s, %s)", (h.gateway_id, h.site_id))
        kit_sessions.ensure_kits(db, [(h.kit_id, h.site_id, "kit-01")])
        db.execute("""INSERT INTO devices (device_id, site_id, gateway_id, kind, kit_id) VALUES
                      (%s, %s, %s, 'pulse_oximeter', %s), (%s, %s, %s, 'thermometer', %s)""",
                   (h.oximeter, h.site_id, h.gateway_id, h.kit_id, h.thermometer, h.site_id, h.gateway_id, h.kit_id))
    return h


def spo2(h: Home, seq: int, at: datetime, value: float = 95, *, received: datetime | None = None,
         flags: tuple[QualityFlag, ...] = ()) -> Reading:
    return Reading(seq=seq, device_id=h.oximeter, device_kind=DeviceKind.PULSE_OXIMETER, metric=Metric.SPO2,
                   value=value, unit="%", measured_at=at, received_at=received or at + timedelta(seconds=1),
                   flags=flags)


def send(db: psycopg.Connection, h: Home, readings: list[Reading]) -> None:
    store_batch(db, [ReadingsMessage.from_payload(None, encode_batch(h.site_id, h.gateway_id, readings))])


def subjects(db: psycopg.Connection, h: Home) -> dict[int, tuple[str, int | None]]:
    return {seq: (subject, session) for seq, subject, session in db.execute(
        "SELECT seq, subject_id, session_id FROM readings WHERE gateway_id = %s ORDER BY seq", (h.gateway_id,))}


def start(db: psycopg.Connection, h: Home, resident: str, at: datetime, *, by: str = "sam",
          replace: bool = False) -> dict:
    with db.transaction():
        return kit_sessions.start_session(db, kit_id=h.kit_id, site_id=h.site_id, resident_id=resident, by=by,
                                          at=at, replace=replace).session


def test_readings_follow_session_windows_and_idle_end(db: psycopg.Connection, home: Home) -> None:
    h = home
    mary = start(db, h, h.mary, T0)
    john = start(db, h, h.john, T0 + timedelta(minutes=5), replace=True)  # choosing another resident ends Mary's
    ended = db.execute("SELECT ended_at, end_reason FROM kit_sessions WHERE session_id = %s",
                       (mary["session_id"],)).fetchone()
    assert ended == (T0 + timedelta(minutes=5), "switched")
    send(db, h, [
        spo2(h, 1, T0 - timedelta(minutes=1)),  # before any session: unassigned
        spo2(h, 2, T0 + timedelta(minutes=1)),  # Mary's window
        spo2(h, 3, T0 + timedelta(minutes=5)),  # the instant John's starts: John's
        spo2(h, 4, T0 + timedelta(minutes=14)),  # 9 min after John's start: still open
        spo2(h, 5, T0 + timedelta(minutes=23, seconds=59)),  # <10 min after the last reading: the timer moved
        spo2(h, 6, T0 + timedelta(minutes=34, seconds=1)),  # >10 min with no reading: the session is over
    ])
    assert subjects(db, h) == {1: (h.kit_id, None), 2: (h.mary, mary["session_id"]), 3: (h.john, john["session_id"]),
                               4: (h.john, john["session_id"]), 5: (h.john, john["session_id"]), 6: (h.kit_id, None)}
    assert db.execute("SELECT last_reading_at FROM kit_sessions WHERE session_id = %s",
                      (john["session_id"],)).fetchone()[0] == T0 + timedelta(minutes=23, seconds=59)
    # the tablet's next look writes the idle end down, 10 minutes after the newest reading
    with db.transaction():
        assert kit_sessions.close_idle(db, T0 + timedelta(hours=1), kit_ids=[h.kit_id]) == 1
    assert db.execute("SELECT ended_at, end_reason FROM kit_sessions WHERE session_id = %s",
                      (john["session_id"],)).fetchone() == (T0 + timedelta(minutes=33, seconds=59), "idle")
    # latest values: each resident their own, never the other's
    latest = dict(db.execute("SELECT subject_id, value FROM latest_readings WHERE subject_id = ANY(%s) "
                             "AND metric = 'spo2'", ([h.mary, h.john, h.kit_id],)).fetchall())
    assert set(latest) == {h.mary, h.john, h.kit_id}


def test_late_store_and_forward_readings_go_by_measurement_time(db: psycopg.Connection, home: Home) -> None:
    """The gateway was offline during the round: its readings arrive hours later, after both sessions ended,
    and still land on the resident measured at the time (received hours after measurement)."""
    h = home
    mary = start(db, h, h.mary, T0)
    john = start(db, h, h.john, T0 + timedelta(minutes=4), replace=True)
    with db.transaction():
        kit_sessions.end_session(db, john["session_id"], by="sam", at=T0 + timedelta(minutes=8), reason="saved")
    send(db, h, [spo2(h, 10, T0 + timedelta(minutes=2), received=T0 + timedelta(minutes=2, seconds=1)),
                 spo2(h, 11, T0 + timedelta(minutes=6), received=T0 + timedelta(minutes=6, seconds=1)),
                 spo2(h, 12, T0 + timedelta(minutes=9), received=T0 + timedelta(minutes=9, seconds=1))])
    assert subjects(db, h) == {10: (h.mary, mary["session_id"]), 11: (h.john, john["session_id"]),
                               12: (h.kit_id, None)}


def test_unset_device_clock_uses_the_gateway_receive_time(db: psycopg.Connection, home: Home) -> None:
    """A device with an unset clock: the gateway stamps measured_at with its receive time and flags it; that time
    decides the session, not the device's year-0 stamp."""
    h = home
    mary = start(db, h, h.mary, T0)
    received = T0 + timedelta(minutes=3)
    send(db, h, [spo2(h, 20, received, received=received, flags=(QualityFlag.CLOCK_NOT_SET,)),
                 spo2(h, 21, T0 + timedelta(minutes=11), received=T0 + timedelta(minutes=11),
                      flags=(QualityFlag.CLOCK_SKEWED,))])
    assert subjects(db, h) == {20: (h.mary, mary["session_id"]), 21: (h.mary, mary["session_id"])}


def test_one_open_session_per_kit_and_no_overlap(db: psycopg.Connection, home: Home) -> None:
    h = home
    first = start(db, h, h.mary, T0, by="sam")
    with pytest.raises(kit_sessions.SessionConflict) as conflict:
        start(db, h, h.john, T0 + timedelta(minutes=1), by="riley")
    assert conflict.value.open_session["session_id"] == first["session_id"]
    assert conflict.value.open_session["resident_name"] == "Mary Smith"
    # the database itself refuses a second open session, whoever writes it
    with pytest.raises(psycopg.errors.UniqueViolation), db.transaction():
        db.execute("INSERT INTO kit_sessions (kit_id, site_id, resident_id, started_by, started_at) "
                   "VALUES (%s, %s, %s, 'x', %s)", (h.kit_id, h.site_id, h.john, T0 + timedelta(minutes=2)))
    second = start(db, h, h.john, T0 + timedelta(minutes=2), by="riley", replace=True)
    assert db.execute("SELECT end_reason FROM kit_sessions WHERE session_id = %s",
                      (first["session_id"],)).fetchone()[0] == "replaced"
    with db.transaction():
        kit_sessions.end_session(db, second["session_id"], by="riley", at=T0 + timedelta(minutes=6), reason="saved")
    with pytest.raises(kit_sessions.SessionRefused, match="never overlap"):
        start(db, h, h.mary, T0 - timedelta(minutes=20))
    # a start a moment before the last session's end (its newest reading stamped by a clock a little ahead)
    # begins where that one ended
    nudged = start(db, h, h.mary, T0 + timedelta(minutes=5))
    assert nudged["started_at"] == T0 + timedelta(minutes=6)
    with db.transaction():
        kit_sessions.end_session(db, nudged["session_id"], by="sam", at=T0 + timedelta(minutes=7), reason="ended")
    # an idle session is closed by the next start, no question asked
    third = start(db, h, h.mary, T0 + timedelta(minutes=8))
    fourth = start(db, h, h.john, T0 + timedelta(minutes=30))
    assert db.execute("SELECT ended_at, end_reason FROM kit_sessions WHERE session_id = %s",
                      (third["session_id"],)).fetchone() == (T0 + timedelta(minutes=18), "idle")
    assert fourth["ended_at"] is None
    windows = db.execute("SELECT started_at, ended_at FROM kit_sessions WHERE kit_id = %s ORDER BY started_at",
                         (h.kit_id,)).fetchall()
    assert all(a[1] is not None and a[1] <= b[0] for a, b in itertools.pairwise(windows))


def test_a_reading_stamped_in_the_second_the_resident_was_chosen_is_theirs(db: psycopg.Connection,
                                                                          home: Home) -> None:
    """Device clocks count whole seconds (GATT Date Time): a measurement in the second the carer chose the resident
    is stamped at that second's start, before the session row's microseconds. It is still that session's (the
    Chromium kit test lost its first value this way whenever it measured within the same second). When the kit's
    previous session ended inside that second, the new one starts where it ended: that second's earlier part
    stays the previous resident's, so no instant belongs to two sessions. A reading stamped with the whole second
    of that switch may be either resident's: it is not guessed (stays unassigned) and the new session may claim
    it (H-KIT-02)."""
    h = home
    chosen = T0 + timedelta(milliseconds=700)
    mary = start(db, h, h.mary, chosen)
    assert mary["started_at"] == T0
    send(db, h, [spo2(h, 40, T0)])  # measured 0.3 s after choosing Mary, stamped T0 by the device
    assert subjects(db, h) == {40: (h.mary, mary["session_id"])}
    switch = T0 + timedelta(minutes=2, milliseconds=400)
    john = start(db, h, h.john, switch, replace=True)
    assert john["started_at"] == switch  # Mary's session ended there: the two windows touch, never overlap
    send(db, h, [spo2(h, 39, T0 + timedelta(minutes=1, seconds=59)), spo2(h, 41, T0 + timedelta(minutes=2)),
                 spo2(h, 42, T0 + timedelta(minutes=2, seconds=1))])
    assert subjects(db, h)[39] == (h.mary, mary["session_id"])  # the second before the switch: Mary's
    assert subjects(db, h)[41] == (h.kit_id, None)  # stamped in the switch's second: Mary's or John's? not guessed
    assert claimable(john["started_at"], T0 + timedelta(minutes=2))
    assert subjects(db, h)[42] == (h.john, john["session_id"])
    # a reading with the gateway's sub-second receive time is placed exactly, switch second or not
    send(db, h, [spo2(h, 43, T0 + timedelta(minutes=2, milliseconds=300))])
    assert subjects(db, h)[43] == (h.mary, mary["session_id"])


def test_session_start_sweeps_only_readings_inside_its_window(db: psycopg.Connection, home: Home) -> None:
    """Readings stored a moment before the session row (measured after its start) are the session's by its
    window; one measured before the start stays unassigned for a claim (never guessed)."""
    h = home
    send(db, h, [spo2(h, 30, T0 - timedelta(minutes=2)), spo2(h, 31, T0 + timedelta(seconds=20))])
    assert subjects(db, h) == {30: (h.kit_id, None), 31: (h.kit_id, None)}
    with db.transaction():
        session = kit_sessions.start_session(db, kit_id=h.kit_id, site_id=h.site_id, resident_id=h.mary, by="sam",
                                             at=T0).session
        swept = sweep_into_session(db, session, T0 + timedelta(minutes=1), by="sam")
    assert [r["seq"] for r in swept.readings] == [31]
    assert subjects(db, h) == {30: (h.kit_id, None), 31: (h.mary, session["session_id"])}
    history = db.execute("SELECT kind, seq, from_subject, to_subject, by_user FROM reading_assignments "
                         "WHERE gateway_id = %s", (h.gateway_id,)).fetchall()
    assert history == [("session_start", 31, h.kit_id, h.mary, "sam")]


def test_history_loads_attribute_kit_readings_like_live_ingest(db: psycopg.Connection, home: Home) -> None:
    h = home
    mary = start(db, h, h.mary, T0)
    with db.transaction():
        kit_sessions.end_session(db, mary["session_id"], by="sam", at=T0 + timedelta(minutes=3), reason="saved")
    rows = [HistoryReading(h.gateway_id, seq, h.site_id, h.oximeter, "spo2", 95, at, at)
            for seq, at in ((40, T0 + timedelta(minutes=1)), (41, T0 + timedelta(minutes=4)))]
    load_history(db, [h.gateway_id], rows)
    assert subjects(db, h) == {40: (h.mary, mary["session_id"]), 41: (h.kit_id, None)}


# ------------------------------------------------------------------------------------------------------------
# The pure rules
# ------------------------------------------------------------------------------------------------------------
def test_attribute_never_gives_one_instant_to_two_sessions() -> None:
    a = SessionWindow(1, "k", "mary", T0, ended_at=T0 + timedelta(minutes=5))
    b = SessionWindow(2, "k", "john", T0 + timedelta(minutes=5))
    times = [T0 + timedelta(seconds=s) for s in range(-60, 1800, 7)]
    chosen = attribute([("k", t) for t in times], {"k": [a, b]})
    for t, s in zip(times, chosen, strict=True):
        owners = [w for w in (a, b) if w.covers(t)]
        assert len(owners) <= 1
        assert (s.session_id if s else None) == (owners[0].session_id if owners else None)
    assert b.end == b.last_reading_at + IDLE  # type: ignore[operator]


def test_claim_window_and_identity_doubts() -> None:
    assert claimable(T0, T0 - timedelta(minutes=4, seconds=59))
    assert not claimable(T0, T0 - timedelta(minutes=5, seconds=1))
    assert not claimable(T0, T0 + timedelta(seconds=1))  # inside the session: already its own
    doubts = identity_doubts({"spo2": 76.0, "pulse_rate": 80.0}, {"spo2": 96.0, "pulse_rate": 72.0})
    assert [(d.metric, d.value, d.usual) for d in doubts] == [("spo2", 76.0, 96.0)]
    assert doubts[0].words("Mary Smith", "%") == "Is this Mary Smith? spo2 76 % is 20 below their usual 96 %."
    assert identity_doubts({"spo2": 76.0}, {}) == []  # no usual value yet: no question
