"""Soak: one pipeline called many times, as a camera box runs it for months; reports memory growth and latency drift.

    python benchmarks/soak.py BUNDLE [--n 20000] [--data DATA] [--backend onnxruntime] [--precision ...] [--out DIR]
    (or python -m fusionrt.benchmarks.soak; make soak)

Each call classifies one real image with one of a few texts (mostly the same one, as a camera's note; every 50th call
a new text, so the text cache fills, evicts and hits). Every `--window` calls it records the process's resident memory
and that window's latency p50/p99. Growth is measured from the end of the first window (allocator pools, lazy
set-up and the cache filling are warm-up, not leaks). Goals on the CPU backend: under 20 MB over 20,000 calls, and a
p99 that does not drift: the median p99 of the last three windows within 1.5x of the first three after warm-up
(medians of windows, since one noisy window on a shared machine is not a drift)."""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


from fusionrt.benchmarks.report import machine_info
from fusionrt.benchmarks.stats import percentiles
from fusionrt.runtime.pipeline import Pipeline

__all__ = ["soak", "rss_mb", "drift", "GOAL_MB", "P99_DRIFT_GOAL"]

GOAL_MB = 20.0
P99_DRIFT_GOAL = 1.5  # last windows' p99 / early windows' p99
TEXTS = ("a photo taken by a dashboard camera", "a person at the gate", "a parked car at night", "an empty street")


def rss_mb() -> float:
    """This process's resident memory in MiB (Linux /proc; elsewhere the peak from `resource`)."""
    try:
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:")) / 1024
    except (OSError, StopIteration):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def soak(pipe, images, n: int = 20000, window: int = 1000, texts=TEXTS, say=None, clock=time.perf_counter) -> dict:
    """Run `n` classify calls; returns the windows (calls, rss_mb, p50_ms, p99_ms) and the summary."""
    windows, times, started = [], [], clock()
    for call in range(n):
        text = f"{texts[0]} {call // 50}" if call % 50 == 49 else texts[call % 200 // 50 % len(texts)]
        t0 = clock()
        pipe.classify(images[call % len(images)], text)
        times.append((clock() - t0) * 1e3)
        if len(times) == window or call == n - 1:
            p = percentiles(times)
            windows.append({"calls": call + 1, "rss_mb": round(rss_mb(), 2), "p50_ms": round(p["p50"], 3),
                            "p99_ms": round(p["p99"], 3)})
            times = []
            if say:
                say(f"{call + 1:>7} calls  rss {windows[-1]['rss_mb']:.1f} MB  p50 {p['p50']:.2f} ms  p99 {p['p99']:.2f} ms")
    growth = windows[-1]["rss_mb"] - windows[0]["rss_mb"]
    p99_drift = drift([w["p99_ms"] for w in windows])
    return {"calls": n, "window": window, "seconds": round(clock() - started, 1), "windows": windows,
            "rss_growth_mb": round(growth, 2), "goal_mb": GOAL_MB, "memory_within_goal": growth < GOAL_MB,
            "p50_drift": drift([w["p50_ms"] for w in windows]), "p99_drift": p99_drift,
            "p99_drift_goal": P99_DRIFT_GOAL, "drift_within_goal": p99_drift <= P99_DRIFT_GOAL,
            "within_goal": growth < GOAL_MB and p99_drift <= P99_DRIFT_GOAL}


def drift(values: list) -> float:
    """The median of the last windows over the median of the first ones after the warm-up window (three each, fewer
    in a short run): how much slower the end is than the start."""
    warm = values[1:] if len(values) > 1 else values
    k = max(1, min(3, len(warm) // 2))
    return round(statistics.median(warm[-k:]) / statistics.median(warm[:k]), 3)


def markdown(result: dict) -> str:
    lines = ["| calls | RSS MB | p50 ms | p99 ms |", "|---|---|---|---|"]
    lines += [f"| {w['calls']} | {w['rss_mb']:.1f} | {w['p50_ms']:.2f} | {w['p99_ms']:.2f} |" for w in result["windows"]]
    lines.append(f"\nmemory growth after the first window: {result['rss_growth_mb']:+.1f} MB (goal < {GOAL_MB:.0f} MB: "
                 f"{'met' if result['memory_within_goal'] else 'NOT met'}); latency drift, last windows over the first "
                 f"after warm-up: p50 {result['p50_drift']:.2f}x, p99 {result['p99_drift']:.2f}x (goal <= "
                 f"{P99_DRIFT_GOAL}x: {'met' if result['drift_within_goal'] else 'NOT met'}); {result['seconds']} s on "
                 f"{result.get('machine', {}).get('cpu', 'this machine')}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--window", type=int, default=1000)
    parser.add_argument("--data", help="labelled CSV/JSONL whose first 32 images are used (default: built-in scenes)")
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--precision", default=None, help="default: the bundle's calibrated policy")
    parser.add_argument("--out", help="folder for soak.json and soak.md")
    args = parser.parse_args(argv)
    if args.data:
        from fusionrt.data.dataset import LabeledDataset
        from fusionrt.runtime.preprocess import load_image

        images = [load_image(s.image) for s in LabeledDataset.read(args.data).head(32)]
    else:
        from fusionrt.data.samples import sample_images

        images = sample_images()
    with Pipeline.load(args.bundle, backend=args.backend, precision=args.precision) as pipe:
        print(f"soak: {args.n} calls on {pipe.backend_name} ({pipe.precision}), {len(images)} images", flush=True)
        result = soak(pipe, images, args.n, args.window, say=lambda line: print(line, flush=True))
    result.update(bundle=str(args.bundle), backend=pipe.backend_name, precision=pipe.precision,
                  machine=machine_info())
    print(markdown(result))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "soak.json").write_text(json.dumps(result, indent=2) + "\n")
        (out / "soak.md").write_text(markdown(result) + "\n")
    return 0 if result["within_goal"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
