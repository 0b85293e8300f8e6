"""Personal baselines and sustained deviation, on hand-built 2-D arrays (one row per resident)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from carewatch.scoring import baselines as bl

NOW = 1_800_000_000.0
H = 3600.0
D = 86400.0


def _history(level: float, n: int = 10) -> tuple[list[float], list[float]]:
    """n values at ``level``, one a day, from 11 days ago (inside the 14-day window, outside the last 24 h)."""
    return [level] * n, [NOW - (11 - i) * D for i in range(n)]


def _rows(*rows: tuple[list[float], list[float]]) -> tuple[np.ndarray, np.ndarray]:
    return bl.pad_rows([r[0] for r in rows]), bl.pad_rows([r[1] for r in rows])


def test_baseline_ignores_last_24h_and_older_than_14_days() -> None:
    values = [[96.0, 96.0, 80.0, 50.0]]
    times = [[NOW - 5 * D, NOW - 3 * D, NOW - 2 * H, NOW - 20 * D]]
    base = bl.rolling_baselines(values, times, NOW, min_count=2)
    assert base.count.tolist() == [2]
    assert base.median.tolist() == [96.0]
    assert base.trusted.tolist() == [True]


def test_baseline_needs_min_count_to_be_trusted() -> None:
    v7, t7 = _history(95.0, 7)
    v8, t8 = _history(95.0, 8)
    values, times = _rows((v7, t7), (v8, t8), ([], []))
    base = bl.rolling_baselines(values, times, NOW)
    assert base.trusted.tolist() == [False, True, False]
    assert np.isnan(base.median[2])


def test_mad_is_robust_to_one_outlier() -> None:
    values = [[95, 96, 95, 96, 95, 96, 95, 70.0]]
    times = [[NOW - (10 - i) * D for i in range(8)]]
    base = bl.rolling_baselines(values, times, NOW, min_count=1)
    assert base.median[0] == pytest.approx(95.0)
    assert base.mad[0] < 2.0


@pytest.mark.parametrize(("drop", "alerts"), [(2.9, False), (3.0, True), (3.1, True)])
def test_spo2_drop_boundary(drop: float, alerts: bool) -> None:
    hv, ht = _history(96.0)
    values, times = _rows((hv + [96.0 - drop] * 2, [*ht, NOW - 3 * H, NOW - 1 * H]))
    base = bl.rolling_baselines(values, times, NOW)
    dev = bl.sustained_deviation(values, times, base, NOW, direction="below", delta=bl.SPO2_DROP_POINTS)
    assert dev.alert.tolist() == [alerts]
    assert dev.latest_value[0] == pytest.approx(96.0 - drop)


def test_one_low_reading_is_not_sustained_and_a_recovery_breaks_the_run() -> None:
    hv, ht = _history(96.0)
    one = ([*hv, 92.0], [*ht, NOW - H])
    recovered = ([*hv, 92.0, 92.0, 96.0], [*ht, NOW - 3 * H, NOW - 2 * H, NOW - H])
    two = ([*hv, 92.0, 93.0], [*ht, NOW - 3 * H, NOW - H])
    values, times = _rows(one, recovered, two)
    base = bl.rolling_baselines(values, times, NOW)
    dev = bl.sustained_deviation(values, times, base, NOW, direction="below", delta=3.0)
    assert dev.run_length.tolist() == [1, 0, 2]
    assert dev.alert.tolist() == [False, False, True]
    assert dev.run_start[2] == NOW - 3 * H


def test_untrusted_baseline_never_alerts() -> None:
    hv, ht = _history(96.0, 5)
    values, times = _rows(([*hv, 80.0, 80.0], [*ht, NOW - 2 * H, NOW - H]))
    base = bl.rolling_baselines(values, times, NOW)
    dev = bl.sustained_deviation(values, times, base, NOW, direction="below", delta=3.0)
    assert dev.run_length.tolist() == [2]
    assert dev.alert.tolist() == [False]


@pytest.mark.parametrize(("rise", "alerts"), [(0.9, False), (1.0, True)])
def test_temperature_rise_boundary(rise: float, alerts: bool) -> None:
    hv, ht = _history(36.6)
    values, times = _rows((hv + [36.6 + rise] * 2, [*ht, NOW - 2 * H, NOW - H]))
    base = bl.rolling_baselines(values, times, NOW)
    dev = bl.sustained_deviation(values, times, base, NOW, direction="above", delta=bl.TEMPERATURE_RISE_C)
    assert dev.alert.tolist() == [alerts]


def test_unsorted_input_is_sorted_by_time() -> None:
    hv, ht = _history(96.0)
    v = [92.0, *hv, 92.0]
    t = [NOW - H, *ht, NOW - 2 * H]
    values, times = _rows((v, t))
    base = bl.rolling_baselines(values, times, NOW)
    dev = bl.sustained_deviation(values, times, base, NOW, direction="below", delta=3.0)
    assert dev.alert.tolist() == [True]
    assert dev.latest_time[0] == NOW - H


def test_vectorised_rows_are_independent() -> None:
    rows = []
    for level in (90.0, 96.0, 99.0):
        hv, ht = _history(level)
        rows.append(([*hv, level - 3, level - 3], [*ht, NOW - 2 * H, NOW - H]))
    rows.append((_history(96.0)[0] + [95.0, 95.0], _history(96.0)[1] + [NOW - 2 * H, NOW - H]))
    values, times = _rows(*rows)
    base = bl.rolling_baselines(values, times, NOW)
    dev = bl.sustained_deviation(values, times, base, NOW, direction="below", delta=3.0)
    assert dev.alert.tolist() == [True, True, True, False]


@pytest.mark.parametrize(("latest", "alerts"), [(2.0, False), (3.0, True)])
def test_news2_rise_boundary(latest: float, alerts: bool) -> None:
    scores = [[1.0, 3.0, latest]]
    times = [[NOW - 20 * H, NOW - 10 * H, NOW - H]]
    rise = bl.news2_rise(scores, times, [[True, True, False]], NOW)
    assert rise.reference.tolist() == [1.0]
    assert rise.alert.tolist() == [alerts]


def test_news2_rise_ignores_partial_reference_and_old_sets() -> None:
    scores = [[0.0, 0.0, 4.0], [0.0, 3.0, 4.0]]
    times = [[NOW - 30 * H, NOW - 5 * H, NOW - H], [NOW - 5 * H, NOW - 3 * H, NOW - H]]
    complete = [[True, False, True], [False, True, True]]
    rise = bl.news2_rise(scores, times, complete, NOW)
    # row 0: the only complete earlier set is 30 h old -> no reference; row 1: reference is the complete 3
    assert np.isnan(rise.reference[0])
    assert rise.alert.tolist() == [False, False]
    assert rise.reference[1] == 3.0


def test_news2_rise_says_whether_the_newest_set_is_complete() -> None:
    scores = [[4.0, 2.0], [4.0, 6.0]]
    times = [[NOW - 5 * H, NOW - H], [NOW - 5 * H, NOW - H]]
    rise = bl.news2_rise(scores, times, [[True, False], [True, True]], NOW)
    assert rise.latest_complete.tolist() == [False, True]
    assert rise.alert.tolist() == [False, True]


def _usual(values: dict[str, list[float]], subscores: dict[str, list[float]] | None = None,
           n: int = 10) -> bl.UsualNews2:
    """One resident with ``n`` complete sets a day apart, with these values and subscores (each cycled)."""
    times = [[NOW - (11 - i) * D for i in range(n)]]

    def rows(columns: dict[str, list[float]]) -> dict[str, list[list[float]]]:
        return {name: [[seq[i % len(seq)] for i in range(n)]] for name, seq in columns.items()}

    return bl.usual_news2(rows(values), rows(subscores or {}), times, NOW)


def test_usual_news2_is_the_resident_s_own_value_range_and_needs_enough_sets() -> None:
    usual = _usual({"spo2": [94.0, 95.0, 96.0, 95.0, 94.0]}, {"consciousness": [3.0, 3.0, 0.0]})
    assert usual.low["spo2"][0] == pytest.approx(94.0) and usual.high["spo2"][0] == pytest.approx(96.0)
    assert usual.subscores["consciousness"].tolist() == [3.0]
    assert usual.trusted.tolist() == [True]
    assert _usual({"spo2": [95.0]}, n=7).trusted.tolist() == [False]  # fewer than 8 sets: not trusted
    # the last 24 h never count as usual (an illness developing now cannot become the baseline)
    recent = bl.usual_news2({"spo2": [[90.0] * 10]}, {}, [[NOW - i * H for i in range(10)]], NOW)
    assert recent.count.tolist() == [0] and np.isnan(recent.low["spo2"][0])


def test_at_usual_only_when_every_scoring_value_is_one_the_resident_commonly_has() -> None:
    usual = _usual({"spo2": [95.0, 94.0], "temperature": [36.0, 35.9], "pulse": [70.0, 75.0]},
                   {"consciousness": [0.0]})
    usual_set = {"spo2": 95.0, "temperature": 36.0, "pulse": 72.0}
    scores = {"spo2": 1, "temperature": 1, "pulse": 0, "consciousness": 0}
    assert bl.at_usual(scores, usual_set, usual, 0)
    assert bl.at_usual({**scores, "spo2": 0}, {**usual_set, "spo2": 97.0}, usual, 0)  # better than usual
    # a fever scores 1 like their usual cool 36.0 does, but it is not their usual picture
    assert not bl.at_usual(scores, {**usual_set, "temperature": 38.5}, usual, 0)
    # a pulse of 95 scores where their usual 70-75 does not
    assert not bl.at_usual({**scores, "pulse": 1}, {**usual_set, "pulse": 95.0}, usual, 0)
    assert not bl.at_usual({**scores, "consciousness": 3}, usual_set, usual, 0)  # new confusion
    assert not bl.at_usual({**scores, "pulse": None}, {**usual_set, "pulse": None}, usual, 0)  # not measured
    untrusted = _usual({"spo2": [95.0, 94.0], "temperature": [36.0], "pulse": [72.0]}, n=5)
    assert not bl.at_usual(scores, usual_set, untrusted, 0)


def test_vectorised_mad_equals_scipy_with_missing_values() -> None:
    from scipy.stats import median_abs_deviation

    rng = np.random.default_rng(5)
    values = rng.normal(96, 1.5, (40, 12)).round()
    values[rng.random(values.shape) < 0.3] = np.nan
    times = np.tile([NOW - (12 - i) * D for i in range(12)], (40, 1))
    base = bl.rolling_baselines(values, times, NOW, days=13, min_count=1)
    used = np.where((times >= NOW - 13 * D) & (times < NOW - D), values, np.nan)  # the last 24 h excluded
    expected = median_abs_deviation(used, axis=1, nan_policy="omit", scale="normal")
    assert np.allclose(base.mad, expected, equal_nan=True)


def test_nanpercentile_rows_is_numpys_nanpercentile() -> None:
    """The whole-array percentile used for the usual NEWS2 ranges gives exactly NumPy's figures (issue 19)."""
    import warnings

    rng = np.random.default_rng(19)
    for _ in range(200):
        rows, width = int(rng.integers(1, 30)), int(rng.integers(1, 50))
        a = np.round(rng.normal(37, 2, (rows, width)), int(rng.integers(0, 3)))
        a[rng.random((rows, width)) < rng.random()] = np.nan
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            expected = np.nanpercentile(a, bl.USUAL_PERCENTILES, axis=1)
        for want, got in zip(expected, bl.nanpercentile_rows(a, bl.USUAL_PERCENTILES), strict=True):
            assert np.array_equal(want, got, equal_nan=True)


@given(st.lists(st.lists(st.one_of(st.just(float("nan")), st.floats(-1e6, 1e6, allow_nan=False)), min_size=1,
                         max_size=12), min_size=1, max_size=6))
def test_nanmedian_rows_is_numpy_s_nanmedian(rows: list[list[float]]) -> None:
    """The sort-based median of padded rows gives exactly NumPy's nanmedian (NaN for a row with no value)."""
    grid = bl.pad_rows(rows)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # NumPy warns on an all-NaN row
        expected = np.nanmedian(grid, axis=1)
    assert np.array_equal(bl.nanmedian_rows(grid), expected, equal_nan=True)
