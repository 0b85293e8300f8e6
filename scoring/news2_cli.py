"""The core of ``carewatch news2``: JSON lines of observations in, one JSON line of scores out per line.

Contract (docs/clinical-safety.md, H-NEWS2-11):

* Output line k answers input line k, always: a scored object, or ``{"error": "line k: ..."}`` saying what is
  wrong and why. A blank (or whitespace-only) line is an error line too, so the two streams never drift apart.
* Input keys, each optional or null: respiration_rate, spo2, spo2_scale (1|2, default 1), on_oxygen (default
  false, i.e. air), systolic_bp, pulse, consciousness (A/C/V/P/U), temperature (°C).
* Other keys (a record's diastolic BP, oxygen device, ...) are not NEWS2 parameters: they are ignored and named
  in the output's ``ignored`` list, so a misspelt parameter is visible (and, being missing, makes the set
  incomplete rather than normal). One exception keeps a default from hiding oxygen: a line with an
  oxygen-looking key (o2, oxygen, fio2, flow) but no ``on_oxygen`` is an error, as is a scale-looking key without
  ``spo2_scale`` (H-NEWS2-11).
* Output: {"score", "risk", "subscores": {...7 parameters, null if not measured}, "complete", "missing"}, plus
  "ignored" when the line had other keys.
* Lines are read in chunks; each chunk is validated line by line and scored in one vectorised call.
* Return code: 0 when the input was read to the end (errors are reported in their lines); with ``strict``, 1
  when at least one line was an error.
"""

from __future__ import annotations

import json
import re
from itertools import islice
from typing import TextIO

import numpy as np
from pydantic import ValidationError

from carewatch.scoring.clinical_response import RISK_BY_CODE
from carewatch.scoring.news2 import PARAMETERS, ObservationSet, describe_error, observation_columns, score_arrays

CHUNK_LINES = 8192

# Pre-rendered JSON fragments: formatting a million results with json.dumps would dominate the run time.
_SUBSCORE_TEXT = {-1: "null", 0: "0", 1: "1", 2: "2", 3: "3"}
_RISK_TEXT = [json.dumps(risk.value) for risk in RISK_BY_CODE]
_KEYS = [json.dumps(name) for name in PARAMETERS]
_KEY_WEIGHTS = (5 ** np.arange(len(PARAMETERS), dtype=np.int32))[:, None]  # subscore + 1 is a base-5 digit
_RENDERED: dict[int, str] = {}


def _render(row: list[int], total: int, risk_code: int) -> str:
    subscores = ", ".join(f"{key}: {_SUBSCORE_TEXT[points]}" for key, points in zip(_KEYS, row, strict=True))
    missing = ", ".join(key for key, points in zip(_KEYS, row, strict=True) if points < 0)
    complete = "false" if missing else "true"
    return (
        f'{{"score": {total}, "risk": {_RISK_TEXT[risk_code]}, "subscores": {{{subscores}}}, '
        f'"complete": {complete}, "missing": [{missing}]}}'
    )


def _error(line_number: int, reason: str) -> str:
    return json.dumps({"error": f"line {line_number}: {reason}"})


_KNOWN = frozenset(ObservationSet.model_fields)
#: Keys that say something about oxygen or the SpO2 scale: their NEWS2 parameter must then be given explicitly.
_GUARDED = (
    ("on_oxygen", re.compile(r"o2|oxygen|fio2|flow", re.IGNORECASE),
     "say true or false: NEWS2 scores supplemental oxygen 2 and air 0, and a missing on_oxygen means air"),
    ("spo2_scale", re.compile(r"scale", re.IGNORECASE),
     "say 1 or 2: a missing spo2_scale means Scale 1"),
)


def _parse(line: str) -> tuple[ObservationSet, list[str]] | str:
    """The validated set and the keys ignored, or the reason the line cannot be scored."""
    if not line.strip():
        return "blank line; expected one JSON object of observations per line"
    try:
        return ObservationSet.model_validate_json(line), []
    except ValidationError as exc:
        if any(item["type"] != "extra_forbidden" for item in exc.errors()):
            return describe_error(exc)
    doc = json.loads(line)  # valid JSON: only unknown keys were wrong
    ignored = sorted(key for key in doc if key not in _KNOWN)
    for parameter, looks_like, why in _GUARDED:
        hints = [key for key in ignored if looks_like.search(key)]
        if hints and doc.get(parameter) is None:
            return f"{parameter} is not given but {', '.join(hints)} is: {why}"
    return ObservationSet.model_validate({k: v for k, v in doc.items() if k in _KNOWN}), ignored


def score_lines(lines: list[str], first_line_number: int = 1) -> tuple[list[str], int]:
    """Score one chunk of input lines: (output lines in input order, number of error lines)."""
    parsed = [_parse(line) for line in lines]
    valid = [item[0] for item in parsed if not isinstance(item, str)]
    rendered: list[str] = []
    if valid:
        scored = score_arrays(**observation_columns(valid))
        # A result line is a function of the seven subscores alone, so render each combination once.
        keys = ((scored.by_parameter.astype(np.int32) + 1) * _KEY_WEIGHTS).sum(axis=0).tolist()
        for position, key in enumerate(keys):
            line = _RENDERED.get(key)
            if line is None:
                line = _RENDERED[key] = _render(
                    scored.subscores[position].tolist(), int(scored.total[position]), int(scored.risk[position])
                )
            rendered.append(line)
    out: list[str] = []
    errors = 0
    next_valid = iter(rendered)
    for offset, item in enumerate(parsed):
        if isinstance(item, str):
            out.append(_error(first_line_number + offset, item))
            errors += 1
        else:
            result = next(next_valid)
            if item[1]:
                result = f'{result[:-1]}, "ignored": {json.dumps(item[1])}}}'
            out.append(result)
    return out, errors


def run_news2(stdin: TextIO, stdout: TextIO, *, strict: bool = False) -> int:
    """Read observation sets as JSON lines from stdin and write one JSON line per input line to stdout."""
    line_number = 1
    any_errors = False
    while chunk := list(islice(stdin, CHUNK_LINES)):
        out, errors = score_lines([line.rstrip("\r\n") for line in chunk], line_number)
        stdout.write("\n".join(out))
        stdout.write("\n")
        any_errors = any_errors or errors > 0
        line_number += len(chunk)
    stdout.flush()
    return 1 if strict and any_errors else 0
