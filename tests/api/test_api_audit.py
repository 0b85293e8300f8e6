"""The audit trail: reads, writes, refusals and sign-ins are recorded; the table is append-only."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from fastapi.testclient import TestClient

if TYPE_CHECKING:
    from conftest import World

PASSWORD = "correct horse 42"


def audit_rows(db: psycopg.Connection, **where: Any) -> list[dict[str, Any]]:
    clauses = " AND ".join(f"{k} = %({k})s" for k in where)
    with db.cursor(row_factory=psycopg.rows.dict_row) as cur:
        return cur.execute(f"SELECT * FROM audit_log WHERE {clauses} ORDER BY audit_id", where).fetchall()


def test_read_of_a_resident_is_audited_with_who_what_where(client: TestClient, world: World,
                                                           db: psycopg.Connection) -> None:
    user = world.users["care_staff"]
    response = client.get(f"/residents/{world.resident_a}", headers={**world.headers(client, "care_staff"),
                                                                     "User-Agent": "tablet-7"})
    assert response.status_code == 200
    rows = audit_rows(db, username=user, subject_id=world.resident_a)
    assert len(rows) == 1
    row = rows[0]
    assert (row["role"], row["action"], row["method"], row["subject_type"], row["status"]) == (
        "care_staff", "read", "GET", "resident", 200)
    assert row["path"] == f"/residents/{world.resident_a}"
    assert "testclient" in row["client"] and "tablet-7" in row["client"]


def test_refused_access_is_audited_too(client: TestClient, world: World, db: psycopg.Connection) -> None:
    response = client.get(f"/residents/{world.resident_b}", headers=world.headers(client, "gp"))
    assert response.status_code == 404
    rows = audit_rows(db, username=world.users["gp"], subject_id=world.resident_b)
    assert [(r["action"], r["status"]) for r in rows] == [("read", 404)]


def test_writes_and_exports_are_audited(client: TestClient, world: World, db: psycopg.Connection) -> None:
    headers = world.headers(client, "manager")
    assert client.patch(f"/residents/{world.resident_a}", json={"obs_per_day": 4}, headers=headers).status_code == 200
    assert client.get(f"/residents/{world.resident_a}/fhir", headers=headers).status_code == 200
    rows = audit_rows(db, username=world.users["manager"], subject_id=world.resident_a)
    assert [(r["action"], r["method"], r["status"]) for r in rows] == [("update", "PATCH", 200),
                                                                       ("export", "GET", 200)]
    assert rows[0]["detail"] == {"fields": ["obs_per_day"]}


def test_list_reads_record_which_residents_were_shown(client: TestClient, world: World,
                                                      db: psycopg.Connection) -> None:
    client.get("/residents", headers=world.headers(client, "council"))
    (row,) = audit_rows(db, username=world.users["council"], path="/residents")
    assert sorted(row["detail"]["ids"]) == sorted([world.resident_ha, world.resident_ha2])


def test_logins_audited(client: TestClient, world: World, db: psycopg.Connection) -> None:
    user = world.users["gp"]
    client.post("/auth/token", data={"username": user, "password": "wrong password"})
    client.post("/auth/token", data={"username": user, "password": PASSWORD})
    rows = audit_rows(db, subject_id=user, subject_type="user")
    assert [(r["action"], r["status"], r["username"]) for r in rows] == [("login_failed", 401, user),
                                                                         ("login", 200, user)]
    assert rows[1]["role"] == "gp"


def test_audit_log_is_append_only(db: psycopg.Connection, client: TestClient, world: World) -> None:
    client.get(f"/residents/{world.resident_a}", headers=world.headers(client, "admin"))
    for statement in ("UPDATE audit_log SET username = 'someone-else' WHERE username = %s",
                      "DELETE FROM audit_log WHERE username = %s"):
        with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
            db.execute(statement, (world.users["admin"],))
        db.rollback()
    with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
        db.execute("TRUNCATE audit_log")
    db.rollback()
    assert audit_rows(db, username=world.users["admin"], subject_id=world.resident_a)


def test_audit_search_is_admin_only_and_filters(client: TestClient, world: World) -> None:
    client.get(f"/residents/{world.resident_a}", headers=world.headers(client, "care_staff"))
    client.get(f"/residents/{world.resident_b}", headers=world.headers(client, "care_staff"))
    assert client.get("/audit", headers=world.headers(client, "manager")).status_code == 403
    found = client.get("/audit", headers=world.headers(client, "admin"),
                       params={"username": world.users["care_staff"], "status": 404}).json()["items"]
    assert [(r["subject_id"], r["status"]) for r in found] == [(world.resident_b, 404)]
    by_subject = client.get("/audit", headers=world.headers(client, "admin"),
                            params={"subject_id": world.resident_a, "action": "read"}).json()["items"]
    assert {r["username"] for r in by_subject} == {world.users["care_staff"]}
