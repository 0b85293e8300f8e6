"""Each shared table has one writer module: a SQL write (INSERT, UPDATE, DELETE, COPY, TRUNCATE) to it anywhere
else in the code fails here. ARCHITECTURE.md's table lists the same owners.

Scanned: the stage folders, ``carewatch/`` and ``bench/`` (every SQL string literal, f-strings included;
docstrings are prose and skipped). Not scanned: ``tests/``, whose fixtures build database states directly (an
alert already escalated, a year-old reading) that no writer would make on demand.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from conformance import REPO_ROOT

#: table -> the one module that writes it
OWNERS = {
    "observation_sets": "scoring/observation_sets.py",
    "observation_set_versions": "scoring/observation_sets.py",
    "incidents": "scoring/incident_store.py",
    "incident_events": "scoring/incident_store.py",
    "alerts": "scoring/lifecycle.py",
    "alert_events": "scoring/lifecycle.py",
    "alert_suppressions": "scoring/lifecycle.py",
    "resident_state": "scoring/residents.py",
    "behaviour_events": "scoring/households.py",
    "household_state": "scoring/households.py",
    "readings": "ingest/store.py",
    "latest_readings": "ingest/store.py",
    "dead_letters": "ingest/store.py",
    "gateway_seq_runs": "ingest/store.py",
    "gateway_events": "ingest/store.py",
    "audit_log": "api/audit.py",
    "users": "api/users.py",
    "kits": "ingest/kit_sessions.py",
    "kit_sessions": "ingest/kit_sessions.py",
    "reading_assignments": "ingest/store.py",
    "scorer_replicas": "scoring/replicas.py",
    "scorer_buckets": "scoring/replicas.py",
    "auth_sessions": "api/sessions.py",
    "login_failures": "api/sessions.py",
    "escalation_policies": "notify/store.py",
    "notification_deliveries": "notify/deliveries.py",
}
#: Modules allowed to write these tables anyway, and why.
EXEMPT = {
    "gateway/outbox.py": "the gateway's SQLite outbox: its own tables of the same names, not PostgreSQL",
    "bench/bench_api.py": "bulk COPY of a synthetic year (millions of rows) before the API is measured",
    "bench/ingest/bench_ingest.py": "raw COPY/INSERT into readings: the ceiling the ingest store is measured against",
    "bench/bench_scale.py": "SQL copies of a simulated template up to 100,000 residents, and probe readings inserted "
                            "as ingest would, to measure the scorer at that size",
}
SCANNED = ("carewatch", "gateway", "ingest", "scoring", "api", "dashboard", "firmware_sim", "notify", "bench")
WRITE = re.compile(r"(?<!FOR )(?<!DO )\b(INSERT\s+INTO|UPDATE|DELETE\s+FROM|COPY|TRUNCATE(?:\s+TABLE)?)\s+(\w+)")


def _docstrings(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def sql_writes(source: str) -> list[tuple[int, str, str]]:
    """(line, statement, table) of every SQL write in the module's string literals (f-string parts joined with
    a placeholder, so ``f"INSERT INTO {t}"`` cannot hide a table but names none)."""
    tree = ast.parse(source)
    skip = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            text = "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
            inner = {id(v) for v in node.values}
            skip |= inner
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            text = node.value
        else:
            continue
        for match in WRITE.finditer(text):
            found.append((node.lineno, " ".join(match.group(1).split()), match.group(2)))
    return sorted(found)


def _modules() -> list[tuple[str, str]]:
    out = []
    for folder in SCANNED:
        for path in sorted((REPO_ROOT / folder).rglob("*.py")):
            out.append((str(path.relative_to(REPO_ROOT)), path.read_text(encoding="utf-8")))
    return out


def test_each_shared_table_is_written_by_its_owner_only() -> None:
    strays = []
    for name, source in _modules():
        if name in EXEMPT:
            continue
        for line, statement, table in sql_writes(source):
            owner = OWNERS.get(table)
            if owner is not None and owner != name:
                strays.append(f"{name}:{line}: {statement} {table} (owner: {owner})")
    assert not strays, "SQL writes outside the table's owner module:\n" + "\n".join(strays)


def test_every_owner_writes_its_table_and_names_a_real_table() -> None:
    schema = "\n".join(p.read_text() for p in (REPO_ROOT / "carewatch" / "db" / "migrations").glob("*.sql"))
    tables = set(re.findall(r"CREATE TABLE (?:IF NOT EXISTS )?(\w+)", schema))
    assert set(OWNERS) <= tables, f"not tables of the schema: {set(OWNERS) - tables}"
    for table, owner in OWNERS.items():
        written = {t for _, _, t in sql_writes((REPO_ROOT / owner).read_text(encoding="utf-8"))}
        assert table in written, f"{owner} is named as the writer of {table} but does not write it"
    assert "psycopg" not in (REPO_ROOT / "gateway" / "outbox.py").read_text(), "the outbox exemption is SQLite only"
    for name in EXEMPT:
        assert (REPO_ROOT / name).exists(), f"exempt module {name} no longer exists: drop it from EXEMPT"


def test_the_scanner_finds_writes_in_every_form_and_skips_prose() -> None:
    source = '''
"""Module prose: we UPDATE alerts and INSERT INTO readings here, in words only."""
def f(conn, t):
    """COPY readings is how it is done."""
    conn.execute("INSERT INTO alerts (a) VALUES (1)")
    conn.execute("UPDATE alert_events SET x = 1")
    conn.execute(f"DELETE FROM observation_sets WHERE obs_id = {t}")
    conn.execute("SELECT 1 FROM alerts FOR UPDATE")
    conn.execute("INSERT INTO x VALUES (1) ON CONFLICT (k) DO UPDATE SET v = 1")
    cur.copy("COPY readings (a, b) FROM STDIN")
    conn.execute("TRUNCATE audit_log")
'''
    found = [(statement, table) for _, statement, table in sql_writes(source)]
    assert found == [("INSERT INTO", "alerts"), ("UPDATE", "alert_events"), ("DELETE FROM", "observation_sets"),
                     ("INSERT INTO", "x"), ("COPY", "readings"), ("TRUNCATE", "audit_log")]
    assert sql_writes(Path(__file__).read_text(encoding="utf-8"))  # this very test module would be caught
