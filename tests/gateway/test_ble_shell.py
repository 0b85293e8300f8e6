"""What the bleak transport does with what the radio hands it, without a radio.

``gateway/ble.py`` has never run against a Bluetooth adapter (there is none here; see docs/gateway.md). Its
scanning and connecting are bleak's and BlueZ's; everything between bleak's callbacks and the pipeline is ours and
is exercised here with real byte frames from the external conformance vectors: the advert callback with bleak's own
``BLEDevice``/``AdvertisementData``, the GATT notification callback, per-device in-order queues, and flooding; and
the connection loop (backoff, per-characteristic subscription, battery reads, start commands) with a fake client
at bleak's boundary, holding bleak's own service and characteristic objects, on a virtual clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
import structlog
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak.backends.service import BleakGATTService, BleakGATTServiceCollection
from bleak.exc import BleakError
from conformance import load_conformance

from carewatch.gateway.ble import BleakTransport
from carewatch.gateway.pipeline import Pipeline
from carewatch.gateway.transport import Backoff, Notification, RateLimiter, TransportEvent, short_uuid, uuid128
from carewatch.registry import DeviceRegistry, RegisteredDevice
from carewatch.wire import DeviceKind, Metric

AT = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
OXIMETER, CHEAP, SEALED, OPEN, STRANGER = (
    "A4:C1:38:20:00:01", "A4:C1:38:20:00:02", "54:48:E6:8F:80:A5", "A4:C1:38:8D:18:B2", "A4:C1:38:20:00:99")


def _case(name: str, case_id: str) -> dict[str, Any]:
    return next(c for c in load_conformance(name)["cases"] if c["id"] == case_id)


@pytest.fixture
def vectors() -> dict[str, dict[str, Any]]:
    return {
        "plx": _case("gatt_cases.json", "plx-spot-unidentified-dart"),
        "sealed": _case("bthome_cases.json", "bthome-v2-032"),  # AES-CCM, bind key verified
        "open": _case("bthome_cases.json", "bthome-v2-048"),  # battery, temperature, humidity
        "berrymed": _case("oximeter_proprietary_cases.json", "bm-valid-1"),
    }


def registry(vectors: dict[str, dict[str, Any]]) -> DeviceRegistry:
    return DeviceRegistry([
        RegisteredDevice(address=OXIMETER, device_id="ox-1", kind=DeviceKind.PULSE_OXIMETER, resident_id="r-1"),
        RegisteredDevice(address=CHEAP, device_id="ox-bci", kind=DeviceKind.PULSE_OXIMETER, source="berrymed",
                         resident_id="r-1"),
        RegisteredDevice(address=SEALED, device_id="climate-1", kind=DeviceKind.CLIMATE_SENSOR, room="lounge",
                         bind_key=vectors["sealed"]["bindkey_hex"]),
        RegisteredDevice(address=OPEN, device_id="climate-2", kind=DeviceKind.CLIMATE_SENSOR, room="bedroom"),
    ])


def advert(service_uuid16: str, data_hex: str, rssi: int = -67) -> AdvertisementData:
    return AdvertisementData(local_name=None, manufacturer_data={}, platform_data=(),
                             service_data={uuid128(service_uuid16): bytes.fromhex(data_hex)},
                             service_uuids=[uuid128(service_uuid16)], tx_power=None, rssi=rssi)


class Sink:
    """deliver/on_event for the transport: each notification through the real pipeline."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.notes: list[Notification] = []
        self.events: list[TransportEvent] = []
        self.readings: dict[str, dict[Metric, float]] = {}
        self.dead: list[str] = []

    async def deliver(self, note: Notification) -> None:
        self.notes.append(note)
        result = self.pipeline.process(note)
        for draft in result.drafts:
            self.readings.setdefault(draft.device_id, {})[draft.metric] = draft.value
        self.dead.extend(d.reason for d in result.dead_letters)

    async def on_event(self, event: TransportEvent) -> None:
        self.events.append(event)


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def _cancel(tasks: list[asyncio.Task[Any]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _feed_and_settle(transport: BleakTransport, reg: DeviceRegistry, sink: Sink, feed: Callable[[], None]) -> None:
    """Start the transport's consumers, feed it, let the queues drain, then stop the consumers."""
    async def scenario() -> None:
        tasks = transport.start_consumers(reg, sink.deliver)
        try:
            feed()
            await _settle()
        finally:
            await _cancel(tasks)

    asyncio.run(scenario())


def test_adverts_and_notifications_reach_the_pipeline_as_readings(vectors: dict[str, dict[str, Any]]) -> None:
    reg = registry(vectors)
    sink = Sink(Pipeline(reg))
    transport = BleakTransport(clock=lambda: AT)

    def feed() -> None:
        for address, case in ((SEALED, vectors["sealed"]), (OPEN, vectors["open"]), (STRANGER, vectors["open"])):
            transport.on_advert(reg, BLEDevice(address, None, None), advert(case["service_uuid16"],
                                                                              case["service_data_hex"]),
                                sink.on_event)
        plx = reg.get(OXIMETER)
        assert plx is not None
        transport.notification_handler(plx, "00002a5e-0000-1000-8000-00805f9b34fb", sink.on_event)(
            None, bytearray.fromhex(vectors["plx"]["bytes_hex"]))
        cheap = reg.get(CHEAP)
        assert cheap is not None
        on_uart = transport.notification_handler(cheap, "49535343-1e4d-4bd9-ba61-23c647249616", sink.on_event)
        for chunk in vectors["berrymed"]["bytes_hex"].split("|"):
            on_uart(None, bytearray.fromhex(chunk))

    _feed_and_settle(transport, reg, sink, feed)
    assert {(n.address, n.source) for n in sink.notes} == {
        (SEALED, "bthome"), (OPEN, "bthome"), (OXIMETER, "2a5e"), (CHEAP, "berrymed")}  # the stranger is ignored
    assert sink.readings["climate-1"] == {Metric.ROOM_TEMPERATURE: 25.06, Metric.HUMIDITY: 50.55}  # decrypted
    assert sink.readings["climate-2"] == {Metric.BATTERY: 93, Metric.ROOM_TEMPERATURE: 23.97, Metric.HUMIDITY: 63.27}
    assert sink.readings["ox-1"] == {Metric.SPO2: 97, Metric.PULSE_RATE: 72}
    assert sink.readings["ox-bci"][Metric.SPO2] == vectors["berrymed"]["expected"]["spo2"]
    assert sink.dead == []
    seen = {e.address: e.rssi for e in sink.events if e.kind == "seen"}
    assert seen == {SEALED: -67, OPEN: -67}


def test_a_flooding_device_loses_its_own_excess_and_nobody_elses(vectors: dict[str, dict[str, Any]]) -> None:
    reg = registry(vectors)
    sink = Sink(Pipeline(reg))
    transport = BleakTransport(clock=lambda: AT, rate_limiter=RateLimiter(rate_per_s=5, burst=20,
                                                                                 monotonic=lambda: 0.0))
    frame = bytearray.fromhex(vectors["plx"]["bytes_hex"])

    def feed() -> None:
        ox, other = reg.get(OXIMETER), reg.get(OPEN)
        assert ox is not None and other is not None
        flood = transport.notification_handler(ox, "2a5e", sink.on_event)
        for _ in range(500):
            flood(None, frame)
        transport.on_advert(reg, BLEDevice(OPEN, None, None),
                            advert("fcd2", vectors["open"]["service_data_hex"]), sink.on_event)

    _feed_and_settle(transport, reg, sink, feed)
    from_flood = [n for n in sink.notes if n.address == OXIMETER]
    assert len(from_flood) == 20  # the burst; time stands still, so nothing more
    assert [n.address for n in sink.notes if n.address == OPEN] == [OPEN]
    limited = [e for e in sink.events if e.kind == "rate_limited"]
    assert [e.detail for e in limited] == ["1 notifications dropped", "10 notifications dropped",
                                           "100 notifications dropped"]  # said, without flooding the log in turn
    assert all(e.address == OXIMETER for e in limited)
    assert "climate-2" in sink.readings


# ------------------------------------------------------------------------------------------------------------
# The connection loop, with a fake client at bleak's boundary (bleak's own service and characteristic objects)
# ------------------------------------------------------------------------------------------------------------
GATT_OX, THERMO, EMAY, RING = "A4:C1:38:40:00:01", "A4:C1:38:40:00:02", "A4:C1:38:40:00:03", "A4:C1:38:40:00:04"


def gatt_services(*chars: tuple[str, list[str]]) -> BleakGATTServiceCollection:
    """A device's GATT table as bleak builds it: (UUID, properties) per characteristic."""
    collection = BleakGATTServiceCollection()
    service = BleakGATTService(None, 1, uuid128("1822"))
    collection.add_service(service)
    for handle, (uuid, properties) in enumerate(chars, start=2):
        collection.add_characteristic(BleakGATTCharacteristic(None, handle, uuid128(uuid), properties,  # type: ignore[arg-type]
                                                              lambda: 20, service))
    return collection


class FakeClient:
    """What ``establish_connection`` returns, minus the radio: records subscriptions, reads and writes."""

    def __init__(self, services: BleakGATTServiceCollection, *, notify_fails: tuple[str, ...] = (),
                 reads: dict[str, bytes] | None = None) -> None:
        self.services = services
        self.notify_fails = set(notify_fails)
        self.reads = reads or {}
        self.handlers: dict[str, Any] = {}
        self.writes: list[tuple[str, bytes, bool | None]] = []
        self.read_count = 0
        self.disconnects = 0
        self.on_disconnected: Any = None

    async def start_notify(self, char: BleakGATTCharacteristic, callback: Any) -> None:
        if short_uuid(char.uuid) in self.notify_fails:
            raise BleakError("[org.bluez.Error.NotPermitted] Notify acquired")
        self.handlers[short_uuid(char.uuid)] = callback

    async def read_gatt_char(self, char: BleakGATTCharacteristic) -> bytearray:
        self.read_count += 1
        return bytearray(self.reads[short_uuid(char.uuid)])

    async def write_gatt_char(self, char: BleakGATTCharacteristic, data: bytes, response: bool | None = None) -> None:
        self.writes.append((short_uuid(char.uuid), bytes(data), response))

    async def disconnect(self) -> None:
        self.disconnects += 1

    def notify(self, uuid: str, hex_frame: str) -> None:
        self.handlers[uuid](None, bytearray.fromhex(hex_frame))

    def drop(self) -> None:
        """The link is lost (out of range, battery out): bleak calls the disconnected callback."""
        self.on_disconnected(self)


class FakeRadio:
    """``connect`` for the transport: each attempt takes the next scripted outcome (an error or a client)."""

    def __init__(self, *outcomes: BaseException | FakeClient) -> None:
        self.outcomes = list(outcomes)
        self.attempts: list[str] = []

    async def connect(self, device: RegisteredDevice, current: Any, on_disconnected: Any) -> FakeClient:
        assert isinstance(current(), BLEDevice)  # connected to what was advertised
        self.attempts.append(device.device_id)
        if not self.outcomes:
            await asyncio.Event().wait()  # nothing scripted: a connection attempt that never ends
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        outcome.on_disconnected = on_disconnected
        return outcome


class VirtualClock:
    """``sleep``/``monotonic`` for the transport: time moves only when everything runnable has run."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((self.now + seconds, future))
        await future

    async def run_until(self, done: Any, *, tick: Any = None, limit: int = 200) -> None:
        """Let tasks run (calling ``tick`` each round, e.g. to advertise); when all wait, jump to the next timer."""
        for _ in range(limit):
            for _ in range(30):
                if tick is not None:
                    tick()
                await asyncio.sleep(0)
            if done():
                return
            self._sleepers = [(at, f) for at, f in self._sleepers if not f.done()]
            if self._sleepers:
                self.now = max(self.now, min(at for at, _ in self._sleepers))
                for at, future in self._sleepers:
                    if at <= self.now:
                        future.set_result(None)
        raise AssertionError("the transport never got there")


class Rig:
    """A transport wired to a fake radio, a virtual clock and the real pipeline."""

    def __init__(self, devices: list[RegisteredDevice], radio: FakeRadio) -> None:
        self.registry = DeviceRegistry(devices)
        self.sink = Sink(Pipeline(self.registry))
        self.clock = VirtualClock()
        self.transport = BleakTransport(
            clock=lambda: AT, connect=radio.connect, sleep=self.clock.sleep, monotonic=self.clock.monotonic,
            backoff=lambda: Backoff(base=1.0, cap=8.0, rand=lambda: 1.0), stable_s=30.0)

    def advertise(self) -> None:
        for device in self.registry:
            self.transport.on_advert(self.registry, BLEDevice(device.address, None, None), advert("1822", ""),
                                     self.sink.on_event)

    def kinds(self, address: str) -> list[str]:
        return [e.kind for e in self.sink.events if e.address == address and e.kind != "seen"]

    def run(self, script: Any) -> None:
        async def main() -> None:
            tasks = self.transport.start_consumers(self.registry, self.sink.deliver)
            tasks += [asyncio.create_task(self.transport.maintain(d, self.sink.on_event)) for d in self.registry]
            try:
                await script(self)
            finally:
                await _cancel(tasks)

        asyncio.run(main())


def test_reconnect_backoff_grows_on_failures_and_resets_after_a_stable_connection(
        vectors: dict[str, dict[str, Any]]) -> None:
    stable, flaky = (FakeClient(gatt_services(("2a5e", ["indicate"]))) for _ in range(2))
    radio = FakeRadio(BleakError("le-connection-abort-by-local"), TimeoutError("connect timed out"), stable, flaky)
    rig = Rig([RegisteredDevice(address=GATT_OX, device_id="ox-1", kind=DeviceKind.PULSE_OXIMETER,
                                resident_id="r-1", characteristics=("2a5e",))], radio)

    async def script(rig: Rig) -> None:
        await rig.clock.run_until(lambda: "2a5e" in stable.handlers, tick=rig.advertise)
        assert rig.clock.sleeps == [1.0, 2.0]  # two failures: the delay doubles
        stable.notify("2a5e", vectors["plx"]["bytes_hex"])
        rig.clock.now += 45.0  # up longer than stable_s
        stable.drop()
        await rig.clock.run_until(lambda: "2a5e" in flaky.handlers, tick=rig.advertise)
        assert rig.clock.sleeps == [1.0, 2.0, 1.0]  # it had worked for a while: back to the first delay
        flaky.drop()  # dropped at once: not stable, so the next delay grows again
        await rig.clock.run_until(lambda: len(radio.attempts) == 5, tick=rig.advertise)
        assert rig.clock.sleeps == [1.0, 2.0, 1.0, 2.0]

    rig.run(script)
    assert rig.kinds(GATT_OX)[:6] == ["error", "error", "connected", "disconnected", "connected", "disconnected"]
    assert [e.detail for e in rig.sink.events if e.kind == "error"] == ["le-connection-abort-by-local",
                                                                        "connect timed out"]
    assert stable.disconnects == flaky.disconnects == 1
    assert rig.sink.readings["ox-1"] == {Metric.SPO2: 97, Metric.PULSE_RATE: 72}  # real frame, real pipeline


def test_characteristics_it_lacks_or_cannot_notify_are_skipped_once_and_battery_is_read() -> None:
    def oximeter() -> FakeClient:  # default characteristics 2a5e, 2a5f, 2a19
        return FakeClient(gatt_services(("2a5e", ["indicate"]), ("2a5f", ["notify"]), ("2a19", ["read"])),
                          notify_fails=("2a5f",), reads={"2a19": b"\x37"})

    def thermometer() -> FakeClient:  # default 2a1c, 2a19: no battery service at all
        return FakeClient(gatt_services(("2a1c", ["indicate"])))

    made: dict[str, list[FakeClient]] = {GATT_OX: [], THERMO: []}

    class Radio(FakeRadio):
        """A fresh client (the same device) on every connection."""

        async def connect(self, device: RegisteredDevice, current: Any, on_disconnected: Any) -> FakeClient:
            made[device.address].append(oximeter() if device.address == GATT_OX else thermometer())
            self.outcomes = [made[device.address][-1]]
            return await super().connect(device, current, on_disconnected)

    radio = Radio()
    rig = Rig([RegisteredDevice(address=GATT_OX, device_id="ox-1", kind=DeviceKind.PULSE_OXIMETER, resident_id="r-1"),
               RegisteredDevice(address=THERMO, device_id="th-1", kind=DeviceKind.THERMOMETER, resident_id="r-1")],
              radio)

    def first(address: str) -> FakeClient | None:
        return made[address][0] if made[address] else None

    async def script(rig: Rig) -> None:
        await rig.clock.run_until(lambda: (ox := first(GATT_OX)) is not None and ox.read_count >= 1
                                  and (th := first(THERMO)) is not None and "2a1c" in th.handlers,
                                  tick=rig.advertise)
        ox, th = made[GATT_OX][0], made[THERMO][0]
        await rig.clock.run_until(lambda: ox.read_count >= 2)  # read again an hour later, still connected
        ox.drop()
        th.drop()
        await rig.clock.run_until(lambda: len(made[GATT_OX]) == len(made[THERMO]) == 2
                                  and "2a5e" in made[GATT_OX][1].handlers and "2a1c" in made[THERMO][1].handlers,
                                  tick=rig.advertise)

    with structlog.testing.capture_logs() as logs:
        rig.run(script)
    skipped = sorted((e["device_id"], e["uuid"], e["reason"].split(" (")[0].split(":")[0]) for e in logs
                     if e["event"] == "characteristic_skipped")
    # once each, across both connections; never a reason to drop the link
    assert skipped == [("ox-1", "2a19", "cannot notify"), ("ox-1", "2a5f", "start_notify failed"),
                       ("th-1", "2a19", "absent")]
    assert all(set(c.handlers) == {"2a5e"} for c in made[GATT_OX])
    assert all(set(c.handlers) == {"2a1c"} for c in made[THERMO])
    assert rig.kinds(GATT_OX)[:3] == ["connected", "disconnected", "connected"]  # no error, no reconnect storm
    assert rig.kinds(THERMO)[:3] == ["connected", "disconnected", "connected"]
    assert rig.sink.readings["ox-1"] == {Metric.BATTERY: 55}  # the battery, read through the real pipeline
    assert 3600.0 in rig.clock.sleeps


def test_emay_gets_its_start_sequence_and_heartbeat() -> None:
    commands = _case("oximeter_proprietary_cases.json", "emay-commands")["expected"]
    frame = _case("oximeter_proprietary_cases.json", "emay-valid")
    client = FakeClient(gatt_services(("ff02", ["notify"]), ("ff01", ["write", "write-without-response"])))
    rig = Rig([RegisteredDevice(address=EMAY, device_id="ox-emay", kind=DeviceKind.PULSE_OXIMETER,
                                source="emay", resident_id="r-1")], FakeRadio(client))

    async def script(rig: Rig) -> None:
        await rig.clock.run_until(lambda: len(client.writes) >= 6, tick=rig.advertise)
        client.notify("ff02", frame["bytes_hex"])
        await rig.clock.run_until(lambda: "ox-emay" in rig.sink.readings)

    rig.run(script)
    sent = [(uuid, data.hex(), response) for uuid, data, response in client.writes[:6]]
    assert sent == [("ff01", commands[name], True) for name in
                    ("HELLO", "DEVICE_STATE", "START_REALTIME", "GET_BATTERY", "HEARTBEAT", "HEARTBEAT")]
    assert set(client.handlers) == {"ff02"} and rig.clock.sleeps[:2] == [1.5, 1.5]
    assert rig.sink.readings["ox-emay"] == {Metric.SPO2: 98, Metric.PULSE_RATE: 62}


def test_o2ring_is_polled_and_a_device_without_its_command_channel_is_retried_with_backoff() -> None:
    worn = _case("oximeter_proprietary_cases.json", "o2ring-worn")
    no_write = FakeClient(gatt_services(("0734594a-a8e7-4b1a-a6b1-cd5243059a57", ["notify"])))
    ring = FakeClient(gatt_services(("0734594a-a8e7-4b1a-a6b1-cd5243059a57", ["notify"]),
                                    ("8b00ace7-eb0b-49b0-bbe9-9aee0a26e1a3", ["write-without-response"])))
    radio = FakeRadio(no_write, ring)
    rig = Rig([RegisteredDevice(address=RING, device_id="ring-1", kind=DeviceKind.PULSE_OXIMETER,
                                source="o2ring", resident_id="r-1")], radio)

    async def script(rig: Rig) -> None:
        await rig.clock.run_until(lambda: len(ring.writes) >= 2, tick=rig.advertise)
        ring.notify("0734594a-a8e7-4b1a-a6b1-cd5243059a57", worn["bytes_hex"])
        await rig.clock.run_until(lambda: "ring-1" in rig.sink.readings)

    rig.run(script)
    [error] = [e.detail for e in rig.sink.events if e.kind == "error"]
    assert "no characteristic 8b00ace7-eb0b-49b0-bbe9-9aee0a26e1a3" in error and no_write.disconnects == 1
    assert rig.clock.sleeps[0] == 1.0  # backoff before the next attempt, then the ring that works
    assert ring.writes[:2] == [("8b00ace7-eb0b-49b0-bbe9-9aee0a26e1a3", bytes.fromhex("aa17e8000000001b"), False)] * 2
    assert 2.0 in rig.clock.sleeps
    assert rig.sink.readings["ring-1"] == {Metric.SPO2: 97, Metric.PULSE_RATE: 72, Metric.BATTERY: 85}


def test_a_device_with_nothing_to_subscribe_is_an_error_not_a_crash() -> None:
    client = FakeClient(gatt_services(("2a5e", ["read"])))  # PLX that can only be read: nothing to listen to
    radio = FakeRadio(client)
    rig = Rig([RegisteredDevice(address=GATT_OX, device_id="ox-1", kind=DeviceKind.PULSE_OXIMETER,
                                resident_id="r-1", characteristics=("2a5e",))], radio)

    async def script(rig: Rig) -> None:
        await rig.clock.run_until(lambda: len(radio.attempts) == 2, tick=rig.advertise)

    rig.run(script)
    assert rig.kinds(GATT_OX)[:3] == ["connected", "error", "disconnected"]
    assert "none of 2a5e can be subscribed" in next(e.detail for e in rig.sink.events if e.kind == "error")
