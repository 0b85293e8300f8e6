"""Sequence-run bookkeeping and NOTIFY payload splitting (pure parts of ingest.store)."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from carewatch.ingest.store import (
    NOTIFY_VERSION,
    covered,
    merge_runs,
    missing_below,
    notify_payloads,
    runs_from_seqs,
)
from carewatch.subjects import Subject, SubjectKind, parse_subject_key

seq_sets = st.sets(st.integers(min_value=1, max_value=300), max_size=120)


def expand(runs: list[tuple[int, int]]) -> set[int]:
    return {s for first, last in runs for s in range(first, last + 1)}


@given(seq_sets)
def test_runs_cover_exactly_the_seqs_and_are_maximal(seqs: set[int]) -> None:
    runs = runs_from_seqs(seqs)
    assert expand(runs) == seqs
    assert all(b[0] > a[1] + 1 for a, b in itertools.pairwise(runs))  # gaps between runs are real


@given(seq_sets, seq_sets)
def test_merging_runs_is_set_union(a: set[int], b: set[int]) -> None:
    merged = merge_runs(runs_from_seqs(a), runs_from_seqs(b))
    assert merged == runs_from_seqs(a | b)
    assert all(covered(s, merged) == (s in a | b) for s in range(0, 302))


@given(seq_sets)
def test_missing_counts_holes_below_the_highest_seq(seqs: set[int]) -> None:
    expected = (max(seqs) - len(seqs)) if seqs else 0
    assert missing_below(runs_from_seqs(seqs)) == expected


def test_notify_payloads_split_under_the_limit_and_keep_every_subject() -> None:
    subjects = [Subject(SubjectKind.RESIDENT, f"resident-{i:05d}-with-a-long-identifier") for i in range(600)]
    stamp = datetime(2025, 3, 1, 8, 30, tzinfo=UTC)
    payloads = notify_payloads(subjects, stamp)
    assert len(payloads) > 1
    assert all(len(p.encode()) < 8000 for p in payloads)
    docs = [json.loads(p) for p in payloads]
    assert [parse_subject_key(s) for d in docs for s in d["subjects"]] == subjects
    assert {d["max_received_at"] for d in docs} == {stamp.isoformat()}
    assert {d["v"] for d in docs} == {NOTIFY_VERSION}


def test_notify_payloads_name_each_subjects_kind() -> None:
    """A resident and a household sharing one id are two subjects: the payload says which got readings (as
    ``kind:id``, carewatch.subjects.subject_key; an id holding a colon survives), never a bare id."""
    stamp = datetime(2025, 3, 1, 8, 30, tzinfo=UTC)
    subjects = [Subject("household", "flat-7"), Subject("resident", "flat-7"), Subject("kit", "home:kit-01")]
    (payload,) = notify_payloads(subjects, stamp)
    doc = json.loads(payload)
    assert doc["subjects"] == ["household:flat-7", "resident:flat-7", "kit:home:kit-01"]
    assert [parse_subject_key(s) for s in doc["subjects"]] == subjects
    with pytest.raises(TypeError, match="bare id"):
        notify_payloads(["flat-7"], stamp)  # type: ignore[list-item]  # the mistake the check is for
