"""Altair charts for the pages (pure: API data in, chart out). Colours come from ``carewatch.palette``; the NEWS2
band shading comes from the one Chart 1 definition in ``carewatch.news2_chart``, never from numbers typed here.
Times are shown in UK local time."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import altair as alt
import pandas as pd

from carewatch import palette
from carewatch.dashboard.client import LOCAL_TZ
from carewatch.news2_chart import BANDS, STEPS_PER_UNIT, spo2_table

BAND_WORDS = {0: "0 points (normal)", 1: "1 point", 2: "2 points", 3: "3 points"}


def news2_bands(parameter: str, scale2: bool = False) -> list[dict[str, Any]]:
    """Chart 1 rows for a parameter as shading rectangles: y0..y1 (half a chart step beyond each inclusive edge,
    None = open-ended) and the points a value there scores. Scale 2 shows the on-air rows."""
    table = spo2_table(2 if scale2 else 1) if parameter == "spo2" else parameter
    half = 0.5 / STEPS_PER_UNIT[parameter]
    out = []
    for band in BANDS[table]:
        if not band.applies(on_oxygen=False):
            continue
        out.append({"y0": None if band.low is None else float(band.low) - half,
                    "y1": None if band.high is None else float(band.high) + half,
                    "points": band.points, "band": f"{band.text}: {BAND_WORDS[band.points]}"})
    return out


def _local(values: Sequence[str | datetime]) -> pd.Series:
    return pd.to_datetime(pd.Series(list(values)), utc=True).dt.tz_convert(LOCAL_TZ).dt.tz_localize(None)


def _domain(bands: list[dict[str, Any]], values: Sequence[float], step: float) -> tuple[float, float]:
    """Every band edge with room around it (so the open-ended bands show), widened to the data."""
    edges = [e for b in bands for e in (b["y0"], b["y1"]) if e is not None]
    lo, hi = min(edges), max(edges)
    pad = max((hi - lo) * 0.15, 3 * step)
    lo, hi = lo - pad, hi + pad
    if values:
        lo, hi = min(lo, min(values) - pad / 2), max(hi, max(values) + pad / 2)
    return lo, hi


def vitals_chart(parameter: str, title: str, unit: str, readings: Sequence[Mapping[str, Any]],
                 observations: Sequence[Mapping[str, Any]], baseline: Mapping[str, Any] | None,
                 start: datetime, end: datetime, scale2: bool = False, height: int = 220) -> alt.LayerChart:
    """Device readings (line) and observation sets (large diamonds) over NEWS2 band shading, with the
    resident's own baseline (solid blue rule) and the personal-alert threshold (dashed blue rule)."""
    bands = news2_bands(parameter, scale2)
    values = [float(p["value"]) for p in readings] + [float(o[parameter]) for o in observations
                                                      if o.get(parameter) is not None]
    if baseline and baseline.get("median") is not None:
        values.append(float(baseline["median"]))
    lo, hi = _domain(bands, values, 1 / STEPS_PER_UNIT[parameter])
    t0, t1 = _local([start, end])
    band_df = pd.DataFrame([{**b, "y0": lo if b["y0"] is None else max(b["y0"], lo),
                             "y1": hi if b["y1"] is None else min(b["y1"], hi), "t0": t0, "t1": t1} for b in bands])
    band_df = band_df[band_df["y1"] > band_df["y0"]]
    y_scale = alt.Scale(domain=[lo, hi], nice=False, zero=False)
    x = alt.X("t:T", title="UK time", scale=alt.Scale(domain=[t0.isoformat(), t1.isoformat()]))
    shading = alt.Chart(band_df).mark_rect(opacity=1).encode(
        x=alt.X("t0:T", scale=alt.Scale(domain=[t0.isoformat(), t1.isoformat()]), title="UK time"), x2="t1:T",
        y=alt.Y("y0:Q", scale=y_scale, title=f"{title} ({unit})"), y2="y1:Q",
        color=alt.Color("points:O", title="NEWS2 points here",
                        scale=alt.Scale(domain=[0, 1, 2, 3], range=[palette.BAND_FILL[i] for i in range(4)]),
                        legend=None),
        tooltip=[alt.Tooltip("band:N", title="NEWS2 band")])
    layers: list[alt.Chart] = [shading]
    if readings:
        rdf = pd.DataFrame({"t": _local([p["t"] for p in readings]), "value": [p["value"] for p in readings],
                            "source": "device"})
        layers.append(alt.Chart(rdf).mark_line(color=palette.INK, strokeWidth=2, point=alt.OverlayMarkDef(
            color=palette.INK, size=18)).encode(x=x, y=alt.Y("value:Q", scale=y_scale),
                                                 tooltip=[alt.Tooltip("t:T", title="time", format="%d %b %H:%M"),
                                                          alt.Tooltip("value:Q", title=unit)]))
    obs = [o for o in observations if o.get(parameter) is not None]
    if obs:
        odf = pd.DataFrame({"t": _local([o["taken_at"] for o in obs]), "value": [o[parameter] for o in obs],
                            "by": [o.get("recorded_by", "") for o in obs]})
        layers.append(alt.Chart(odf).mark_point(shape="diamond", size=140, filled=True, color=palette.INK,
                                                stroke=palette.PAGE, strokeWidth=1).encode(
            x=x, y=alt.Y("value:Q", scale=y_scale),
            tooltip=[alt.Tooltip("t:T", title="observation", format="%d %b %H:%M"),
                     alt.Tooltip("value:Q", title=unit), alt.Tooltip("by:N", title="recorded by")]))
    if baseline and baseline.get("median") is not None:
        rules = [{"y": baseline["median"], "what": f"usual for this resident: {baseline['median']:g} {unit}",
                  "dash": "usual"}]
        if baseline.get("alert_threshold") is not None and baseline.get("trusted"):
            threshold = baseline["alert_threshold"]
            rules.append({"y": threshold, "what": f"personal alert line: {threshold:g}", "dash": "alert line"})
        layers.append(alt.Chart(pd.DataFrame(rules)).mark_rule(color=palette.BASELINE, strokeWidth=2).encode(
            y=alt.Y("y:Q", scale=y_scale),
            strokeDash=alt.StrokeDash("dash:N", title="Baseline", scale=alt.Scale(
                domain=["usual", "alert line"], range=[[1, 0], [6, 4]]), legend=None),
            tooltip=[alt.Tooltip("what:N", title="line")]))
    return alt.layer(*layers).properties(height=height).resolve_scale(color="independent")


def heatmap_chart(heatmap: Mapping[str, Any], height_per_day: int = 14) -> alt.Chart:
    """Activity events per hour (x) and day (y); the night (00:00-06:00) is outlined in the caption."""
    days = [short_date(d) for d in heatmap["days"]]
    rows = [{"day": d, "hour": h, "events": c} for d, counts in zip(days, heatmap["counts"], strict=True)
            for h, c in enumerate(counts)]
    df = pd.DataFrame(rows)
    return alt.Chart(df).mark_rect(stroke=palette.PAGE, strokeWidth=0.5).encode(
        x=alt.X("hour:O", title="Hour of the day (UK time)"),
        y=alt.Y("day:O", title="Day", sort=days),
        color=alt.Color("events:Q", title="Activity events",
                        scale=alt.Scale(range=[palette.HEAT_LOW, palette.HEAT_HIGH])),
        tooltip=[alt.Tooltip("day:O"), alt.Tooltip("hour:O"), alt.Tooltip("events:Q")],
    ).properties(height=max(180, height_per_day * len(days)), title="Activity by hour and day")


def band_key() -> str:
    """The key to the band shading and lines of ``vitals_chart``, as HTML with words beside every colour."""
    swatches = "".join(
        f'<span style="display:inline-block;margin-right:0.8rem"><span style="display:inline-block;width:1.2rem;'
        f'height:0.9rem;border:1px solid {palette.INK};background:{palette.BAND_FILL[p]};vertical-align:middle">'
        f"</span> {BAND_WORDS[p]}</span>" for p in range(4))
    return (f"<div>NEWS2 points a value scores: {swatches}</div><div>Black line: device readings; black diamonds: "
            f"observations taken by staff; <span style='color:{palette.BASELINE}'><b>solid blue line</b></span>: this "
            f"resident's usual value; <span style='color:{palette.BASELINE}'><b>dashed blue line</b></span>: where a "
            "personal alert starts.</div>")


def nights_chart(nights: Sequence[Mapping[str, Any]]) -> alt.Chart:
    """One square per night, coloured by class with the class word in the legend and tooltip."""
    df = pd.DataFrame([{"night": short_date(n["night"]), "class": palette.NIGHT_WORDS[n["activity"]],
                        "bathroom": n["bathroom_visits"], "other": n["other_activity"], "one": 1} for n in nights])
    words = list(palette.NIGHT_WORDS.values())
    return alt.Chart(df).mark_bar(stroke=palette.PAGE, strokeWidth=1).encode(
        x=alt.X("night:O", title="Night (00:00-06:00)", sort=list(df["night"]),
                axis=alt.Axis(labelAngle=0, labelOverlap=True)),
        y=alt.Y("one:Q", axis=None, title=None, scale=alt.Scale(domain=[0, 1])),
        color=alt.Color("class:N", title="Night", scale=alt.Scale(
            domain=words, range=[palette.NIGHT[k].background for k in palette.NIGHT_WORDS]),
            legend=alt.Legend(orient="right")),
        tooltip=[alt.Tooltip("night:O"), alt.Tooltip("class:N"), alt.Tooltip("bathroom:Q", title="bathroom visits"),
                 alt.Tooltip("other:Q", title="other activity")],
    ).properties(height=200, title="Night by night")


def short_date(value: str) -> str:
    """'2024-03-05' -> '5 Mar' (axis labels that leave room for the bars)."""
    day = pd.Timestamp(value)
    return f"{day.day} {day:%b}"


def bar_chart(rows: Sequence[Mapping[str, Any]], x: str, y: str, x_title: str, y_title: str, title: str,
              colour: str = palette.BASELINE) -> alt.Chart:
    """One bar per date (``x`` holds ISO dates), oldest on the left."""
    df = pd.DataFrame(list(rows))
    order = [short_date(v) for v in df[x]] if len(df) else []
    if len(df):
        df["label"] = order
    return alt.Chart(df).mark_bar(color=colour).encode(
        x=alt.X("label:O", title=x_title, sort=order, axis=alt.Axis(labelAngle=0, labelOverlap=True)),
        y=alt.Y(f"{y}:Q", title=y_title),
        tooltip=[alt.Tooltip(f"{x}:O", title=x_title), alt.Tooltip(f"{y}:Q", title=y_title)],
    ).properties(height=220, title=title)


def temperature_chart(rooms: Sequence[Mapping[str, Any]]) -> alt.LayerChart | alt.FacetChart:
    """Lowest to highest temperature per room (bar) with the average (tick), against 18 °C and 26 °C lines."""
    df = pd.DataFrame(list(rooms))
    base = alt.Chart(df).encode(y=alt.Y("room:N", title="Room"))
    span = base.mark_bar(color=palette.BAND_FILL[2], stroke=palette.INK, strokeWidth=1).encode(
        x=alt.X("min:Q", title="°C", scale=alt.Scale(zero=False)), x2="max:Q",
        tooltip=["room", "min", "mean", "max", "hours_below_18", "hours_above_26"])
    mean = base.mark_tick(color=palette.INK, thickness=3, size=18).encode(x="mean:Q")
    limits = alt.Chart(pd.DataFrame({"x": [18, 26], "what": ["18 °C: cold below", "26 °C: hot above"]})).mark_rule(
        color=palette.SEVERITY["high"].background, strokeDash=[4, 3]).encode(x="x:Q", tooltip=["what"])
    return alt.layer(span, mean, limits).properties(height=max(140, 44 * len(df)), title="Room temperature")


def adoption_chart(daily: Sequence[Mapping[str, Any]], names: Mapping[str, str]) -> alt.Chart:
    df = pd.DataFrame([{**d, "home": names.get(d["site_id"], d["site_id"])} for d in daily
                       if d.get("per_resident") is not None])
    return alt.Chart(df).mark_line(point=True, strokeWidth=2).encode(
        x=alt.X("day:T", title="Day"), y=alt.Y("per_resident:Q", title="Staff observations per resident"),
        color=alt.Color("home:N", title="Home"),
        strokeDash=alt.StrokeDash("home:N", title="Home"),  # lines differ by dash too, not colour alone
        tooltip=["home", alt.Tooltip("day:T", format="%d %b"), "staff_observations", "per_resident"],
    ).properties(height=260, title="Staff observations per resident per day")
