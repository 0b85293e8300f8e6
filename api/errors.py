"""Error responses: one shape per kind of refusal, declared once for every route of the OpenAPI schema, and the
guard that refuses text PostgreSQL cannot store (NUL characters) with a 422 before any route runs.

Shapes (``tests/api/test_api_schemathesis.py`` checks every response against them):

* 422: ``{"detail": [{"loc", "field", "msg", "type"}, ...], "message": "field: msg; ..."}`` whatever raised it
  (request validation, a route's own check, the NEWS2 scorer, a database CHECK or foreign-key constraint: the
  columns of the violated constraint, looked up in ``pg_constraint``, are the fields). ``field`` is 'request'
  only when no field is to blame.
* 500: ``{"detail": "internal error", "request_id": ...}``; the same id is in the server log.
* anything else: ``{"detail": "what is wrong, in words"}``.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import parse_qsl

import psycopg
from fastapi import Request, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field


class FieldError(BaseModel):
    loc: list[str] = Field(description="Where: e.g. ['body', 'spo2'] or ['query', 'limit'].")
    field: str = Field(description="The field, dotted (e.g. 'spo2'); 'request' when it is not one field.")
    msg: str = Field(description="What is wrong, in words.")
    type: str


class ValidationProblem(BaseModel):
    detail: list[FieldError]
    message: str = Field(description="Every field error on one line.")


class Problem(BaseModel):
    detail: str


class ServerProblem(Problem):
    request_id: str = Field(description="Quote this when reporting the fault; the server log has the details.")


#: Declared for every operation (FastAPI(responses=...)); a route's own entry for the same status wins.
COMMON_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem, "description": "The body could not be parsed as the declared content type"},
    401: {"model": Problem, "description": "Not signed in, or the token is expired or invalid"},
    403: {"model": Problem, "description": "Your role may never do this, or consent for council access is missing"},
    404: {"model": Problem, "description": "No such resource, or it belongs to another tenant"},
    409: {"model": Problem, "description": "Conflicts with the current state (e.g. the alert is already resolved)"},
    413: {"model": Problem, "description": "Request body larger than the API accepts"},
    422: {"model": ValidationProblem, "description": "Bad input: each field and what is wrong with it"},
    500: {"model": ServerProblem, "description": "Unexpected fault (no details are sent; see request_id)"},
    503: {"model": Problem, "description": "A dependency (the database or the audit trail) is unavailable"},
}


def field_errors(detail: Any, default_loc: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Any 422 ``detail`` (a message, or a list of field errors) as a list of field errors."""
    if isinstance(detail, list) and all(isinstance(e, dict) and "msg" in e for e in detail):
        out = []
        for err in detail:
            loc = [str(p) for p in err.get("loc", default_loc)]
            out.append({"loc": loc, "field": str(err.get("field") or ".".join(loc[1:]) or "request"),
                        "msg": str(err["msg"]), "type": str(err.get("type", "value_error"))})
        return out
    return [{"loc": list(default_loc), "field": "request", "msg": str(detail), "type": "value_error"}]


def body_errors(fields: Iterable[str], msg: str) -> list[dict[str, Any]]:
    """The same message for each of these body fields (or for the request as a whole when there are none)."""
    found = [{"loc": ["body", f], "field": f, "msg": msg, "type": "value_error"} for f in dict.fromkeys(fields)]
    return found or field_errors(msg)


def unprocessable(errors: list[dict[str, Any]]) -> JSONResponse:
    message = "; ".join(f"{e['field']}: {e['msg']}" for e in errors)
    return JSONResponse({"detail": errors, "message": message},
                        status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)


# ------------------------------------------------------------------------------------------------------------
# Database constraint violations: which columns (= body fields) broke the rule
# ------------------------------------------------------------------------------------------------------------
_CONSTRAINT_COLUMNS = """
    SELECT a.attname FROM pg_constraint c
    JOIN pg_class t ON t.oid = c.conrelid JOIN pg_namespace n ON n.oid = t.relnamespace
    CROSS JOIN LATERAL unnest(c.conkey) WITH ORDINALITY AS k(attnum, ord)
    JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum
    WHERE c.conname = %s AND t.relname = %s AND n.nspname = %s ORDER BY k.ord"""
_columns_of: dict[tuple[str, str, str], tuple[str, ...]] = {}  # constraints change only with a migration


def known_constraint_columns(exc: psycopg.errors.IntegrityError) -> tuple[str, ...] | None:
    """The columns a violated constraint covers, if known without asking the database (a NOT NULL names its
    own; others once looked up); () when the server named no constraint."""
    diag = exc.diag
    if diag.column_name:
        return (diag.column_name,)
    if not (diag.constraint_name and diag.table_name):
        return ()
    return _columns_of.get((diag.schema_name or "public", diag.table_name, diag.constraint_name))


def constraint_columns(conn: psycopg.Connection, exc: psycopg.errors.IntegrityError) -> tuple[str, ...]:
    """The columns a violated constraint covers, from the catalogue rather than the message (CHECK messages name
    no column, and every message is translated under another ``lc_messages``). API bodies use the column names,
    so these are the offending fields. ``conn`` must not be in a failed transaction."""
    known = known_constraint_columns(exc)
    if known is not None:
        return known
    diag = exc.diag
    key = (diag.schema_name or "public", str(diag.table_name), str(diag.constraint_name))
    rows = conn.execute(_CONSTRAINT_COLUMNS, (key[2], key[1], key[0])).fetchall()
    _columns_of[key] = tuple(r[0] for r in rows)
    return _columns_of[key]


def constraint_message(exc: psycopg.errors.IntegrityError) -> str:
    """What a refused value did wrong, in words, naming the database rule."""
    rule = exc.diag.constraint_name or "a database rule"
    if isinstance(exc, psycopg.errors.ForeignKeyViolation):
        return f"names something that does not exist (database rule {rule})"
    if isinstance(exc, psycopg.errors.NotNullViolation):
        return "is required"
    return f"is not allowed, alone or with the other fields named here (database rule {rule})"


# ------------------------------------------------------------------------------------------------------------
# NUL characters: valid in JSON and URLs, refused by PostgreSQL text columns (and so by the audit trail)
# ------------------------------------------------------------------------------------------------------------
NUL_MESSAGE = "must not contain NUL (\\u0000) characters"
JSON_TYPES = ("application/json", "application/fhir+json")


def _nul_paths(value: Any, loc: tuple[str, ...]) -> Iterator[tuple[str, ...]]:
    if isinstance(value, str):
        if "\x00" in value:
            yield loc
    elif isinstance(value, dict):
        for key, item in value.items():
            if "\x00" in key:
                yield (*loc, key.replace("\x00", "\\u0000"))
            yield from _nul_paths(item, (*loc, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _nul_paths(item, (*loc, str(i)))


def nul_locations(path: str, query: bytes, content_type: str, body: bytes) -> list[tuple[str, ...]]:
    """Where the request carries a NUL character: ('path',), ('query', name), ('body', field, ...)."""
    found: list[tuple[str, ...]] = []
    if "\x00" in path:
        found.append(("path",))
    if b"%00" in query.lower() or b"\x00" in query:
        found += [("query", k.replace("\x00", "\\u0000")) for k, v in parse_qsl(query.decode("latin-1"),
                                                                              keep_blank_values=True)
                  if "\x00" in k or "\x00" in v] or [("query",)]
    if not body:
        return found
    media_type = content_type.split(";")[0].strip().lower()
    if media_type in JSON_TYPES and (b"\\u0000" in body or b"\x00" in body):
        with contextlib.suppress(ValueError):  # not JSON: FastAPI says so itself
            found += list(_nul_paths(json.loads(body), ("body",)))
    elif media_type == "application/x-www-form-urlencoded" and (b"%00" in body.lower() or b"\x00" in body):
        found += [("body", k) for k, v in parse_qsl(body.decode("latin-1"), keep_blank_values=True)
                  if "\x00" in k or "\x00" in v] or [("body",)]
    return found


# ------------------------------------------------------------------------------------------------------------
# Nesting depth: Python's JSON parser recurses, so a body of 100 000 '[' (within the size limit) would end in a
# RecursionError (a 500) before any route runs. No Carewatch body nests more than a few levels.
# ------------------------------------------------------------------------------------------------------------
MAX_JSON_DEPTH = 32
DEPTH_MESSAGE = f"JSON nested more than {MAX_JSON_DEPTH} levels deep"
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(rb"[\[\]{}]")


def json_depth(body: bytes) -> int:
    """The deepest nesting of arrays and objects in ``body`` (brackets inside strings do not count); counted
    without parsing, so it cannot recurse."""
    depth = deepest = 0
    for match in _BRACKETS.finditer(_JSON_STRING.sub(b'""', body)):
        if match.group() in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def too_deep(content_type: str, body: bytes) -> bool:
    """Whether a body FastAPI would parse as JSON (declared JSON, or no type at all) nests too deep."""
    media_type = content_type.split(";")[0].strip().lower()
    if not body or (media_type and media_type not in JSON_TYPES and not media_type.endswith("+json")):
        return False
    return body.count(b"[") + body.count(b"{") > MAX_JSON_DEPTH and json_depth(body) > MAX_JSON_DEPTH


async def refuse_nul(request: Request, call_next: Any) -> Any:
    """Middleware: a 422 naming each field that contains a NUL character (PostgreSQL cannot store one), and a 422
    for JSON nested too deep to parse safely."""
    content_type = request.headers.get("content-type", "")
    body = await request.body() if request.method in ("POST", "PUT", "PATCH") else b""
    if too_deep(content_type, body):
        return unprocessable([{"loc": ["body"], "field": "request", "msg": DEPTH_MESSAGE, "type": "value_error"}])
    found = nul_locations(request.scope.get("path", ""), request.scope.get("query_string", b""), content_type, body)
    if found:
        return unprocessable([{"loc": list(loc), "field": ".".join(loc[1:]) or loc[0], "msg": NUL_MESSAGE,
                               "type": "value_error"} for loc in dict.fromkeys(found)])
    return await call_next(request)
