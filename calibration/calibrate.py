"""`fusionrt calibrate`: ranges from real data, two Q/DQ targets plus an FP16 fallback, a fidelity report and a
precision policy."""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from fusionrt.data.dataset import LabeledDataset
from fusionrt.calibration.fidelity import combinations, cosine_stats, fidelity_markdown, head_outcome
from fusionrt.calibration.half import write_fp16
from fusionrt.calibration.policy import Thresholds, choose_policy
from fusionrt.calibration.quantize import collect_ranges, preprocess_for_quantization, quantize_component
from fusionrt.calibration.reader import MIN_HELD_OUT, CalibrationSource, OrtReader, select_calibration
from fusionrt.runtime.backends.onnxruntime import OnnxRuntimeBackend
from fusionrt.runtime.bundle import Bundle
from fusionrt.runtime.cpu import cpu_info
from fusionrt.runtime.errors import DataError
from fusionrt.runtime.manifest import COMPONENTS, INT8_TARGETS, ModelFile, sha256_of
from fusionrt.runtime.precision import format_precision, parse_precision
from fusionrt.runtime.progress import progress

__all__ = ["calibrate_bundle", "TARGETS"]

TARGETS = INT8_TARGETS
# The TensorRT flavour is measured with its Q/DQ nodes run as written (ONNX Runtime's graph optimizations off):
# the exact products and int32 sums TensorRT computes. Fused into this CPU's integer kernels it would carry the
# CPU's own rounding (U8S8 pair sums saturate without VNNI) into a figure meant for the GPU.
EXACT_QDQ = {"int8-cpu": False, "int8-trt": True}
ENCODERS = ("image_encoder", "text_encoder")


def _run(backend_files: dict, component: str, feeds: list, exact: bool = False, seconds: dict | None = None) -> np.ndarray:
    """`component` over every feed; `seconds[component]` gets the inference time when a dict is passed."""
    comp_spec, path = backend_files[component]
    with OnnxRuntimeBackend(path, comp_spec.inputs, comp_spec.outputs, ["CPUExecutionProvider"], optimize=not exact) as b:
        name = comp_spec.outputs[0].name
        names = {s.name for s in comp_spec.inputs}
        start = time.perf_counter()
        out = np.concatenate([b.infer({k: v for k, v in f.items() if k in names})[name] for f in feeds])
        if seconds is not None:
            seconds[component] = time.perf_counter() - start
        return out


def _batched(array: np.ndarray, sizes: list) -> list:
    return np.split(array, np.cumsum(sizes)[:-1])


def calibrate_bundle(bundle_dir, data, eval_data=None, method: str = "percentile", samples: int = 128,
                     precision: str = "auto", thresholds: Thresholds = Thresholds(), batch_size: int = 8) -> dict:
    """Calibrate, quantize, measure fidelity and choose the precision policy; updates the bundle; returns the report."""
    with Bundle.open(bundle_dir).update("calibrate") as update:
        return _calibrate(update, data, eval_data, method, samples, precision, thresholds, batch_size)


def _calibrate(update, data, eval_data, method: str, samples: int, precision: str, thresholds: Thresholds,
               batch_size: int) -> dict:
    """The work of `calibrate_bundle`, inside its bundle update: every file is staged, then committed with the
    manifest at the end, so a failure or a kill on the way leaves the bundle as it was."""
    bundle = update.current  # the manifest as committed now, read under the write lock
    m, w = bundle.manifest, bundle.manifest.wiring
    calib, rest = select_calibration(LabeledDataset.read(data), samples)
    held_out = LabeledDataset.read(eval_data) if eval_data else rest
    if len(held_out) < MIN_HELD_OUT:
        raise DataError(f"the held-out split has {len(held_out)} samples, expected at least {MIN_HELD_OUT}: pass --eval-data "
                        "with a labelled split that calibration does not use, or a larger --data.")
    requested = None if precision == "auto" else parse_precision(precision)
    calib_feeds = list(CalibrationSource(bundle, calib, batch_size))
    eval_feeds = list(CalibrationSource(bundle, held_out, batch_size))
    fp32_files = {c: (m.components[c], bundle.file(m.components[c].files["fp32"].path)) for c in COMPONENTS}

    # FP32 features: the head's calibration inputs, and the fidelity reference.
    fp32_seconds = {}  # where the model time goes: the policy puts INT8 where it saves the most
    fp32 = {c: _run(fp32_files, c, eval_feeds, seconds=fp32_seconds) for c in ENCODERS}
    calib_feats = {c: _run(fp32_files, c, calib_feeds) for c in ENCODERS}
    sizes = [len(f[w.image_input]) for f in calib_feeds]
    head_calib_feeds = [{w.image_output: i, w.text_output: t} for i, t in zip(
        _batched(calib_feats["image_encoder"], sizes), _batched(calib_feats["text_encoder"], sizes))]

    written = {}  # (component, flavour) -> StagedFile
    with tempfile.TemporaryDirectory(prefix="fusionrt-quant-") as tmp:
        for comp in progress(COMPONENTS, "quantizing", total=len(COMPONENTS)):
            prepared = preprocess_for_quantization(fp32_files[comp][1], Path(tmp) / f"{comp}.prep.onnx")
            feeds = head_calib_feeds if comp == "fusion_head" else [
                {s.name: f[s.name] for s in m.components[comp].inputs} for f in calib_feeds]
            ranges = collect_ranges(prepared, OrtReader(feeds), comp, method, Path(tmp) / f"{comp}.ranges.json")
            shutil.copy(ranges, update.stage(f"calibration/{comp}.ranges.json").path)
            for target in TARGETS:
                written[(comp, target)] = update.stage(f"{comp}.{target.replace('-', '.')}.onnx")
                quantize_component(prepared, comp, target, ranges, written[(comp, target)].path)
            written[(comp, "fp16")] = update.stage(f"{comp}.fp16.onnx")
            write_fp16(fp32_files[comp][1], written[(comp, "fp16")].path)

    # Fidelity on the held-out split, per target: INT8 parts use that target's Q/DQ model; FP16 is one file.
    labels_true = held_out.label_indices(m.labels)
    fp32_logits = _head_logits(w, fp32_files["fusion_head"], fp32["image_encoder"], fp32["text_encoder"],
                               seconds=fp32_seconds)
    fp32_outcome = head_outcome(fp32_logits, fp32_logits, labels_true, len(m.labels))
    fp16_files = {c: (m.components[c], written[(c, "fp16")].path) for c in COMPONENTS}
    fp16 = {c: _run(fp16_files, c, eval_feeds) for c in ENCODERS}
    branches = {"fp16": {c: cosine_stats(fp32[c], fp16[c]) for c in ENCODERS}}
    outcomes, rows = {}, []
    for target in TARGETS:
        q_files = {c: (m.components[c], written[(c, target)].path) for c in COMPONENTS}
        q_feats = {c: _run(q_files, c, eval_feeds, EXACT_QDQ[target]) for c in ENCODERS}
        branches[target] = {c: cosine_stats(fp32[c], q_feats[c]) for c in ENCODERS}
        features = {"int8": q_feats, "fp16": fp16, "fp32": fp32}
        heads = {"int8": q_files["fusion_head"], "fp16": fp16_files["fusion_head"], "fp32": fp32_files["fusion_head"]}
        for config in combinations(COMPONENTS):
            key = tuple(config[c] for c in COMPONENTS)
            if key == ("fp32",) * 3:
                continue
            logits = _head_logits(w, heads[config["fusion_head"]], features[config["image_encoder"]]["image_encoder"],
                                  features[config["text_encoder"]]["text_encoder"],
                                  exact=EXACT_QDQ[target] and config["fusion_head"] == "int8")
            outcomes.setdefault(key, {})[target] = outcome = head_outcome(logits, fp32_logits, labels_true, len(m.labels))
            rows.append({"config": format_precision(config), "target": target, **outcome})

    # One policy per target: different Q/DQ graphs on different hardware, so INT8 that one cannot hold does not
    # cost the other its speed.
    policies = {}
    for target in TARGETS:
        if requested is None:
            key, reason = choose_policy({k: {target: o[target]} for k, o in outcomes.items()},
                                        fp32_outcome["accuracy"], COMPONENTS, thresholds, fp32_seconds)
        else:
            key, reason = tuple(requested[c] for c in COMPONENTS), "chosen by the user (--precision)"
        policies[target] = {"precision": dict(zip(COMPONENTS, key)), "reason": reason,
                            "outcome": outcomes.get(key, {}).get(target, fp32_outcome)}
    cpu = cpu_info()
    report = {
        "calibration": {"method": method, "samples": len(calib), "data": str(data)},
        "held_out": {"count": len(held_out), "data": str(eval_data or f"{data} (samples not used for calibration)")},
        "thresholds": dataclasses.asdict(thresholds),
        # int8-cpu figures hold for CPUs like this one (U8S8 kernels differ with and without VNNI)
        "measured_on": {"cpu": cpu["model"], "vnni": cpu["vnni"],
                        "int8-trt": "Q/DQ run as written (exact integer arithmetic, as TensorRT computes it)"},
        "fp32": fp32_outcome,
        "fp32_model_ms": {c: 1e3 * fp32_seconds[c] for c in COMPONENTS},  # held-out split, this CPU
        "branches": branches,
        "end_to_end": rows,
        "policy": {t: {"chosen": format_precision(p["precision"]), "reason": p["reason"]} for t, p in policies.items()},
    }
    report["summary"] = {
        "fp32_accuracy": fp32_outcome["accuracy"],
        **{t: {"precision": format_precision(p["precision"]), **p["outcome"],
               **{f"{c}_cosine_min": branches[t][c]["min"] for c in ENCODERS}} for t, p in policies.items()},
    }
    update.stage("reports/fidelity.json").path.write_text(json.dumps(report, indent=2) + "\n")
    update.stage("reports/fidelity.md").path.write_text(fidelity_markdown(report))

    components = {}
    for comp in COMPONENTS:
        files = dict(m.components[comp].files)
        for flavour in (*TARGETS, "fp16"):
            staged = written[(comp, flavour)]
            files[flavour] = ModelFile(staged.name, sha256_of(staged.path))
        components[comp] = dataclasses.replace(m.components[comp], files=files)
    update.commit(dataclasses.replace(
        m, components=components, precision=policies["int8-cpu"]["precision"],
        precision_reason=policies["int8-cpu"]["reason"],
        policies={t: {"precision": p["precision"], "reason": p["reason"]} for t, p in policies.items()},
        fidelity={"summary": report["summary"], "report": "reports/fidelity.json"},
        calibration={**report["calibration"], "ranges": {c: f"calibration/{c}.ranges.json" for c in COMPONENTS},
                     "cpu": cpu["model"], "cpu_vnni": cpu["vnni"]},
    ))
    return report


def _head_logits(wiring, head_file, image_features: np.ndarray, text_features: np.ndarray, exact: bool = False,
                 seconds: dict | None = None) -> np.ndarray:
    feed = {wiring.image_output: image_features.astype(np.float32), wiring.text_output: text_features.astype(np.float32)}
    return _run({"fusion_head": head_file}, "fusion_head", [feed], exact, seconds)
