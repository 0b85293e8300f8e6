"""Connection pool under a burst: more requests at once than the API has worker threads (see api/pooling.py).

Before pooling.py, each request took its connection inside a worker thread; a burst of more than 40 requests
against an 8-connection pool parked every thread in ``pool.getconn()`` while the requests holding connections
waited for a thread, and nothing was served until the pool timeout turned the lot into 500s. Here the pool has 2
connections and a 5 s timeout, and 80 requests arrive together over real HTTP: every one must be answered 200.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import httpx
import pytest
from psycopg_pool import ConnectionPool
from serving import serve

from carewatch.api.app import create_app
from carewatch.api.auth import issue_tokens
from carewatch.api.users import get_user
from carewatch.settings import Settings

if TYPE_CHECKING:
    import psycopg
    from conftest import World

BURST = 80  # twice AnyIO's 40 worker threads


@pytest.fixture
def small_pool_api(api_settings: Settings) -> Iterator[str]:
    """The app with a 2-connection pool under uvicorn, in a thread of this process."""
    pool = ConnectionPool(api_settings.dsn, min_size=1, max_size=2, timeout=5, open=True, name="burst-test")
    try:
        with serve(create_app(api_settings, pool=pool)) as url:
            yield url
    finally:
        pool.close()


def test_burst_beyond_worker_threads_is_served(small_pool_api: str, world: World, db: psycopg.Connection,
                                               api_settings: Settings) -> None:
    user = get_user(db, world.users["care_staff"])
    assert user is not None
    headers = {"Authorization": f"Bearer {issue_tokens(db, user, api_settings).access_token}"}

    async def burst() -> list[int]:
        limits = httpx.Limits(max_connections=BURST, max_keepalive_connections=BURST)
        async with httpx.AsyncClient(base_url=small_pool_api, timeout=60, limits=limits) as client:
            responses = await asyncio.gather(*(client.get(f"/sites/{world.home_a}/overview", headers=headers)
                                               for _ in range(BURST)))
        return [r.status_code for r in responses]

    started = time.monotonic()
    statuses = asyncio.run(burst())
    assert statuses == [200] * BURST, sorted(set(statuses))
    assert time.monotonic() - started < 30
