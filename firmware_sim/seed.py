"""Seed the platform's database with a simulated world's sites, residents, households, gateways and devices.

Idempotent: running it again for the same world changes nothing (ON CONFLICT DO NOTHING), so a demo can be
restarted on its old data.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import psycopg

from carewatch.firmware_sim.devices import SimDevice
from carewatch.firmware_sim.fleet import gateway_id_for
from carewatch.firmware_sim.world import World
from carewatch.ingest.kit_sessions import ensure_kits

#: What a council pays for the care package the simulator gives each household (used by the rightsizing view).
HOUSEHOLD_PACKAGE = {"care_package": "waking-night care", "package_hours_per_week": 70.0, "hourly_rate_gbp": 24.50}


def seed_world(conn: psycopg.Connection, world: World, devices: list[SimDevice]) -> dict[str, int]:
    """Insert the world's records; returns how many rows of each kind were new."""
    records = world.records()
    counts: dict[str, int] = {}
    with conn.transaction():
        cur = conn.cursor()
        sites: list[tuple[Any, ...]] = [(s["id"], "care_home", s["name"], None, None, None, None, False)
                                        for s in records["sites"]]
        sites += [(h["id"], "household", h["name"], h["council"], HOUSEHOLD_PACKAGE["care_package"],
                   HOUSEHOLD_PACKAGE["package_hours_per_week"], HOUSEHOLD_PACKAGE["hourly_rate_gbp"],
                   bool(h["consent_vitals"])) for h in records["households"]]  # the record's own consent
        cur.executemany(
            """INSERT INTO sites (site_id, kind, name, council, care_package, package_hours_per_week,
                                  hourly_rate_gbp, consent_vitals)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING""", sites)
        counts["sites"] = len(sites)
        practices = sorted({r["gp_practice_code"] for r in records["residents"]})
        cur.executemany("INSERT INTO gp_practices VALUES (%s, %s) ON CONFLICT DO NOTHING",
                        [(p, f"Practice {p}") for p in practices])
        now = datetime.now(UTC)
        cur.executemany(
            """INSERT INTO residents (resident_id, site_id, display_name, nhs_number, date_of_birth, gp_practice,
                                      obs_per_day, baseline_confused, scale2, scale2_set_by, scale2_set_at,
                                      scale2_reason)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING""",
            [_resident_row(r, now) for r in records["residents"]])
        counts["residents"] = len(records["residents"])
        site_ids = [s[0] for s in sites]
        cur.executemany("INSERT INTO gateways (gateway_id, site_id) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                        [(gateway_id_for(s), s) for s in site_ids])
        kits = {(d.kit_id, d.site_id, d.kit_id.removeprefix(f"{d.site_id}-")) for d in devices if d.kit_id}
        counts["kits"] = ensure_kits(conn, kits)
        cur.executemany(
            """INSERT INTO devices (device_id, site_id, gateway_id, kind, model, mac, bind_key, resident_id, room, role,
                                    kit_id)
               VALUES (%(device_id)s, %(site_id)s, %(gateway_id)s, %(kind)s, %(model)s, %(mac)s, %(bind_key)s,
                       %(resident_id)s, %(room)s, %(role)s, %(kit_id)s) ON CONFLICT DO NOTHING""",
            [{**d.record(), "gateway_id": gateway_id_for(d.site_id)} for d in devices])
        counts["devices"] = len(devices)
    return counts


def _resident_row(r: dict[str, Any], now: datetime) -> tuple[Any, ...]:
    scale2 = bool(r["scale2"])
    return (r["id"], r["site_id"], r["display_name"], r["nhs_number"], r["date_of_birth"], r["gp_practice_code"],
            r["obs_per_day"], bool(r["baseline_confused"]), scale2,
            "Dr A. Respiratory (simulated)" if scale2 else None, now if scale2 else None,
            "COPD with hypercapnic respiratory failure: target SpO2 88-92% (simulated record)" if scale2 else None)
