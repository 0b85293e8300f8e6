"""The evaluation bench end to end on a tiny world (seconds): seeds, cases, the real engine, matching, the report and
the JSON line; and its statistics on cases with known answers."""

from __future__ import annotations

import json
import sys
from datetime import date
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import bench_evaluation as ev  # noqa: E402


def test_wilson_interval_matches_the_textbook() -> None:
    lo, hi = ev.wilson(2, 4)
    assert lo == pytest.approx(0.150, abs=0.001) and hi == pytest.approx(0.850, abs=0.001)
    lo, hi = ev.wilson(40, 40)
    assert lo == pytest.approx(0.912, abs=0.001) and hi == 1.0


def test_auroc_and_pr_auc_on_known_cases() -> None:
    y = np.array([0, 0, 1, 1], dtype=bool)
    assert ev.auroc(np.array([0.1, 0.2, 0.8, 0.9]), y) == 1.0
    assert ev.auroc(np.array([0.9, 0.8, 0.2, 0.1]), y) == 0.0
    assert ev.auroc(np.array([1.0, 1.0, 1.0, 1.0]), y) == 0.5  # ties count half
    assert ev.auroc(np.array([0.1, 0.4, 0.35, 0.8]), y) == 0.75
    assert ev.pr_auc(np.array([0.1, 0.2, 0.8, 0.9]), y) == 1.0
    assert ev.pr_auc(np.zeros(4), y) == 0.5  # one threshold: precision = prevalence
    assert np.isnan(ev.auroc(np.ones(3), np.zeros(3, dtype=bool)))


def test_held_out_seeds_come_from_the_date_and_cover_winter_and_summer() -> None:
    runs = ev.held_out_seeds(date(2026, 12, 7), 3)
    assert runs == ev.held_out_seeds(date(2026, 12, 7), 3)
    assert runs != ev.held_out_seeds(date(2026, 12, 8), 3)
    assert len({r.seed for r in runs}) == 3 and ev.TUNING_SEED not in {r.seed for r in runs}
    assert {ev.MONTH_NAMES[r.start.month] for r in runs} >= {"winter", "summer"}
    assert all(r.start.weekday() == 0 and r.role == "held-out" for r in runs)


def test_a_household_row_is_found_by_an_incident_holding_its_alert_kind() -> None:
    """In incident mode a notification carries its category; a household, device or gateway row is found by an
    incident whose components include the expected alert kind, and a must-not kind inside an incident counts."""
    from datetime import UTC, datetime, timedelta

    onset = datetime(2025, 1, 6, 8, tzinfo=UTC)
    cold = ev.Truth({"id": "cold-1", "kind": "cold_home", "expected_alert": "room_cold", "must_not": []},
                    frozenset({"hh-01"}), onset, onset + timedelta(hours=12), onset + timedelta(hours=24))
    reboot = ev.Truth({"id": "reboot-1", "kind": "gateway_outage", "expected_alert": None,
                       "must_not": ["gateway_offline"]},
                      frozenset({"gw-01"}), onset, onset + timedelta(hours=1), onset + timedelta(hours=2))
    notices = [
        ev.Notice(1, "hh-01", "hh-01", "incident:household", "medium", onset + timedelta(hours=2),
                  components=frozenset({"room_cold"})),
        ev.Notice(2, "gw-01", "site-1", "incident:device", "low", onset + timedelta(minutes=30),
                  components=frozenset({"gateway_offline"})),
    ]
    found, violations = ev.match([cold, reboot], notices)
    assert found["cold-1"] is notices[0] and notices[0].cls == "true"
    assert violations == ["reboot-1: incident:device on gw-01"]
    # an incident without the expected kind does not count
    other = [ev.Notice(3, "hh-01", "hh-01", "incident:household", "medium", onset + timedelta(hours=2),
                       components=frozenset({"kitchen_inactivity"}))]
    assert ev.match([cold], other)[0]["cold-1"] is None


def test_the_evaluation_runs_end_to_end_on_a_tiny_world(pg_server: str, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    report = tmp_path / "evaluation.md"
    report.write_text("old generated text\n\n" + ev.HANDWRITTEN_MARKER + "\nkept by hand\n", encoding="utf-8")
    assert ev.main(["--seed", "3", "--residents", "8", "--per-home", "4", "--households", "1", "--days", "2",
                    "--history-days", "1", "--clinical-floor", "1", "--jobs", "1", "--quiet", "--dsn", pg_server,
                    "--report", str(report)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    summary = json.loads(last)
    for key in ("seed", "rows", "detected", "sensitivity", "false_interrupting_per_resident_day",
                "notifications_per_home_day", "median_lead_time_h", "baseline_news2_sensitivity",
                "baseline_false_interrupting_per_resident_day"):
        assert key in summary, key
    assert summary["seed"] == 3
    assert summary["rows"] >= 4  # one case of each clinical kind (the COPD one only if a resident has COPD)
    assert 0 <= summary["detected"] <= summary["rows"]
    text = report.read_text(encoding="utf-8")
    assert "old generated text" not in text and text.endswith("kept by hand\n")
    for heading in ("## Targets", "## Side by side", "## Clinical kinds", "## Routine NEWS2",
                    "## Notifications by 8-hour shift", "## How matching is defined"):
        assert heading in text
