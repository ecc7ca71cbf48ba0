"""The fastest faithful configuration on the machine that loads a bundle: measured there, cached like a TensorRT
timing cache.

Calibration keeps every configuration that passed its criterion (`Policy.candidates`); which is fastest depends on
the CPU that runs them (ONNX Runtime's and OpenVINO's INT8 kernels differ 2-3x between AMX, AVX-512 VNNI and AVX2-only
machines). `tune` times each part at each precision those configurations use, on this machine, at batch 1 and a
larger batch, checks there that each part is batch-invariant, and picks the configuration (and, for `auto`, the
backend) with the least model time. FP32 is always a candidate: it is the reference. Results are cached per bundle
(its files' sha256), machine (CPU kind, package versions) and backend options under `cache_root()/tune`;
`fusionrt tune BUNDLE` measures ahead, and an explicit precision is never overridden."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, NamedTuple, Sequence

import numpy as np

from fusionrt.runtime.cpu import CpuKind, cpu_kind
from fusionrt.runtime.environment import cache_root
from fusionrt.runtime.invariance import invariant, relative_deviation
from fusionrt.runtime.manifest import COMPONENTS, IMAGE_ENCODER, TEXT_ENCODER
from fusionrt.runtime.optional import installed_versions
from fusionrt.runtime.precision import format_precision
from fusionrt.runtime.tokenize import TextTokenizer

__all__ = ["Choice", "Measured", "tune", "candidates", "judged_elsewhere", "in_turns", "median_ms", "TUNE_VERSION"]

TUNE_VERSION = 3  # bumped when what is measured changes: older cache entries are measured again
ROUNDS = 3  # rounds every backend's parts are timed in, in turn (see _measure)
TIME_PER_SHAPE_S = 0.05  # timed per part, precision and batch in each round (at least MIN_CALLS calls)
MIN_CALLS = 3
LARGE_BATCH = 8  # the second batch size timed (capped by the bundle's profile)
PROBE_ROWS = 4  # rows the batch-invariance check runs alone and batched
_TEXTS = ("a red car waits at the light", "a person crosses the street in the rain near a bus stop at night",
          "a dog", "two trucks and a bicycle on a road past a large building with a sign on it", "a tree",
          "an empty road", "people walking on the pavement beside parked cars", "a traffic sign")
FP32 = {c: "fp32" for c in COMPONENTS}


@dataclass(frozen=True)
class Measured:
    """One configuration on one backend, as measured here."""

    backend: str
    precision: Mapping[str, str]
    ms: Mapping[int, float]  # batch -> model time of the three parts, one after the other
    invariant: bool  # every part batch-invariant here
    excluded: str = ""  # why it may not be chosen ("" when it may)

    @property
    def score(self) -> float:
        """The geometric mean of the times over the batches measured (scale-free across batch sizes)."""
        return math.exp(sum(math.log(max(v, 1e-9)) for v in self.ms.values()) / max(len(self.ms), 1))

    def to_dict(self) -> dict:
        return {"backend": self.backend, "precision": format_precision(self.precision),
                "ms": {str(b): round(v, 3) for b, v in self.ms.items()}, "batch_invariant": self.invariant,
                **({"excluded": self.excluded} if self.excluded else {})}


@dataclass(frozen=True)
class Choice:
    backend: str
    precision: Mapping[str, str]
    why: str
    measured: tuple  # Measured, fastest first
    cached: bool  # every figure came from the cache
    seconds: float  # how long measuring took (0 from the cache)
    cache: str  # the cache file

    def to_dict(self) -> dict:
        return {"backend": self.backend, "precision": format_precision(self.precision), "why": self.why,
                "cached": self.cached, "seconds": round(self.seconds, 2), "cache": self.cache,
                "measured": [m.to_dict() for m in self.measured]}


def candidates(manifest, target: str, asked: Mapping[str, str] | None = None) -> list:
    """[(precision, why excluded or '')] that a backend of `target` may run: calibration's candidates (or its one
    policy, for a bundle that predates them) and FP32; only `asked` when a precision was asked for."""
    if asked is not None:
        return [(dict(asked), "")]
    policy = manifest.policies.get(target)
    found = []
    if policy is not None:
        listed = policy.candidates or ()
        found = [(dict(c.precision), "" if c.batch_invariant else "batch-dependent at calibration") for c in listed]
        if not listed:
            found = [(dict(policy.precision), "")]
        elsewhere = judged_elsewhere(policy)
        if elsewhere:
            found = [(p, why or (elsewhere if "int8" in p.values() else "")) for p, why in found]
    found.append((dict(FP32), ""))
    unique = []
    for precision, why in found:
        if precision not in [p for p, _ in unique]:
            unique.append((precision, why))
    return unique


def judged_elsewhere(policy) -> str:
    """Why INT8 judged on another kind of CPU may not run here ('' where it may): a policy whose arithmetic depends on
    the CPU's kernels (not `portable`) holds for CPUs of the kind that judged it."""
    if getattr(policy, "portable", True) or not getattr(policy, "measured_on", None):
        return ""
    # under each side's ONEDNN_MAX_CPU_ISA: a policy judged with AVX2 kernels on an AMX Xeon does not hold there
    # without the limit
    if CpuKind.from_dict(policy.measured_on).same_kernels(cpu_kind()):
        return ""
    return f"INT8 judged on another kind of CPU ({policy.measured_on.get('label', '?')})"


def tune(bundle, backends: Sequence, asked: Mapping[str, str] | None = None, force: bool = False,
         say=None) -> Choice:
    """The fastest configuration among `backends` ([(name, options)], CPU backends) on this machine. `asked`: the one
    precision to measure (an explicit precision: only the backend is chosen). force: measure again."""
    from fusionrt.runtime.backends import backend_class

    started, rows = time.perf_counter(), []
    path = _cache_file(bundle)
    cache = _read_cache(path)
    plans = []
    for name, options in backends:
        backend_cls = backend_class(name)
        configs = candidates(bundle.manifest, backend_cls.target(options), asked)
        entry = {} if force else dict(cache.get(_entry_key(name, options), {}))
        needed = {(c, p[c]) for p, _ in configs for c in COMPONENTS}
        missing = sorted(n for n in needed if _part_key(backend_cls, options, bundle, *n) not in entry)
        plans.append(_Plan(name, backend_cls, options, configs, entry, missing))
    measuring = [plan for plan in plans if plan.missing]
    if measuring:  # every backend's parts timed together, in turns: see _measure
        if say:
            say("tuning on this machine: " + ", ".join(f"{p.name} {len(p.missing)} part/precision pairs"
                                                       for p in measuring))
        for plan, found in zip(measuring, _measure(bundle, [(p.cls, p.options, p.missing) for p in measuring])):
            plan.entry.update(found)
            cache[_entry_key(plan.name, plan.options)] = plan.entry
        _write_cache(path, cache)
    for plan in plans:
        for precision, why in plan.configs:
            parts = [plan.entry[_part_key(plan.cls, plan.options, bundle, c, precision[c])] for c in COMPONENTS]
            ms = {int(b): sum(p["ms"][b] for p in parts) for b in parts[0]["ms"]}
            ok = all(p["invariant"] for p in parts)
            rows.append(Measured(plan.name, precision, ms, ok,
                                 why or ("" if ok else "batch-dependent on this machine")))
    rows.sort(key=lambda m: (bool(m.excluded), m.score))
    best = rows[0]
    cached = not measuring
    return Choice(best.backend, dict(best.precision), _why(best, rows), tuple(rows), cached,
                  0.0 if cached else time.perf_counter() - started, str(path))


class _Plan(NamedTuple):
    """One backend's part of a tuning: its configurations, its cache entry, and the parts still to measure."""

    name: str
    cls: type
    options: object
    configs: list
    entry: dict
    missing: list


def _why(best: Measured, rows: list) -> str:
    shapes = ", ".join(f"batch {b} {v:.1f} ms" for b, v in best.ms.items())
    others = [m for m in rows if m is not best and not m.excluded]
    if not others:
        return f"measured here: {best.backend} {format_precision(best.precision)} ({shapes}), the only candidate"
    runner_up = others[0]
    return (f"measured here, the fastest of {len(others) + 1} faithful configurations: {best.backend} "
            f"{format_precision(best.precision)} ({shapes}; {runner_up.score / best.score:.2f}x the next, "
            f"{runner_up.backend} {format_precision(runner_up.precision)})")


def _part_key(backend_cls, options, bundle, component: str, precision: str) -> str:
    """What a part at a precision computes on this backend: two precisions that resolve alike are measured once."""
    execution = backend_cls.execution_in(bundle, component, precision, options)
    return f"{component}|{execution.flavour}|{execution.float_precision}|{sorted(execution.hints.items())}"


def _measure(bundle, jobs: list) -> list:
    """For each job (backend class, options, [(component, precision)]): {part key: {"ms": {batch: ms}, "invariant":
    bool, "deviation": float}}. Every part of every backend is opened and checked for batch invariance first, then
    timed in ROUNDS rounds, the parts in turn (each round starting at another), each part's time the median of its
    rounds: a slow moment of a shared machine then lands on every backend, not on whichever was timed in it."""
    m = bundle.manifest
    batches = sorted({max(1, m.profile.batch[0]), min(LARGE_BATCH, m.profile.batch[2])})
    tokenizer = TextTokenizer(bundle.read(m.tokenizer.file, m.tokenizer.sha256), m.tokenizer.max_seq_len)
    feeds = {b: {c: _feeds(m, c, b, tokenizer, timing=True) for c in COMPONENTS} for b in batches}
    results, runs = [{} for _ in jobs], []
    with contextlib.ExitStack() as opened:
        for out, (backend_cls, options, parts) in zip(results, jobs):
            for component, precision in parts:
                key = _part_key(backend_cls, options, bundle, component, precision)
                if key in out:
                    continue
                backend = opened.enter_context(backend_cls.open(bundle, component, precision, options))
                name = backend.output_specs[0].name
                run = functools.partial(_output, backend, name)  # the part as the pipeline calls it
                deviation = relative_deviation(run, _feeds(m, component, PROBE_ROWS, tokenizer, timing=False),
                                               m.tokenizer.max_seq_len)
                out[key] = {"ms": {}, "invariant": invariant(deviation), "deviation": deviation}
                runs.append((out[key]["ms"], component, run))
        times = [{b: [] for b in batches} for _ in runs]
        for r in range(ROUNDS):
            for i in in_turns(range(len(runs)), r):
                _, component, run = runs[i]
                for b in batches:
                    times[i][b].append(median_ms(run, feeds[b][component]))
    for (ms, _, _), timed in zip(runs, times):
        ms.update({b: float(np.median(t)) for b, t in timed.items()})
    return results


def _output(backend, name: str, feeds: dict):
    return backend.infer(feeds)[name]


def in_turns(items: Sequence, round_index: int) -> list:
    """`items` in the order of round `round_index` when they are timed in turns: each round starts one further along,
    so none is always timed first (right after whatever ran before) or last."""
    shift = round_index % len(items) if len(items) else 0
    return list(items[shift:]) + list(items[:shift])


def median_ms(run, feeds, seconds: float = TIME_PER_SHAPE_S) -> float:
    """Median milliseconds per `run(feeds)` after one warm-up call: at least MIN_CALLS calls, `seconds` at most
    beyond."""
    run(feeds)
    times, end = [], time.perf_counter() + seconds
    while len(times) < MIN_CALLS or time.perf_counter() < end:
        start = time.perf_counter()
        run(feeds)
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times))


def _feeds(manifest, component: str, batch: int, tokenizer: TextTokenizer, timing: bool) -> dict:
    """Inputs for one part: random pixels and features (speed and invariance do not depend on their meaning) and real
    tokens (of the profile's typical length for timing; of mixed lengths for the invariance check)."""
    rng = np.random.default_rng(batch)
    spec = manifest.components[component]
    if component == TEXT_ENCODER:
        texts = [_TEXTS[i % len(_TEXTS)] for i in range(batch)]
        seq = min(manifest.profile.seq[1], manifest.tokenizer.max_seq_len)
        tokens = tokenizer(texts, pad_to=max(seq, tokenizer(texts)["input_ids"].shape[1]) if timing else None)
        if timing:
            tokens["attention_mask"][:] = 1  # as long a text as the profile's typical one
        return {s.name: tokens[s.name] for s in spec.inputs}
    feeds = {}
    for s in spec.inputs:
        shape = [batch if d == "batch" else d for d in s.shape]
        if component == IMAGE_ENCODER and not all(isinstance(d, int) for d in shape):
            shape = [batch, 3, manifest.preprocess.height, manifest.preprocess.width]
        feeds[s.name] = np.clip(rng.standard_normal(shape), -2.5, 2.5).astype(s.dtype)
    return feeds


def _entry_key(name: str, options) -> str:
    fields = {k: v for k, v in dataclasses.asdict(options).items() if k != "verify"}
    versions = installed_versions(("onnxruntime", "onnxruntime-gpu", "openvino", "fusionrt"))
    return json.dumps({"v": TUNE_VERSION, "backend": name, "options": repr(sorted(fields.items())),
                       "cpu": cpu_kind().key, "versions": versions}, sort_keys=True)


def _cache_file(bundle) -> Path:
    identity = json.dumps({"files": bundle.manifest.files(), "profile": bundle.manifest.profile.to_dict()},
                          sort_keys=True)
    return cache_root() / "tune" / f"{hashlib.sha256(identity.encode()).hexdigest()[:32]}.json"


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    try:
        return {k: {pk: {**pv, "ms": {int(b): float(t) for b, t in pv["ms"].items()}} for pk, pv in v.items()}
                for k, v in data.items()}
    except (AttributeError, KeyError, TypeError, ValueError):
        return {}  # a damaged cache is measured again


def _write_cache(path: Path, cache: dict) -> None:
    """Atomically (temp file + rename): two processes tuning at once each leave a whole file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache, indent=1, default=str) + "\n")
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home: the choice stands, it is measured again next time
