"""Play a simulated world in (accelerated) time through the real gateway code.

:class:`SimClock` runs simulated time ``accelerate`` times faster than the wall clock, optionally only until it
has caught up with the wall clock (then in real time), so a demo can start in the past and settle into the
present. :class:`SimDriver` walks ``World.events`` in that time, turns device events into bytes with the
:class:`DeviceLayer` and pushes them into each site's :class:`SimTransport`; manual observations go to a
callback (the demo posts them to the API as care staff), gateway outages to the gateway's uplink switch.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from carewatch.firmware_sim.devices import DeviceLayer
from carewatch.firmware_sim.household import SensorEvent
from carewatch.firmware_sim.physiology import ManualObservation, VitalSample
from carewatch.firmware_sim.scenarios import DeviceFault, GatewayOutage
from carewatch.firmware_sim.transport import SimTransport

log = logging.getLogger(__name__)


class SimClock:
    """Simulated time: ``start`` plus ``accelerate`` × elapsed wall time; with ``catch_up`` it never passes the
    wall clock (accelerated while behind, real time once caught up)."""

    def __init__(self, start: datetime, accelerate: float, *, catch_up: bool = False) -> None:
        if start.tzinfo is None:
            raise ValueError("start must be timezone-aware")
        self.start = start
        self.accelerate = accelerate
        self.catch_up = catch_up
        self._t0 = time.monotonic()

    def __call__(self) -> datetime:
        sim = self.start + timedelta(seconds=(time.monotonic() - self._t0) * self.accelerate)
        if self.catch_up:
            sim = min(sim, datetime.now(UTC))
        return sim

    def wall_seconds_until(self, at: datetime) -> float:
        """Real seconds until simulated time reaches ``at`` (0 when it already has)."""
        sim = self()
        ahead = (at - sim).total_seconds()
        if ahead <= 0:
            return 0.0
        caught_up = self.catch_up and sim >= datetime.now(UTC) - timedelta(seconds=1)
        return ahead if caught_up else ahead / self.accelerate


@dataclass
class DriverCounters:
    events: int = 0
    notifications: int = 0
    manual_observations: int = 0
    faults: int = 0
    outages: int = 0
    sim_time: datetime | None = None
    by_site: dict[str, int] = field(default_factory=lambda: defaultdict(int))


class SimDriver:
    """Feeds one world's events to per-site transports, in simulated time, on a background thread."""

    def __init__(
        self,
        events: Any,
        layer: DeviceLayer,
        transports: dict[str, SimTransport],
        clock: SimClock,
        *,
        on_manual: Callable[[ManualObservation], None] | None = None,
        on_outage: Callable[[str, bool], None] | None = None,
        on_action: Callable[[Any], None] | None = None,
    ) -> None:
        self.events = events
        self.layer = layer
        self.transports = transports
        self.clock = clock
        self.on_manual = on_manual
        self.on_outage = on_outage
        self.on_action = on_action  # anything else in the stream: e.g. a simulated carer's tablet action
        self.counters = DriverCounters()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._outage_ends: list[tuple[datetime, str]] = []
        self.finished = threading.Event()

    def start(self) -> SimDriver:
        self._thread = threading.Thread(target=self._run, name="sim-driver", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _wait_until(self, at: datetime) -> bool:
        while not self._stop.is_set():
            delay = self.clock.wall_seconds_until(at)
            if delay <= 0:
                return True
            self._stop.wait(min(delay, 0.2))
        return False

    def _route(self, routed: list[tuple[str, Any]]) -> None:
        by_site: dict[str, list[Any]] = defaultdict(list)
        for site_id, item in routed:
            by_site[site_id].append(item)
        for site_id, items in by_site.items():
            transport = self.transports.get(site_id)
            if transport is None:
                continue
            transport.push(items)
            self.counters.notifications += sum(1 for i in items if hasattr(i, "data"))
            self.counters.by_site[site_id] += len(items)

    def _end_outages(self, now: datetime) -> None:
        for end, site in [o for o in self._outage_ends if o[0] <= now]:
            self._outage_ends.remove((end, site))
            if self.on_outage:
                self.on_outage(site, False)

    def _run(self) -> None:
        try:
            for event in self.events:
                if not self._wait_until(event.at):
                    break
                self._end_outages(event.at)
                self.counters.events += 1
                self.counters.sim_time = event.at
                if isinstance(event, VitalSample | SensorEvent):
                    self._route(self.layer.feed(event))
                elif isinstance(event, ManualObservation):
                    self.counters.manual_observations += 1
                    if self.on_manual:
                        try:
                            self.on_manual(event)
                        except Exception:  # a failed post must not stop the simulation
                            log.exception("manual observation could not be recorded")
                elif isinstance(event, DeviceFault):
                    self.counters.faults += 1
                    self.layer.add_fault(event)
                elif isinstance(event, GatewayOutage):
                    self.counters.outages += 1
                    self._outage_ends.append((event.end, event.site_id))
                    if self.on_outage:
                        self.on_outage(event.site_id, True)
                elif self.on_action is not None:
                    self._route(self.layer.flush())  # what the devices measured so far goes out first
                    try:
                        self.on_action(event)
                    except Exception:  # a failed tablet action must not stop the simulation
                        log.exception("simulated tablet action failed: %s", event)
            self._route(self.layer.flush())
        finally:
            for _, site in self._outage_ends:
                if self.on_outage:
                    self.on_outage(site, False)
            self.finished.set()
