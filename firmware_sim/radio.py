"""The virtual radio: simulated devices as Bumble peripherals on a virtual link, and a gateway's Bluetooth
controller on the same link, reached over HCI.

:class:`VirtualRadio` runs its own thread and event loop holding a Bumble ``LocalLink``, one peripheral or
broadcaster per registered device (``firmware_sim/peripherals.py``), and an HCI server on 127.0.0.1: each client
that connects (a gateway's Bumble host, ``BumbleTransport('tcp-client:127.0.0.1:<port>')``) gets its own emulated
controller on the link, exactly as it would get a USB dongle's controller. So the gateway runs the same Bumble host
code, scanning, connecting, pairing and subscribing through real HCI packets, as it would on a dongle; only the
radio underneath is emulated.

It is fed like :class:`~carewatch.firmware_sim.transport.SimTransport` (``push`` of the device layer's
notifications, from any thread): each frame goes to its device, which sends it when the link allows.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Coroutine, Iterable
from typing import Any, TypeVar

from bumble import hci
from bumble.controller import Controller
from bumble.link import LocalLink
from bumble.transport.common import StreamPacketSource

from carewatch.firmware_sim.peripherals import Broadcaster, Node, Peripheral, node_for
from carewatch.gateway.transport import Notification, TransportEvent
from carewatch.registry import DeviceRegistry, RegisteredDevice

T = TypeVar("T")
FLAP_MIN_S = 1.0  # a disconnect storm drops a device's link at most once a second


class _GatewayController(Controller):
    """A gateway's emulated controller. Passive scanning gets no scan responses (Bumble's emulator reports one for
    every advert regardless, which doubled the host's advert work for nothing)."""

    passive = False

    def on_hci_le_set_scan_parameters_command(self, command: hci.HCI_LE_Set_Scan_Parameters_Command) -> Any:
        self.passive = command.le_scan_type == 0
        return super().on_hci_le_set_scan_parameters_command(command)

    def on_hci_le_set_extended_scan_parameters_command(
            self, command: hci.HCI_LE_Set_Extended_Scan_Parameters_Command) -> Any:
        self.passive = all(scan_type == 0 for scan_type in command.scan_types)
        return super().on_hci_le_set_extended_scan_parameters_command(command)

    def on_hci_le_create_connection_cancel_command(
            self, command: hci.HCI_LE_Create_Connection_Cancel_Command) -> Any:
        """A cancelled connection attempt ends with an LE Connection Complete event of status Unknown Connection
        Identifier (Core spec Vol 4, Part E, 7.8.13), after the command's own Command Complete. Bumble's emulator
        sent none and kept the attempt pending, so the host's connect waited for it forever after a timeout."""
        result = super().on_hci_le_create_connection_cancel_command(command)
        pending, self.pending_le_connection = self.pending_le_connection, None
        if pending is not None:
            event = hci.HCI_LE_Connection_Complete_Event(
                status=hci.HCI_ErrorCode.UNKNOWN_CONNECTION_IDENTIFIER_ERROR, connection_handle=0,
                role=hci.Role.CENTRAL, peer_address_type=pending.peer_address_type, peer_address=pending.peer_address,
                connection_interval=0, peripheral_latency=0, supervision_timeout=0, central_clock_accuracy=0)
            asyncio.get_running_loop().call_soon(self.send_hci_packet, event)  # after the Command Complete
        return result

    def send_hci_packet(self, packet: hci.HCI_Packet) -> None:
        reports = getattr(packet, "reports", None) if isinstance(packet, _REPORTS) else None
        if self.passive and reports and all(r.event_type in _SCAN_RESPONSES for r in reports):
            return
        super().send_hci_packet(packet)


_REPORTS = (hci.HCI_LE_Extended_Advertising_Report_Event, hci.HCI_LE_Advertising_Report_Event)
_SCAN_RESPONSES = {hci.HCI_LE_Extended_Advertising_Report_Event.EventType.SCAN_RESPONSE,
                   hci.HCI_LE_Advertising_Report_Event.EventType.SCAN_RSP}


class _HciClient(asyncio.Protocol):
    """One gateway host: its own emulated controller on the link, HCI packets (H4) over the TCP stream."""

    def __init__(self, radio: VirtualRadio) -> None:
        self.radio = radio
        self.source = StreamPacketSource()
        self.controller: Controller | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.controller = _GatewayController(f"gateway-{len(self.radio.hosts)}", host_source=self.source,
                                     host_sink=self, link=self.radio.link)
        self.radio.hosts.append(self)

    def on_packet(self, packet: bytes) -> None:  # the controller's output, to the host
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(packet)

    def data_received(self, data: bytes) -> None:
        self.source.data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        """The gateway went away: its controller leaves the link, and its connections with it."""
        self.transport = None
        if self.controller is not None:
            for connection in list(self.controller.le_connections.values()):
                with contextlib.suppress(Exception):
                    self.controller.on_le_disconnected(connection, 0x08)  # connection timeout
                peer = self.radio.link.find_le_controller(connection.peer_address)
                if peer is not None and connection.self_address in peer.le_connections:
                    with contextlib.suppress(Exception):
                        peer.on_le_disconnected(peer.le_connections[connection.self_address], 0x08)
            with contextlib.suppress(KeyError):
                self.radio.link.remove_controller(self.controller)
        with contextlib.suppress(ValueError):
            self.radio.hosts.remove(self)


class VirtualRadio:
    """Devices of ``registry`` on a virtual link, with an HCI server for gateways; start it, point a
    ``BumbleTransport`` at :attr:`hci_transport`, ``push`` frames, ``close``."""

    def __init__(self, registry: DeviceRegistry | Iterable[RegisteredDevice], *, pairing_mode: bool = True,
                 bthome_repeats: int = 2) -> None:
        self.devices = list(registry)
        self.pairing_mode = pairing_mode
        self.bthome_repeats = bthome_repeats
        self.link = LocalLink()
        self.nodes: dict[str, Node] = {}
        self.hosts: list[_HciClient] = []
        self.port = 0
        self.pushed = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._last_flap: dict[str, float] = {}

    # -- lifecycle -----------------------------------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> VirtualRadio:
        self._thread = threading.Thread(target=self._run, name="virtual-radio", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("the virtual radio did not start in time")
        if self._error is not None:
            raise RuntimeError(f"the virtual radio failed to start: {self._error}") from self._error
        return self

    @property
    def hci_transport(self) -> str:
        """The Bumble transport name a gateway uses to reach its controller on this link."""
        return f"tcp-client:127.0.0.1:{self.port}"

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        for device in self.devices:
            node = node_for(self.link, device, pairing_mode=self.pairing_mode)
            if isinstance(node, Broadcaster):
                node.repeats = self.bthome_repeats
            self.nodes[device.address] = node
        await asyncio.gather(*(n.start() for n in self.nodes.values() if isinstance(n, Peripheral)))
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        self.port = sock.getsockname()[1]
        server = await self._loop.create_server(lambda: _HciClient(self), sock=sock)
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            server.close()
            for host in list(self.hosts):
                if host.transport is not None:
                    host.transport.close()
            await asyncio.gather(*(n.stop() for n in self.nodes.values() if isinstance(n, Peripheral)),
                                 return_exceptions=True)

    def close(self, timeout: float = 10.0) -> None:
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> VirtualRadio:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- feeding it ----------------------------------------------------------------------------------------
    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        """Run ``coro`` in the radio's loop (from another thread) and return its result."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def push(self, items: Iterable[Notification | TransportEvent]) -> None:
        """Frames from the device layer (any thread): each to its device, which sends it when it can. A link
        event from a disconnect storm drops that device's link (at most once a second)."""
        if self._loop is None:
            raise RuntimeError("VirtualRadio is not running yet (start it first)")
        batch = list(items)
        self.pushed += sum(1 for i in batch if isinstance(i, Notification))
        self._loop.call_soon_threadsafe(self._deliver, batch)

    def _deliver(self, items: list[Notification | TransportEvent]) -> None:
        for item in items:
            node = self.nodes.get(item.address)
            if node is None:
                continue
            if isinstance(item, Notification):
                node.send(item.source, item.data)
            elif item.kind == "disconnected" and isinstance(node, Peripheral):
                now = time.monotonic()
                if now - self._last_flap.get(item.address, 0.0) >= FLAP_MIN_S:
                    self._last_flap[item.address] = now
                    asyncio.get_running_loop().create_task(node.drop())

    def waiting(self) -> int:
        """Frames still in the devices' memories (not yet sent, or not yet confirmed)."""
        return sum(node.waiting() for node in self.nodes.values())

    def flush(self, timeout: float = 60.0) -> bool:
        """Wait until every device has sent what it was given (True), or ``timeout`` passed (False)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._loop is not None:
                with contextlib.suppress(Exception):
                    if self.call(self._waiting(), timeout=5) == 0:
                        return True
            time.sleep(0.05)
        return False

    async def _waiting(self) -> int:
        return self.waiting()

    def peripheral(self, address: str) -> Peripheral:
        node = self.nodes[address]
        assert isinstance(node, Peripheral)
        return node

    def node(self, address: str) -> Node:
        return self.nodes[address]
