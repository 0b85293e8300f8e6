"""SBARD (Situation, Background, Assessment, Recommendation, Decision): the handover a carer reads out on the
phone to a GP, NHS 111 or 999. Pure functions over rows already loaded (and scope-checked) by the route.

The wording is short, factual and in the order a call handler asks for it. The recommendation comes from
``carewatch.scoring.clinical_response`` (the one place NEWS2 actions are worded); the decision section is
what was agreed on earlier calls, plus a prompt to record this call's outcome.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import BaseModel, Field

from carewatch.scoring.clinical_response import PLAIN_NAMES, Risk, clinical_response

UNITS = {"respiration_rate": "breaths/min", "spo2": "%", "systolic_bp": "mmHg", "pulse": "beats/min",
         "temperature": "°C"}
SOFT_SIGN_WORDS = {
    "new_confusion": "new confusion", "not_eating_drinking": "not eating or drinking",
    "reduced_mobility": "less mobile than usual", "behaviour_change": "behaviour has changed",
    "not_themselves": "'not themselves'", "new_pain": "new pain", "reduced_urine": "passing less urine",
    "skin_change": "skin change (colour, mottling, new wound)", "other": "other concern (see note)",
}
#: Times are read out in UK local time (clocks in the home), not UTC.
LOCAL_TZ = ZoneInfo("Europe/London")
ACVPU = {"A": "alert", "C": "new confusion", "V": "responds to voice only", "P": "responds to pain only",
         "U": "unresponsive"}


class TrendPoint(BaseModel):
    taken_at: datetime
    score: int
    risk: str
    complete: bool


class Assessment(BaseModel):
    news2_score: int | None
    news2_risk: str | None
    news2_complete: bool | None
    taken_at: datetime | None
    observations: dict[str, str] = Field(description="Parameter -> value as said on the phone.")
    trend: list[TrendPoint] = Field(description="Recent scores, oldest first.")
    trend_summary: str
    soft_signs: list[str]
    latest_device_vitals: dict[str, str]
    text: str


class Decision(BaseModel):
    previous: list[str] = Field(description="Escalations and outcomes already recorded on the open alerts.")
    prompt: str


class Sbard(BaseModel):
    resident_id: str
    generated_at: datetime
    situation: str
    background: str
    assessment: Assessment
    recommendation: str
    decision: Decision


def _age(dob: date, today: date) -> int:
    return today.year - dob.year - ((today.month, today.day) < (dob.month, dob.day))


def _fmt(value: float) -> str:
    return f"{value:.1f}" if value != int(value) else f"{int(value)}"


def _local(at: datetime) -> datetime:
    return at.astimezone(LOCAL_TZ)


def _when(at: datetime, now: datetime) -> str:
    at_local = _local(at)
    minutes = int((now - at).total_seconds() // 60)
    if minutes < 90:
        return f"{at_local:%H:%M} ({max(minutes, 0)} min ago)"
    return f"{at_local:%d %b %H:%M}"


def describe_observations(obs: dict[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name in ("respiration_rate", "spo2", "systolic_bp", "pulse", "temperature"):
        if obs.get(name) is not None:
            out[PLAIN_NAMES.get(name, name)] = f"{_fmt(obs[name])} {UNITS[name]}"
    out["air or oxygen"] = "on oxygen" if obs.get("on_oxygen") else "on air"
    if obs.get("consciousness"):
        out[PLAIN_NAMES["consciousness"]] = ACVPU.get(obs["consciousness"], obs["consciousness"])
    if obs.get("spo2_scale") == 2:
        out["oxygen target"] = "Scale 2 (target 88-92%)"
    return out


def trend_summary(points: Sequence[TrendPoint]) -> str:
    if not points:
        return "No NEWS2 scores recorded."
    if len(points) == 1:
        return f"One score so far: {points[0].score} at {_local(points[0].taken_at):%H:%M}."
    series = ", ".join(f"{p.score} at {_local(p.taken_at):%H:%M}" for p in points)
    first, last = points[0].score, points[-1].score
    direction = "rising" if last > first else "falling" if last < first else "steady"
    return f"NEWS2 {series}: {direction}."


def build_sbard(
    resident: dict[str, Any],
    *,
    observations: Sequence[dict[str, Any]],
    alerts: Sequence[dict[str, Any]],
    events: Sequence[dict[str, Any]],
    latest: Sequence[dict[str, Any]],
    practice_name: str | None,
    now: datetime,
    incidents: Sequence[dict[str, Any]] = (),
    incident_events: Sequence[dict[str, Any]] = (),
) -> Sbard:
    """The SBARD for one resident. ``observations`` newest first; ``alerts`` the open ones; ``incidents`` the open
    ones (each with its ``components``): the concern is said once per incident, headline first (H-INC-01)."""
    name = resident["display_name"]
    age = _age(resident["date_of_birth"], now.date())
    nhs = resident.get("nhs_number")
    nhs_words = f"NHS number {nhs[:3]} {nhs[3:6]} {nhs[6:]}" if nhs else "NHS number not recorded"
    last = observations[0] if observations else None
    if incidents:
        concerns = list(dict.fromkeys(
            [i["headline"] for i in incidents]
            + [c["reason"] for i in incidents for c in i.get("components", ()) if c["reason"] != i["headline"]]))
    else:
        concerns = [a["reason"] for a in alerts]
    soft = [SOFT_SIGN_WORDS.get(s, s) for s in (last.get("soft_signs") or [])] if last else []

    # S
    where = resident.get("site_name") or resident["site_id"]
    situation = f"I am calling from {where} about {name}, aged {age}, {nhs_words}."
    if last:
        partial = "" if last["complete"] else " (incomplete: not every observation was taken)"
        situation += (f" Their NEWS2 score is {last['score']}{partial}, {last['risk']} risk, "
                      f"taken {_when(last['taken_at'], now)}.")
    else:
        situation += " No NEWS2 observations are recorded."
    if concerns:
        situation += " I am concerned because: " + "; ".join(concerns[:3]) + "."
    elif soft:
        situation += " I am concerned because staff noticed: " + ", ".join(soft) + "."

    # B
    background = [f"{name} lives at {where}"
                  + (" (their own home, with support)." if resident.get("site_kind") == "household" else ".")]
    background.append(f"Registered GP practice: {practice_name or resident.get('gp_practice') or 'not recorded'}.")
    if resident.get("baseline_confused"):
        background.append("They are usually confused (for example dementia): this is their normal.")
    if resident.get("scale2"):
        background.append(f"They are on SpO2 Scale 2 (target 88-92%), set by {resident.get('scale2_set_by')}: "
                          f"{resident.get('scale2_reason')}.")
    if incidents:
        parts = sum(len(i.get("components", ())) for i in incidents)
        background.append(f"One incident with {parts} part{'s' if parts != 1 else ''} is open."
                          if len(incidents) == 1 else f"{len(incidents)} incidents are open.")
    elif len(alerts) > len(concerns[:3]):
        background.append(f"{len(alerts)} alerts are open.")
    background.append("Check their care plan for a ReSPECT form or advance care plan before the call.")

    # A
    points = [TrendPoint(taken_at=o["taken_at"], score=o["score"], risk=o["risk"], complete=o["complete"])
              for o in reversed(observations)]
    described = describe_observations(last) if last else {}
    device = {
        r["metric"]: f"{_fmt(r['value'])} at {_local(r['measured_at']):%H:%M} ({r['device_id']})"
        for r in latest if last is None or r["measured_at"] > last["taken_at"]
    }
    assessment_text = ("Observations: " + ", ".join(f"{k} {v}" for k, v in described.items()) + ". "
                       if described else "No observations recorded. ")
    assessment_text += trend_summary(points)
    if soft:
        assessment_text += " Soft signs: " + ", ".join(soft) + "."
    if last and last.get("note"):
        assessment_text += f" Staff note: {last['note']}"
    assessment = Assessment(
        news2_score=last["score"] if last else None, news2_risk=last["risk"] if last else None,
        news2_complete=last["complete"] if last else None, taken_at=last["taken_at"] if last else None,
        observations=described, trend=points, trend_summary=trend_summary(points), soft_signs=soft,
        latest_device_vitals=device, text=assessment_text)

    # R
    if last:
        response = clinical_response(Risk(last["risk"]), last["score"], tuple(last.get("missing") or ()))
        recommendation = response.action
    else:
        recommendation = "Take a full set of observations now (breathing, oxygen, blood pressure, pulse, " \
                         "alertness, temperature) and score NEWS2 before the call if you safely can."
    if incidents:
        recommendation += " Alert advice: " + " ".join(dict.fromkeys(i["action"] for i in incidents[:3]))
    elif alerts:
        recommendation += " Alert advice: " + " ".join(dict.fromkeys(a["action"] for a in alerts[:3]))

    # D
    previous = [f"{_local(e['at']):%d %b %H:%M} {e['actor']}: {e['action']}"
                + (f" ({e['outcome']})" if e.get("outcome") else "")
                + (f" - {e['comment']}" if e.get("comment") else "")
                for e in sorted([*events, *incident_events], key=lambda e: e["at"])
                if e["action"] in ("escalated", "commented", "acknowledged", "outcome")
                and not (e.get("comment") or "").startswith("with incident ")]
    decision = Decision(previous=previous, prompt=(
        "Record who you spoke to, what was agreed (visit, advice, 999, admission), and when to check again; "
        + ("then record that outcome on the incident." if incidents else "then escalate the alert with that outcome.")))
    return Sbard(resident_id=resident["resident_id"], generated_at=now, situation=situation,
                 background=" ".join(background), assessment=assessment, recommendation=recommendation,
                 decision=decision)


def render_text(report: Sbard) -> str:
    """Plain text, one heading per letter, ready to read out."""
    lines = [
        f"SBARD for {report.resident_id} - {_local(report.generated_at):%d %b %Y %H:%M %Z}",
        "",
        "SITUATION", report.situation, "",
        "BACKGROUND", report.background, "",
        "ASSESSMENT", report.assessment.text, "",
        "RECOMMENDATION", report.recommendation, "",
        "DECISION",
        *(f"- {p}" for p in report.decision.previous),
        report.decision.prompt,
    ]
    return "\n".join(lines) + "\n"
