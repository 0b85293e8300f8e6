"""The gateway over a Bluetooth stack: RSS and CPU of a gateway process reading 50 devices through the Bumble
backend and the virtual radio, beside the same gateway fed the same bytes directly (today's byte-level path), in
the same run.

    .venv/bin/python bench/bench_gateway_ble.py [--devices 50] [--seconds 60] [--accelerate 600]

Both gateways are child processes started the way ``bench_gateway_rss.py`` starts them (the real ``Gateway``, its
registry from a file, SQLite outbox, publisher to the local Mosquitto), and get the same devices and the same
value-level schedule (``bench_gateway_Feed``: firmware_sim's DeviceLayer encodes the bytes):

  * bytes  - ``SimTransport``: each notification piped to the child (BTHome adverts twice, as advertisers repeat);
  * bumble - ``CAREWATCH_BLE_BACKEND=bumble``: the child's ``BumbleTransport`` drives its own emulated controller
    on a ``VirtualRadio`` running in *this* process over HCI (TCP), scans, connects to the 15 bedside devices,
    bonds with the cuffs, subscribes, and hears the BTHome sensors' adverts (each sent twice). The emulated
    controllers and peripherals run here, not in the gateway: their CPU is reported separately.

Reported per child: peak RSS (VmHWM), CPU seconds (user + system, from /proc), notifications in, readings stored.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from feeding import Feed, Sampler, build_devices, end_child, start_child, steady

#: The gateway child of the byte-level path is bench_gateway_rss.py's (run as a script, not imported).
RSS_SCRIPT = Path(__file__).resolve().parent / "bench_gateway_rss.py"


def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` so far (from /proc/<pid>/stat)."""
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child_bumble() -> None:
    """A gateway process on the Bumble backend (settings from the environment, as `carewatch gateway` reads them)."""
    from dataclasses import asdict

    import carewatch.cli  # noqa: F401
    from carewatch.gateway.service import Gateway, radio_transport
    from carewatch.logs import configure_logging
    from carewatch.settings import Settings

    settings = Settings()
    configure_logging(settings)
    transport = radio_transport(settings)
    gateway = Gateway(settings, transport, status_interval_s=10).start()
    deadline = time.monotonic() + 30
    while not transport.ready.is_set() and time.monotonic() < deadline:  # type: ignore[attr-defined]
        time.sleep(0.05)
    gateway.publisher.wait_connected(30)  # type: ignore[union-attr]
    print(json.dumps({"ready": True, "devices": len(gateway.registry)}), flush=True)
    for line in sys.stdin:
        if line.strip() == "STOP":
            break
    deadline = time.monotonic() + 60
    while transport.backlog() and time.monotonic() < deadline:  # type: ignore[attr-defined]
        time.sleep(0.05)
    time.sleep(0.5)
    drained = gateway.publisher.wait_drained(30)  # type: ignore[union-attr]
    gateway.stop()
    out = {"mode": "bumble", "counters": asdict(gateway.counters), "drained": drained,
           "repeats_ignored": transport.repeats.repeats, "bonded": len(transport.bonded)}  # type: ignore[attr-defined]
    out["modules"] = len(sys.modules)
    print(json.dumps(out), flush=True)
    sys.stdin.readline()


def run(mode: str, env: dict[str, str], log: Path, feed: Feed, seconds: float, accelerate: float,
        radio: Any = None) -> dict[str, Any]:
    """One child for ``seconds`` of traffic; ``radio``: the VirtualRadio the bumble child reads."""

    argv = [sys.executable, __file__, "--child-bumble"] if mode == "bumble" else [
        sys.executable, str(RSS_SCRIPT), "--child", "gateway"]
    proc, ready = start_child(argv, log, env, mode, log_tail=3000)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        sampler = Sampler(proc.pid)
        cpu0 = cpu_seconds(proc.pid)
        radio_cpu0 = radio.call(_thread_cpu()) if radio is not None else 0.0
        sent = 0
        start_real, start_sim = time.monotonic(), datetime.now(UTC)
        while (elapsed := time.monotonic() - start_real) < seconds:
            notes = feed.until(start_sim + timedelta(seconds=elapsed * accelerate))
            if radio is not None:
                radio.push(notes)
                sent += len(notes)
            else:
                for note in notes:
                    line = (f"{note.address} {note.source} {note.data.hex()} {note.rssi or 0} "
                            f"{note.received_at.isoformat()}\n")
                    copies = 2 if note.source == "bthome" else 1
                    proc.stdin.write(line * copies)
                    sent += 1
                proc.stdin.flush()
            time.sleep(0.1)
        waiting = 0
        if radio is not None:
            radio.flush(60)
            waiting = radio.waiting()
            if waiting:
                print("frames left: " + ", ".join(
                    f"{n.registered.device_id} {n.waiting()} (connections {getattr(n, 'connections', '-')}, "
                    f"subscribed {sorted(getattr(n, 'subscribed', ()))})"
                    for n in radio.nodes.values() if n.waiting())[:1500], flush=True)
        proc.stdin.write("STOP\n")
        proc.stdin.flush()
        report = json.loads(proc.stdout.readline())
        report["cpu_s"] = cpu_seconds(proc.pid) - cpu0
        report["peak_mb"] = sampler.stop()
        report["samples"] = sampler.samples
        report["sent"] = sent
        report["waiting_in_devices"] = waiting
        report["radio_cpu_s"] = (radio.call(_thread_cpu()) - radio_cpu0) if radio is not None else 0.0
        report.update(ready)
        return report
    finally:
        end_child(proc)


async def _thread_cpu() -> float:
    return time.thread_time()  # called in the radio's thread: its CPU so far


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60.0, help="Real seconds of traffic per gateway.")
    parser.add_argument("--accelerate", type=float, default=300.0,
                        help="Simulated seconds per real second (300: ~480 notifications/s, within one core for both).")
    parser.add_argument("--mqtt-url", default=None)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--only-bumble", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--log", default=None, help="Keep the gateways' logs in this file.")
    parser.add_argument("--child-bumble", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_bumble:
        child_bumble()
        return

    from carewatch.embedded import port_open
    from carewatch.firmware_sim.radio import VirtualRadio
    from carewatch.gateway.registry import save_registry
    from carewatch.registry import DeviceRegistry
    from carewatch.settings import Settings, process_env

    with ExitStack() as stack:
        url = args.mqtt_url or Settings().test_mqtt or ("mqtt://127.0.0.1:1883" if port_open("127.0.0.1", 1883)
                                                        else None)
        if url is None:
            raise SystemExit("needs an MQTT broker (CAREWATCH_TEST_MQTT, or Mosquitto on 127.0.0.1:1883)")
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        run_id = uuid.uuid4().hex[:8]
        devices = build_devices(args.devices, args.seed)
        registry = DeviceRegistry(d.registered() for d in devices)
        save_registry(registry, tmp / "registry.json")

        def env_for(name: str, **extra: str) -> dict[str, str]:
            return process_env(
                drop_prefixes=("CAREWATCH_",), CAREWATCH_MQTT_URL=url, CAREWATCH_SITE_ID="ble-bench",
                CAREWATCH_GATEWAY_ID=f"ble-{name}-{run_id}", CAREWATCH_OUTBOX_PATH=str(tmp / f"{name}.sqlite"),
                CAREWATCH_STATE_DIR=str(tmp / "state"), CAREWATCH_DEVICE_REGISTRY=str(tmp / "registry.json"),
                CAREWATCH_LOG_LEVEL="WARNING", **extra)

        bthome = sum(1 for d in devices if d.source == "bthome")
        print(f"broker {url}; {len(devices)} devices ({len(devices) - bthome} bedside GATT, {bthome} BTHome, "
              f"{sum(1 for d in devices if d.bind_key)} encrypted); {args.seconds:.0f} s of traffic per gateway at "
              f"{args.accelerate:.0f}x")
        log = Path(args.log) if args.log else tmp / "children.log"
        by_bytes = run("bytes", env_for("bytes"), log, Feed(devices, datetime.now(UTC), args.seed),
                       0.5 if args.only_bumble else args.seconds, args.accelerate)
        radio = stack.enter_context(VirtualRadio(registry))
        by_radio = run("bumble", env_for("bumble", CAREWATCH_BLE_BACKEND="bumble",
                                         CAREWATCH_BUMBLE_TRANSPORT=radio.hci_transport,
                                         CAREWATCH_BUMBLE_KEYSTORE=str(tmp / "bonds.json")),
                       log, Feed(devices, datetime.now(UTC), args.seed), args.seconds, args.accelerate, radio)
        for name, r in (("bytes", by_bytes), ("bumble", by_radio)):
            c = r["counters"]
            quarter, end = steady(r["samples"])
            print(f"{name:7s} peak {r['peak_mb']:5.1f} MB (steady {quarter:.1f} -> {end:.1f}), CPU {r['cpu_s']:5.1f} s "
                  f"({r['cpu_s'] / args.seconds * 100:4.1f} % of one core, "
                  f"{r['cpu_s'] / max(1, c['frames_in']) * 1e6:.0f} us per notification), "
                  f"{c['frames_in']:,} notifications in, "
                  f"{c['readings_accepted']:,} readings stored, {c['acked']:,} acknowledged, {c['dead_letters']} dead "
                  f"letters, outbox {'drained' if r['drained'] else 'NOT drained'}, {r['modules']} modules")
        print(f"bumble: {by_radio['bonded']} cuffs bonded, {by_radio['repeats_ignored']} repeated indications ignored, "
              f"{by_radio['waiting_in_devices']} frames left in devices; the emulated radio (this process) used "
              f"{by_radio['radio_cpu_s']:.1f} s CPU")
        reasons: dict[str, int] = {}
        for line in log.read_text(errors="replace").splitlines():
            for what in ("dead_letter", "transport_error", "transport_fault", "transport_silent"):
                if f"] {what}" in line:
                    detail = line.split("reason=" if what == "dead_letter" else "detail=", 1)[-1][:90]
                    reasons[f"{what}: {detail}"] = reasons.get(f"{what}: {detail}", 0) + 1
        for reason, count in sorted(reasons.items(), key=lambda item: -item[1])[:6]:
            print(f"in the logs: {count} x {reason}")
        ratio_mb = by_radio["peak_mb"] - by_bytes["peak_mb"]
        ratio_cpu = by_radio["cpu_s"] / max(by_bytes["cpu_s"], 0.01)
        print(f"bumble - bytes: {ratio_mb:+.1f} MB peak RSS, x{ratio_cpu:.1f} CPU; readings "
              f"{by_radio['counters']['readings_accepted']:,} vs {by_bytes['counters']['readings_accepted']:,}")


if __name__ == "__main__":
    main()
