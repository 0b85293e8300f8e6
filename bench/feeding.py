"""What several benchmarks feed their subject, in one place (benchmark scripts never import each other):

* the gateway benchmarks (``bench_gateway_rss.py``, ``bench_gateway_ble.py``): the devices, their byte feed, RSS
  sampling from /proc, and stopping a child;
* the evaluation benchmarks (``bench_evaluation.py``, ``bench_alert_latency.py``): a staff entry stored as the
  API stores it;
* the scorer benchmarks (``bench_alert_latency.py``, ``bench_scale.py``): the load average and the run's header
  (date, commit, command line).

Only the standard library is imported at module level: the gateway benchmarks' children measure their own memory,
and what a helper imports would count against the gateway.
"""

from __future__ import annotations

import contextlib
import json
import random
import shlex
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psycopg

    from carewatch.firmware_sim.physiology import ManualObservation


# ------------------------------------------------------------------------------------------------------------
# the gateway benchmarks: devices, the byte feed, and /proc sampling
# ------------------------------------------------------------------------------------------------------------
class Sampler:
    """VmRSS of ``pid`` every ``interval`` seconds, in a thread."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, float]] = []  # (seconds since start, MB)
        self._stop = threading.Event()
        self._start = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def status(self, field: str) -> float:
        with open(f"/proc/{self.pid}/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
        raise KeyError(field)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append((time.monotonic() - self._start, self.status("VmRSS")))
            except (OSError, KeyError):
                return
            self._stop.wait(self.interval)

    def stop(self) -> float:
        """Stop sampling; returns the peak (VmHWM) in MB. Call while the process still exists."""
        peak = self.status("VmHWM")
        self._stop.set()
        self._thread.join()
        return peak


def build_devices(count: int, seed: int) -> list[Any]:
    """``count`` devices: a third bedside (oximeter, thermometer, BP cuff per resident), the rest home sensors."""
    from carewatch.firmware_sim.devices import household_devices, resident_devices
    from carewatch.firmware_sim.household import SENSORS

    roles = {role: spec.device_kind for role, spec in SENSORS.items()}
    bedside = [d for r in range(count // 3 // 3 + 1) for d in resident_devices(f"rss-r{r:02d}", "rss-home")]
    bedside = bedside[: (count // 3) // 3 * 3]
    sensors = [d for h in range(count // len(roles) + 1) for d in household_devices(f"rss-h{h}", roles, seed)]
    return (bedside + sensors)[:count]


class Feed:
    """Value-level events for each device on a schedule, turned into bytes by firmware_sim's DeviceLayer."""

    GATT_EVERY = timedelta(minutes=5)
    BTHOME_EVERY = timedelta(minutes=1)

    def __init__(self, devices: list[Any], start: datetime, seed: int) -> None:
        from carewatch.firmware_sim.devices import DeviceLayer

        self.layer = DeviceLayer(devices, seed=seed)
        self.rng = random.Random(seed)
        self.devices = devices
        every = {d.device_id: self.BTHOME_EVERY if d.source == "bthome" else self.GATT_EVERY for d in devices}
        self.every = every
        self.due = {d.device_id: start + every[d.device_id] * self.rng.random() for d in devices}

    def until(self, now: datetime) -> list[Any]:
        """Notifications for every measurement due up to ``now``."""
        out = []
        for device in self.devices:
            while self.due[device.device_id] <= now:
                at = self.due[device.device_id]
                for event in self._events(device, at):
                    out.extend(note for _, note in self.layer.feed(event))
                self.due[device.device_id] = at + self.every[device.device_id]
        out.extend(note for _, note in self.layer.flush())
        return out

    def _events(self, device: Any, at: datetime) -> list[Any]:
        from carewatch.firmware_sim.household import SENSORS, SensorEvent
        from carewatch.firmware_sim.physiology import VitalSample
        from carewatch.wire import DeviceKind, Metric

        rng = self.rng
        if device.source != "bthome":
            values = {
                DeviceKind.PULSE_OXIMETER: {Metric.SPO2: rng.randint(90, 99),
                                            Metric.PULSE_RATE: rng.randint(55, 100)},
                DeviceKind.THERMOMETER: {Metric.TEMPERATURE: round(rng.uniform(36.0, 38.0), 1)},
                DeviceKind.BP_CUFF: {Metric.SYSTOLIC_BP: rng.randint(100, 160),
                                     Metric.DIASTOLIC_BP: rng.randint(60, 95), Metric.PULSE_RATE: rng.randint(55, 100)},
            }[device.kind]
            return [VitalSample(at, device.resident_id, device.kind, metric, float(value), frozenset(), device.site_id,
                                "kit") for metric, value in values.items()]
        spec = SENSORS[device.role]
        events = []
        for metric in spec.metrics:
            value = {Metric.ROOM_TEMPERATURE: rng.uniform(17, 24), Metric.HUMIDITY: rng.uniform(35, 65),
                     Metric.POWER: rng.choice((0.0, 2800.0))}.get(metric, float(rng.random() < 0.5))
            events.append(SensorEvent(at, device.site_id, device.role, device.kind, metric, value))
        if spec.battery and rng.random() < 0.1:
            events.append(SensorEvent(at, device.site_id, device.role, device.kind, Metric.BATTERY,
                                      float(rng.randint(20, 100))))
        return events


def steady(samples: list[tuple[float, float]]) -> tuple[float, float]:
    """(RSS at the end of the first quarter, RSS at the end) in MB: growth between them would be a leak."""
    if not samples:
        return 0.0, 0.0
    quarter = samples[len(samples) // 4][1]
    return quarter, samples[-1][1]


def start_child(argv: list[str], log: Path, env: dict[str, str], what: str, *,
                log_tail: int = 2000) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """Start a measured child (its stderr appended to ``log``) and wait for its ``{"ready": true}`` line; a child
    that does not say so is ended and reported with the tail of its log. Returns the child and its ready line."""
    with open(log, "ab") as err:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True, env=env,
                                bufsize=1)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        ready = json.loads(proc.stdout.readline() or "{}")
        if not ready.get("ready"):
            raise RuntimeError(f"{what} child did not start (exit {proc.wait(10)}): {log.read_text()[-log_tail:]}")
    except BaseException:
        end_child(proc)
        raise
    return proc, ready


def end_child(proc: subprocess.Popen[str]) -> None:
    """Close the child's stdin and wait for it (kill it after 30 s)."""
    if proc.stdin and not proc.stdin.closed:
        proc.stdin.close()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def terminate(proc: subprocess.Popen[Any], wait_s: float) -> None:
    """SIGTERM a long-running child and wait ``wait_s`` for it to finish its work; kill it if it has not."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(wait_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


# ------------------------------------------------------------------------------------------------------------
# the evaluation benchmarks: staff entries
# ------------------------------------------------------------------------------------------------------------
def record_staff_entry(conn: psycopg.Connection, obs: ManualObservation, *, scale2: bool) -> None:
    """What staff type on the tablet, stored as the API's observation entry stores it (source 'manual'; the
    engine then completes the set with the round's device readings)."""
    from carewatch.scoring.news2 import score_observation
    from carewatch.scoring.observation_sets import ObservationSetRow, record_observation_set

    values = {"respiration_rate": obs.respiration_rate, "consciousness": obs.consciousness,
              "on_oxygen": obs.supplemental_oxygen, "spo2_scale": 2 if scale2 else 1}
    result = score_observation(values)
    typed = {"source": "manual", "by": "evaluation", "at": obs.at.isoformat()}
    inputs = {"respiration_rate": typed, "consciousness": typed, "on_oxygen": typed}
    record_observation_set(conn, ObservationSetRow(
        resident_id=obs.resident_id, site_id=obs.site_id, taken_at=obs.at, recorded_by="evaluation",
        source="manual", values={"respiration_rate": obs.respiration_rate}, result=result,
        spo2_scale=values["spo2_scale"], on_oxygen=obs.supplemental_oxygen, consciousness=obs.consciousness,
        soft_signs=obs.soft_signs, note=obs.note, inputs=inputs))


# ------------------------------------------------------------------------------------------------------------
# the scorer benchmarks: the machine's load and the run's header
# ------------------------------------------------------------------------------------------------------------
def loadavg() -> str:
    """The 1, 5 and 15 minute load averages (other jobs on a shared machine make every figure pessimistic)."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def run_header(root: Path) -> list[str]:
    """When, at which commit and with which command line this run was made (what a README row quotes)."""
    def git(*argv: str) -> str:
        try:
            return subprocess.run(["git", *argv], cwd=root, capture_output=True, text=True, timeout=30,
                                  check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    if git("status", "--porcelain", "--untracked-files=no"):
        commit += " (with uncommitted changes)"
    python = Path(sys.executable)
    with contextlib.suppress(ValueError):
        python = python.relative_to(Path.cwd())
    return [f"date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC", f"commit: {commit}",
            f"command: {shlex.join([str(python), *sys.argv])}"]
