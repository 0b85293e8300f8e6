"""Every JSON example in docs/wire-format.md validates against the one wire definition."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from carewatch import wire

REPO_ROOT = Path(__file__).resolve().parents[2]

DOC = (REPO_ROOT / "docs" / "wire-format.md").read_text()
EXAMPLES = re.findall(r"```json\n(.*?)```", DOC, flags=re.S)
MODELS = {"readings": wire.ReadingBatch, "state": wire.GatewayStatus, "kind": wire.GatewayEvent,
          "ranges": wire.ResendRequest}


def test_doc_has_an_example_of_every_message() -> None:
    kinds = {next(k for k in MODELS if k in json.loads(e)) for e in EXAMPLES}
    assert kinds == set(MODELS)


@pytest.mark.parametrize("example", EXAMPLES, ids=[f"example{i}" for i in range(len(EXAMPLES))])
def test_doc_example_validates(example: str) -> None:
    doc = json.loads(example)
    model = next(m for k, m in MODELS.items() if k in doc)
    model.model_validate(doc)
