"""The deteriorating resident of the slow end-to-end tests (tests/test_end_to_end.py, tests/test_db_failover.py):
one infection scenario, and a seeded home whose nurse can read the API."""

from __future__ import annotations

from typing import Any

import psycopg

from carewatch.api.users import create_user
from carewatch.firmware_sim.scenarios import ScenarioSpec, parse_scenario_file
from carewatch.firmware_sim.seed import seed_world


def infection(name: str, *, onset: str, within: str) -> list[ScenarioSpec]:
    """Resident 0 gets an infection ``onset`` after the start that reaches NEWS2 >= 5 within 3 h; the ground truth
    expects a NEWS2 alert ``within`` that."""
    text = f"""
name: {name}
scenarios:
  - id: {name}-infection
    kind: infection
    target: {{resident: 0}}
    onset: {onset}
    progression:
      duration: 3h
      hold: 6h
      params:
        temperature: {{to: 2.4, over: 2h}}
        pulse_rate: {{to: 35, start: 20m, over: 2h}}
        systolic_bp: {{to: -40, start: 40m, over: 2h}}
        spo2: {{to: -4, start: 40m, over: 2h}}
    expect:
      - alert: news2
        within: {within}
"""
    return list(parse_scenario_file(text, source=name).scenarios)


def seed_with_nurse(dsn: str, world: Any, devices: Any, *, site: str, nurse: str, password: str) -> None:
    """Store the world and its devices, and a care_staff login for ``site``."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        seed_world(conn, world, devices)
        create_user(conn, nurse, "care_staff", password=password, site_id=site)
