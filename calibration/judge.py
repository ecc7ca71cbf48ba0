"""The judge stage: every configuration of a target (each part at fp32, fp16 or int8), run as the resolver says that
target runs it, against FP32 on the selection and report splits, timed where the target runs here, and checked for
batch invariance (a few report rows alone, in their batch, and with more padding)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from fusionrt.calibration.criterion import Criterion, judge
from fusionrt.calibration.evaluation import ENCODERS, open_part
from fusionrt.calibration.fidelity import combinations, cosine_stats
from fusionrt.runtime.invariance import BATCH_TOLERANCE, PADDINGS, row_alone, with_padding
from fusionrt.runtime.resolve import PRECISIONS, Execution, resolve
from fusionrt.runtime.manifest import COMPONENTS, FUSION_HEAD, IMAGE_ENCODER, TEXT_ENCODER
from fusionrt.runtime.precision import format_precision

__all__ = ["JUDGED_ON", "TIMED", "execution_for", "Judged", "judge_target", "probe_rows"]

# How calibration runs each target: the backend and device whose arithmetic the target's policy is for.
JUDGED_ON = {"int8-cpu": ("onnxruntime", "cpu"), "int8-trt": ("tensorrt", "gpu"), "int8-ov": ("openvino", "CPU")}
PROBE_ROWS = 8  # report rows the batch-invariance check runs alone and batched
TIMED = ("int8-cpu", "int8-ov")  # the targets that run on this machine, so whose speed is measured, not estimated


def execution_for(target: str, precision: str, available=None, int8_float: str | None = None) -> Execution:
    """How `target` runs a part at `precision`; available: the flavours written (None: every flavour); int8_float:
    the float under int8-ov's INT8 parts (the resolver's; None: the CPU's own)."""
    backend, device = JUDGED_ON[target]
    return resolve(backend, precision, device, available=available, int8_float=int8_float)


@dataclass
class Judged:
    """One configuration of one target."""

    precision: tuple  # image, text, head
    selection: dict  # outcome on the selection split, with its "rule"
    report: dict  # outcome on the report split, with its "rule"
    passed_selection: bool
    passed_report: bool
    seconds: float | None  # model time on the report split (targets that run here)
    batch_deviation: float  # largest |logit| difference, a row alone against in its batch (or with more padding)
    batch_invariant: bool

    @property
    def passed(self) -> bool:
        return self.passed_selection and self.passed_report

    def row(self, target: str) -> dict:
        """The report's row for this configuration."""
        return {"config": format_precision(dict(zip(COMPONENTS, self.precision))), "target": target,
                **{k: v for k, v in self.report.items() if k != "passed"}, "passed": self.passed,
                "selection": {"top1_agreement": self.selection["top1_agreement"], "flips": self.selection["flips"],
                              "rule": self.selection["rule"], "passed": self.passed_selection},
                "batch_deviation": self.batch_deviation, "batch_invariant": self.batch_invariant,
                **({"model_ms": 1e3 * self.seconds} if self.seconds is not None else {})}


def probe_rows(feeds: list) -> dict:
    """Up to PROBE_ROWS report rows as one batch, padded to its longest text: what batch invariance is checked on."""
    rows, merged = 0, []
    for feed in feeds:
        merged.append(feed)
        rows += len(next(iter(feed.values())))
        if rows >= PROBE_ROWS:
            break
    width = max(f["attention_mask"].shape[1] for f in merged)
    out = {}
    for name in merged[0]:
        arrays = [np.pad(f[name], ((0, 0), (0, width - f[name].shape[1]))) if f[name].ndim == 2 else f[name]
                  for f in merged]
        out[name] = np.concatenate(arrays)[:PROBE_ROWS]
    return out


@dataclass
class _Parts:
    """Each encoder at each precision: features per split, probe outputs, seconds."""

    features: dict = field(default_factory=dict)  # split -> {(component, precision): features}
    probe: dict = field(default_factory=dict)  # (component, precision) -> {"batch", "alone", "padded": [...]}
    seconds: dict = field(default_factory=dict)  # (component, precision) -> seconds on the report split


def judge_target(target: str, files, evaluators: dict, probe: dict, noise: dict, criterion: Criterion,
                 max_seq_len: int, available=None, int8_float: str | None = None, cache: dict | None = None) -> tuple:
    """([Judged] for every configuration, {encoder: cosine stats of its INT8 vs FP32 on the report split}).
    files(component, flavour) -> path; evaluators: {"selection", "report"} -> Evaluator; probe: a batch of report
    rows (feeds); noise: split -> noise-floor flips; available: the flavours written (the resolver's fallbacks);
    int8_float: the float under int8-ov's INT8 parts; cache: shared by judgements of one target (see _encode)."""
    parts = _encode(target, files, evaluators, probe, max_seq_len, available, int8_float,
                    {} if cache is None else cache)
    report = evaluators["report"]
    cosines = {c: cosine_stats(report.fp32[c], parts.features["report"][(c, "int8")]) for c in ENCODERS}
    results = []
    head_spec = report.manifest.components[FUSION_HEAD]
    same = _aliases(target, available, int8_float)
    for head_precision in (p for p in PRECISIONS if p not in same):
        execution = execution_for(target, head_precision, available, int8_float)
        with open_part(head_spec, files(FUSION_HEAD, execution.flavour), execution) as head:
            head_seconds = _head_seconds(head, report, parts) if target in TIMED else None
            for config in combinations(ENCODERS, tuple(p for p in PRECISIONS if p not in same)):
                key = (config[IMAGE_ENCODER], config[TEXT_ENCODER], head_precision)
                if key == ("fp32",) * 3 and target == "int8-cpu":
                    continue  # the reference itself
                results.append(_judge_one(key, head, parts, evaluators, probe, noise, criterion, head_seconds))
    return results, cosines


def _aliases(target: str, available, int8_float) -> dict:
    """Precisions that compute exactly what an earlier one does on this target (fp16 on ONNX Runtime's CPU is its FP32
    file in FP32; on OpenVINO without BF16 too): judged once, under the earlier name, the one that says what runs."""
    keys = {p: execution_for(target, p, available, int8_float).key for p in PRECISIONS}
    return {p: q for i, p in enumerate(PRECISIONS) for q in PRECISIONS[:i] if keys[q] == keys[p] and p != q}


def _encode(target: str, files, evaluators: dict, probe: dict, max_seq_len: int, available, int8_float,
            cache: dict) -> _Parts:
    """Each encoder at each precision; cache: (component, Execution.key) -> what it computed, shared by the judgements
    of one target under each float under INT8 (its fp32 and fp16 parts are the same computation)."""
    parts = _Parts(features={split: {} for split in evaluators})
    manifest = evaluators["report"].manifest
    for component in ENCODERS:
        spec = manifest.components[component]
        names = {s.name for s in spec.inputs}
        for precision in PRECISIONS:
            execution = execution_for(target, precision, available, int8_float)
            key = (component, execution.key)  # a precision that resolves like another is that computation
            if key not in cache:
                with open_part(spec, files(component, execution.flavour), execution) as backend:
                    run, features, seconds = _runner(backend, spec, names), {}, {}
                    for split, evaluator in evaluators.items():
                        features[split] = _timed(run, evaluator.feeds, seconds)
                        if split == "report":
                            report_seconds = seconds["s"]
                    probed = _probe(run, {k: v for k, v in probe.items() if k in names}, max_seq_len)
                cache[key] = (features, probed, report_seconds)
            features, probed, report_seconds = cache[key]
            for split in evaluators:
                parts.features[split][(component, precision)] = features[split]
            parts.probe[(component, precision)] = probed
            parts.seconds[(component, precision)] = report_seconds
    return parts


def _runner(backend, spec, names):
    output = spec.outputs[0].name
    return lambda feed: backend.infer({k: v for k, v in feed.items() if k in names})[output]


def _timed(run, feeds: list, seconds: dict) -> np.ndarray:
    start = time.perf_counter()
    out = np.concatenate([run(f) for f in feeds])
    seconds["s"] = time.perf_counter() - start
    return out


def _probe(run, feeds: dict, max_seq_len: int) -> dict:
    """The probe rows in their batch, each alone (without its batch's padding), and (text) with each of PADDINGS more
    padding ("padded": one output per padding; the batch itself where there is no text)."""
    n = len(next(iter(feeds.values())))
    padded = [p for p in (with_padding(feeds, extra, max_seq_len) for extra in PADDINGS) if p is not None]
    return {"batch": run(feeds), "alone": np.concatenate([run(row_alone(feeds, i)) for i in range(n)]),
            "padded": [run(p) for p in padded] or [run(feeds)]}


def _head_seconds(head, report, parts: _Parts) -> float:
    feed = report.head_feed(report.fp32[IMAGE_ENCODER], report.fp32[TEXT_ENCODER])
    start = time.perf_counter()
    head.infer(feed)
    return time.perf_counter() - start


def _judge_one(key: tuple, head, parts: _Parts, evaluators: dict, probe: dict, noise: dict, criterion: Criterion,
               head_seconds) -> Judged:
    image, text, _ = key
    logits_name = head.output_specs[0].name
    outcomes = {}
    for split, evaluator in evaluators.items():
        features = parts.features[split]
        logits = head.infer(evaluator.head_feed(features[(IMAGE_ENCODER, image)], features[(TEXT_ENCODER, text)]))
        outcome = evaluator.judge_logits(logits[logits_name])
        outcome["passed"], outcome["rule"] = judge(outcome, evaluator.outcome["accuracy"], noise[split], criterion)
        outcomes[split] = outcome
    pi, pt = parts.probe[(IMAGE_ENCODER, image)], parts.probe[(TEXT_ENCODER, text)]
    feed = evaluators["report"].head_feed
    batch = head.infer(feed(pi["batch"], pt["batch"]))[logits_name]
    padded = [head.infer(feed(pi["batch"], p))[logits_name] for p in pt["padded"]]
    alone = np.concatenate([head.infer(feed(pi["alone"][i:i + 1], pt["alone"][i:i + 1]))[logits_name]
                            for i in range(len(batch))])
    deviation = float(max(np.abs(batch - alone).max(), *(np.abs(p - alone).max() for p in padded)))
    scale = max(float(np.abs(alone).max()), 1e-30)
    seconds = None if head_seconds is None else head_seconds + sum(
        parts.seconds[(c, p)] for c, p in zip(ENCODERS, key[:2]))
    return Judged(key, outcomes["selection"], outcomes["report"], outcomes["selection"]["passed"],
                  outcomes["report"]["passed"], seconds, deviation, deviation / scale <= BATCH_TOLERANCE)

