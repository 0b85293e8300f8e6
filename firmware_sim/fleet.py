"""A simulated estate: one real gateway per site, fed by the simulator through :class:`SimTransport`.

Used by ``carewatch demo``, ``carewatch sim --output ble`` and ``carewatch gateway --simulate``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Collection, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from carewatch.firmware_sim.devices import DeviceLayer, SimTransport, world_devices
from carewatch.firmware_sim.driver import SimClock, SimDriver
from carewatch.firmware_sim.physiology import ManualObservation
from carewatch.settings import Settings


def gateway_id_for(site_id: str) -> str:
    return f"gw-{site_id}"


class SimFleet:
    """Gateways for ``site_ids`` (default: every site of the world) publishing to ``mqtt_url``."""

    def __init__(self, world: Any, settings: Settings, *, mqtt_url: str, outbox_dir: Path, clock: SimClock,
                 site_ids: list[str] | None = None, gateway_ids: dict[str, str] | None = None,
                 status_interval_s: float = 10.0, shared_sites: Collection[str] = ()) -> None:
        self.world = world
        self.settings = settings
        self.mqtt_url = mqtt_url
        self.outbox_dir = outbox_dir
        self.clock = clock
        self.devices = world_devices(world, shared_sites)
        self.layer = DeviceLayer(self.devices, seed=world.seed)
        self.site_ids = site_ids or [s.id for s in world.sites if s.residents] + [h.id for h in world.households]
        self.status_interval_s = status_interval_s
        self.gateway_ids = {s: (gateway_ids or {}).get(s) or gateway_id_for(s) for s in self.site_ids}
        self.gateways: dict[str, Any] = {}
        self.transports: dict[str, SimTransport] = {}
        self.first_seq: dict[str, int] = {}
        self.driver: SimDriver | None = None

    def start(self, *, end: datetime | None = None,
              on_manual: Callable[[ManualObservation], None] | None = None,
              on_action: Callable[[Any], None] | None = None,
              wrap_events: Callable[[Iterator[Any]], Iterator[Any]] | None = None) -> SimFleet:
        """Start the gateways and the simulator. ``wrap_events`` may add events to the world's stream (the
        simulated carers' tablet actions, ``firmware_sim/kit_round.py``), which go to ``on_action``."""
        from carewatch.gateway.service import Gateway

        for site_id in self.site_ids:
            gw_id = self.gateway_ids[site_id]
            gw_settings = self.settings.model_copy(update={
                "site_id": site_id, "gateway_id": gw_id, "mqtt_url": self.mqtt_url,
                "outbox_path": self.outbox_dir / f"{gw_id}.sqlite", "device_registry": None,
            })
            transport = SimTransport()
            gateway = Gateway(gw_settings, transport, registry=self.layer.registry(site_id), clock=self.clock,
                              status_interval_s=self.status_interval_s)
            gateway.start()
            transport.wait_ready()
            self.first_seq[gw_id] = gateway.counters.last_seq + 1
            self.gateways[site_id] = gateway
            self.transports[site_id] = transport
        stop_at = end or self.clock.start + timedelta(days=3650)
        events = self.world.events(self.clock.start, stop_at)
        self.driver = SimDriver(wrap_events(events) if wrap_events else events, self.layer, self.transports,
                                self.clock, on_manual=on_manual, on_outage=self._outage, on_action=on_action).start()
        return self

    def _outage(self, site_id: str, down: bool) -> None:
        gateway = self.gateways.get(site_id)
        if gateway is not None:
            gateway.set_uplink(not down)

    def published_ranges(self) -> dict[str, tuple[int, int]]:
        """Per gateway: the first and last sequence number this fleet's run put in the outbox."""
        return {self.gateway_ids[s]: (self.first_seq[self.gateway_ids[s]], g.counters.last_seq)
                for s, g in self.gateways.items()}

    def drain(self, timeout: float = 120) -> bool:
        """Stop the simulator and wait until every gateway's outbox is empty. True when all drained."""
        if self.driver is not None:
            self.driver.stop()
        for transport in self.transports.values():
            transport.close()
        deadline = time.monotonic() + timeout
        for gateway in self.gateways.values():
            gateway.set_uplink(True)
        for gateway in self.gateways.values():
            while gateway.counters.outbox_depth > 0 and time.monotonic() < deadline:
                time.sleep(0.2)
        return all(g.counters.outbox_depth == 0 for g in self.gateways.values())

    def stop(self) -> None:
        if self.driver is not None:
            self.driver.stop()
        for gateway in self.gateways.values():
            with contextlib.suppress(Exception):
                gateway.stop(timeout=15)
