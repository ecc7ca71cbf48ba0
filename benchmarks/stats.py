"""Latency statistics and speed-up arithmetic for benchmark rows."""

from __future__ import annotations

import threading
import time
from typing import Callable, Sequence

import numpy as np

__all__ = ["latency_stats", "percentiles", "speedup", "run_together"]


def percentiles(times_ms: Sequence[float]) -> dict:
    """p50/p95/p99 with linear interpolation (numpy's default)."""
    if len(times_ms) == 0:
        raise ValueError("expected at least one timed call, found none")
    p50, p95, p99 = np.percentile(np.asarray(times_ms, dtype=np.float64), [50, 95, 99])
    return {"p50": float(p50), "p95": float(p95), "p99": float(p99)}


def latency_stats(times_ms: Sequence[float], batch: int) -> dict:
    """End-to-end p50/p95/p99, mean and throughput in pairs/s from per-call times."""
    p = percentiles(times_ms)
    t = np.asarray(times_ms, dtype=np.float64)
    return {"p50_ms": p["p50"], "p95_ms": p["p95"], "p99_ms": p["p99"], "mean_ms": float(t.mean()),
            "throughput": float(batch * 1000.0 / t.mean()), "calls": int(t.size)}


def speedup(baseline_ms: float, candidate_ms: float) -> float:
    """How many times faster the candidate is (baseline / candidate)."""
    if candidate_ms <= 0:
        raise ValueError(f"expected a positive time, found {candidate_ms}")
    return baseline_ms / candidate_ms


def run_together(jobs: Sequence[Callable[[], None]]) -> float:
    """Run the jobs at once, one thread each; the wall seconds from the first start to the last end."""
    threads = [threading.Thread(target=job) for job in jobs]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start
