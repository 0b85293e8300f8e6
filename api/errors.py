"""Error responses: one shape per kind of refusal, declared once for every route of the OpenAPI schema, and the
guard that refuses text PostgreSQL cannot store (NUL characters) with a 422 before any route runs.

Shapes (``tests/api/test_api_schemathesis.py`` checks every response against them):

* 422: ``{"detail": [{"loc", "field", "msg", "type"}, ...], "message": "field: msg; ..."}`` whatever raised it
  (request validation, a route's own check, a database CHECK constraint).
* 500: ``{"detail": "internal error", "request_id": ...}``; the same id is in the server log.
* anything else: ``{"detail": "what is wrong, in words"}``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl

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


def unprocessable(errors: list[dict[str, Any]]) -> JSONResponse:
    message = "; ".join(f"{e['field']}: {e['msg']}" for e in errors)
    return JSONResponse({"detail": errors, "message": message},
                        status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)


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


async def refuse_nul(request: Request, call_next: Any) -> Any:
    """Middleware: a 422 naming each field that contains a NUL character (PostgreSQL cannot store one)."""
    content_type = request.headers.get("content-type", "")
    body = await request.body() if request.method in ("POST", "PUT", "PATCH") else b""
    found = nul_locations(request.scope.get("path", ""), request.scope.get("query_string", b""), content_type, body)
    if found:
        return unprocessable([{"loc": list(loc), "field": ".".join(loc[1:]) or loc[0], "msg": NUL_MESSAGE,
                               "type": "value_error"} for loc in dict.fromkeys(found)])
    return await call_next(request)
