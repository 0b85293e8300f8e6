"""The gateway's Bumble backend against the simulator's devices as Bumble peripherals on a virtual link.

Each test starts a :class:`~carewatch.firmware_sim.radio.VirtualRadio` (the devices, each with its own emulated
controller on a Bumble ``LocalLink``) and a :class:`~carewatch.gateway.bumble_ble.BumbleTransport` reaching its own
controller on that link over HCI (TCP), as it would reach a USB dongle. Everything above the radio is real:
advertising, scanning, connection, GATT discovery, CCCD writes, notifications, indications and their
confirmations, SMP pairing and encryption, the JSON key store on disk. Frames come from the simulator's encoders
(``firmware_sim/frames.py``); the byte-level path (notification straight into the pipeline) is the reference.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import timedelta
from pathlib import Path

import pytest
import structlog
from bumble import core, hci
from bumble.device import Device
from bumble.transport import open_transport
from virtual_radio import (
    AT,
    BCI,
    CUFF,
    EMAY,
    OX,
    PC60,
    RING,
    STAMP,
    STRAP,
    THERMO,
    WRONG,
    Running,
    ScaledClock,
    Sink,
    every_kind,
    frames_of_every_kind,
    in_radio,
    transport_for,
    until,
)

from carewatch.firmware_sim import frames
from carewatch.firmware_sim.radio import VirtualRadio
from carewatch.gateway.bumble_ble import GATEWAY_ADDRESS
from carewatch.gateway.link import LINK_COMMANDS
from carewatch.gateway.pipeline import Pipeline
from carewatch.gateway.transport import Notification
from carewatch.registry import DeviceRegistry, RegisteredDevice
from carewatch.wire import DeviceKind, Metric


def reading_set(drafts: list) -> list[tuple]:
    return sorted((d.device_id, d.metric.value, d.value, d.unit, d.measured_at.isoformat(), d.received_at.isoformat(),
                   tuple(sorted(f.value for f in d.flags))) for d in drafts)


def test_every_device_kind_is_found_connected_and_read_as_the_byte_level_path_reads_it() -> None:
    registry = every_kind()
    notes = frames_of_every_kind()
    reference = Pipeline(registry)
    expected = [d for n in notes for d in reference.process(n).drafts]
    sink = Sink(registry)

    async def scenario(radio: VirtualRadio) -> None:
        async with Running(transport_for(radio), registry, sink):
            radio.push(notes)
            await until(lambda: len(sink.drafts) >= len(expected) and len(sink.dead) >= 1, what="every reading")
            await asyncio.sleep(0.3)  # nothing more may come

    with VirtualRadio(registry) as radio:
        asyncio.run(scenario(radio))
        emay_writes = [data for _, data in radio.peripheral(EMAY).writes]
        ring_writes = radio.peripheral(RING).writes
    assert reading_set(sink.drafts) == reading_set(expected)  # same values, units, times, flags; none twice
    assert {d.device_id for d in sink.drafts} == {d.device_id for d in registry} - {"door-1"}
    # the encrypted advert under the wrong key is a dead letter; the right key decodes (occupancy above)
    assert {address for address, _ in sink.dead} == {WRONG}  # each repeat of the advert (it cannot be de-duplicated)
    assert "decrypt" in sink.dead[0][1].lower() or "key" in sink.dead[0][1].lower(), sink.dead
    assert emay_writes[:4] == list(LINK_COMMANDS["emay"].start)  # the oximeter streamed only once told to
    assert ring_writes[0] == ("8b00ace7-eb0b-49b0-bbe9-9aee0a26e1a3", LINK_COMMANDS["o2ring"].start[0])
    connected = {e.address for e in sink.events if e.kind == "connected"}
    assert connected == {OX, THERMO, CUFF, STRAP, BCI, PC60, EMAY, RING}  # BTHome sensors are never connected


CUFF_ONLY = DeviceRegistry([RegisteredDevice(address=CUFF, device_id="bp-1", kind=DeviceKind.BP_CUFF,
                                             resident_id="r-1")])


def bp(minutes: int, systolic: int = 120) -> Notification:
    return Notification(CUFF, "2a35", frames.encode_blood_pressure(
        systolic, 80, 93, timestamp=STAMP + timedelta(minutes=minutes)), AT)


def systolics(sink: Sink) -> list[tuple[float, str]]:
    return [(d.value, d.measured_at.isoformat()) for d in sink.drafts if d.metric is Metric.SYSTOLIC_BP]


def test_the_cuff_bonds_once_and_reconnects_with_the_key_kept_on_disk(tmp_path: Path) -> None:
    keys = tmp_path / "bonds.json"
    sink = Sink(CUFF_ONLY)

    async def scenario(radio: VirtualRadio) -> None:
        cuff = radio.peripheral(CUFF)
        # the cuff keeps a measurement until the gateway's confirmation reaches it: a link cut (or a gateway
        # stopped) before then sends it again, as a real cuff would; this scenario cuts only after that
        confirmed = "the cuff to receive the gateway's confirmation"
        async with Running(transport_for(radio, keystore=keys), CUFF_ONLY, sink):
            radio.push([bp(0, 121)])
            await until(lambda: len(systolics(sink)) == 1, what="the first measurement")
            await until(lambda: cuff.waiting() == 0, what=confirmed)
            await in_radio(radio, cuff.drop)  # link lost: reconnect, encrypt with the stored key
            await until(lambda: sink.kinds(CUFF).count("connected") == 2, what="the reconnection")
            radio.push([bp(1, 122)])
            await until(lambda: len(systolics(sink)) == 2, what="the second measurement")
            await until(lambda: cuff.waiting() == 0, what=confirmed)
        # a new gateway process (its own controller on the link) with the same key file: no pairing either
        async with Running(transport_for(radio, keystore=keys), CUFF_ONLY, sink):
            radio.push([bp(2, 123)])
            await until(lambda: len(systolics(sink)) == 3, what="the measurement after a gateway restart")

    with structlog.testing.capture_logs() as logs, VirtualRadio(CUFF_ONLY) as radio:
        radio.peripheral(CUFF).pairing_mode = True
        asyncio.run(scenario(radio))
        connections = radio.peripheral(CUFF).connections
    assert [e["event"] for e in logs if e["event"] in ("pairing", "paired")] == ["pairing", "paired"]  # once
    assert connections == 3
    assert [v for v, _ in systolics(sink)] == [121, 122, 123]
    stored = json.loads(keys.read_text())
    assert any(CUFF in peer and "ltk" in peer_keys for ns in stored.values() for peer, peer_keys in ns.items())
    assert not [e for e in sink.events if e.kind == "fault"]


def test_a_cuff_that_lost_its_bond_is_a_clear_error_and_a_device_fault_then_given_up(tmp_path: Path) -> None:
    keys = tmp_path / "bonds.json"
    sink = Sink(CUFF_ONLY)

    async def scenario(radio: VirtualRadio) -> None:
        async with Running(transport_for(radio, keystore=keys), CUFF_ONLY, sink) as transport:
            radio.push([bp(0)])
            await until(lambda: len(systolics(sink)) == 1, what="the bonded measurement")
            cuff = radio.peripheral(CUFF)
            await in_radio(radio, cuff.forget_bonds)  # factory reset: it no longer knows our key...
            cuff.pairing_mode = False  # ...and is not in pairing mode
            await in_radio(radio, cuff.drop)
            await until(lambda: CUFF in transport.gave_up, timeout=20, what="the gateway to give up")

    with VirtualRadio(CUFF_ONLY) as radio:
        asyncio.run(scenario(radio))
    faults = [e.detail for e in sink.events if e.kind == "fault"]
    assert len(faults) == 3  # each attempt reported; the third says it gave up
    assert "refused the stored bond key (PIN_OR_KEY_MISSING_ERROR)" in faults[0]
    assert "re-pair it" in faults[0] and "gave up after 3 attempts" in faults[-1]
    assert json.loads(keys.read_text())  # the key is kept: never thrown away to pair with whatever answers


def test_a_cuff_that_refuses_to_pair_is_a_clear_error_and_a_device_fault() -> None:
    sink = Sink(CUFF_ONLY)

    async def scenario(radio: VirtualRadio) -> None:
        async with Running(transport_for(radio), CUFF_ONLY, sink):
            await until(lambda: any(e.kind == "fault" for e in sink.events), what="a device fault")

    with VirtualRadio(CUFF_ONLY, pairing_mode=False) as radio:
        asyncio.run(scenario(radio))
    fault = next(e.detail for e in sink.events if e.kind == "fault")
    assert "bp-1 requires pairing and refused to pair" in fault and "pairing mode" in fault
    assert not sink.drafts


def test_a_disconnect_mid_transfer_loses_nothing_and_duplicates_nothing() -> None:
    sink = Sink(CUFF_ONLY)
    stored = [bp(i, 120 + i) for i in range(8)]

    async def drop_after(radio: VirtualRadio, sent: int) -> None:
        cuff = radio.peripheral(CUFF)
        while cuff.sent < sent:
            await asyncio.sleep(0)
        await cuff.drop()

    async def scenario(radio: VirtualRadio) -> None:
        radio.push(stored)  # measured before the gateway came: in the cuff's memory
        dropping = asyncio.ensure_future(in_radio(radio, lambda: drop_after(radio, 3)))  # watching from now
        async with Running(transport_for(radio), CUFF_ONLY, sink):
            await dropping
            await until(lambda: len(systolics(sink)) >= 8, what="all eight measurements")
            await asyncio.sleep(0.3)

    with VirtualRadio(CUFF_ONLY) as radio:
        asyncio.run(scenario(radio))
        connections = radio.peripheral(CUFF).connections
    assert connections == 2  # the transfer was cut, the gateway came back for the rest
    assert [v for v, _ in systolics(sink)] == [120 + i for i in range(8)]  # each once, in order


def test_stored_measurements_taken_while_the_gateway_was_down_arrive_with_their_own_timestamps(
        tmp_path: Path) -> None:
    keys = tmp_path / "bonds.json"
    sink = Sink(CUFF_ONLY)

    async def scenario(radio: VirtualRadio) -> None:
        async with Running(transport_for(radio, keystore=keys), CUFF_ONLY, sink):
            radio.push([bp(-240, 110)])
            await until(lambda: len(systolics(sink)) == 1, what="the first measurement")
            await asyncio.sleep(0.3)  # its confirmation reaches the cuff (a gateway killed before gets it twice)
        radio.push([bp(-180, 131), bp(-120, 132), bp(-60, 133)])  # taken while the gateway was down
        await asyncio.sleep(0.3)
        assert len(systolics(sink)) == 1
        async with Running(transport_for(radio, keystore=keys), CUFF_ONLY, sink):  # the gateway is back (at AT)
            await until(lambda: len(systolics(sink)) == 4, what="the stored measurements")

    with VirtualRadio(CUFF_ONLY) as radio:
        asyncio.run(scenario(radio))
    assert systolics(sink) == [(110, (AT - timedelta(hours=4)).isoformat()),
                               (131, (AT - timedelta(hours=3)).isoformat()),
                               (132, (AT - timedelta(hours=2)).isoformat()),
                               (133, (AT - timedelta(hours=1)).isoformat())]
    assert {d.received_at for d in sink.drafts} == {AT}  # received now, measured then
    assert not any(d.flags for d in sink.drafts)  # the cuff's own clock was trusted, not replaced


def test_a_device_out_of_range_for_ten_minutes_becomes_silent_and_comes_back() -> None:
    registry = DeviceRegistry([RegisteredDevice(address=OX, device_id="ox-1", kind=DeviceKind.PULSE_OXIMETER,
                                                resident_id="r-1")])
    sink = Sink(registry)
    clock = ScaledClock(factor=300)  # ten minutes pass in two seconds on the transport's clock
    marks: dict[str, float] = {}

    async def scenario(radio: VirtualRadio) -> None:
        async with Running(transport_for(radio, clock=clock), registry, sink):
            radio.push([Notification(OX, "2a5e", frames.encode_plx_spot_check(97, 70, timestamp=STAMP), AT)])
            await until(lambda: len(sink.drafts) == 2, what="the first reading")
            await in_radio(radio, radio.peripheral(OX).leave)
            marks["left"] = clock.monotonic()
            await until(lambda: "silent" in sink.kinds(OX), timeout=10, what="silence")
            marks["silent"] = clock.monotonic()
            await in_radio(radio, radio.peripheral(OX).come_back)
            radio.push([Notification(OX, "2a5e", frames.encode_plx_spot_check(
                95, 75, timestamp=STAMP + timedelta(minutes=12)), AT)])
            await until(lambda: len(sink.drafts) == 4, timeout=10, what="the reading after it came back")

    with VirtualRadio(registry) as radio:
        asyncio.run(scenario(radio))
    kinds = [k for k in sink.kinds(OX) if k != "error"]  # a drop during a request is also an error event
    assert kinds[:2] == ["connected", "disconnected"]
    assert kinds.index("silent") < kinds.index("back") < len(kinds) - 1 - kinds[::-1].index("connected")
    # silent ten minutes after it was last heard (the marks are the test's, taken a few scaled seconds apart)
    assert 540 <= marks["silent"] - marks["left"] <= 600 + 90
    silent = next(e for e in sink.events if e.kind == "silent")
    assert silent.detail.startswith("not heard for 6")  # 600-699 s by the transport's own clock
    assert [v for _, v in sink.values("ox-1")] == [97, 70, 95, 75]


def test_a_connection_attempt_that_times_out_is_cancelled_and_the_next_may_start() -> None:
    """The emulated controller ends a cancelled attempt as a real one does (LE Connection Complete, Unknown
    Connection Identifier): Bumble's connect, which cancels on its timeout and waits for that event, returns."""

    async def scenario(radio: VirtualRadio) -> None:
        transport = await open_transport(radio.hci_transport)
        try:
            device = Device.with_hci("probe", hci.Address(GATEWAY_ADDRESS), transport.source, transport.sink)
            await asyncio.wait_for(device.power_on(), 10)
            nobody = hci.Address("C0:5E:00:00:00:7F")  # nothing on the link has this address
            for _ in range(2):  # the second attempt is allowed: the first is no longer pending in the controller
                started = time.monotonic()
                with pytest.raises(core.TimeoutError):  # Bumble's own, once the cancel is confirmed (not ours)
                    await asyncio.wait_for(device.connect(nobody, timeout=0.3), 10)
                assert time.monotonic() - started < 5
        finally:
            await transport.close()

    with VirtualRadio(CUFF_ONLY) as radio:
        asyncio.run(scenario(radio))
