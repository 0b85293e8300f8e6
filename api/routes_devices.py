"""Site configuration: devices (and binding them to a resident or room), gateways, dead letters."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, status
from psycopg.rows import dict_row
from pydantic import BaseModel, Field, ValidationError

from carewatch.api import scope
from carewatch.api.deps import Context, Ctx, Paging
from carewatch.api.schemas import BindIn, DeadLetterOut, DeviceOut, GatewayOut, Page, page_of
from carewatch.api.scope import Permission
from carewatch.db import one
from carewatch.registry import SOURCE_FORMATS, RegisteredDevice

router = APIRouter(tags=["configuration"])
GATEWAY_ONLINE_WITHIN = timedelta(minutes=5)
_DEVICE_FIELDS = set(DeviceOut.model_fields) - {"silent"}


def _device_out(row: dict[str, Any], now: datetime, silent_after: timedelta) -> DeviceOut:
    silent = row["active"] and (row["last_seen"] is None or now - row["last_seen"] > silent_after)
    return DeviceOut(**{k: row[k] for k in _DEVICE_FIELDS}, silent=silent)


@router.get("/devices", response_model=Page[DeviceOut], summary="Devices (care staff, manager of the site, admin)")
def list_devices(
    ctx: Context,
    paging: Paging,
    site: str | None = None,
    resident: str | None = None,
    kind: str | None = None,
    silent: Annotated[bool | None, Query(description="Only devices (not) heard from within silent_minutes.")] = None,
    silent_minutes: Annotated[int, Query(ge=1, le=7 * 24 * 60)] = 60,
    battery_below: Annotated[float | None, Query(ge=0, le=100, description="Battery % below this.")] = None,
) -> dict:
    ctx.require(Permission.READ_DEVICES)
    now = datetime.now(UTC)
    cutoff = now - timedelta(minutes=silent_minutes)
    with ctx.conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            f"""SELECT d.* FROM devices d
                WHERE {scope.config_predicate(ctx.principal, 'd.site_id')} AND {scope.device_practice_match()}
                  AND (%(site)s::text IS NULL OR d.site_id = %(site)s)
                  AND (%(resident)s::text IS NULL OR d.resident_id = %(resident)s)
                  AND (%(kind)s::text IS NULL OR d.kind = %(kind)s)
                  AND (%(battery)s::float8 IS NULL OR d.battery_pct < %(battery)s::float8)
                  AND (%(silent)s::boolean IS NULL
                       OR %(silent)s = (d.active AND (d.last_seen IS NULL OR d.last_seen < %(cutoff)s)))
                ORDER BY d.site_id, d.device_id LIMIT %(limit)s OFFSET %(offset)s""",
            {**ctx.params, "site": site, "resident": resident, "kind": kind, "battery": battery_below,
             "silent": silent, "cutoff": cutoff, "limit": paging.limit + 1, "offset": paging.offset},
        ).fetchall()
    ctx.note("read", "device", None, ids=[r["device_id"] for r in rows[: paging.limit]])
    after = timedelta(minutes=silent_minutes)
    return page_of([_device_out(r, now, after) for r in rows], paging.limit, paging.offset)


@router.get("/devices/{device_id}", response_model=DeviceOut, summary="One device")
def get_device(ctx: Context, device_id: str) -> DeviceOut:
    ctx.require(Permission.READ_DEVICES)
    return _device_out(ctx.device(device_id), datetime.now(UTC), timedelta(hours=1))


@router.post("/devices/{device_id}/bind", response_model=DeviceOut,
             summary="Bind a device to a resident or a room of its site (manager, admin)")
def bind_device(ctx: Context, device_id: str, body: BindIn) -> DeviceOut:
    ctx.require(Permission.CONFIGURE_DEVICES)
    device = ctx.device(device_id, action="update", change="bind", resident_id=body.resident_id, room=body.room,
                        kit_id=body.kit_id)
    if body.resident_id is not None:
        resident = ctx.resident(body.resident_id, action="update", change="device_bound", device_id=device_id)
        if resident["site_id"] != device["site_id"]:
            raise HTTPException(status.HTTP_409_CONFLICT, "the device and the resident are at different sites")
        if resident["monitoring"] in ("discharged", "deceased"):
            raise HTTPException(status.HTTP_409_CONFLICT, f"resident is {resident['monitoring']}")
    if body.kit_id is not None:
        kit = scope.load_kit(ctx.conn, ctx.principal, body.kit_id)
        if kit["site_id"] != device["site_id"]:
            raise HTTPException(status.HTTP_409_CONFLICT, "the device and the kit are at different sites")
    with ctx.conn.cursor(row_factory=dict_row) as cur:
        row = one(cur.execute(
            """UPDATE devices SET resident_id = %(resident)s, room = %(room)s, kit_id = %(kit)s,
                      role = coalesce(%(role)s, role), bound_at = now(), unbound_at = NULL, active = true
               WHERE device_id = %(id)s RETURNING *""",
            {"resident": body.resident_id, "room": body.room, "kit": body.kit_id, "role": body.role,
             "id": device_id}))
    return _device_out(row, datetime.now(UTC), timedelta(hours=1))


@router.post("/devices/{device_id}/unbind", response_model=DeviceOut,
             summary="Unbind a device (its readings stop being attributed to anyone)")
def unbind_device(ctx: Context, device_id: str) -> DeviceOut:
    ctx.require(Permission.CONFIGURE_DEVICES)
    device = ctx.device(device_id, action="update", change="unbind")
    if device["resident_id"]:
        ctx.note("update", "resident", device["resident_id"], change="device_unbound", device_id=device_id)
    with ctx.conn.cursor(row_factory=dict_row) as cur:
        row = one(cur.execute(
            """UPDATE devices SET resident_id = NULL, room = NULL, kit_id = NULL, unbound_at = now()
               WHERE device_id = %s RETURNING *""", (device_id,)))
    return _device_out(row, datetime.now(UTC), timedelta(hours=1))


# ------------------------------------------------------------------------------------------------------------
def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _device_counts(ctx: Ctx, gateway_ids: list[str]) -> dict[str, tuple[int, int]]:
    """Per gateway: its active real devices, and its active practice-kit devices (counted apart: H-KIT-07)."""
    rows = ctx.conn.execute(
        f"""SELECT d.gateway_id, count(*) FILTER (WHERE NOT {scope.practice_device('d.device_id')}),
                   count(*) FILTER (WHERE {scope.practice_device('d.device_id')})
            FROM devices d WHERE d.gateway_id = ANY(%s) AND d.active GROUP BY d.gateway_id""",
        (gateway_ids,)).fetchall()
    return {g: (int(real), int(practice)) for g, real, practice in rows}


def _gateway_out(row: dict[str, Any], now: datetime, devices: tuple[int, int] = (0, 0)) -> GatewayOut:
    status_doc = row.get("status") or {}
    online = row["state"] == "online" and row["last_seen"] is not None and now - row["last_seen"] <= \
        GATEWAY_ONLINE_WITHIN
    oldest = status_doc.get("oldest_unsent")
    pct = status_doc.get("outbox_budget_pct")
    return GatewayOut(
        gateway_id=row["gateway_id"], site_id=row["site_id"], state=row["state"], online=online,
        status_at=row["status_at"], last_seen=row["last_seen"], last_seq=row["last_seq"],
        missing_seqs=row["missing_seqs"], outbox_depth=_int(status_doc.get("outbox_depth")),
        outbox_bytes=_int(status_doc.get("outbox_bytes")),
        outbox_budget_pct=float(pct) if isinstance(pct, int | float) else None,
        oldest_unsent=datetime.fromisoformat(oldest) if isinstance(oldest, str) else None,
        devices=devices[0], practice_devices=devices[1])


@router.get("/gateways", response_model=Page[GatewayOut],
            summary="Gateways: online, outbox backlog, sequence gaps (manager, admin)")
def list_gateways(ctx: Context, paging: Paging, site: str | None = None) -> dict:
    ctx.require(Permission.READ_GATEWAYS)
    with ctx.conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            f"""SELECT g.* FROM gateways g WHERE {scope.config_predicate(ctx.principal, 'g.site_id')}
                  AND (%(site)s::text IS NULL OR g.site_id = %(site)s)
                ORDER BY g.gateway_id LIMIT %(limit)s OFFSET %(offset)s""",
            {**ctx.params, "site": site, "limit": paging.limit + 1, "offset": paging.offset}).fetchall()
    now = datetime.now(UTC)
    ctx.note("read", "gateway", None, ids=[r["gateway_id"] for r in rows[: paging.limit]])
    counts = _device_counts(ctx, [r["gateway_id"] for r in rows])
    return page_of([_gateway_out(r, now, counts.get(r["gateway_id"], (0, 0))) for r in rows], paging.limit,
                   paging.offset)


@router.get("/gateways/{gateway_id}", response_model=GatewayOut, summary="One gateway")
def get_gateway(ctx: Context, gateway_id: str) -> GatewayOut:
    ctx.require(Permission.READ_GATEWAYS)
    return _gateway_out(ctx.gateway(gateway_id), datetime.now(UTC),
                        _device_counts(ctx, [gateway_id]).get(gateway_id, (0, 0)))


class SkippedDevice(BaseModel):
    device_id: str
    reason: str


class GatewayRegistryOut(BaseModel):
    """The gateway's registry file (``devices``, read by ``DeviceRegistry.from_document``), plus what was left out."""

    gateway_id: str
    site_id: str
    devices: list[RegisteredDevice]
    skipped: list[SkippedDevice] = Field(description="Devices of this gateway that cannot be listed, and why.")


def registry_entry(row: dict[str, Any]) -> RegisteredDevice:
    """One devices row as a registry entry. The table has no frame-format column: a ``model`` that names a
    format (``gatt``, ``bthome``, ``berrymed``, ``contec``, ...) sets it, anything else means the kind's default.
    Raises ValueError saying what is wrong (no MAC, unknown kind, malformed bind key)."""
    if not row["mac"]:
        raise ValueError("no MAC address recorded")
    model = (row["model"] or "").strip().lower()
    return RegisteredDevice(
        address=row["mac"], device_id=row["device_id"], kind=row["kind"],
        source=model if model in SOURCE_FORMATS else "", resident_id=row["resident_id"], room=row["room"],
        role=row["role"], bind_key=row["bind_key"])


@router.get("/gateways/{gateway_id}/registry", response_model=GatewayRegistryOut,
            summary="The gateway's device registry, with BTHome bind keys (the gateway's own account, admin)")
def gateway_registry(ctx: Context, gateway_id: str) -> GatewayRegistryOut:
    """Active devices assigned to this gateway, in the format of the gateway's registry file. Unlike every other
    device route this returns bind keys, so each read is audited with the devices it disclosed. A device that
    cannot be listed (no MAC, unknown kind, bad key) is left out and named under ``skipped``: the rest still flow."""
    ctx.require(Permission.READ_GATEWAY_REGISTRY)
    gateway = ctx.gateway(gateway_id, change="registry")
    scope.require_gateway_account(ctx.principal, gateway)
    with ctx.conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            """SELECT d.device_id, d.kind, d.model, d.mac, d.bind_key, d.resident_id, d.room, d.role FROM devices d
               WHERE d.gateway_id = %s AND d.site_id = %s AND d.active ORDER BY d.device_id""",
            (gateway_id, gateway["site_id"])).fetchall()
    devices: list[RegisteredDevice] = []
    skipped: list[SkippedDevice] = []
    by_mac: dict[str, str] = {}
    for row in rows:
        try:
            entry = registry_entry(row)
        except ValueError as exc:  # pydantic's ValidationError is a ValueError too
            skipped.append(SkippedDevice(device_id=row["device_id"], reason=_first_error(exc)))
            continue
        if entry.address in by_mac:  # the gateway would refuse the whole list: leave the second one out
            skipped.append(SkippedDevice(device_id=entry.device_id,
                                         reason=f"MAC {entry.address} is also used by {by_mac[entry.address]}"))
            continue
        by_mac[entry.address] = entry.device_id
        devices.append(entry)
    ctx.note("read", "device", None, ids=[d.device_id for d in devices],
             bind_keys=sum(1 for d in devices if d.bind_key), via="gateway_registry")
    return GatewayRegistryOut(gateway_id=gateway_id, site_id=gateway["site_id"], devices=devices, skipped=skipped)


def _first_error(exc: ValueError) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'device'}: {e['msg'].removeprefix('Value error, ')}"
                         for e in exc.errors())
    return str(exc)


@router.get("/dead-letters", response_model=Page[DeadLetterOut],
            summary="Input that could not be used, with the reason (manager, admin)")
def list_dead_letters(ctx: Context, paging: Paging, site: str | None = None, gateway: str | None = None,
                      stage: str | None = None, since: datetime | None = None) -> dict:
    ctx.require(Permission.READ_DEAD_LETTERS)
    with ctx.conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            f"""SELECT dl.* FROM dead_letters dl WHERE {scope.config_predicate(ctx.principal, 'dl.site_id')}
                  AND (%(site)s::text IS NULL OR dl.site_id = %(site)s)
                  AND (%(gateway)s::text IS NULL OR dl.gateway_id = %(gateway)s)
                  AND (%(stage)s::text IS NULL OR dl.stage = %(stage)s)
                  AND (%(since)s::timestamptz IS NULL OR dl.at >= %(since)s)
                ORDER BY dl.at DESC, dl.dl_id DESC LIMIT %(limit)s OFFSET %(offset)s""",
            {**ctx.params, "site": site, "gateway": gateway, "stage": stage, "since": since,
             "limit": paging.limit + 1, "offset": paging.offset}).fetchall()
    ctx.note("read", "dead_letter", None, count=min(len(rows), paging.limit))
    return page_of([DeadLetterOut(**r) for r in rows], paging.limit, paging.offset)
