"""The core of ``carewatch news2``: JSON lines of observations in, one JSON line of scores out per line.

Contract (docs/clinical-safety.md, H-NEWS2-11):

* Output line k answers input line k, always: a scored object, or ``{"error": "line k: ..."}`` saying what is
  wrong and why. A blank (or whitespace-only) line is an error line too, so the two streams never drift apart.
* Input keys, each optional or null: respiration_rate, spo2, spo2_scale (1|2, default 1), on_oxygen (default
  false, i.e. air), systolic_bp, pulse, consciousness (A/C/V/P/U), temperature (°C). Unknown keys are errors.
* Output: {"score", "risk", "subscores": {...7 parameters, null if not measured}, "complete", "missing"}.
* Lines are read in chunks; each chunk is validated line by line and scored in one vectorised call.
* Return code: 0 when every line was scored, 1 when at least one line was an error.
"""

from __future__ import annotations

import json
from itertools import islice
from typing import TextIO

import numpy as np
from carewatch.scoring.clinical_response import RISK_BY_CODE
from carewatch.scoring.news2 import PARAMETERS, ObservationSet, describe_error, observation_columns, score_arrays
from pydantic import ValidationError

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


def _parse(line: str) -> ObservationSet | str:
    """The validated set, or the reason the line cannot be scored."""
    if not line.strip():
        return "blank line; expected one JSON object of observations per line"
    try:
        return ObservationSet.model_validate_json(line)
    except ValidationError as exc:
        return describe_error(exc)


def score_lines(lines: list[str], first_line_number: int = 1) -> tuple[list[str], int]:
    """Score one chunk of input lines: (output lines in input order, number of error lines)."""
    parsed = [_parse(line) for line in lines]
    valid = [item for item in parsed if isinstance(item, ObservationSet)]
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
            out.append(next(next_valid))
    return out, errors


def run_news2(stdin: TextIO, stdout: TextIO) -> int:
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
    return 1 if any_errors else 0
