"""NEWS2 risk bands and what care-home staff should do for each (RCP 2017 Charts 3 and 4, as data).

The API, alert engine, observation scheduler and dashboard import this module rather than writing their own
wording, so a resident's band always comes with the same instruction everywhere. The wording is for care-home
staff who are often not nurses: it names a concrete action ("call 999", "contact the GP or NHS 111 within
1 hour") instead of the RCP's hospital roles ("registered nurse", "medical team"). Each entry keeps the RCP
Chart 4 row it was derived from in ``rcp_response`` so a clinical reviewer can check the translation.

Chart 4 splits the low band in two: a total of 0 needs observations at least every 12 hours, a total of 1-4 at
least every 4-6 hours (we use 4, the stricter end). ``clinical_response`` picks the right row and, for a partial
observation set, says plainly that the score is incomplete and which observations to take.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from enum import StrEnum
from types import MappingProxyType


class Risk(StrEnum):
    """NEWS2 clinical risk (RCP Chart 3). The order of declaration is the order of severity."""

    LOW = "low"
    LOW_MEDIUM = "low-medium"
    MEDIUM = "medium"
    HIGH = "high"

    @property
    def code(self) -> int:
        """Small integer used by the vectorised scorer: 0 low, 1 low-medium, 2 medium, 3 high."""
        return RISK_BY_CODE.index(self)


#: Risk by its integer code (``News2Arrays.risk`` holds these codes).
RISK_BY_CODE: tuple[Risk, ...] = (Risk.LOW, Risk.LOW_MEDIUM, Risk.MEDIUM, Risk.HIGH)


@dataclass(frozen=True)
class ClinicalResponse:
    """What a NEWS2 band means and what to do now, worded for care-home staff."""

    risk: Risk
    label: str  # short display label, e.g. "Low-medium"
    colour: str  # colour name for dashboards: green / yellow / orange / red
    meaning: str  # plain-English meaning of the score
    action: str  # what to do now
    min_interval: timedelta  # repeat a full set of observations at least this often
    continuous: bool  # True: watch the resident continuously (min_interval is then 0)
    rcp_response: str  # the RCP Chart 4 row this is derived from
    complete: bool = True  # False: built from a partial observation set (see clinical_response)

    @property
    def min_interval_minutes(self) -> int:
        return int(self.min_interval.total_seconds() // 60)


_WORRIED = "If you are worried at any time, whatever the score, call the GP or NHS 111, or 999 in an emergency."

#: Chart 4, total 0: low band, routine monitoring (minimum 12-hourly).
ZERO_SCORE_RESPONSE = ClinicalResponse(
    risk=Risk.LOW,
    label="Low",
    colour="green",
    meaning="These observations show no sign of a new illness (score 0).",
    action=(
        "Carry on with usual care. Tell the nurse or senior carer on shift if the resident seems unwell in any "
        f"other way (eating, drinking, mood, mobility). {_WORRIED}"
    ),
    min_interval=timedelta(hours=12),
    continuous=False,
    rcp_response="Score 0: minimum 12-hourly; continue routine NEWS monitoring.",
)

#: One entry per band. LOW is the Chart 4 row for a total of 1-4; a total of 0 uses ZERO_SCORE_RESPONSE.
RESPONSES: Mapping[Risk, ClinicalResponse] = MappingProxyType(
    {
        Risk.LOW: ClinicalResponse(
            risk=Risk.LOW,
            label="Low",
            colour="green",
            meaning="Some observations are a little outside normal (score 1-4). The resident may be becoming unwell.",
            action=(
                "Tell the nurse or senior carer on shift now. They should see the resident and decide whether to "
                f"take observations more often or contact the GP. {_WORRIED}"
            ),
            min_interval=timedelta(hours=4),
            continuous=False,
            rcp_response=(
                "Total 1-4: minimum 4-6-hourly; inform registered nurse, who must assess the patient and decide "
                "whether increased monitoring and/or escalation of care is required."
            ),
        ),
        Risk.LOW_MEDIUM: ClinicalResponse(
            risk=Risk.LOW_MEDIUM,
            label="Low-medium",
            colour="yellow",
            meaning=(
                "One observation is far outside normal (it scored 3). This needs a clinician's review soon, "
                "even though the total score is low."
            ),
            action=(
                "Tell the nurse or senior carer now and contact the GP or NHS 111 within 1 hour. Repeat the "
                "observations within 1 hour. Call 999 if the resident gets worse."
            ),
            min_interval=timedelta(hours=1),
            continuous=False,
            rcp_response=(
                "Score 3 in a single parameter: minimum 1-hourly; registered nurse to inform the medical team, "
                "who will review and decide whether escalation of care is necessary."
            ),
        ),
        Risk.MEDIUM: ClinicalResponse(
            risk=Risk.MEDIUM,
            label="Medium",
            colour="orange",
            meaning="The resident may be seriously unwell (score 5 or 6). This is the urgent response threshold.",
            action=(
                "Contact the GP or NHS 111 now and ask for an urgent assessment. If no clinician can see the "
                "resident within 1 hour, or they get worse, call 999. Repeat the observations at least every hour "
                "and tell the senior on shift."
            ),
            min_interval=timedelta(hours=1),
            continuous=False,
            rcp_response=(
                "Total 5 or more (urgent response threshold): minimum 1-hourly; registered nurse to immediately "
                "inform the medical team and request urgent assessment by a clinician with competencies in acute "
                "illness; care in an environment with monitoring facilities."
            ),
        ),
        Risk.HIGH: ClinicalResponse(
            risk=Risk.HIGH,
            label="High",
            colour="red",
            meaning="The resident is at high risk of a serious illness (score 7 or more). This is an emergency.",
            action=(
                "Call 999 now. Stay with the resident and keep watching their breathing, colour and alertness "
                "until help arrives. Tell the call handler about any ReSPECT form or advance care plan, and tell "
                "the senior on shift."
            ),
            min_interval=timedelta(0),
            continuous=True,
            rcp_response=(
                "Total 7 or more (emergency response threshold): continuous monitoring of vital signs; emergency "
                "assessment by a team with critical-care competencies; consider transfer to level 2/3 care."
            ),
        ),
    }
)

#: A partial set must be completed within this time (or sooner if its band says so).
INCOMPLETE_RECHECK = timedelta(hours=1)

#: Plain-English names of the observations, for messages to staff.
PLAIN_NAMES: Mapping[str, str] = MappingProxyType(
    {
        "respiration_rate": "breathing rate",
        "spo2": "oxygen level (SpO2)",
        "air_or_oxygen": "air or oxygen",
        "systolic_bp": "blood pressure",
        "pulse": "pulse",
        "consciousness": "alertness (ACVPU)",
        "temperature": "temperature",
    }
)


def clinical_response(risk: Risk | str, total: int, missing: Sequence[str] = ()) -> ClinicalResponse:
    """The response for one scored set: Chart 4's row for its band and total, adjusted when it is partial.

    A partial set is never presented as reassuring: its meaning starts with "INCOMPLETE SCORE", says which
    observations are missing and that the real score may be higher, its action asks for them to be measured
    now, and its observation interval is capped at ``INCOMPLETE_RECHECK``.
    """
    risk = Risk(risk)
    base = ZERO_SCORE_RESPONSE if risk is Risk.LOW and total == 0 else RESPONSES[risk]
    if not missing:
        return base
    names = ", ".join(PLAIN_NAMES.get(name, name) for name in missing)
    meaning = (
        f"INCOMPLETE SCORE: {names} not measured, so the real score may be higher than {total}. "
        f"From the observations taken: {base.meaning}"
    )
    action = f"{base.action} Also measure the {names} now and score again."
    if risk in (Risk.LOW, Risk.LOW_MEDIUM):
        hours = int(INCOMPLETE_RECHECK.total_seconds() // 3600)
        action += (
            " If you cannot (for example there is no working device), tell the nurse or senior carer and, if the "
            f"resident seems unwell, contact the GP or NHS 111 within {hours} hour."
        )
    interval = min(base.min_interval, INCOMPLETE_RECHECK)
    return replace(base, meaning=meaning, action=action, min_interval=interval, complete=False)
