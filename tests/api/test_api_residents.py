"""Resident records: NHS number validation, Scale 2 who/when/why, field-level 422s, monitoring status."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import psycopg
from fastapi.testclient import TestClient

from carewatch.nhs import is_valid_nhs_number

if TYPE_CHECKING:
    from conftest import World

NhsMakers = tuple[Callable[[], str], Callable[[], str]]


def _new_resident(world: World, nhs: str | None, **extra: object) -> dict[str, object]:
    return {"resident_id": f"new-{world.uid}", "site_id": world.home_a, "display_name": "Edith Example",
            "date_of_birth": "1931-07-02", "nhs_number": nhs, **extra}


def test_create_resident_with_valid_nhs_number(client: TestClient, world: World, nhs_numbers: NhsMakers) -> None:
    valid, _ = nhs_numbers
    number = valid()
    spaced = f"{number[:3]} {number[3:6]} {number[6:]}"
    response = client.post("/residents", json=_new_resident(world, spaced), headers=world.headers(client, "manager"))
    assert response.status_code == 201, response.text
    assert response.json()["nhs_number"] == number


def test_bad_nhs_number_is_422_with_a_clear_message(client: TestClient, world: World,
                                                    nhs_numbers: NhsMakers) -> None:
    _, invalid = nhs_numbers
    number = invalid()
    assert not is_valid_nhs_number(number)
    response = client.post("/residents", json=_new_resident(world, number), headers=world.headers(client, "manager"))
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["field"] == "nhs_number"
    assert "check digit" in error["msg"] and "modulus 11" in error["msg"]
    assert number not in response.text  # the input is never echoed back
    short = client.post("/residents", json=_new_resident(world, "12345"), headers=world.headers(client, "manager"))
    assert short.json()["detail"][0]["msg"] == "an NHS number has exactly 10 digits"
    patch = client.patch(f"/residents/{world.resident_a}", json={"nhs_number": number},
                         headers=world.headers(client, "manager"))
    assert patch.status_code == 422


def test_422_lists_every_bad_field(client: TestClient, world: World) -> None:
    body = {"resident_id": "has spaces!", "site_id": world.home_a, "date_of_birth": "2999-01-01",
            "obs_per_day": 99, "surprise": 1}
    response = client.post("/residents", json=body, headers=world.headers(client, "manager"))
    assert response.status_code == 422
    fields = {e["field"] for e in response.json()["detail"]}
    assert fields == {"resident_id", "display_name", "date_of_birth", "obs_per_day", "surprise"}
    assert all("input" not in e for e in response.json()["detail"])
    assert "display_name" in response.json()["message"]


def test_manager_cannot_create_at_another_site_and_care_staff_cannot_create(client: TestClient,
                                                                            world: World) -> None:
    elsewhere = _new_resident(world, None, site_id=world.home_b)
    assert client.post("/residents", json=elsewhere, headers=world.headers(client, "manager")).status_code == 404
    own = _new_resident(world, None)
    assert client.post("/residents", json=own, headers=world.headers(client, "care_staff")).status_code == 403


def test_duplicate_resident_is_409(client: TestClient, world: World) -> None:
    body = _new_resident(world, None, resident_id=world.resident_a)
    assert client.post("/residents", json=body, headers=world.headers(client, "admin")).status_code == 409


def test_scale2_records_who_when_why(client: TestClient, world: World, db: psycopg.Connection) -> None:
    before = datetime.now(UTC)
    reason = "COPD with CO2 retention: respiratory team letter 3 March, target 88-92%"
    response = client.put(f"/residents/{world.resident_a}/scale2", json={"scale2": True, "reason": reason},
                          headers=world.headers(client, "gp"))
    assert response.status_code == 200
    body = response.json()
    assert body["scale2"] is True and body["scale2_set_by"] == world.users["gp"] and body["scale2_reason"] == reason
    assert before - timedelta(seconds=5) <= datetime.fromisoformat(body["scale2_set_at"]) <= datetime.now(UTC)
    cleared = client.put(f"/residents/{world.resident_a}/scale2",
                         json={"scale2": False, "reason": "reviewed: CO2 normal"},
                         headers=world.headers(client, "nurse")).json()
    assert (cleared["scale2"], cleared["scale2_set_by"], cleared["scale2_reason"]) == (
        False, world.users["nurse"], "reviewed: CO2 normal")


def test_scale2_needs_a_reason_and_a_clinical_role(client: TestClient, world: World) -> None:
    url = f"/residents/{world.resident_a}/scale2"
    no_reason = client.put(url, json={"scale2": True}, headers=world.headers(client, "gp"))
    assert no_reason.status_code == 422 and no_reason.json()["detail"][0]["field"] == "reason"
    blank = client.put(url, json={"scale2": True, "reason": "  "}, headers=world.headers(client, "gp"))
    assert blank.status_code == 422
    assert client.put(url, json={"scale2": True, "reason": "because"},
                      headers=world.headers(client, "care_staff")).status_code == 403


def test_update_and_monitoring_status(client: TestClient, world: World) -> None:
    headers = world.headers(client, "manager")
    updated = client.patch(f"/residents/{world.resident_a}", json={"monitoring": "paused", "obs_per_day": 4},
                           headers=headers).json()
    assert (updated["monitoring"], updated["obs_per_day"]) == ("paused", 4)
    assert client.patch(f"/residents/{world.resident_a}", json={"display_name": None},
                        headers=headers).status_code == 422
    status = client.get(f"/residents/{world.resident_a}/monitoring", headers=headers).json()
    assert status["monitoring"] == "paused"
    assert status["news2"]["score"] == 5 and status["news2"]["label"] == "Medium"
    assert status["obs_overdue"] is False  # paused residents are never overdue
    assert [d["device_id"] for d in status["devices"]] == [world.device_a]


def test_resident_search_filters(client: TestClient, world: World) -> None:
    headers = world.headers(client, "admin")
    by_site = client.get("/residents", params={"site": world.home_b}, headers=headers).json()["items"]
    assert [r["resident_id"] for r in by_site] == [world.resident_b]
    by_practice = client.get("/residents", params={"practice": world.practice_a, "q": world.uid},
                             headers=headers).json()["items"]
    assert {r["resident_id"] for r in by_practice} == {world.resident_a, world.resident_ha, world.resident_ha2}
    by_name = client.get("/residents", params={"q": f"Name {world.resident_hb}"}, headers=headers).json()["items"]
    assert [r["resident_id"] for r in by_name] == [world.resident_hb]


def test_paging(client: TestClient, world: World) -> None:
    headers = world.headers(client, "gp")
    first = client.get("/residents", params={"limit": 2}, headers=headers).json()
    second = client.get("/residents", params={"limit": 2, "offset": first["next_offset"]}, headers=headers).json()
    assert len(first["items"]) == 2 and first["next_offset"] == 2
    assert len(second["items"]) == 1 and second["next_offset"] is None
    too_many = client.get("/residents", params={"limit": 501}, headers=headers)
    assert too_many.status_code == 422 and too_many.json()["detail"][0]["field"] == "limit"
