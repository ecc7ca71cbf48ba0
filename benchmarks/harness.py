"""Time a bundle per backend x precision x batch x mode (sequential branches, concurrent branches, and on TensorRT
concurrent with CUDA graphs), beside the PyTorch eager baseline, on the same prepared inputs. Warm-up calls are
excluded; preparation (preprocess and tokenize) is timed apart from model time."""

from __future__ import annotations

import dataclasses
import time
import warnings

import numpy as np

from fusionrt.benchmarks.stats import latency_stats, percentiles, speedup
from fusionrt.runtime.backends import backend_class, resolve_backend
from fusionrt.runtime.bundle import Bundle
from fusionrt.runtime.errors import InputError
from fusionrt.runtime.pipeline import Pipeline
from fusionrt.runtime.precision import format_precision
from fusionrt.runtime.preprocess import preprocess_batch
from fusionrt.runtime.progress import progress
from fusionrt.runtime.tokenize import TextTokenizer
from fusionrt.runtime.tune import in_turns

__all__ = ["bench", "prepared_inputs", "longest_text", "add_speedups", "time_calls", "ROUNDS"]

ROUNDS = 5  # rounds the rows are interleaved over: each speed-up comes with its min and max across them


def time_calls(fn, duration_s: float, warmup: int = 3, min_calls: int = 5) -> list:
    """Milliseconds per call of `fn` for `duration_s` seconds (at least `min_calls`), after `warmup` untimed calls."""
    start = time.perf_counter()
    for _ in range(warmup):  # allocations, first-run kernel choices, lazy initialisation
        fn()
        if time.perf_counter() - start > 1.0:  # one slow call (a big batch on a CPU) warms up enough
            break
    times, end = [], time.perf_counter() + duration_s
    while time.perf_counter() < end or len(times) < min_calls:
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def longest_text(bundle: Bundle, texts) -> int:
    """The token count of the longest of `texts` (at most the bundle's max_seq_len): every row's sequence length when
    none is given, so rows at different batch sizes compare."""
    m = bundle.manifest
    return int(TextTokenizer(bundle.read(m.tokenizer.file), m.tokenizer.max_seq_len)(list(texts))["input_ids"].shape[1])


def prepared_inputs(bundle: Bundle, images, texts, batch: int, seq: int | None = None) -> tuple:
    """(pixels, tokens, prepare ms per call): the batch's inputs, texts padded to `seq` when given."""
    m = bundle.manifest
    if seq is not None and not 1 <= seq <= m.tokenizer.max_seq_len:
        raise InputError(f"--seq {seq}: expected 1..{m.tokenizer.max_seq_len}, the bundle's longest text.")
    tokenizer = TextTokenizer(bundle.file(m.tokenizer.file), seq or m.tokenizer.max_seq_len)
    imgs = [images[i % len(images)] for i in range(batch)]
    txts = [texts[i % len(texts)] for i in range(batch)]

    def prepare():
        return preprocess_batch(imgs, m.preprocess), tokenizer(txts, pad_to=seq)

    prepare_ms = time_calls(prepare, 0.5, warmup=1, min_calls=3)
    pixels, tokens = prepare()
    return pixels, tokens, float(sorted(prepare_ms)[len(prepare_ms) // 2])


class _Row:
    """One row's runner and inputs, and what its calls measured, round by round."""

    def __init__(self, runner, pixels, tokens, fields: dict):
        self.runner, self.pixels, self.tokens, self.fields = runner, pixels, tokens, fields
        self.times, self.round_ms = [], []
        self.branch = {"image": [], "text": [], "head": []}

    def run_round(self, duration_s: float, warmup: int) -> None:
        branch = {name: [] for name in self.branch}

        def call():
            self.runner.logits(self.pixels, self.tokens)
            for name in branch:
                branch[name].append(getattr(self.runner.timings, f"{name}_ms"))

        times = time_calls(call, duration_s, warmup=warmup, min_calls=2)
        for name, values in branch.items():
            self.branch[name] += values[len(values) - len(times):]  # the warm-up calls dropped
        self.times += times
        self.round_ms.append(float(np.median(times)))

    def record(self) -> dict:
        batch = len(self.pixels)
        return {**self.fields, "batch": batch, "seq": int(self.tokens["input_ids"].shape[1]),
                **latency_stats(self.times, batch), "round_ms": self.round_ms,
                **{f"{name}_ms": percentiles(values) for name, values in self.branch.items()}}


# How the branches run, and what Pipeline.load needs for it. A mode is benched on the backends whose options
# take what it needs (CUDA graphs: the TensorRT backends).
MODES = {"sequential": {"concurrent": False}, "concurrent": {"concurrent": True},
         "concurrent + CUDA graphs": {"concurrent": True, "cuda_graphs": True}}


def _modes(backend: str) -> list:
    options = {f.name for f in dataclasses.fields(backend_class(resolve_backend(backend)).Options)}
    return [m for m in MODES if set(MODES[m]) - {"concurrent"} <= options]


def bench(bundle, images, texts, backends=("onnxruntime",), precisions=("fp32", "int8"), batches=(1, 8),
          duration_s: float = 3.0, seq: int | None = None, torch_model=None, device: str = "cpu", options=None,
          rounds: int = ROUNDS) -> list:
    """One record per row. Every row is loaded first, then timed in `rounds` rounds of duration_s / rounds each,
    the rows interleaved (each round in another order): a speed-up is the median over rounds of the baseline's and
    the row's same-round times, with its min and max, so load from other work on a shared machine hits both sides.
    `torch_model` (the bundle's FusionClassifier) adds the PyTorch eager baseline, FP32 (and FP16 on a GPU)."""
    bundle = bundle if isinstance(bundle, Bundle) else Bundle.open(bundle)
    seq = seq or longest_text(bundle, texts)  # one sequence length for every row
    speed_only = bool(bundle.manifest.calibration.get("speed_only"))
    jobs = [("torch", p, "sequential") for p in ("fp32", "fp16") if torch_model is not None and
            (p == "fp32" or (p in precisions and device != "cpu"))]
    jobs += [(b, p, m) for b in backends if b != "torch" for p in precisions for m in _modes(b)]
    inputs = {batch: prepared_inputs(bundle, images, texts, batch, seq) for batch in batches}
    runners, rows = [], []
    try:
        for backend, precision, mode in progress(jobs, "loading the rows", total=len(jobs)):
            runner, fields = _runner(bundle, backend, precision, mode, torch_model, device, options, speed_only)
            runners.append(runner)
            for batch in batches:
                pixels, tokens, prepare_ms = inputs[batch]
                rows.append(_Row(runner, pixels, tokens, {**fields, "prepare_ms": prepare_ms}))
        for r in progress(range(rounds), f"bench ({len(rows)} rows, {rounds} rounds)", total=rounds):
            for row in in_turns(rows, r):
                row.run_round(duration_s / rounds, warmup=3 if r == 0 else 1)
    finally:
        for runner in runners:
            runner.close()
    return add_speedups([row.record() for row in rows])


def _runner(bundle, backend: str, precision: str, mode: str, torch_model, device: str, options, speed_only: bool):
    fields = {"backend": backend, "precision": precision, "branches": mode,
              "speed_only": speed_only and precision == "int8" and backend != "torch"}
    if backend == "torch":
        from fusionrt.benchmarks.torch_runner import TorchRunner

        return TorchRunner(torch_model, precision, device), fields
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        runner = Pipeline.load(bundle, backend=backend, precision=None if precision == "auto" else precision,
                               **{**(options or {}), **MODES[mode]})
    for w in said:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    off = [str(w.message) for w in said if str(w.message).startswith("cuda_graphs=True:")]
    if MODES[mode].get("cuda_graphs") and off:  # the row ran without graphs: say so, not "+ CUDA graphs"
        fields.update(branches=f"{mode} (not in effect)", note=off[0])
    fields["backend"] = runner.backend_name
    if precision == "auto":  # the calibrated candidates, tuned here: say what it resolved to, and why
        fields.update(precision=f"auto ({format_precision(runner.precision)})", speed_only=speed_only,
                      precision_reason=runner.precision_reason)
    return runner, fields


def add_speedups(rows: list) -> list:
    """Each row's speed-up against the PyTorch eager FP32 row of the same batch or, with no baseline, the first
    backend's FP32 sequential row: the median over rounds of the same-round ratios, with their min and max
    (`speedup`, `speedup_min`, `speedup_max`); rows without rounds compare their mean latencies."""
    def key(r):
        return r["batch"], r["seq"]

    torch_base = {key(r): r for r in rows if (r["backend"], r["precision"]) == ("torch", "fp32")}
    fp32_seq = {}
    for r in rows:
        if (r["precision"], r["branches"]) == ("fp32", "sequential") and r["backend"] != "torch":
            fp32_seq.setdefault(key(r), r)
    baseline, name = (torch_base, "torch fp32") if torch_base else (fp32_seq, "fp32 sequential")
    for r in rows:
        base = baseline.get(key(r))
        ratios = _ratios(base, r) if base is not None else []
        r["speedup"] = float(np.median(ratios)) if ratios else None
        r["speedup_min"], r["speedup_max"] = (min(ratios), max(ratios)) if ratios else (None, None)
        r["speedup_vs"] = name
    return rows


def _ratios(base: dict, row: dict) -> list:
    rounds = list(zip(base.get("round_ms") or [], row.get("round_ms") or []))
    if rounds:
        return [speedup(b, t) for b, t in rounds]
    return [speedup(base["mean_ms"], row["mean_ms"])]
