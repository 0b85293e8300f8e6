"""The one string form of a subject (carewatch/subjects.py): ``kind:id``, read back exactly whatever the id holds."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from carewatch.subjects import Subject, SubjectKind, parse_subject_key, subject_key


@given(st.sampled_from(list(SubjectKind)), st.text(min_size=1))
def test_subject_key_round_trips_any_id(kind: SubjectKind, sid: str) -> None:
    subject = Subject(kind.value, sid)
    assert parse_subject_key(subject_key(subject)) == subject


def test_subject_key_names_the_kind_and_refuses_bare_ids() -> None:
    assert subject_key(Subject("household", "flat-7")) == "household:flat-7"
    assert subject_key(("resident", "a:b")) == "resident:a:b"
    with pytest.raises(TypeError, match="bare id"):
        subject_key("flat-7")  # type: ignore[arg-type]  # the mistake the check is for
    with pytest.raises(ValueError):
        subject_key(("person", "x"))
    for text in ("flat-7", "person:x", "resident:", ":x", ""):
        with pytest.raises(ValueError, match="kind:id"):
            parse_subject_key(text)
