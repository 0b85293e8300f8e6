"""A simulated estate: one real gateway per site, fed by the simulator through :class:`SimTransport`, or (``radio=
"virtual"``) through a :class:`~carewatch.firmware_sim.radio.VirtualRadio` per site, whose devices are Bumble
peripherals the gateway reads with its Bumble backend.

Used by ``carewatch demo`` (``--radio virtual``), ``carewatch sim --output ble`` and ``carewatch gateway --simulate``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Collection, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from carewatch.firmware_sim.devices import DeviceLayer, world_devices
from carewatch.firmware_sim.driver import SimClock, SimDriver
from carewatch.firmware_sim.physiology import ManualObservation
from carewatch.firmware_sim.transport import SimTransport
from carewatch.settings import Settings

log = logging.getLogger(__name__)


def gateway_id_for(site_id: str) -> str:
    return f"gw-{site_id}"


class SimFleet:
    """Gateways for ``site_ids`` (default: every site of the world) publishing to ``mqtt_url``."""

    def __init__(self, world: Any, settings: Settings, *, mqtt_url: str, outbox_dir: Path, clock: SimClock,
                 site_ids: list[str] | None = None, gateway_ids: dict[str, str] | None = None,
                 status_interval_s: float = 10.0, shared_sites: Collection[str] = (),
                 radio: str = "bytes", practice_dsn: str | None = None) -> None:
        self.world = world
        self.radio = radio
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
        self.transports: dict[str, Any] = {}  # what the driver pushes to: a SimTransport or a VirtualRadio
        self.radio_transports: dict[str, Any] = {}  # the gateways' BumbleTransports (virtual radio)
        self.first_seq: dict[str, int] = {}
        self.driver: SimDriver | None = None
        # Practice mode: each care home's practice kit, played in real time for trainees (firmware_sim/practice.py).
        self.practice_dsn = practice_dsn if radio == "bytes" else None
        self.practice_homes = [s.id for s in world.sites if s.residents and s.id in self.site_ids]
        self._practice_stop = threading.Event()
        self._practice_thread: threading.Thread | None = None

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
            registry = self.layer.registry(site_id)
            if self.practice_dsn and site_id in self.practice_homes:
                from carewatch.firmware_sim.practice import practice_devices
                from carewatch.registry import DeviceRegistry

                registry = DeviceRegistry([*registry.devices, *(d.registered() for d in practice_devices(site_id))])
            if self.radio == "virtual":
                gateway, feed = self._virtual_site(site_id, gw_id, gw_settings, registry)
            else:
                feed = SimTransport()
                gateway = Gateway(gw_settings, feed, registry=registry, clock=self.clock,
                                  status_interval_s=self.status_interval_s)
                gateway.start()
                feed.wait_ready()
            self.first_seq[gw_id] = gateway.counters.last_seq + 1
            self.gateways[site_id] = gateway
            self.transports[site_id] = feed
        if self.practice_dsn and self.practice_homes:
            self._start_practice()
        stop_at = end or self.clock.start + timedelta(days=3650)
        events = self.world.events(self.clock.start, stop_at)
        self.driver = SimDriver(wrap_events(events) if wrap_events else events, self.layer, self.transports,
                                self.clock, on_manual=on_manual, on_outage=self._outage, on_action=on_action).start()
        return self

    def _start_practice(self) -> None:
        """Register each home's practice kit behind its gateway and measure the practice resident whenever a trainee
        opens a practice session (looked at every 2 s)."""
        from functools import partial

        import psycopg

        from carewatch.firmware_sim.practice import PracticeKit, register_practice_kit

        assert self.practice_dsn is not None
        with psycopg.connect(self.practice_dsn) as conn:
            for site_id in self.practice_homes:
                register_practice_kit(conn, site_id, self.gateway_ids[site_id])
        kits = [PracticeKit(site_id, partial(psycopg.connect, self.practice_dsn), self.transports[site_id].push,
                            seed=self.world.seed) for site_id in self.practice_homes]

        def run() -> None:
            while not self._practice_stop.wait(2.0):
                for kit in kits:
                    try:
                        kit.poll(self.clock())
                    except Exception:  # the database away a moment: look again next time
                        log.warning("practice kit of %s could not look for a session", kit.site_id, exc_info=True)

        self._practice_thread = threading.Thread(target=run, name="practice-kits", daemon=True)
        self._practice_thread.start()

    def _virtual_site(self, site_id: str, gw_id: str, gw_settings: Settings, registry: Any) -> tuple[Any, Any]:
        """The site's devices as Bumble peripherals on their own virtual link; the gateway reads them through its
        own emulated controller over HCI, with the Bumble backend and its bonds on disk."""
        from carewatch.firmware_sim.radio import VirtualRadio
        from carewatch.gateway.bumble_ble import BumbleTransport
        from carewatch.gateway.service import Gateway

        radio = VirtualRadio(registry).start()
        transport = BumbleTransport(radio.hci_transport, keystore=self.outbox_dir / f"{gw_id}.bonds.json",
                                    clock=self.clock)
        gateway = Gateway(gw_settings, transport, registry=registry, clock=self.clock,
                          status_interval_s=self.status_interval_s)
        gateway.start()
        deadline = time.monotonic() + 30
        while not transport.ready.is_set() and time.monotonic() < deadline:  # adverts are heard once it scans
            time.sleep(0.05)
        self.radio_transports[site_id] = transport
        return gateway, radio

    def radio_summary(self) -> dict[str, Any]:
        """What went over the virtual radio (``{"mode": "bytes"}`` without one)."""
        if self.radio != "virtual":
            return {"mode": "bytes"}
        return {"mode": "virtual",
                "frames_pushed": sum(r.pushed for r in self.transports.values()),
                "frames_waiting_in_devices": sum(r.waiting() for r in self.transports.values()),
                "repeats_ignored": sum(t.repeats.repeats for t in self.radio_transports.values()),
                "bonded_devices": sum(1 for t in self.radio_transports.values() for _ in t.bonded)}

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
        deadline = time.monotonic() + timeout
        for site_id, transport in self.transports.items():
            if self.radio == "virtual":  # every device sends what it holds; the gateway takes in what it got
                transport.flush(max(1.0, deadline - time.monotonic()))
                radio_transport = self.radio_transports[site_id]
                while radio_transport.backlog() > 0 and time.monotonic() < deadline:
                    time.sleep(0.05)
            else:
                transport.close()
        for gateway in self.gateways.values():
            gateway.set_uplink(True)
        for gateway in self.gateways.values():
            while gateway.counters.outbox_depth > 0 and time.monotonic() < deadline:
                time.sleep(0.2)
        return all(g.counters.outbox_depth == 0 for g in self.gateways.values())

    def stop(self) -> None:
        self._practice_stop.set()
        if self._practice_thread is not None:
            self._practice_thread.join(timeout=5)
        if self.driver is not None:
            self.driver.stop()
        for gateway in self.gateways.values():
            with contextlib.suppress(Exception):
                gateway.stop(timeout=15)
        if self.radio == "virtual":
            for radio in self.transports.values():
                with contextlib.suppress(Exception):
                    radio.close()
