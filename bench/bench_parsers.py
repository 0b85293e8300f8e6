"""Frames per second for each gateway parser, beside baselines measured in the same run.

    .venv/bin/python bench/bench_parsers.py [--budget-s 0.25]

About 4 s with the default budget per row (``--budget-s 0.02`` for a smoke run). Baselines: a bare call of a
no-op function (the floor for any per-frame Python call) and ``struct.unpack`` of the same bytes (the cheapest
real decoding).
"""

from __future__ import annotations

import argparse
import logging
import struct
import time
from collections.abc import Callable

from carewatch.firmware_sim.frames import (
    encode_berrymed,
    encode_blood_pressure,
    encode_bthome,
    encode_emay,
    encode_heart_rate,
    encode_plx_continuous,
    encode_plx_spot_check,
    encode_temperature,
    encode_weight,
)
from carewatch.gateway.bthome import BTHomeDecoder
from carewatch.gateway.gatt import decode_characteristic
from carewatch.gateway.oximeters import OximeterStream, decode_oximeter

BUDGET_S = 0.25  # default seconds per row
MAC = "54:48:E6:8F:80:A5"
KEY = bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932")


def rate(fn: Callable[[], object], budget_s: float = BUDGET_S) -> float:
    """Calls per second of ``fn`` over about ``budget_s`` (batches of 200 so the timer cost is negligible)."""
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < budget_s:
        for _ in range(200):
            fn()
        calls += 200
    return calls / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget-s", type=float, default=BUDGET_S, help="seconds of calls per row")
    budget = parser.parse_args().budget_s
    logging.getLogger("bthome_ble").setLevel(logging.CRITICAL)
    spot = encode_plx_spot_check(97, 72, measurement_status=0x20, device_and_sensor_status=0, pulse_amplitude_index=8.7)
    frames = {
        "2a5e PLX spot-check": lambda: decode_characteristic("2a5e", spot),
        "2a5f PLX continuous": (lambda d: lambda: decode_characteristic("2a5f", d))(
            encode_plx_continuous(97, 72, fast=(96, 73), slow=(97, 71))),
        "2a1c temperature": (lambda d: lambda: decode_characteristic("2a1c", d))(encode_temperature(37.2, temp_type=3)),
        "2a35 blood pressure": (lambda d: lambda: decode_characteristic("2a35", d))(
            encode_blood_pressure(120, 80, 93, pulse_rate=60)),
        "2a36 cuff pressure": (lambda d: lambda: decode_characteristic("2a36", d))(
            encode_blood_pressure(150, float("nan"), float("nan"), intermediate=True)),
        "2a37 heart rate": (lambda d: lambda: decode_characteristic("2a37", d))(
            encode_heart_rate(64, rr_intervals_ms=[930.0, 940.0])),
        "2a9d weight": (lambda d: lambda: decode_characteristic("2a9d", d))(encode_weight(72.4)),
        "berrymed packet": (lambda d: lambda: decode_oximeter("berrymed", d))(encode_berrymed(98, 72)),
        "emay values frame": (lambda d: lambda: decode_oximeter("emay", d))(encode_emay(98, 62)),
    }
    stream, chunk = OximeterStream("berrymed"), encode_berrymed(98, 72) * 4
    frames["berrymed stream (per frame)"] = lambda: stream.feed(chunk)  # 4 frames per call, corrected below

    decoder, plain = BTHomeDecoder(), encode_bthome({"temperature_c": 21.3, "humidity_pct": 40.0}, packet_id=1, mac=MAC)
    keyed = BTHomeDecoder({MAC: KEY})
    sealed = encode_bthome({"motion": True}, packet_id=1, bindkey=KEY, mac=MAC, counter=1)
    ticks = iter(range(10**9))
    frames["bthome plain"] = lambda: decoder.decode(MAC, plain, at=next(ticks) * 5.0)  # 5 s apart: never dup
    frames["bthome AES-CCM"] = lambda: keyed.decode(MAC, sealed, at=next(ticks) * 5.0)

    def noop(data: bytes) -> bytes:
        return data

    baselines = {
        "bare function call": lambda: noop(spot),
        "struct.unpack same bytes": (lambda fmt: lambda: struct.unpack_from(fmt, spot))("<BHH7s"),
    }
    print(f"{'parser':32} {'frames/s':>12} {'cost in bare calls':>19}")
    results = {name: rate(fn, budget) for name, fn in baselines.items()}
    for name, value in results.items():
        print(f"{name:32} {value:12,.0f} {results['bare function call'] / value:19.1f}")
    for name, fn in frames.items():
        value = rate(fn, budget) * (4 if "stream" in name else 1)
        print(f"{name:32} {value:12,.0f} {results['bare function call'] / value:19.1f}")


if __name__ == "__main__":
    main()
