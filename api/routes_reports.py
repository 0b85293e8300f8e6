"""Reports behind the dashboard's pictures: a resident's personal baselines, the care-package review with its
benefit calculator and CSV/PDF exports, and adoption per care home.

Scope and audit go through ``deps.Ctx`` like every other route: the household routes reuse the behaviour report
route (which checks the household and notes the read) and note the export on top.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import Response
from psycopg.rows import dict_row
from pydantic import BaseModel, Field

from carewatch.api import scope
from carewatch.api.adoption import AdoptionReport, AlertTiming, DayCount, adoption_report
from carewatch.api.deps import Ctx, ReportContext, ReportRoute
from carewatch.api.report_pdf import render_pdf
from carewatch.api.rightsizing import RightsizingReport, benefit, evidence_csv
from carewatch.api.routes_households import household_behaviour
from carewatch.api.sbard import UNITS as SPOKEN_UNITS
from carewatch.api.schemas import PARAMETER_METRIC, News2Parameter
from carewatch.api.scope import Permission
from carewatch.db import one
from carewatch.scoring import baselines as bl
from carewatch.scoring.engine import ACTOR as SCORER
from carewatch.scoring.rules import LOCAL_TZ
from carewatch.wire import METRICS

router = APIRouter(tags=["reports"], route_class=ReportRoute)  # its reports: see ReportRoute

Days = Annotated[int, Query(ge=1, le=90, description="Nights/days of evidence, ending with the last complete night.")]
HoursReleased = Annotated[float | None, Query(ge=0, le=168, allow_inf_nan=False,
                                              description="Care hours a week no longer needed (default: the whole "
                                                          "current package).")]
HourlyRate = Annotated[float | None, Query(ge=0, le=1000, allow_inf_nan=False,
                                           description="£ per hour (default: the package's recorded rate).")]
Caseload = Annotated[int | None, Query(ge=1, le=100_000, description="People to repeat the calculation for "
                                       "(default: households you can see on the same package).")]


# ------------------------------------------------------------------------------------------------------------
# Personal baselines
# ------------------------------------------------------------------------------------------------------------
class MetricBaseline(BaseModel):
    parameter: News2Parameter
    metric: str
    unit: str = Field(description="The wire unit (UCUM), e.g. 'Cel'.")
    display_unit: str = Field(description="The unit as people read it, e.g. '°C'.")
    median: float | None = Field(description="This resident's usual value (median of the window).")
    spread: float | None = Field(description="Median absolute deviation, scaled like a standard deviation.")
    count: int
    trusted: bool = Field(description=f"At least {bl.BASELINE_MIN_COUNT} values: alerts use it only then.")
    alert_direction: Literal["below", "above"] | None = None
    alert_threshold: float | None = Field(default=None, description="A sustained value past this raises an alert.")
    meaning: str


class ResidentBaselines(BaseModel):
    resident_id: str
    generated_at: datetime
    window_start: datetime
    window_end: datetime
    baselines: list[MetricBaseline]


#: The deviations the alert engine acts on (carewatch.scoring.engine); other parameters are shown for context.
ALERTED: dict[News2Parameter, tuple[Literal["below", "above"], float]] = {
    News2Parameter.SPO2: ("below", bl.SPO2_DROP_POINTS),
    News2Parameter.TEMPERATURE: ("above", bl.TEMPERATURE_RISE_C),
}
PLAIN = {News2Parameter.RESPIRATION_RATE: "breathing rate", News2Parameter.SPO2: "oxygen level (SpO2)",
         News2Parameter.SYSTOLIC_BP: "blood pressure (systolic)", News2Parameter.PULSE: "pulse",
         News2Parameter.TEMPERATURE: "temperature"}


def _baseline_meaning(p: News2Parameter, unit: str, median: float | None, count: int, trusted: bool,
                      threshold: float | None) -> str:
    name = PLAIN[p]
    if median is None:
        return f"No usual {name} yet: no observations in the last {bl.BASELINE_DAYS:g} days (before the last day)."
    text = f"Usual {name}: {median:g} {unit} (from {count} observation{'s' if count != 1 else ''})."
    if not trusted:
        return text + f" Not yet reliable: needs at least {bl.BASELINE_MIN_COUNT}."
    if threshold is not None:
        direction, delta = ALERTED[p]
        text += f" An alert is raised when it stays {delta:g} {unit} {direction} this ({threshold:g} {unit})."
    return text


@router.get("/residents/{resident_id}/baselines", response_model=ResidentBaselines,
            summary="The resident's own usual vital signs (the baselines personal alerts compare against)")
def resident_baselines(ctx: ReportContext, resident_id: str) -> ResidentBaselines:
    """Same data and rule as the alert engine: observation sets of the last 14 days excluding the last 24 h
    (SpO2 only when on air), median and scaled MAD per parameter (``carewatch.scoring.baselines``)."""
    ctx.resident(resident_id, clinical=True, view="baselines")
    now = datetime.now(UTC)
    start = now - timedelta(days=bl.BASELINE_DAYS)
    params = list(PARAMETER_METRIC)
    with ctx.conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            """SELECT taken_at, on_oxygen, respiration_rate, spo2, systolic_bp, pulse, temperature
               FROM observation_sets WHERE resident_id = %s AND taken_at >= %s AND taken_at <= %s
               ORDER BY taken_at""", (resident_id, start, now)).fetchall()
    values = [[float(r[p.value]) for r in rows if r[p.value] is not None
               and not (p is News2Parameter.SPO2 and r["on_oxygen"])] for p in params]
    times = [[r["taken_at"].timestamp() for r in rows if r[p.value] is not None
              and not (p is News2Parameter.SPO2 and r["on_oxygen"])] for p in params]
    base = bl.rolling_baselines(bl.pad_rows(values), bl.pad_rows(times), now.timestamp())
    out = []
    for i, p in enumerate(params):
        metric = PARAMETER_METRIC[p]
        unit = SPOKEN_UNITS[p.value]
        median = None if base.median[i] != base.median[i] else round(float(base.median[i]), 1)
        spread = None if base.mad[i] != base.mad[i] else round(float(base.mad[i]), 2)
        count, trusted = int(base.count[i]), bool(base.trusted[i])
        direction, threshold = None, None
        if p in ALERTED and median is not None:
            direction, delta = ALERTED[p]
            threshold = round(median - delta if direction == "below" else median + delta, 1)
        out.append(MetricBaseline(parameter=p, metric=metric.value, unit=METRICS[metric].unit, display_unit=unit,
                                  median=median, spread=spread,
                                  count=count, trusted=trusted, alert_direction=direction, alert_threshold=threshold,
                                  meaning=_baseline_meaning(p, unit, median, count, trusted, threshold)))
    return ResidentBaselines(resident_id=resident_id, generated_at=now, window_start=start,
                             window_end=now - timedelta(hours=bl.BASELINE_EXCLUDE_HOURS), baselines=out)


# ------------------------------------------------------------------------------------------------------------
# Care-package review (rightsizing)
# ------------------------------------------------------------------------------------------------------------
def _caseload(ctx: Ctx, package: str | None) -> tuple[int, str]:
    """Households the caller can see on the same package (a count only: no other household is named)."""
    if not package:
        return 1, "no package recorded: this household only"
    with ctx.conn.cursor() as cur:
        (count,) = one(cur.execute(
            f"""SELECT count(*) FROM sites s WHERE {scope.site_predicate(ctx.principal)}
                  AND s.kind = 'household' AND s.care_package = %(package)s""",
            {**ctx.params, "package": package}))
    return max(int(count), 1), f"households you review with {package}"


def build_rightsizing(ctx: Ctx, site_id: str, days: int, hours_released: float | None, hourly_rate: float | None,
                      caseload: int | None) -> RightsizingReport:
    report = household_behaviour(ctx, site_id, days)  # scope check and audit note happen here
    package = report.care_package
    hours = hours_released if hours_released is not None else package.hours_per_week
    rate = hourly_rate if hourly_rate is not None else package.hourly_rate_gbp
    if hours is None or rate is None:
        missing = "hours a week" if hours is None else "hourly rate"
        return RightsizingReport(report=report, benefit=None,
                                 note=f"No benefit figure: the {missing} of the care package is not recorded; "
                                      "enter it to calculate.")
    count, basis = (caseload, "the number you entered") if caseload is not None else _caseload(
        ctx, package.description)
    return RightsizingReport(report=report, benefit=benefit(hours, rate, count, basis))


@router.get("/households/{site_id}/rightsizing", response_model=RightsizingReport,
            summary="Care-package review: the behaviour evidence with the benefit calculator")
def household_rightsizing(ctx: ReportContext, site_id: str, days: Days = 28,
                          hours_released: HoursReleased = None, hourly_rate: HourlyRate = None,
                          caseload: Caseload = None) -> RightsizingReport:
    return build_rightsizing(ctx, site_id, days, hours_released, hourly_rate, caseload)


def _filename(site_id: str, report: RightsizingReport, ext: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in site_id)
    return f"carewatch-review-{safe}-{report.report.start:%Y%m%d}-{report.report.end:%Y%m%d}.{ext}"


@router.get("/households/{site_id}/report.csv", summary="The evidence as CSV (one row per night/day)",
            response_class=Response, responses={200: {"content": {"text/csv": {}}}})
def household_report_csv(ctx: ReportContext, site_id: str, days: Days = 28) -> Response:
    data = build_rightsizing(ctx, site_id, days, None, None, None)
    ctx.note("export", "household", site_id, format="csv", days=days)
    return Response(evidence_csv(data.report), media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{_filename(site_id, data, "csv")}"'})


@router.get("/households/{site_id}/report.pdf", summary="The care-package review as a PDF with the charts",
            response_class=Response, responses={200: {"content": {"application/pdf": {}}}})
def household_report_pdf(ctx: ReportContext, site_id: str, days: Days = 28,
                         hours_released: HoursReleased = None, hourly_rate: HourlyRate = None,
                         caseload: Caseload = None) -> Response:
    data = build_rightsizing(ctx, site_id, days, hours_released, hourly_rate, caseload)
    ctx.note("export", "household", site_id, format="pdf", days=days)
    return Response(render_pdf(data, datetime.now(UTC)), media_type="application/pdf",
                    headers={"Content-Disposition": f'attachment; filename="{_filename(site_id, data, "pdf")}"'})


# ------------------------------------------------------------------------------------------------------------
# Adoption
# ------------------------------------------------------------------------------------------------------------
@router.get("/reports/adoption", response_model=AdoptionReport,
            summary="Use per care home: observations per resident per day, alert response times, dropping use "
                    "(manager, admin)")
def adoption(ctx: ReportContext,
             days: Annotated[int, Query(ge=1, le=90, description="Days to cover, ending today.")] = 28,
             site: str | None = None) -> AdoptionReport:
    ctx.require(Permission.READ_ADOPTION)
    now = datetime.now(UTC)
    end: date = now.astimezone(LOCAL_TZ).date()
    start = end - timedelta(days=days - 1)
    since = datetime.combine(start, time(0), tzinfo=LOCAL_TZ)
    values = {**ctx.params, "site": site, "since": since, "now": now, "tz": "Europe/London", "scorer": SCORER}
    with ctx.conn.cursor(row_factory=dict_row) as cur:
        homes = cur.execute(
            f"""SELECT s.site_id, s.name,
                       (SELECT count(*) FROM residents r WHERE r.site_id = s.site_id AND r.monitoring = 'active'
                          AND NOT r.practice)
                         AS residents
                FROM sites s WHERE {scope.config_predicate(ctx.principal, 's.site_id')} AND s.kind = 'care_home'
                  AND (%(site)s::text IS NULL OR s.site_id = %(site)s)""", values).fetchall()
        values["ids"] = [h["site_id"] for h in homes]
        counts = cur.execute(
            f"""SELECT site_id, (taken_at AT TIME ZONE %(tz)s)::date AS day,
                      count(*) FILTER (WHERE source <> 'device') AS staff,
                      count(*) FILTER (WHERE source = 'device') AS device
               FROM observation_sets o WHERE site_id = ANY(%(ids)s) AND taken_at >= %(since)s AND taken_at <= %(now)s
                 AND {scope.real_resident('o.resident_id')}
               GROUP BY 1, 2""", values).fetchall()
        alerts = cur.execute(
            f"""SELECT a.site_id, a.opened_at, a.acknowledged_at, a.status = 'resolved' AS resolved,
                      (SELECT min(e.at) FROM alert_events e WHERE e.alert_id = a.alert_id
                         AND e.action IN ('escalated', 'resolved') AND e.actor <> %(scorer)s) AS responded_at
               FROM alerts a WHERE a.site_id = ANY(%(ids)s) AND a.opened_at >= %(since)s
                 AND a.severity <> 'info' AND {scope.real_subject('a')}""", values).fetchall()
    ctx.note("read", "site", None, view="adoption", ids=values["ids"])
    return adoption_report(
        {h["site_id"]: (h["name"], int(h["residents"])) for h in homes},
        [DayCount(c["site_id"], c["day"], int(c["staff"]), int(c["device"])) for c in counts],
        [AlertTiming(a["site_id"], a["opened_at"], a["acknowledged_at"], a["responded_at"], a["resolved"])
         for a in alerts],
        start=start, end=end)
