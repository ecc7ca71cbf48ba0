"""Time a bundle per backend x precision x batch x mode (sequential branches, concurrent branches, and on TensorRT
concurrent with CUDA graphs), beside the PyTorch eager baseline, on the same prepared inputs. Warm-up calls are
excluded; preparation (preprocess and tokenize) is timed apart from model time."""

from __future__ import annotations

import dataclasses
import time

from fusionrt.benchmarks.stats import latency_stats, percentiles, speedup
from fusionrt.runtime.backends import backend_class, resolve_backend
from fusionrt.runtime.bundle import Bundle
from fusionrt.runtime.errors import InputError
from fusionrt.runtime.pipeline import Pipeline
from fusionrt.runtime.precision import format_precision
from fusionrt.runtime.preprocess import preprocess_batch
from fusionrt.runtime.progress import progress
from fusionrt.runtime.tokenize import TextTokenizer

__all__ = ["bench", "prepared_inputs", "longest_text", "add_speedups", "time_calls"]


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


def _row(runner, pixels, tokens, duration_s: float, **fields) -> dict:
    branch = {"image": [], "text": [], "head": []}

    def call():
        runner.logits(pixels, tokens)
        for name in branch:
            branch[name].append(getattr(runner.timings, f"{name}_ms"))

    times = time_calls(call, duration_s)
    for values in branch.values():
        del values[: len(values) - len(times)]  # drop the warm-up calls
    batch = len(pixels)
    return {**fields, "batch": batch, "seq": int(tokens["input_ids"].shape[1]), **latency_stats(times, batch),
            **{f"{name}_ms": percentiles(values) for name, values in branch.items()}}


# How the branches run, and what Pipeline.load needs for it. A mode is benched on the backends whose options
# take what it needs (CUDA graphs: the TensorRT backends).
MODES = {"sequential": {"concurrent": False}, "concurrent": {"concurrent": True},
         "concurrent + CUDA graphs": {"concurrent": True, "cuda_graphs": True}}


def _modes(backend: str) -> list:
    options = {f.name for f in dataclasses.fields(backend_class(resolve_backend(backend)).Options)}
    return [m for m in MODES if set(MODES[m]) - {"concurrent"} <= options]


def bench(bundle, images, texts, backends=("onnxruntime",), precisions=("fp32", "int8"), batches=(1, 8),
          duration_s: float = 3.0, seq: int | None = None, torch_model=None, device: str = "cpu", options=None) -> list:
    """One record per row. `torch_model` (the bundle's FusionClassifier) adds the PyTorch eager baseline, FP32
    (and FP16 on a GPU): every row then carries its speed-up against it."""
    bundle = bundle if isinstance(bundle, Bundle) else Bundle.open(bundle)
    seq = seq or longest_text(bundle, texts)  # one sequence length for every row
    speed_only = bool(bundle.manifest.calibration.get("speed_only"))
    jobs = []
    for batch in batches:
        if torch_model is not None:
            jobs += [("torch", p, batch, "sequential") for p in ("fp32", "fp16") if p == "fp32" or (p in precisions and device != "cpu")]
        jobs += [(b, p, batch, m) for b in backends if b != "torch" for p in precisions for m in _modes(b)]
    rows, inputs = [], {}
    for backend, precision, batch, mode in progress(jobs, "bench", total=len(jobs)):
        if batch not in inputs:
            inputs[batch] = prepared_inputs(bundle, images, texts, batch, seq)
        pixels, tokens, prepare_ms = inputs[batch]
        fields = {"backend": backend, "precision": precision, "branches": mode,
                  "prepare_ms": prepare_ms, "speed_only": speed_only and precision == "int8" and backend != "torch"}
        if backend == "torch":
            from fusionrt.benchmarks.torch_runner import TorchRunner

            runner = TorchRunner(torch_model, precision, device)
        else:
            runner = Pipeline.load(bundle, backend=backend, precision=precision, **{**(options or {}), **MODES[mode]})
            fields["backend"] = runner.backend_name
            if precision == "auto":  # the calibrated policy: say what it resolved to
                fields["precision"] = f"auto ({format_precision(runner.precision)})"
                fields["speed_only"] = speed_only
        with runner:
            rows.append(_row(runner, pixels, tokens, duration_s, **fields))
    return add_speedups(rows)


def add_speedups(rows: list) -> list:
    """Each row's speed-up (mean latency ratio) against the PyTorch eager FP32 row of the same batch, or, with no
    baseline, against the first backend's FP32 sequential row."""
    def key(r):
        return r["batch"], r["seq"]

    torch_base = {key(r): r["mean_ms"] for r in rows if (r["backend"], r["precision"]) == ("torch", "fp32")}
    fp32_seq = {}
    for r in rows:
        if (r["precision"], r["branches"]) == ("fp32", "sequential") and r["backend"] != "torch":
            fp32_seq.setdefault(key(r), r["mean_ms"])
    baseline, name = (torch_base, "torch fp32") if torch_base else (fp32_seq, "fp32 sequential")
    for r in rows:
        r["speedup"] = speedup(baseline[key(r)], r["mean_ms"]) if key(r) in baseline else None
        r["speedup_vs"] = name
    return rows
