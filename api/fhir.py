"""FHIR R4 export: a ``collection`` Bundle with the Patient, one vital-sign Observation per measured value, the
NEWS2 total score, and a Flag per open incident (or open alert outside any incident). Pure functions returning
plain JSON-ready dicts.

Codes: LOINC for vital signs (the FHIR vital-signs profile codes), SNOMED CT 1104051000000101 for the NEWS2
total score, UCUM units. Resource ids are UUIDv5 of our own keys, so exporting twice gives the same ids.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
NHS_NUMBER_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"
LOCAL_ID_SYSTEM = "https://carewatch.example/Id/resident"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
_NAMESPACE = uuid.UUID("6f1d7c3e-6a59-4a0f-9c44-1c1a8f0b6d10")

#: metric or parameter -> (LOINC codes, display, UCUM unit, unit display)
VITALS: dict[str, tuple[tuple[str, ...], str, str, str]] = {
    "respiration_rate": (("9279-1",), "Respiratory rate", "/min", "breaths/minute"),
    "spo2": (("59408-5", "2708-6"), "Oxygen saturation in Arterial blood by Pulse oximetry", "%", "%"),
    "systolic_bp": (("8480-6",), "Systolic blood pressure", "mm[Hg]", "mmHg"),
    "diastolic_bp": (("8462-4",), "Diastolic blood pressure", "mm[Hg]", "mmHg"),
    "pulse": (("8867-4",), "Heart rate", "/min", "beats/minute"),
    "pulse_rate": (("8867-4",), "Heart rate", "/min", "beats/minute"),
    "temperature": (("8310-5",), "Body temperature", "Cel", "°C"),
    "weight": (("29463-7",), "Body weight", "kg", "kg"),
}
ACVPU_LOINC = "67775-7"
ACVPU_TEXT = {"A": "Alert", "C": "New confusion", "V": "Responds to voice", "P": "Responds to pain",
              "U": "Unresponsive"}
NEWS2_SNOMED = "1104051000000101"
NEWS2_DISPLAY = "Royal College of Physicians National Early Warning Score 2 (NEWS2) total score"


def _uuid(*parts: Any) -> str:
    return str(uuid.uuid5(_NAMESPACE, "/".join(str(p) for p in parts)))


def _iso(at: datetime) -> str:
    return at.isoformat()


def _vital_signs_category() -> list[dict[str, Any]]:
    return [{"coding": [{"system": OBS_CATEGORY, "code": "vital-signs", "display": "Vital Signs"}]}]


def _entry(resource: dict[str, Any]) -> dict[str, Any]:
    return {"fullUrl": f"urn:uuid:{resource['id']}", "resource": resource}


def patient(resident: dict[str, Any]) -> dict[str, Any]:
    identifiers = [{"system": LOCAL_ID_SYSTEM, "value": resident["resident_id"]}]
    if resident.get("nhs_number"):
        identifiers.insert(0, {"system": NHS_NUMBER_SYSTEM, "value": resident["nhs_number"]})
    return {
        "resourceType": "Patient",
        "id": _uuid("patient", resident["resident_id"]),
        "identifier": identifiers,
        "active": resident.get("monitoring", "active") in ("active", "paused"),
        "name": [{"text": resident["display_name"]}],
        "birthDate": resident["date_of_birth"].isoformat(),
        **({"deceasedBoolean": True} if resident.get("monitoring") == "deceased" else {}),
    }


def vital_observation(name: str, value: float, at: datetime, patient_ref: str, key: str,
                      device_id: str | None = None) -> dict[str, Any]:
    codes, display, unit, unit_display = VITALS[name]
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "id": _uuid("obs", key, name),
        "status": "final",
        "category": _vital_signs_category(),
        "code": {"coding": [{"system": LOINC, "code": c, "display": display} for c in codes], "text": display},
        "subject": {"reference": patient_ref},
        "effectiveDateTime": _iso(at),
        "valueQuantity": {"value": float(value), "unit": unit_display, "system": UCUM, "code": unit},
    }
    if device_id:
        resource["device"] = {"display": device_id}
    return resource


def consciousness_observation(letter: str, at: datetime, patient_ref: str, key: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": _uuid("obs", key, "consciousness"),
        "status": "final",
        "category": _vital_signs_category(),
        "code": {"coding": [{"system": LOINC, "code": ACVPU_LOINC, "display": "Level of consciousness (ACVPU)"}],
                 "text": "Level of consciousness (ACVPU)"},
        "subject": {"reference": patient_ref},
        "effectiveDateTime": _iso(at),
        "valueCodeableConcept": {"text": f"{letter} - {ACVPU_TEXT.get(letter, letter)}"},
    }


def news2_observation(obs: dict[str, Any], patient_ref: str, member_refs: list[str]) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "id": _uuid("news2", obs["obs_id"]),
        "status": "final" if obs["complete"] else "preliminary",
        "category": [{"coding": [{"system": OBS_CATEGORY, "code": "survey", "display": "Survey"}]}],
        "code": {"coding": [{"system": SNOMED, "code": NEWS2_SNOMED, "display": NEWS2_DISPLAY}], "text": "NEWS2"},
        "subject": {"reference": patient_ref},
        "effectiveDateTime": _iso(obs["taken_at"]),
        "valueInteger": int(obs["score"]),
        "interpretation": [{"text": f"{obs['risk']} clinical risk" + (
            "" if obs["complete"] else f"; incomplete, missing {', '.join(obs['missing'])}")}],
    }
    if member_refs:
        resource["derivedFrom"] = [{"reference": ref} for ref in member_refs]
    return resource


def alert_flag(alert: dict[str, Any], patient_ref: str) -> dict[str, Any]:
    return {
        "resourceType": "Flag",
        "id": _uuid("flag", alert["alert_id"]),
        "status": "active",
        "category": [{"text": f"carewatch alert: {alert['kind']} ({alert['severity']})"}],
        "code": {"text": alert["reason"]},
        "subject": {"reference": patient_ref},
        "period": {"start": _iso(alert["opened_at"])},
    }


def incident_flag(incident: dict[str, Any], patient_ref: str) -> dict[str, Any]:
    """One Flag per open incident (its components are named in the text), not one per alert (H-INC-01)."""
    band = f", NEWS2 band {incident['band']}" if incident.get("band") else ""
    parts = [c["kind"] for c in incident.get("components", ())]
    return {
        "resourceType": "Flag",
        "id": _uuid("incident", incident["incident_id"]),
        "status": "active",
        "category": [{"text": f"carewatch incident ({incident['severity']}{band})"}],
        "code": {"text": incident["headline"] + (f" [parts: {', '.join(parts)}]" if parts else "")},
        "subject": {"reference": patient_ref},
        "period": {"start": _iso(incident["opened_at"])},
    }


def build_bundle(
    resident: dict[str, Any],
    observations: Sequence[dict[str, Any]],
    latest: Sequence[dict[str, Any]],
    alerts: Sequence[dict[str, Any]],
    *,
    generated_at: datetime,
    incidents: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """The export. ``observations``: the sets to include (usually the latest); ``latest``: latest device vitals,
    used for values no included set has (e.g. diastolic pressure, weight) or when a device value is newer."""
    pat = patient(resident)
    patient_ref = f"urn:uuid:{pat['id']}"
    entries = [_entry(pat)]
    covered: dict[str, datetime] = {}
    for obs in observations:
        key = f"set-{obs['obs_id']}"
        members = []
        for name in ("respiration_rate", "spo2", "systolic_bp", "pulse", "temperature"):
            if obs.get(name) is not None:
                resource = vital_observation(name, obs[name], obs["taken_at"], patient_ref, key)
                members.append(f"urn:uuid:{resource['id']}")
                entries.append(_entry(resource))
                covered[name] = max(covered.get(name, obs["taken_at"]), obs["taken_at"])
        if obs.get("consciousness"):
            resource = consciousness_observation(obs["consciousness"], obs["taken_at"], patient_ref, key)
            members.append(f"urn:uuid:{resource['id']}")
            entries.append(_entry(resource))
        entries.append(_entry(news2_observation(obs, patient_ref, members)))
    for reading in latest:
        name = "pulse" if reading["metric"] == "pulse_rate" else reading["metric"]
        if name not in VITALS or (name in covered and covered[name] >= reading["measured_at"]):
            continue
        key = f"reading-{reading['device_id']}-{reading['measured_at'].isoformat()}"
        entries.append(_entry(vital_observation(name, reading["value"], reading["measured_at"], patient_ref, key,
                                                reading["device_id"])))
    entries.extend(_entry(incident_flag(i, patient_ref)) for i in incidents if i["status"] != "resolved")
    # alerts that belong to no incident (e.g. 'info' evidence) keep a Flag of their own
    entries.extend(_entry(alert_flag(a, patient_ref)) for a in alerts
                   if a["status"] != "resolved" and a.get("incident_id") is None)
    return {
        "resourceType": "Bundle",
        "id": _uuid("bundle", resident["resident_id"], generated_at.isoformat()),
        "type": "collection",
        "timestamp": _iso(generated_at),
        "entry": entries,
    }
