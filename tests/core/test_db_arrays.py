"""``carewatch.db.text_array``: the literal the scorer sends instead of psycopg's (slow) list dumper must arrive as
exactly the same array, whatever the strings hold."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carewatch.db import text_array

# PostgreSQL text cannot hold NUL; everything else must round-trip (quotes, backslashes, commas, braces, "NULL")
TEXT = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=12)


@pytest.fixture(scope="module")
def conn(database: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(database, autocommit=True) as connection:
        yield connection


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(TEXT, st.sampled_from(['"', "\\", "NULL", "a,b", "{x}", " ", "\\\"", ""])), max_size=8))
def test_text_array_arrives_as_the_same_list(conn: psycopg.Connection, values: list[str]) -> None:
    assert conn.execute("SELECT %s::text[]", (text_array(values),)).fetchone()[0] == values
