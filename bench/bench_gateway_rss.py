"""Gateway memory: peak RSS of a gateway process serving 50 simulated devices, beside baselines from the same run.

    .venv/bin/python bench/bench_gateway_rss.py [--devices 50] [--seconds 60] [--accelerate 600]

The gateway runs as a child process exactly as on a gateway box: the real ``Gateway`` (pipeline, SQLite outbox,
MQTT publisher to the local broker) with its registry read from a file. Its radio is firmware_sim's
``SimTransport``; the bytes come from firmware_sim's ``DeviceLayer`` (PLX spot-checks, thermometers, BP cuffs,
BTHome v2 sensors, some encrypted, each advert sent twice as real advertisers repeat them), generated in *this*
process and piped to the child, so the simulator's own memory (numpy, physiology) is not counted. Simulated time
runs ``--accelerate`` times faster than real time: each bedside device measures every 5 simulated minutes and
each home sensor reports every simulated minute.

RSS is sampled from ``/proc/<pid>/status`` (VmRSS every 0.2 s, VmHWM = peak) of each child:
  * bare      - the Python interpreter running this script's child harness (standard library only);
  * imports   - the gateway's modules imported, nothing running;
  * idle      - a running gateway with 0 devices (connected, publishing status);
  * loaded    - a running gateway with ``--devices`` devices.
Target: the loaded gateway's peak < 80 MB. Uses CAREWATCH_TEST_MQTT, else Mosquitto on 127.0.0.1:1883, else a
private Mosquitto/amqtt.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

TARGET_MB = 80.0
#: Modules a gateway has no use for; if one shows up in the child, an import pulled it in.
HEAVY = ("numpy", "pandas", "scipy", "fastapi", "starlette", "uvicorn", "streamlit", "psycopg", "psycopg_pool",
         "argon2", "jwt", "httpx", "rich", "amqtt")
#: What a `carewatch gateway` process imports (the CLI, logging, the service, the radio), plus the simulator's radio.
GATEWAY_MODULES = ("carewatch.cli", "carewatch.logs", "carewatch.gateway.service", "carewatch.gateway.ble",
                   "carewatch.firmware_sim.transport")


# ------------------------------------------------------------------------------------------------------------
# the child: a gateway process (or a baseline)
# ------------------------------------------------------------------------------------------------------------
def child(mode: str) -> None:
    """Report readiness, run until the parent says STOP, report, then wait for the parent to read /proc."""
    out: dict[str, Any] = {"mode": mode}
    if mode == "bare":
        print(json.dumps({"ready": True}), flush=True)
        sys.stdin.readline()
    elif mode == "imports":
        import importlib

        for name in GATEWAY_MODULES:
            importlib.import_module(name)
        print(json.dumps({"ready": True}), flush=True)
        sys.stdin.readline()
    else:
        out.update(_run_gateway())
    out["heavy"] = [m for m in HEAVY if m in sys.modules]
    out["modules"] = len(sys.modules)
    print(json.dumps(out), flush=True)
    sys.stdin.readline()  # the parent reads VmHWM now, then closes our stdin


def _run_gateway() -> dict[str, Any]:
    import carewatch.cli  # noqa: F401  (a real gateway process is started by `carewatch gateway`)
    from carewatch.firmware_sim.transport import SimTransport
    from carewatch.gateway.service import Gateway
    from carewatch.gateway.transport import Notification
    from carewatch.logs import configure_logging
    from carewatch.settings import Settings

    settings = Settings()
    configure_logging(settings)  # as `carewatch gateway` does: logs go to stderr, our stdout is the protocol
    transport = SimTransport()
    gateway = Gateway(settings, transport, status_interval_s=10).start()
    assert transport.wait_ready(30)
    gateway.publisher.wait_connected(30)  # type: ignore[union-attr]
    print(json.dumps({"ready": True, "devices": len(gateway.registry)}), flush=True)
    for line in sys.stdin:
        parts = line.split()
        if not parts or parts[0] == "STOP":
            break
        address, source, data, rssi, at = parts
        transport.push([Notification(address, source, bytes.fromhex(data), datetime.fromisoformat(at), int(rssi))])
    deadline = time.monotonic() + 60
    while transport.backlog() and time.monotonic() < deadline:
        time.sleep(0.05)
    drained = gateway.publisher.wait_drained(30)  # type: ignore[union-attr]
    gateway.stop()
    return {"counters": asdict(gateway.counters), "drained": drained}


# ------------------------------------------------------------------------------------------------------------
# the parent: devices, the byte feed and /proc sampling are in feeding.py (shared with bench_gateway_ble.py)
# ------------------------------------------------------------------------------------------------------------
def run_child(mode: str, env: dict[str, str], log: Path, *, feed: Any = None, seconds: float = 0.0,
              accelerate: float = 1.0) -> dict[str, Any]:
    """Start a child, feed it for ``seconds`` (gateway modes), and return its report with RSS figures."""
    from feeding import (  # (the parent only: a child imports nothing it does not measure)
        Sampler,
        end_child,
        start_child,
    )

    proc, ready = start_child([sys.executable, __file__, "--child", mode], log, env, mode)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        sampler = Sampler(proc.pid)
        sent = 0
        if feed is not None:
            start_real, start_sim = time.monotonic(), datetime.now(UTC)
            while (elapsed := time.monotonic() - start_real) < seconds:
                sim_now = start_sim + timedelta(seconds=elapsed * accelerate)
                for note in feed.until(sim_now):
                    line = (f"{note.address} {note.source} {note.data.hex()} {note.rssi or 0} "
                            f"{note.received_at.isoformat()}\n")
                    copies = 2 if note.source == "bthome" else 1  # adverts are repeated; the gateway de-duplicates
                    proc.stdin.write(line * copies)
                    sent += copies
                proc.stdin.flush()
                time.sleep(0.1)
        elif seconds:
            time.sleep(seconds)
        proc.stdin.write("STOP\n")
        proc.stdin.flush()
        report = json.loads(proc.stdout.readline())
        report["peak_mb"] = sampler.stop()
        report["samples"] = sampler.samples
        report["sent"] = sent
        report.update(ready)
        return report
    finally:
        end_child(proc)


def main() -> None:
    from feeding import Feed, build_devices, steady  # (the parent only, as in run_child)

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60.0, help="Real seconds of traffic for the loaded run.")
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--accelerate", type=float, default=600.0, help="Simulated seconds per real second.")
    parser.add_argument("--mqtt-url", default=None)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--child", choices=("bare", "imports", "gateway"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return

    from carewatch.embedded import EmbeddedBroker, free_port, port_open
    from carewatch.gateway.registry import save_registry
    from carewatch.registry import DeviceRegistry
    from carewatch.settings import Settings, process_env

    with ExitStack() as stack:
        url = args.mqtt_url or Settings().test_mqtt
        if url is None and port_open("127.0.0.1", 1883):
            url = "mqtt://127.0.0.1:1883"
        if url is None:
            broker = EmbeddedBroker(Path(stack.enter_context(tempfile.TemporaryDirectory())), free_port())
            broker.start()
            stack.callback(broker.stop)
            url = broker.url
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        run = uuid.uuid4().hex[:8]

        def env_for(name: str, devices: list[Any]) -> dict[str, str]:
            registry = tmp / f"{name}.registry.json"
            save_registry(DeviceRegistry(d.registered() for d in devices), registry)
            return process_env(
                drop_prefixes=("CAREWATCH_",), CAREWATCH_MQTT_URL=url, CAREWATCH_SITE_ID="rss-bench",
                CAREWATCH_GATEWAY_ID=f"rss-{name}-{run}", CAREWATCH_OUTBOX_PATH=str(tmp / f"{name}.outbox.sqlite"),
                CAREWATCH_STATE_DIR=str(tmp / "state"), CAREWATCH_DEVICE_REGISTRY=str(registry),
                CAREWATCH_LOG_LEVEL="WARNING")

        devices = build_devices(args.devices, args.seed)
        bthome = sum(1 for d in devices if d.source == "bthome")
        encrypted = sum(1 for d in devices if d.bind_key)
        print(f"broker {url}; {len(devices)} devices ({len(devices) - bthome} bedside GATT, {bthome} BTHome of which "
              f"{encrypted} encrypted); {args.seconds:.0f} s of traffic at "
              f"{args.accelerate:.0f}x ({args.seconds * args.accelerate / 3600:.1f} simulated hours)")
        log = tmp / "children.log"
        bare = run_child("bare", env_for("bare", []), log)
        imports = run_child("imports", env_for("imports", []), log)
        idle = run_child("gateway", env_for("idle", []), log, seconds=args.idle_seconds)
        feed = Feed(devices, datetime.now(UTC), args.seed)
        loaded = run_child("gateway", env_for("loaded", devices), log, feed=feed, seconds=args.seconds,
                           accelerate=args.accelerate)

        counters = loaded["counters"]
        quarter, end = steady(loaded["samples"])
        print(f"bare:      {bare['peak_mb']:6.1f} MB peak  Python interpreter (this harness, standard library only)")
        print(f"imports:   {imports['peak_mb']:6.1f} MB peak  what `carewatch gateway` imports, nothing running "
              f"({imports['modules']} modules)")
        print(f"idle:      {idle['peak_mb']:6.1f} MB peak  gateway running, 0 devices")
        print(f"loaded:    {loaded['peak_mb']:6.1f} MB peak  gateway running, {loaded['devices']} devices: "
              f"{counters['frames_in']:,} notifications in ({loaded['sent']:,} sent, BTHome repeats included), "
              f"{counters['readings_accepted']:,} readings stored, {counters['acked']:,} acknowledged by the broker, "
              f"{counters['duplicates']:,} repeats dropped, {counters['dead_letters']} dead letters, "
              f"outbox {'drained' if loaded['drained'] else 'NOT drained'}")
        rate = counters["readings_accepted"] / args.seconds
        print(f"load:      {counters['frames_in'] / args.seconds:6.0f} notifications/s in, {rate:.0f} readings/s "
              "stored and published")
        print(f"steady:    {quarter:6.1f} MB after the first quarter, {end:6.1f} MB at the end "
              f"({end - quarter:+.1f} MB over the run)")
        print(f"per device: {(loaded['peak_mb'] - idle['peak_mb']) / max(1, loaded['devices']) * 1024:5.0f} kB "
              "(loaded - idle)")
        heavy = sorted(set(loaded["heavy"]) | set(imports["heavy"]))
        print(f"heavy modules a gateway does not need, found in its process: {', '.join(heavy) if heavy else 'none'}"
              + (" (rich: pulled in by structlog.dev and typer)" if heavy == ["rich"] else ""))
        met = loaded["peak_mb"] < TARGET_MB
        print(f"target:    < {TARGET_MB:.0f} MB peak with {loaded['devices']} devices "
              f"({'met' if met else 'NOT met'} on this machine)")
        if os.environ.get("BENCH_JSON"):
            print(json.dumps({k: {"peak_mb": v["peak_mb"]} for k, v in
                              {"bare": bare, "imports": imports, "idle": idle, "loaded": loaded}.items()}))


if __name__ == "__main__":
    main()
