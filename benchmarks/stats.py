"""Latency statistics and speed-up arithmetic for benchmark rows."""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["latency_stats", "speedup"]


def latency_stats(times_ms: Sequence[float], batch: int) -> dict:
    """p50/p95/p99 (linear interpolation, numpy's default) and throughput in pairs/s from per-call times."""
    if len(times_ms) == 0:
        raise ValueError("expected at least one timed call, found none")
    t = np.asarray(times_ms, dtype=np.float64)
    p50, p95, p99 = np.percentile(t, [50, 95, 99])
    return {"p50_ms": float(p50), "p95_ms": float(p95), "p99_ms": float(p99), "mean_ms": float(t.mean()),
            "throughput": float(batch * 1000.0 / t.mean()), "calls": int(t.size)}


def speedup(baseline_ms: float, candidate_ms: float) -> float:
    """How many times faster the candidate is (baseline / candidate)."""
    if candidate_ms <= 0:
        raise ValueError(f"expected a positive time, found {candidate_ms}")
    return baseline_ms / candidate_ms
