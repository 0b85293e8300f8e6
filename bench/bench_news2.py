"""Benchmark: vectorised NEWS2 (score_arrays) vs the scalar reference, on one core, in the same run.

Run: .venv/bin/python bench/bench_news2.py [--sets N]. Times are CPU time of this process (time.process_time),
so a busy shared machine does not understate single-core speed. Prints sets/s for both, the speed-up and whether the
targets (>= 20M sets/s, >= 100x the reference) are met. Exit code 0 if both are met, 1 otherwise. ~10-20 s.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from carewatch.scoring.news2 import CONSCIOUSNESS_CODES, encode_consciousness, score_arrays
from carewatch.scoring.news2_reference import score_reference

TARGET_SETS_PER_S = 20_000_000
TARGET_SPEEDUP = 100


def synthetic_sets(n: int, seed: int = 2017) -> dict[str, np.ndarray]:
    """Realistic-looking observation sets: device-resolution values, 5% of each parameter missing."""
    rng = np.random.default_rng(seed)

    def column(low: float, high: float, decimals: int) -> np.ndarray:
        values = np.round(rng.uniform(low, high, n), decimals)
        values[rng.random(n) < 0.05] = np.nan
        return values

    letters = np.array([*CONSCIOUSNESS_CODES.values(), -1], dtype=np.int8)
    return {
        "respiration_rate": column(6, 35, 0),
        "spo2": column(82, 100, 0),
        "scale2": rng.random(n) < 0.1,
        "on_oxygen": rng.random(n) < 0.15,
        "systolic_bp": column(75, 230, 0),
        "pulse": column(35, 150, 0),
        "consciousness": rng.choice(letters, n, p=[0.86, 0.04, 0.03, 0.02, 0.01, 0.04]),
        "temperature": column(34.0, 40.5, 2),
    }


def time_vectorised(columns: dict[str, np.ndarray], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        score_arrays(**columns)
        best = min(best, time.process_time() - start)
    return best


def time_reference(columns: dict[str, np.ndarray], count: int) -> float:
    letters = {code: letter for letter, code in CONSCIOUSNESS_CODES.items()}
    sets = [
        {
            "respiration_rate": float(columns["respiration_rate"][i]),
            "spo2": float(columns["spo2"][i]),
            "spo2_scale": 2 if columns["scale2"][i] else 1,
            "on_oxygen": bool(columns["on_oxygen"][i]),
            "systolic_bp": float(columns["systolic_bp"][i]),
            "pulse": float(columns["pulse"][i]),
            "consciousness": letters.get(int(columns["consciousness"][i])),
            "temperature": float(columns["temperature"][i]),
        }
        for i in range(count)
    ]
    start = time.process_time()
    for obs in sets:
        score_reference(obs)
    return time.process_time() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", type=int, default=4_000_000, help="observation sets for the vectorised run")
    parser.add_argument("--reference-sets", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    assert encode_consciousness(["A"]).dtype == np.int8

    columns = synthetic_sets(args.sets)
    score_arrays(**{k: v[:1000] for k, v in columns.items()})  # warm up
    vector_s = time_vectorised(columns, args.repeats)
    reference_s = time_reference(columns, args.reference_sets)

    vector_rate = args.sets / vector_s
    reference_rate = args.reference_sets / reference_s
    speedup = vector_rate / reference_rate
    rate_ok = vector_rate >= TARGET_SETS_PER_S
    speedup_ok = speedup >= TARGET_SPEEDUP
    print(f"vectorised score_arrays : {vector_rate / 1e6:8.1f} M sets/s  (best of {args.repeats}, {args.sets:,} sets)")
    print(f"scalar reference        : {reference_rate / 1e3:8.1f} k sets/s  ({args.reference_sets:,} sets)")
    print(f"speed-up                : {speedup:8.0f} x")
    print(f"target >= {TARGET_SETS_PER_S / 1e6:.0f}M sets/s     : {'MET' if rate_ok else 'NOT MET'}")
    print(f"target >= {TARGET_SPEEDUP}x reference  : {'MET' if speedup_ok else 'NOT MET'}")
    return 0 if rate_ok and speedup_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
