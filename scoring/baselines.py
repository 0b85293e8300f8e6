"""Personal baselines: what is normal for *this* resident, and sustained deviation from it.

Older people's "normal" differs: a resident with COPD may live at SpO2 93%, where the NEWS2 chart already scores
points every day. A fall of 3 points from their own level, or a temperature 1 °C above it, is an early sign the
chart cannot see. Everything here works on 2-D arrays (one row per resident, NaN-padded), so a whole site is
computed at once; times are float seconds since the epoch.

Baseline (docs/clinical-safety.md, H-BASE-01): median and MAD of the values in [now - 14 days, now - 24 h) - the
last day is excluded so that an illness developing now does not drag the baseline with it - trusted only from
``min_count`` values. Deviation (H-BASE-02, H-BASE-03): the most recent ``min_readings`` values in the last 24 h all at
least ``delta`` from the median in the worrying direction (one odd value is not an alert).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

HOUR: Final = 3600.0
DAY: Final = 86400.0
#: Float slack for the ">= delta" comparisons (3.0 below must alert, 2.9 below must not).
TOLERANCE: Final = 1e-9

#: MAD scaled to a normal SD: 1 / Phi^-1(3/4), as scipy.stats.median_abs_deviation(scale="normal").
MAD_NORMAL_SCALE: Final = 1.482602218505602
BASELINE_DAYS: Final = 14.0
BASELINE_EXCLUDE_HOURS: Final = 24.0
BASELINE_MIN_COUNT: Final = 8
SPO2_DROP_POINTS: Final = 3.0
TEMPERATURE_RISE_C: Final = 1.0
DEVIATION_MIN_READINGS: Final = 2
DEVIATION_RECENT_HOURS: Final = 24.0
NEWS2_RISE_POINTS: Final = 2
NEWS2_RISE_HOURS: Final = 24.0


@dataclass(frozen=True, eq=False)
class Baselines:
    """Per row: median, MAD (scaled to a normal SD), number of values used, and whether it is trusted."""

    median: NDArray[np.float64]
    mad: NDArray[np.float64]
    count: NDArray[np.int64]
    trusted: NDArray[np.bool_]


@dataclass(frozen=True, eq=False)
class Deviation:
    """Per row: how many of the latest recent values deviate in a row, and whether that is an alert."""

    run_length: NDArray[np.int64]  # trailing run of deviating values within the recent window
    alert: NDArray[np.bool_]  # trusted baseline and run_length >= min_readings
    latest_value: NDArray[np.float64]  # newest recent value (NaN if none)
    latest_time: NDArray[np.float64]
    run_start: NDArray[np.float64]  # time of the first value of the trailing run (NaN if no run)
    deviation: NDArray[np.float64]  # newest value's deviation in the worrying direction (positive = worse)


def _as_2d(name: str, values: ArrayLike) -> NDArray[np.float64]:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"{name} must be 2-D (one row per resident), got shape {array.shape}")
    return array


def _time_sorted(values: NDArray[np.float64],
                 times: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Rows sorted by time with missing (NaN time or value) entries last."""
    if values.shape != times.shape:
        raise ValueError(f"values {values.shape} and times {times.shape} must have the same shape")
    key = np.where(np.isnan(values), np.nan, times)
    order = np.argsort(key, axis=1, kind="stable")  # NaN sorts last
    return np.take_along_axis(values, order, axis=1), np.take_along_axis(key, order, axis=1)


def rolling_baselines(
    values: ArrayLike,
    times: ArrayLike,
    now: float,
    *,
    days: float = BASELINE_DAYS,
    exclude_hours: float = BASELINE_EXCLUDE_HOURS,
    min_count: int = BASELINE_MIN_COUNT,
) -> Baselines:
    """Robust baseline of each row from the values in [now - days, now - exclude_hours)."""
    v, t = _as_2d("values", values), _as_2d("times", times)
    if v.shape != t.shape:
        raise ValueError(f"values {v.shape} and times {t.shape} must have the same shape")
    with np.errstate(invalid="ignore"):
        used = (t >= now - days * DAY) & (t < now - exclude_hours * HOUR) & ~np.isnan(v)
    windowed = np.where(used, v, np.nan)
    count = used.sum(axis=1)
    median = np.full(v.shape[0], np.nan)
    mad = np.full(v.shape[0], np.nan)
    has = count > 0
    if has.any():
        median[has] = nanmedian_rows(windowed[has])
        # scipy's median_abs_deviation(scale="normal", nan_policy="omit"), vectorised (its NaN path loops per row)
        mad[has] = nanmedian_rows(np.abs(windowed[has] - median[has, None])) * MAD_NORMAL_SCALE
    return Baselines(median, mad, count.astype(np.int64), count >= min_count)


def _last_true(mask: NDArray[np.bool_]) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.intp],
                                                 NDArray[np.bool_]]:
    """Per row of a 2-D mask: (the column of its last True - -1 when it has none -, the row indices, that column
    clipped to 0 so as to be safe to index with, whether it has one). ``np.where(has, a[rows, safe], np.nan)`` is
    then each row's value there."""
    position = np.arange(mask.shape[1])[None, :]
    last = np.where(mask, position, -1).max(axis=1, initial=-1)
    return last, np.arange(mask.shape[0]), np.maximum(last, 0), last >= 0


def sustained_deviation(
    values: ArrayLike,
    times: ArrayLike,
    baselines: Baselines,
    now: float,
    *,
    direction: Literal["below", "above"],
    delta: float,
    min_readings: int = DEVIATION_MIN_READINGS,
    recent_hours: float = DEVIATION_RECENT_HOURS,
) -> Deviation:
    """Rows whose latest ``min_readings`` values (within ``recent_hours``) are all ``delta`` beyond baseline."""
    v, t = _time_sorted(_as_2d("values", values), _as_2d("times", times))
    sign = -1.0 if direction == "below" else 1.0
    with np.errstate(invalid="ignore"):
        recent = (t >= now - recent_hours * HOUR) & (t <= now) & ~np.isnan(v)
        deviation = sign * (v - baselines.median[:, None])
        meets = recent & (deviation >= delta - TOLERANCE)
    breaks = recent & ~meets
    position = np.arange(v.shape[1])[None, :]
    last_break = _last_true(breaks)[0]
    in_run = meets & (position > last_break[:, None])
    run_length = in_run.sum(axis=1).astype(np.int64)

    _, rows, safe, has_recent = _last_true(recent)
    latest_value = np.where(has_recent, v[rows, safe], np.nan)
    latest_time = np.where(has_recent, t[rows, safe], np.nan)
    latest_dev = np.where(has_recent, deviation[rows, safe], np.nan)
    first_in_run = np.where(in_run, position, v.shape[1]).min(axis=1, initial=v.shape[1])
    run_start = np.where(run_length > 0, t[rows, np.minimum(first_in_run, v.shape[1] - 1)], np.nan)
    alert = baselines.trusted & (run_length >= min_readings)
    return Deviation(run_length, alert, latest_value, latest_time, run_start, latest_dev)


@dataclass(frozen=True, eq=False)
class Rise:
    """Per row: the newest score, the lowest complete score in the window before it, and the rise."""

    latest: NDArray[np.float64]
    latest_time: NDArray[np.float64]
    reference: NDArray[np.float64]  # NaN when there is no complete earlier set in the window
    reference_time: NDArray[np.float64]
    rise: NDArray[np.float64]
    alert: NDArray[np.bool_]
    latest_complete: NDArray[np.bool_]  # the newest set is complete (only then can it show the score came down)


def news2_rise(
    scores: ArrayLike,
    times: ArrayLike,
    complete: ArrayLike,
    now: float,
    *,
    points: int = NEWS2_RISE_POINTS,
    hours: float = NEWS2_RISE_HOURS,
) -> Rise:
    """NEWS2 up by ``points`` or more versus the lowest *complete* score in the ``hours`` before the newest set.

    The newest set may be partial (its total can only rise as missing parameters are added, so a rise is real);
    the reference must be complete, or a partial set's low total would fake a rise.
    """
    raw_scores, raw_times = _as_2d("scores", scores), _as_2d("times", times)
    c_raw = np.broadcast_to(np.asarray(complete, dtype=bool), raw_scores.shape)
    key = np.where(np.isnan(raw_scores), np.nan, raw_times)
    order = np.argsort(key, axis=1, kind="stable")
    s, t, c = (np.take_along_axis(a, order, axis=1) for a in (raw_scores, key, c_raw))
    with np.errstate(invalid="ignore"):
        valid = ~np.isnan(s) & (t <= now)
    position = np.arange(s.shape[1])[None, :]
    last, rows, safe, has = _last_true(valid)
    latest = np.where(has, s[rows, safe], np.nan)
    latest_time = np.where(has, t[rows, safe], np.nan)
    with np.errstate(invalid="ignore"):
        window = valid & c & (position < last[:, None]) & (t >= latest_time[:, None] - hours * HOUR)
    masked = np.where(window, s, np.inf)
    ref_index = masked.argmin(axis=1)
    has_ref = window.any(axis=1)
    reference = np.where(has_ref, s[rows, ref_index], np.nan)
    reference_time = np.where(has_ref, t[rows, ref_index], np.nan)
    rise = latest - reference
    with np.errstate(invalid="ignore"):
        alert = has_ref & (rise >= points - TOLERANCE)
    latest_complete = has & c[rows, safe]
    return Rise(latest, latest_time, reference, reference_time, rise, alert, latest_complete)


#: A value the resident commonly has when stable: within the 10th-90th percentile of their own values.
USUAL_PERCENTILES: Final = (10.0, 90.0)


@dataclass(frozen=True, eq=False)
class UsualNews2:
    """Per row, from the resident's *complete* sets in the baseline window (RESTORE2: "know the resident's normal
    NEWS, the score when they are stable"): the range of values they commonly have for each numeric parameter
    (10th-90th percentile), the median subscore of the others (air or oxygen, consciousness), and whether there
    were enough sets to trust it."""

    low: dict[str, NDArray[np.float64]]
    high: dict[str, NDArray[np.float64]]
    subscores: dict[str, NDArray[np.float64]]
    count: NDArray[np.int64]
    trusted: NDArray[np.bool_]


def usual_news2(values: Mapping[str, ArrayLike], subscores: Mapping[str, ArrayLike], times: ArrayLike,
                now: float) -> UsualNews2:
    """``values[parameter]`` (numeric parameters), ``subscores[parameter]`` (the rest) and ``times`` are 2-D, one
    row per resident, one column per complete set (NaN-padded). Same window and trust rule as every baseline
    (H-BASE-01), so an illness developing now cannot become "usual"."""
    t = _as_2d("times", times)
    used_window = (t >= now - BASELINE_DAYS * DAY) & (t < now - BASELINE_EXCLUDE_HOURS * HOUR)
    count = used_window.sum(axis=1).astype(np.int64)
    low: dict[str, NDArray[np.float64]] = {}
    high: dict[str, NDArray[np.float64]] = {}
    for name, raw in values.items():
        windowed = np.where(used_window, _as_2d(name, raw), np.nan)
        low[name], high[name] = nanpercentile_rows(windowed, USUAL_PERCENTILES)
    medians = {name: rolling_baselines(raw, t, now).median for name, raw in subscores.items()}
    return UsualNews2(low, high, medians, count, count >= BASELINE_MIN_COUNT)


def nanmedian_rows(a: NDArray[np.float64]) -> NDArray[np.float64]:
    """``np.nanmedian(a, axis=1)`` (NaN for an all-NaN row) from one sort: NumPy's own goes through masked arrays
    for padded rows, several times slower. Same value: the middle one, or the mean of the two middle ones."""
    if a.shape[1] == 0:
        return np.full(a.shape[0], np.nan)
    ordered = np.sort(a, axis=1)  # NaN last
    n = (~np.isnan(a)).sum(axis=1)
    rows = np.arange(a.shape[0])
    low, high = ordered[rows, np.maximum((n - 1) // 2, 0)], ordered[rows, np.minimum(n // 2, a.shape[1] - 1)]
    with np.errstate(invalid="ignore"):
        return np.where(n > 0, (low + high) / 2, np.nan)


def nanpercentile_rows(a: NDArray[np.float64], qs: tuple[float, ...] | list[float]) -> list[NDArray[np.float64]]:
    """``np.nanpercentile(a, qs, axis=1)`` (method 'linear', NaN for an all-NaN row), as a few whole-array
    operations: NumPy's own goes row by row (``apply_along_axis``) once a row holds a NaN, which padded rows
    always do. Same interpolation, same rounding (NumPy's ``_lerp``)."""
    a = np.asarray(a, dtype=np.float64)
    ordered = np.sort(a, axis=1)  # NaN last
    n = (~np.isnan(a)).sum(axis=1)
    rows = np.arange(a.shape[0])
    out = []
    for q in qs:
        pos = (np.maximum(n, 1) - 1) * (q / 100.0)
        below = np.floor(pos).astype(np.int64)
        above = np.minimum(below + 1, np.maximum(n - 1, 0))
        t = pos - below
        lo, hi = ordered[rows, below], ordered[rows, above]
        diff = hi - lo
        value = np.where(t >= 0.5, hi - diff * (1 - t), lo + diff * t)
        out.append(np.where(n > 0, value, np.nan))
    return out


def at_usual(subscores: dict[str, int | None], values: dict[str, float | None], usual: UsualNews2, row: int) -> bool:
    """True when every parameter that scores in this set does so at a value the resident commonly has (within
    their own 10th-90th percentile; for air/oxygen and consciousness: no more than their usual subscore), on a
    trusted baseline. Values, not subscores, so a fever (38.5 °C, 1 point) is never mistaken for a resident's
    usual cool 36.0 °C (also 1 point)."""
    if not usual.trusted[row]:
        return False
    for name, points in subscores.items():
        if points is None:
            return False
        if points == 0:
            continue
        if name in usual.low:
            value = values.get(name)
            lo, hi = usual.low[name][row], usual.high[name][row]
            if value is None or np.isnan(lo) or not lo - TOLERANCE <= value <= hi + TOLERANCE:
                return False
        else:
            median = usual.subscores.get(name)
            if median is None or np.isnan(median[row]) or points > median[row] + TOLERANCE:
                return False
    return True


def pad_rows(rows: list[list[float]]) -> NDArray[np.float64]:
    """Ragged lists -> a NaN-padded 2-D array (at least one column)."""
    width = max((len(r) for r in rows), default=0) or 1
    out = np.full((len(rows), width), np.nan)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out
