"""Time a bundle's pipeline per precision x batch x (sequential | concurrent branches), on the same inputs."""

from __future__ import annotations

import time

from fusionrt.benchmarks.stats import latency_stats
from fusionrt.runtime.pipeline import Pipeline
from fusionrt.runtime.progress import progress

__all__ = ["bench_bundle"]


def _time(fn, duration_s: float, warmup: int = 3, min_calls: int = 5) -> list:
    for _ in range(warmup):  # warm-up excluded: allocations, first-run kernel choices
        fn()
    times, end = [], time.perf_counter() + duration_s
    while time.perf_counter() < end or len(times) < min_calls:
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def bench_bundle(bundle, images, texts, precisions=("fp32", "int8"), batches=(1, 8), duration_s: float = 3.0,
                 backend: str = "onnxruntime") -> list:
    """One record per (precision, batch, mode); model time only: inputs are prepared once, outside the timing,
    and the preparation time is reported per row separately."""
    rows = []
    jobs = [(p, b, c) for p in precisions for b in batches for c in (False, True)]
    for precision, batch, concurrent in progress(jobs, "bench", total=len(jobs)):
        with Pipeline.load(bundle, backend=backend, precision=precision, concurrent=concurrent) as pipe:
            imgs = [images[i % len(images)] for i in range(batch)]
            txts = [texts[i % len(texts)] for i in range(batch)]
            prep = _time(lambda: pipe.prepare(imgs, txts), min(1.0, duration_s), warmup=1)
            pixels, tokens = pipe.prepare(imgs, txts)
            image_ms, text_ms, head_ms = [], [], []

            def call():
                pipe.logits(pixels, tokens)
                image_ms.append(pipe.timings.image_ms)
                text_ms.append(pipe.timings.text_ms)
                head_ms.append(pipe.timings.head_ms)

            times = _time(call, duration_s)
            rows.append({
                "backend": pipe.backend_name, "precision": precision, "batch": batch,
                "seq": int(tokens["input_ids"].shape[1]), "branches": "concurrent" if concurrent else "sequential",
                **latency_stats(times, batch),
                "image_ms": float(sorted(image_ms)[len(image_ms) // 2]),
                "text_ms": float(sorted(text_ms)[len(text_ms) // 2]),
                "head_ms": float(sorted(head_ms)[len(head_ms) // 2]),
                "prepare_ms": float(sorted(prep)[len(prep) // 2]),
            })
    return rows
