"""Sequence-run bookkeeping and NOTIFY payload splitting (pure parts of ingest.store)."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from carewatch.ingest.store import covered, merge_runs, missing_below, notify_payloads, runs_from_seqs

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
    subjects = [f"resident-{i:05d}-with-a-long-identifier" for i in range(600)]
    stamp = datetime(2025, 3, 1, 8, 30, tzinfo=UTC)
    payloads = notify_payloads(subjects, stamp)
    assert len(payloads) > 1
    assert all(len(p.encode()) < 8000 for p in payloads)
    docs = [json.loads(p) for p in payloads]
    assert [s for d in docs for s in d["subjects"]] == subjects
    assert {d["max_received_at"] for d in docs} == {stamp.isoformat()}
