"""The scorer's sense of "now": wall time in production, or the data's own time in the simulated demo.

Every rule takes ``now`` explicitly; only the service asks a Clock. The demo replays days of readings in
minutes, so a wall clock would make every resident look overdue and every device silent: the data clock
instead follows the newest ``received_at`` seen (in NOTIFY payloads or the database), and never goes back.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Literal


def _wall() -> datetime:
    return datetime.now(UTC)


class Clock:
    """Either wall time (``Clock.wall()``) or a monotonic data clock (``Clock.data()``).

    A data clock with nothing observed yet falls back to wall time (``fallback``) so the service can start on an
    empty database; once data has been observed it reports the latest observed time and ignores older ones.
    """

    def __init__(self, mode: Literal["wall", "data"], *, wall: Callable[[], datetime] = _wall) -> None:
        if mode not in ("wall", "data"):
            raise ValueError(f"clock mode must be 'wall' or 'data', not {mode!r}")
        self.mode = mode
        self._wall = wall
        self._latest: datetime | None = None
        self._lock = threading.Lock()

    @classmethod
    def wall(cls) -> Clock:
        return cls("wall")

    @classmethod
    def data(cls, start: datetime | None = None) -> Clock:
        clock = cls("data")
        if start is not None:
            clock.observe(start)
        return clock

    def observe(self, seen: datetime | None) -> None:
        """Record a data timestamp (e.g. ``max_received_at``); a data clock only ever moves forward."""
        if seen is None or self.mode != "data":
            return
        if seen.tzinfo is None:
            raise ValueError("data clock timestamps must be timezone-aware")
        with self._lock:
            if self._latest is None or seen > self._latest:
                self._latest = seen

    @property
    def has_data(self) -> bool:
        return self._latest is not None

    @property
    def ready(self) -> bool:
        """False for a data clock that has seen no data yet: time-based rules must wait rather than run on
        wall time (in a simulated-time demo the wall clock is days away from the data)."""
        return self.mode == "wall" or self.has_data

    def now(self) -> datetime:
        if self.mode == "wall":
            return self._wall()
        with self._lock:
            return self._latest if self._latest is not None else self._wall()

    def __repr__(self) -> str:
        return f"Clock({self.mode!r}, now={self.now().isoformat()})"


def parse_timestamp(text: str | None) -> datetime | None:
    """An ISO-8601 timestamp from a NOTIFY payload (``Z`` accepted); None when absent or unreadable."""
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
