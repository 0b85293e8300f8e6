"""API latency (issue 7): the home overview and the GP alert inbox under 50 concurrent clients, on a year of history.

    .venv/bin/python bench/bench_api.py [--residents 2000 --days 365 --rounds 4 --obs-per-day 2]
                                        [--clients 50 --duration 20 --think-ms 1000 --workers 2] [--keep-db]

1. A scratch database on the local PostgreSQL (``CAREWATCH_TEST_DSN``, else 127.0.0.1:5432, else a private
   embedded server), migrated, then filled with ``--days`` of history for ``--residents`` residents in care homes
   of 24: device vitals ``--rounds`` times a day (SpO2, pulse, systolic and diastolic BP, temperature: tens of
   millions of ``readings`` at full size, written with binary COPY built by numpy, indexes rebuilt afterwards),
   observation sets ``--obs-per-day`` times a day scored by the real NEWS2 scorer, alerts and their histories
   (resolved ones from the past, open ones now), ``latest_readings`` and ``resident_state`` as ingest and the
   scorer maintain them. Users: a care worker per home, a GP per practice (residents spread over 40 practices).
2. The API (``carewatch.api.app:create_app``) under uvicorn in a child process, ``--workers`` processes sharing one
   listening socket (see ``serve`` for why not ``uvicorn --workers``).
3. ``wrk`` (Debian package ``wrk``; installed with apt-get when missing and we are root) drives ``--clients``
   connections for ``--duration`` seconds per scenario; a Lua script rotates through every home (each with its own
   care worker's token) or every GP practice (its GP's token) and reports p50/p95/p99. Two load shapes:

   * **paced**: each client waits ``--think-ms`` (random 0-2x, mean as given) between requests, as people
     clicking through dashboards do. The target, p95 < 50 ms, is judged here.
   * **saturation**: no think time, every client sends its next request at once: the most the box can serve and
     the latency that costs (reported beside the target, not judged).

   Baselines measured in the same run: ``GET /healthz`` (no auth, one ``SELECT 1``) under the same load, and each
   endpoint with a single client (no queueing).

The scratch database is dropped at the end (unless ``--keep-db``), also on error. Exits 0 whether or not the target
is met. Without wrk (and no way to install it) an asyncio httpx driver does the same job and the report says so.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from scratch import scratch_database

from carewatch.alerts import Severity
from carewatch.api.auth import issue_tokens
from carewatch.api.users import get_user, hash_password
from carewatch.embedded import free_port
from carewatch.nhs import nhs_check_digit
from carewatch.scoring.news2 import PARAMETERS, score_arrays
from carewatch.settings import Settings

TARGET_P95_MS = 50.0
PER_HOME = 24
PRACTICES = 40
JWT_SECRET = "bench-api-signing-key-" + "k" * 32
PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
#: Device metric -> (device prefix, mean, sd, low, high) of the synthetic residents' values.
VITALS: dict[str, tuple[str, float, float, float, float]] = {
    "spo2": ("ox", 95.5, 1.8, 80, 100),
    "pulse_rate": ("ox", 78, 11, 40, 150),
    "systolic_bp": ("bp", 128, 16, 80, 210),
    "diastolic_bp": ("bp", 76, 10, 40, 120),
    "temperature": ("th", 36.8, 0.4, 35.0, 39.8),
}
DEVICE_KINDS = {"ox": ("pulse_oximeter", "PO3"), "bp": ("blood_pressure", "BM54"), "th": ("thermometer", "FT95")}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ------------------------------------------------------------------------------------------------------------
# Scratch database
# ------------------------------------------------------------------------------------------------------------
# ------------------------------------------------------------------------------------------------------------
# The estate: homes of 24, practices, devices, users
# ------------------------------------------------------------------------------------------------------------
@dataclass
class Estate:
    residents: int
    homes: int
    practice_of: np.ndarray  # resident index -> practice index
    home_of: np.ndarray  # resident index -> home index
    care_staff: list[str] = field(default_factory=list)  # per home
    gps: list[str] = field(default_factory=list)  # per practice

    # the ids: resident, home, practice and gateway from their index
    rid = staticmethod("res-{:05d}".format)
    home = staticmethod("home-{:03d}".format)
    practice = staticmethod("P{:03d}".format)
    gateway = staticmethod("gw-{:03d}".format)

    @staticmethod
    def device(prefix: str, i: int) -> str:
        return f"{prefix}-{i:05d}"


def nhs_numbers(n: int, rng: random.Random) -> list[str]:
    """n distinct valid NHS numbers (modulus-11 check digit from carewatch.nhs)."""
    out: set[str] = set()
    while len(out) < n:
        first = "9" + "".join(str(rng.randrange(10)) for _ in range(8))
        check = nhs_check_digit(first)
        if check is not None:
            out.add(first + str(check))
    return sorted(out)


def seed_estate(conn: psycopg.Connection, residents: int, rng: np.random.Generator) -> Estate:
    homes = math.ceil(residents / PER_HOME)
    home_of = np.arange(residents) // PER_HOME
    practice_of = rng.integers(0, PRACTICES, residents)
    estate = Estate(residents, homes, practice_of, home_of)
    now = datetime.now(UTC)
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO gp_practices VALUES (%s, %s)",
                        [(estate.practice(p), f"Practice {p}") for p in range(PRACTICES)])
        cur.executemany("INSERT INTO sites (site_id, kind, name) VALUES (%s, 'care_home', %s)",
                        [(estate.home(h), f"Care home {h}") for h in range(homes)])
        numbers = nhs_numbers(residents, random.Random(7))
        with cur.copy("COPY residents (resident_id, site_id, display_name, nhs_number, date_of_birth, gp_practice, "
                      "obs_per_day) FROM STDIN") as copy:
            for i in range(residents):
                copy.write_row((estate.rid(i), estate.home(int(home_of[i])), f"Resident {i:05d}", numbers[i],
                                date(1930 + i % 25, 1 + i % 12, 1 + i % 28), estate.practice(int(practice_of[i])), 2))
        cur.executemany(
            """INSERT INTO gateways (gateway_id, site_id, state, status, status_at, last_seen)
               VALUES (%s, %s, 'online', '{"outbox_depth": 0}', %s, %s)""",
            [(estate.gateway(h), estate.home(h), now, now) for h in range(homes)])
        with cur.copy("COPY devices (device_id, site_id, gateway_id, kind, model, resident_id, battery_pct, last_seen) "
                      "FROM STDIN") as copy:
            battery = rng.uniform(5, 100, residents * len(DEVICE_KINDS))
            for i in range(residents):
                for k, (prefix, (kind, model)) in enumerate(DEVICE_KINDS.items()):
                    copy.write_row((estate.device(prefix, i), estate.home(int(home_of[i])),
                                    estate.gateway(int(home_of[i])), kind, model, estate.rid(i),
                                    float(battery[i * len(DEVICE_KINDS) + k]), now - timedelta(minutes=20)))
        password = hash_password("bench password 42")
        users = [(f"staff-{h:03d}", "care_staff", estate.home(h), None) for h in range(homes)]
        users += [(f"gp-{p:03d}", "gp", None, estate.practice(p)) for p in range(PRACTICES)]
        users += [("bench-admin", "admin", None, None)]
        cur.executemany(
            """INSERT INTO users (username, full_name, role, site_id, practice_code, password_hash)
               VALUES (%s, %s, %s, %s, %s, %s)""", [(u, u, role, s, p, password) for u, role, s, p in users])
    estate.care_staff = [u for u, role, _, _ in users if role == "care_staff"]
    estate.gps = [u for u, role, _, _ in users if role == "gp"]
    conn.commit()
    return estate


# ------------------------------------------------------------------------------------------------------------
# Readings: binary COPY rows built by numpy (fixed-width ids make every row of a metric the same size)
# ------------------------------------------------------------------------------------------------------------
COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + (0).to_bytes(4, "big") + (0).to_bytes(4, "big")
COPY_TRAILER = (-1).to_bytes(2, "big", signed=True)
TEXT_OID = 25
READING_COLUMNS = ("measured_at, gateway_id, seq, site_id, subject_id, device_id, metric, value, received_at, flags, "
                   "subject_kind")  # every subject here is a resident (migration 0025)


def reading_rows(t_us: np.ndarray, seq: np.ndarray, gateway: np.ndarray, site: np.ndarray, subject: np.ndarray,
                 device: np.ndarray, metric: str, value: np.ndarray) -> bytes:
    """PostgreSQL binary COPY rows (without header) of one metric; text columns are fixed-width byte arrays."""
    texts = {"gw": gateway, "site": site, "subj": subject, "dev": device}
    columns: list[tuple[Any, ...]] = [
        ("t", ">i8"), ("gw", gateway.dtype), ("seq", ">i8"), ("site", site.dtype), ("subj", subject.dtype),
        ("dev", device.dtype), ("metric", f"S{len(metric)}"), ("value", ">f8"), ("recv", ">i8"),
        ("flags", ">i4", (3,)), ("kind", "S8")]
    spec: list[tuple[Any, ...]] = [("n", ">i2")]
    for column in columns:  # each field: its byte length (int32), then its bytes
        spec += [(f"len_{column[0]}", ">i4"), column]
    rows = np.empty(len(t_us), dtype=np.dtype(spec))
    rows["n"] = 11
    for name in ("t", "seq", "value", "recv"):
        rows[f"len_{name}"] = 8
    for name, array in texts.items():
        rows[f"len_{name}"] = array.dtype.itemsize
        rows[name] = array
    rows["len_metric"] = len(metric)
    rows["metric"] = metric.encode()
    rows["len_flags"] = 12
    rows["flags"] = (0, 0, TEXT_OID)  # an empty text[]: no dimensions, no nulls, element type text
    rows["t"] = t_us
    rows["seq"] = seq
    rows["value"] = value
    rows["recv"] = t_us + 2_000_000
    rows["len_kind"] = 8
    rows["kind"] = b"resident"
    return rows.tobytes()


def fixed(prefix: str, numbers: np.ndarray, width: int) -> np.ndarray:
    """b'prefix-00042' for each number, as a fixed-width numpy bytes array."""
    return np.char.add(prefix.encode(), np.char.zfill(numbers.astype(f"S{width}"), width))


@dataclass
class History:
    start: datetime
    end: datetime
    readings: int = 0
    observation_sets: int = 0
    alerts: int = 0
    alert_events: int = 0
    latest: dict[str, np.ndarray] = field(default_factory=dict)  # metric -> (residents,) newest value
    latest_at: dict[str, np.ndarray] = field(default_factory=dict)


def load_readings(conn: psycopg.Connection, estate: Estate, history: History, rounds: int,
                  rng: np.random.Generator) -> None:
    """Device rounds for every resident and day, one COPY per month; readings' indexes rebuilt once afterwards."""
    n = estate.residents
    indexes = conn.execute("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'readings'").fetchall()
    for name, _ in indexes:
        conn.execute(f'DROP INDEX "{name}"')  # on the partitioned parent: drops every partition's copy too
    conn.execute("SELECT carewatch_ensure_partitions(%s, %s)", (history.start, history.end + timedelta(days=1)))
    conn.commit()
    residents = np.arange(n)
    subject = fixed("res-", residents, 5)
    site = fixed("home-", estate.home_of, 3)
    gateway = fixed("gw-", estate.home_of, 3)
    devices = {prefix: fixed(f"{prefix}-", residents, 5) for prefix in DEVICE_KINDS}
    baseline = {m: rng.normal(mean, sd * 0.6, n) for m, (_, mean, sd, _, _) in VITALS.items()}
    round_hours = np.linspace(6, 22, rounds) if rounds > 1 else np.array([9.0])
    seq = 0
    day0 = datetime.combine(history.start.date(), datetime.min.time(), tzinfo=UTC)
    days = (history.end.date() - history.start.date()).days + 1
    t_load = time.monotonic()
    month_start = 0
    while month_start < days:
        month_days = min(31, days - month_start)
        chunk = bytearray(COPY_HEADER)
        count = 0
        for metric, (prefix, _, sd, low, high) in VITALS.items():
            # (days, rounds, residents): time of each reading, with per-reading jitter of up to 20 minutes
            base = np.array([(day0 + timedelta(days=month_start + d, hours=float(h)) - PG_EPOCH) // timedelta(
                microseconds=1) for d in range(month_days) for h in round_hours], dtype=np.int64)
            t_us = (base[:, None] + rng.integers(0, 20 * 60 * 1_000_000, (len(base), n))).ravel()
            keep = t_us < (history.end - PG_EPOCH) // timedelta(microseconds=1)
            value = np.clip(np.round(baseline[metric][None, :] + rng.normal(0, sd * 0.5, (len(base), n)), 1),
                            low, high).ravel()
            cells = np.broadcast_to(residents, (len(base), n)).ravel()
            t_us, value, cells = t_us[keep], value[keep], cells[keep]
            seqs = np.arange(seq + 1, seq + 1 + len(t_us), dtype=np.int64)
            seq += len(t_us)
            chunk += reading_rows(t_us, seqs, gateway[cells], site[cells], subject[cells], devices[prefix][cells],
                                  metric, value)
            count += len(t_us)
            if len(t_us):
                last = np.full(n, -1, dtype=np.int64)
                np.maximum.at(last, cells, np.arange(len(t_us)))
                have = last >= 0
                history.latest.setdefault(metric, np.full(n, np.nan))[have] = value[last[have]]
                history.latest_at.setdefault(metric, np.zeros(n, dtype=np.int64))[have] = t_us[last[have]]
        chunk += COPY_TRAILER
        with conn.cursor() as cur, cur.copy(f"COPY readings ({READING_COLUMNS}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.write(bytes(chunk))
        conn.commit()
        history.readings += count
        month_start += month_days
        rate = history.readings / max(1e-9, time.monotonic() - t_load)
        log(f"  readings: {history.readings:,} ({month_start}/{days} days, {rate:,.0f} rows/s)")
    log("  rebuilding the readings indexes (as defined by the migrations) ...")
    t_index = time.monotonic()
    conn.execute("SET maintenance_work_mem = '512MB'")
    for _, definition in indexes:  # pg_indexes says "ON ONLY" (the parent alone): build every partition's too
        conn.execute(definition.replace(" ON ONLY ", " ON ", 1))
    conn.commit()
    log(f"  indexes rebuilt in {time.monotonic() - t_index:.0f} s")
    with conn.cursor() as cur, cur.copy(
            "COPY latest_readings (subject_kind, subject_id, metric, site_id, device_id, value, measured_at) "
            "FROM STDIN") as copy:
        for metric, (prefix, *_) in VITALS.items():
            for i in np.flatnonzero(~np.isnan(history.latest[metric])):
                copy.write_row(("resident", estate.rid(int(i)), metric, estate.home(int(estate.home_of[i])),
                                estate.device(prefix, int(i)), float(history.latest[metric][i]),
                                PG_EPOCH + timedelta(microseconds=int(history.latest_at[metric][i]))))
    conn.commit()


# ------------------------------------------------------------------------------------------------------------
# Observation sets (scored by the real NEWS2 scorer), alerts with their events, resident state
# ------------------------------------------------------------------------------------------------------------
def copy_text(value: Any) -> str:
    """One field of a text-format COPY row."""
    if value is None:
        return "\\N"
    return str(value).replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")


def load_clinical(conn: psycopg.Connection, estate: Estate, history: History, obs_per_day: int,
                  rng: np.random.Generator) -> None:
    n = estate.residents
    days = (history.end.date() - history.start.date()).days + 1
    day0 = datetime.combine(history.start.date(), datetime.min.time(), tzinfo=UTC)
    hours = np.linspace(8, 20, obs_per_day) if obs_per_day > 1 else np.array([10.0])
    taken = np.array([day0 + timedelta(days=d, hours=float(h)) for d in range(days) for h in hours])
    taken = taken[taken < history.end]
    m = len(taken) * n
    frailty = rng.gamma(1.2, 1.0, n)  # some residents are often unwell, most rarely
    unwell = rng.random((len(taken), n)) < 0.02 * frailty[None, :]
    cols = {
        "respiration_rate": np.clip(np.round(rng.normal(17, 2.5, (len(taken), n)) + 7 * unwell), 8, 40),
        "spo2": np.clip(np.round(rng.normal(95.5, 1.6, (len(taken), n)) - 5 * unwell), 80, 100),
        "systolic_bp": np.clip(np.round(rng.normal(128, 14, (len(taken), n)) - 25 * unwell), 80, 210),
        "pulse": np.clip(np.round(rng.normal(78, 10, (len(taken), n)) + 30 * unwell), 40, 160),
        "temperature": np.clip(np.round(rng.normal(36.8, 0.35, (len(taken), n)) + 1.6 * unwell, 1), 35, 40),
    }
    flat = {k: v.ravel() for k, v in cols.items()}
    consciousness = np.where(rng.random(m) < 0.003, 1, 0).astype(np.int8)  # 0 = A, 1 = C (see CONSCIOUSNESS_CODES)
    scored = score_arrays(scale2=np.zeros(m, dtype=bool), on_oxygen=np.zeros(m, dtype=bool),
                          consciousness=consciousness, **flat)
    risks = np.array(["low", "low-medium", "medium", "high"])[scored.risk]
    letters = np.array(["A", "C", "V", "P", "U"])[consciousness]
    subscore_json: dict[bytes, str] = {}
    sub_rows = np.ascontiguousarray(scored.subscores)
    resident_idx = np.tile(np.arange(n), len(taken))
    taken_flat = np.repeat(taken, n)
    log(f"  observation sets: {m:,} scored (NEWS2, vectorised); writing ...")
    with conn.cursor() as cur, cur.copy(
            "COPY observation_sets (resident_id, site_id, taken_at, recorded_by, source, respiration_rate, spo2, "
            "systolic_bp, pulse, consciousness, temperature, score, risk, subscores, complete) FROM STDIN") as copy:
        buffer: list[str] = []
        for j in range(m):
            i = resident_idx[j]
            key = sub_rows[j].tobytes()
            js = subscore_json.get(key)
            if js is None:
                js = subscore_json[key] = json.dumps({p: None if v < 0 else v for p, v in zip(
                    PARAMETERS, sub_rows[j].tolist(), strict=True)})
            buffer.append("\t".join((
                estate.rid(int(i)), estate.home(int(estate.home_of[i])), taken_flat[j].isoformat(), "staff", "manual",
                str(flat["respiration_rate"][j]), str(flat["spo2"][j]), str(flat["systolic_bp"][j]),
                str(flat["pulse"][j]), letters[j], str(flat["temperature"][j]), str(int(scored.total[j])), risks[j],
                js, "t")))
            if len(buffer) == 20_000:
                copy.write("\n".join(buffer) + "\n")
                buffer.clear()
        if buffer:
            copy.write("\n".join(buffer) + "\n")
    conn.commit()
    history.observation_sets = m

    # Alerts: every medium/high set opened one (resolved later); residents unwell at the last round have one open.
    severity_of = {2: Severity.MEDIUM.value, 3: Severity.HIGH.value}
    raised = np.flatnonzero(scored.risk >= 2)
    last_round = len(taken) - 1
    open_now = set(np.flatnonzero(scored.risk[last_round * n:] >= 1).tolist())
    open_now |= set(rng.choice(n, size=max(1, n // 10), replace=False).tolist())  # ~10% more: someone still to act
    log(f"  alerts: {len(raised):,} from the past, {len(open_now):,} open now; writing ...")
    now = history.end
    statuses = ["open", "acknowledged", "escalated"]
    with conn.cursor() as cur:
        with cur.copy("COPY alerts (site_id, resident_id, subject_kind, subject_id, kind, severity, status, reason, "
                      "action, score, opened_at, updated_at, acknowledged_at, acknowledged_by, resolved_at, "
                      "resolved_by, resolution) FROM STDIN") as copy:
            buffer = []
            for j in raised:
                i = int(resident_idx[j])
                opened = taken_flat[j]
                acked = opened + timedelta(minutes=int(rng.integers(3, 60)))
                resolved = acked + timedelta(hours=int(rng.integers(1, 12)))
                buffer.append("\t".join(map(copy_text, (
                    estate.home(int(estate.home_of[i])), estate.rid(i), "resident", estate.rid(i), "news2",
                    severity_of[int(scored.risk[j])], "resolved", f"NEWS2 {int(scored.total[j])} ({risks[j]})",
                    "Inform the nurse in charge; repeat observations within the hour", int(scored.total[j]),
                    opened.isoformat(), resolved.isoformat(), acked.isoformat(), "staff", resolved.isoformat(),
                    "staff", "observations back to usual"))))
                if len(buffer) == 20_000:
                    copy.write("\n".join(buffer) + "\n")
                    buffer.clear()
            for k, i in enumerate(sorted(open_now)):
                status = statuses[k % 3]
                opened = now - timedelta(minutes=int(rng.integers(5, 600)))
                buffer.append("\t".join(map(copy_text, (
                    estate.home(int(estate.home_of[i])), estate.rid(i), "resident", estate.rid(i), "news2",
                    [Severity.LOW.value, Severity.MEDIUM.value, Severity.HIGH.value][k % 3], status,
                    "NEWS2 rising", "Repeat observations and call the GP if it stays up", 4, opened.isoformat(),
                    opened.isoformat(), None if status == "open" else opened.isoformat(),
                    None if status == "open" else "staff", None, None, None))))
            for i in rng.choice(n, size=max(1, n // 25), replace=False).tolist():  # ~4%: a flat battery
                opened = now - timedelta(hours=int(rng.integers(1, 48)))
                buffer.append("\t".join(map(copy_text, (
                    estate.home(int(estate.home_of[i])), estate.rid(int(i)), "device", estate.device("ox", int(i)),
                    "battery_low", Severity.LOW.value, "open", "battery 8%", "Change the battery today", None,
                    opened.isoformat(), opened.isoformat(), None, None, None, None, None))))
            copy.write("\n".join(buffer) + "\n")
        history.alerts = cur.execute("SELECT count(*) FROM alerts").fetchone()[0]
        cur.execute(
            """INSERT INTO alert_events (alert_id, at, actor, action, comment)
               SELECT alert_id, opened_at, 'scorer', 'opened', NULL FROM alerts
               UNION ALL SELECT alert_id, acknowledged_at, acknowledged_by, 'acknowledged', 'looking now' FROM alerts
                         WHERE acknowledged_at IS NOT NULL
               UNION ALL SELECT alert_id, resolved_at, resolved_by, 'resolved', resolution FROM alerts
                         WHERE resolved_at IS NOT NULL""")
        history.alert_events = cur.rowcount
        # Current state per resident: the newest observation set, as the scorer keeps it.
        cur.execute(
            """INSERT INTO resident_state (resident_id, site_id, news2_score, news2_risk, news2_complete, news2_at,
                                           last_obs_id, next_obs_due, last_seen)
               SELECT DISTINCT ON (resident_id) resident_id, site_id, score, risk, complete, taken_at, obs_id,
                      taken_at + interval '12 hours', taken_at
               FROM observation_sets ORDER BY resident_id, taken_at DESC""")
    conn.commit()


def build_history(dsn: str, residents: int, days: int, rounds: int, obs_per_day: int) -> tuple[Estate, History]:
    rng = np.random.default_rng(7)
    end = datetime.now(UTC)
    history = History(start=end - timedelta(days=days), end=end)
    t0 = time.monotonic()
    with psycopg.connect(dsn) as conn:
        log(f"seeding {residents:,} residents in homes of {PER_HOME}, {PRACTICES} GP practices ...")
        estate = seed_estate(conn, residents, rng)
        log(f"readings: {days} days x {rounds} device rounds x {len(VITALS)} vitals ...")
        load_readings(conn, estate, history, rounds, rng)
        log(f"observation sets ({obs_per_day} a day), alerts, resident state ...")
        load_clinical(conn, estate, history, obs_per_day, rng)
        conn.autocommit = True
        log("VACUUM ANALYZE ...")
        conn.execute("VACUUM ANALYZE")
    log(f"history built in {time.monotonic() - t0:.0f} s: {history.readings:,} readings, "
        f"{history.observation_sets:,} observation sets, {history.alerts:,} alerts, "
        f"{history.alert_events:,} alert events")
    return estate, history


def existing_history(dsn: str) -> tuple[Estate, History]:
    """What a kept database holds (``--use-db``): its users, and row counts for the report."""
    with psycopg.connect(dsn) as conn:
        staff = [r[0] for r in conn.execute("SELECT username FROM users WHERE username LIKE 'staff-%' ORDER BY 1")]
        gps = [r[0] for r in conn.execute("SELECT username FROM users WHERE username LIKE 'gp-%' ORDER BY 1")]
        start, end = conn.execute("SELECT min(taken_at), max(taken_at) FROM observation_sets").fetchone()
        history = History(start=start, end=end)
        history.readings = conn.execute("SELECT count(*) FROM readings").fetchone()[0]
        history.observation_sets = conn.execute("SELECT count(*) FROM observation_sets").fetchone()[0]
        history.alerts = conn.execute("SELECT count(*) FROM alerts").fetchone()[0]
        residents = conn.execute("SELECT count(*) FROM residents").fetchone()[0]
    estate = Estate(residents, len(staff), np.empty(0), np.empty(0), staff, gps)
    return estate, history


# ------------------------------------------------------------------------------------------------------------
# The API under uvicorn, and the load
# ------------------------------------------------------------------------------------------------------------
def server_env(dsn: str, state_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAREWATCH_")}
    env.update({"CAREWATCH_DATABASE_URL": dsn, "CAREWATCH_JWT_SECRET": JWT_SECRET,
                "CAREWATCH_ACCESS_TOKEN_MINUTES": "120", "CAREWATCH_STATE_DIR": str(state_dir),
                "CAREWATCH_LOG_LEVEL": "WARNING"})
    return env


def serve(port: int, workers: int) -> None:
    """The child process: ``workers`` uvicorn servers (forked) sharing one listening socket.

    Not ``uvicorn --workers``: it listens on a socket made without ``IPPROTO_TCP``, so asyncio leaves Nagle on
    for its connections, and every keep-alive response waits ~40 ms for the client's delayed ACK (seen here: 44 ms
    per /healthz with one wrk connection, against 0.8 ms with one worker). ``carewatch api`` runs one process and
    is not affected."""
    import socket

    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(2048)
    config = uvicorn.Config("carewatch.api.app:create_served_app", factory=True, log_level="warning", access_log=False)
    children = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:
            uvicorn.Server(config).run(sockets=[sock])
            os._exit(0)
        children.append(pid)

    def stop(signum: int, _frame: Any) -> None:  # pass it on, then wait for the workers below
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signum)

    signal.signal(signal.SIGTERM, stop)
    for pid in children:
        os.waitpid(pid, 0)


@contextlib.contextmanager
def api_server(dsn: str, workers: int, state_dir: Path) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(port), "--workers", str(workers)],
                            env=server_env(dsn, state_dir), start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        import httpx

        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the API did not start")
            time.sleep(0.2)
        yield url
    finally:  # the whole process group: the serve process and every worker it forked
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        with contextlib.suppress(ProcessLookupError):
            while time.monotonic() < deadline:
                proc.poll()
                os.killpg(proc.pid, 0)  # raises once no process of the group is left
                time.sleep(0.1)
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def tokens_for(dsn: str, usernames: list[str]) -> dict[str, str]:
    settings = Settings(jwt_secret=JWT_SECRET, access_token_minutes=120)
    with psycopg.connect(dsn) as conn:
        out = {}
        for name in usernames:
            user = get_user(conn, name)
            assert user is not None
            out[name] = issue_tokens(conn, user, settings).access_token
        return out


@dataclass
class Requests:
    """A scenario's rotation of (path, bearer token)."""

    name: str
    items: list[tuple[str, str | None]]


@dataclass
class Result:
    scenario: str
    load: str
    clients: int
    requests: int
    seconds: float
    p50: float
    p95: float
    p99: float
    errors: int

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


LUA = """
local items = %(items)s
local think = %(think)d
local i = 0
request = function()
  i = i %% #items + 1
  local item = items[i]
  local headers = {}
  if item[2] ~= "" then headers["Authorization"] = "Bearer " .. item[2] end
  return wrk.format("GET", item[1], headers)
end
if think > 0 then
  delay = function() return math.random(0, 2 * think) end
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('RESULT {"requests": %%d, "us": %%d, "p50": %%d, "p95": %%d, "p99": %%d, "errors": %%d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(95), latency:percentile(99),
    e.connect + e.read + e.write + e.status + e.timeout))
end
"""


def lua_items(items: list[tuple[str, str | None]]) -> str:
    return "{" + ",".join(f'{{"{path}", "{token or ""}"}}' for path, token in items) + "}"


def run_wrk(url: str, reqs: Requests, clients: int, seconds: float, think_ms: int, workdir: Path) -> Result:
    script = workdir / f"{reqs.name.replace(' ', '_').replace('/', '_')}.lua"
    script.write_text(LUA % {"items": lua_items(reqs.items), "think": think_ms})
    threads = max(1, min(2, clients))
    out = subprocess.run(["wrk", "-t", str(threads), "-c", str(clients), "-d", f"{seconds:g}s", "--timeout", "10s",
                          "-s", str(script), url], capture_output=True, text=True, check=True)
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))
    r = json.loads(line.removeprefix("RESULT "))
    return Result(reqs.name, "paced" if think_ms else "saturation", clients, r["requests"], r["us"] / 1e6,
                  r["p50"] / 1000, r["p95"] / 1000, r["p99"] / 1000, r["errors"])


def run_httpx(url: str, reqs: Requests, clients: int, seconds: float, think_ms: int, workdir: Path) -> Result:
    """The fallback driver: ``clients`` asyncio tasks, each with its own connection, closed loop."""
    import httpx

    async def drive() -> tuple[list[float], int, float]:
        latencies: list[float] = []
        errors = 0
        stop = time.monotonic() + seconds

        async def client(offset: int) -> None:
            nonlocal errors
            async with httpx.AsyncClient(base_url=url, timeout=10, limits=httpx.Limits(max_connections=1)) as http:
                k = offset
                while time.monotonic() < stop:
                    path, token = reqs.items[k % len(reqs.items)]
                    k += 1
                    t = time.perf_counter()
                    try:
                        response = await http.get(path, headers={"Authorization": f"Bearer {token}"} if token else {})
                        if response.status_code >= 400:
                            errors += 1
                    except httpx.HTTPError:
                        errors += 1
                    latencies.append((time.perf_counter() - t) * 1000)
                    if think_ms:
                        await asyncio.sleep(random.uniform(0, 2 * think_ms) / 1000)

        t0 = time.monotonic()
        await asyncio.gather(*(client(c) for c in range(clients)))
        return latencies, errors, time.monotonic() - t0

    latencies, errors, elapsed = asyncio.run(drive())
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [latencies[0]] * 99
    return Result(reqs.name, "paced" if think_ms else "saturation", clients, len(latencies), elapsed, q[49], q[94],
                  q[98], errors)


def ensure_wrk() -> bool:
    if shutil.which("wrk"):
        return True
    if os.geteuid() == 0 and shutil.which("apt-get"):
        log("wrk is missing: apt-get install -y wrk ...")
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "check": False}
        if subprocess.run(["apt-get", "install", "-y", "wrk"], **quiet).returncode != 0:
            subprocess.run(["apt-get", "update"], **quiet)
            subprocess.run(["apt-get", "install", "-y", "wrk"], **quiet)
    return shutil.which("wrk") is not None


# ------------------------------------------------------------------------------------------------------------
def report(results: list[Result], driver: str, args: argparse.Namespace, history: History, build_s: float) -> None:
    print()
    print(f"API latency: {args.residents:,} residents, {args.days} days of history ({history.readings:,} readings, "
          f"{history.observation_sets:,} observation sets, {history.alerts:,} alerts; built in {build_s:.0f} s)")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"driver: {driver}; {args.workers} uvicorn worker process(es); {os.cpu_count()} CPUs shared by PostgreSQL, "
          f"the API, the driver and anything else running (load average now {load})")
    print(f"{'scenario':<34} {'load':<11} {'clients':>7} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
          f"{'errors':>6}  target")
    for r in results:
        judged = r.load == "paced" and r.clients == args.clients and r.scenario != "baseline GET /healthz"
        verdict = ("MET" if r.p95 < TARGET_P95_MS and not r.errors else "NOT MET") if judged else "-"
        print(f"{r.scenario:<34} {r.load:<11} {r.clients:>7} {r.rate:>8.0f} {r.p50:>8.1f} {r.p95:>8.1f} "
              f"{r.p99:>8.1f} {r.errors:>6}  {verdict}")
    print(f"target: p95 < {TARGET_P95_MS:.0f} ms for the overview and the GP inbox with {args.clients} paced clients "
          f"(think time {args.think_ms} ms on average); saturation rows show capacity, not the target")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--residents", type=int, default=2000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--rounds", type=int, default=4, help="Device vitals rounds a day.")
    parser.add_argument("--obs-per-day", type=int, default=2, help="Observation sets a day per resident.")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--duration", type=float, default=20.0, help="Seconds per load run.")
    parser.add_argument("--think-ms", type=int, default=1000, help="Mean pause between a paced client's requests.")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn worker processes.")
    parser.add_argument("--driver", choices=("auto", "wrk", "httpx"), default="auto")
    parser.add_argument("--keep-db", action="store_true", help="Keep the scratch database (for EXPLAIN ANALYZE).")
    parser.add_argument("--use-db", metavar="DSN", help="Measure a database kept by --keep-db (no rebuild).")
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)  # the API child process
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.workers)
        return 0

    driver = args.driver
    if driver in ("auto", "wrk") and ensure_wrk():
        driver = "wrk"
    elif driver == "wrk":
        print("wrk is not installed and could not be installed", file=sys.stderr)
        return 1
    else:
        driver = "httpx"
    run = run_wrk if driver == "wrk" else run_httpx

    database = (contextlib.nullcontext((args.use_db, "given database")) if args.use_db
                else scratch_database(prefix="carewatch_bench_api", keep=args.keep_db))
    with database as (dsn, where), tempfile.TemporaryDirectory(prefix="carewatch-bench-api-") as tmp:
        workdir = Path(tmp)
        t0 = time.monotonic()
        log(f"database: {where}")
        if args.use_db:
            estate, history = existing_history(dsn)
        else:  # scratch_database has migrated it
            estate, history = build_history(dsn, args.residents, args.days, args.rounds, args.obs_per_day)
        build_s = time.monotonic() - t0
        tokens = tokens_for(dsn, estate.care_staff + estate.gps)
        overview = Requests("GET /sites/{id}/overview (24)", [
            (f"/sites/{estate.home(h)}/overview", tokens[estate.care_staff[h]]) for h in range(estate.homes)])
        inbox = Requests("GET /alerts (GP inbox)", [("/alerts", tokens[gp]) for gp in estate.gps])
        health = Requests("baseline GET /healthz", [("/healthz", None)])
        results: list[Result] = []
        with api_server(dsn, args.workers, workdir) as url:
            log(f"API up at {url}; warming up ...")
            for reqs in (overview, inbox):
                run(url, reqs, 4, 3, 0, workdir)
            plan = [(health, args.clients, args.think_ms), (overview, args.clients, args.think_ms),
                    (inbox, args.clients, args.think_ms), (overview, 1, 0), (inbox, 1, 0),
                    (health, args.clients, 0), (overview, args.clients, 0), (inbox, args.clients, 0)]
            for reqs, clients, think in plan:
                log(f"{reqs.name}: {clients} client(s), {'paced' if think else 'saturation'}, {args.duration:g} s ...")
                results.append(run(url, reqs, clients, args.duration, think, workdir))
        report(results, driver, args, history, build_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
