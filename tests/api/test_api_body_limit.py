"""The request body limit (``app.BodyLimit``) holds for streamed bodies too: a chunked request has no
Content-Length to check, so the bytes are counted as they arrive, over real HTTP/1.1 chunked encoding."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import httpx
import psycopg
import pytest
from fastapi.testclient import TestClient
from serving import serve

from carewatch.api.app import MAX_BODY_BYTES, BodyLimit, create_app
from carewatch.settings import Settings

if TYPE_CHECKING:
    from conftest import World

CHUNK = 16 * 1024
TOO_LARGE = f"request body too large (at most {MAX_BODY_BYTES} bytes)"


@pytest.fixture(scope="module")
def live_url(api_settings: Settings) -> Iterator[str]:
    with serve(create_app(api_settings)) as url:
        yield url


class Chunks:
    """A request body as a generator of chunks, remembering how much of it the client got to send."""

    def __init__(self, data: bytes, chunk: int = CHUNK) -> None:
        self.data, self.chunk, self.sent = data, chunk, 0

    def __iter__(self) -> Iterator[bytes]:
        for start in range(0, len(self.data), self.chunk):
            part = self.data[start:start + self.chunk]
            self.sent += len(part)
            yield part


def _post(url: str, world: World, client: TestClient, body: Chunks) -> httpx.Response:
    headers = {**world.headers(client, "care_staff"), "Content-Type": "application/json"}
    with httpx.Client(base_url=url, timeout=30) as http:
        response = http.post(f"/residents/{world.resident_a}/observations", content=iter(body), headers=headers)
    assert "content-length" not in response.request.headers
    assert response.request.headers["transfer-encoding"] == "chunked"
    return response


def _stored(db: psycopg.Connection, world: World) -> int:
    return db.execute("SELECT count(*) FROM observation_sets WHERE resident_id = %s AND recorded_by = %s",
                      (world.resident_a, world.users["care_staff"])).fetchone()[0]


def test_chunked_body_over_the_limit_is_413(live_url: str, client: TestClient, world: World,
                                            db: psycopg.Connection) -> None:
    body = Chunks(b'{"pulse": 80, "note": "' + b"x" * MAX_BODY_BYTES + b'"}')
    response = _post(live_url, world, client, body)
    assert response.status_code == 413, response.text
    assert response.json() == {"detail": TOO_LARGE}
    assert _stored(db, world) == 0


def test_endless_chunked_body_is_cut_off(live_url: str, client: TestClient, world: World) -> None:
    """The server stops reading soon after the limit: the client never gets to send most of 64 MiB."""
    body = Chunks(b" " * (64 * 1024 * 1024), chunk=64 * 1024)
    response = _post(live_url, world, client, body)
    assert response.status_code == 413
    assert body.sent < len(body.data) // 2


def test_chunked_body_within_the_limit_reaches_the_route(live_url: str, client: TestClient, world: World,
                                                        db: psycopg.Connection) -> None:
    """Counted, then replayed: the NUL guard and the route see the whole body."""
    note = "Sent in chunks " + "y" * 900
    response = _post(live_url, world, client, Chunks(json.dumps({"pulse": 80, "note": note}).encode(), 100))
    assert response.status_code == 201, response.text
    nul = _post(live_url, world, client, Chunks(json.dumps({"pulse": 80, "note": "a\x00b"}).encode(), 7))
    assert nul.status_code == 422 and nul.json()["detail"][0]["field"] == "note"
    assert db.execute("SELECT note FROM observation_sets WHERE obs_id = %s",
                      (response.json()["obs_id"],)).fetchone()[0] == note
    assert _stored(db, world) == 1


def test_body_limit_reads_no_more_than_the_limit_and_a_chunk() -> None:
    """At the ASGI level: an endless stream is read up to the limit plus one chunk, and the app never runs."""
    reads = 0
    sent: list[dict[str, Any]] = []

    async def endless() -> dict[str, Any]:
        nonlocal reads
        reads += 1
        return {"type": "http.request", "body": b"x" * 1000, "more_body": True}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("the app must not run")

    scope = {"type": "http", "method": "POST", "path": "/", "headers": [(b"transfer-encoding", b"chunked")]}
    asyncio.run(BodyLimit(app, max_bytes=10_000)(scope, endless, send))
    assert reads == 11
    assert sent[0]["status"] == 413
    assert json.loads(sent[1]["body"]) == {"detail": "request body too large (at most 10000 bytes)"}
