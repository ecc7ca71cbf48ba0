"""`fusionrt calibrate`: ranges from real data, two Q/DQ targets plus an FP16 fallback, per-layer fallback found by
search, a fidelity report that knows its noise floor, and a precision policy per target."""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from fusionrt.calibration.criterion import Criterion, judge, noise_band
from fusionrt.calibration.evaluation import ENCODERS, Evaluator, bf16_round, run_component
from fusionrt.calibration.fallback import quantizable_nodes, rank_layers, search_fallback, structural_float
from fusionrt.calibration.fidelity import combinations, cosine_stats, fidelity_markdown
from fusionrt.calibration.half import write_fp16, write_int8_fp16
from fusionrt.calibration.policy import choose_policy
from fusionrt.calibration.quantize import collect_ranges, preprocess_for_quantization, quantize_component
from fusionrt.calibration.reader import MIN_HELD_OUT, CalibrationSource, OrtReader, select_calibration
from fusionrt.data.dataset import LabeledDataset
from fusionrt.runtime.bundle import Bundle
from fusionrt.runtime.cpu import cpu_info
from fusionrt.runtime.errors import DataError
from fusionrt.runtime.manifest import COMPONENTS, INT8_TARGETS, ModelFile, sha256_of
from fusionrt.runtime.optional import is_available
from fusionrt.runtime.precision import format_precision, parse_precision
from fusionrt.runtime.progress import progress

__all__ = ["calibrate_bundle", "TARGETS"]

TARGETS = ("int8-cpu", "int8-trt")  # the INT8 files written, one per target
STRONGLY_TYPED_INT8 = "int8-trt-fp16"  # the int8-trt graph on an FP16 base (TensorRT 11, TensorRT-RTX)
OV_TARGET = "int8-ov"  # OpenVINO runs the int8-trt files; its policy is measured on its own kernels when installed
assert set(TARGETS) | {OV_TARGET} == set(INT8_TARGETS)
# The TensorRT flavour is measured with its Q/DQ nodes run as written (ONNX Runtime's graph optimizations off):
# the exact products and int32 sums TensorRT computes. Fused into this CPU's integer kernels it would carry the
# CPU's own rounding (U8S8 pair sums saturate without VNNI) into a figure meant for the GPU.
EXACT_QDQ = {"int8-cpu": False, "int8-trt": True}
# The file each target is judged on. TensorRT runs what a Q/DQ graph keeps float in FP16 (10.x: the FP16 flag beside
# INT8; 11.x and TensorRT-RTX, strongly typed: the FP16-base graph they build from), so int8-trt is judged there.
JUDGED = {"int8-cpu": "int8-cpu", "int8-trt": STRONGLY_TYPED_INT8}
RANKING_BATCHES = 4  # calibration batches the per-layer sensitivity is measured on


def _batched(array: np.ndarray, sizes: list) -> list:
    return np.split(array, np.cumsum(sizes)[:-1])


def calibrate_bundle(bundle_dir, data, eval_data=None, method: str = "percentile", samples: int = 128,
                     precision: str = "auto", criterion: Criterion = Criterion(), batch_size: int = 8) -> dict:
    """Calibrate, quantize, measure fidelity and choose the precision policy; updates the bundle; returns the report.

    precision 'auto' searches, per component and target, the fewest layers to keep float for the component to pass
    `criterion`; an explicit precision ('int8', 'image=int8,...') keeps only the structural layers float (the most
    INT8, the user's call) and still reports its fidelity."""
    with Bundle.open(bundle_dir).update("calibrate") as update:
        return _calibrate(update, data, eval_data, method, samples, precision, criterion, batch_size)


def _calibrate(update, data, eval_data, method: str, samples: int, precision: str, criterion: Criterion,
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
    calib_feeds = list(progress(CalibrationSource(bundle, calib, batch_size), "calibration inputs"))
    eval_feeds = list(progress(CalibrationSource(bundle, held_out, batch_size), "held-out inputs"))
    fp32_files = {c: bundle.file(m.components[c].files["fp32"].path) for c in COMPONENTS}
    ref = Evaluator(m, fp32_files, eval_feeds, held_out.label_indices(m.labels))  # the FP32 reference
    calib_feats = {c: run_component(m.components[c], fp32_files[c], calib_feeds) for c in ENCODERS}
    sizes = [len(f[w.image_input]) for f in calib_feeds]
    component_feeds = {c: [{s.name: f[s.name] for s in m.components[c].inputs} for f in calib_feeds] for c in ENCODERS}
    component_feeds["fusion_head"] = [{w.image_output: i, w.text_output: t} for i, t in zip(
        _batched(calib_feats["image_encoder"], sizes), _batched(calib_feats["text_encoder"], sizes))]

    # FP16 first: what it (and BF16-rounded features) flips is the noise floor INT8 is judged against.
    written = {}  # (component, flavour) -> StagedFile
    for comp in COMPONENTS:
        written[(comp, "fp16")] = update.stage(f"{comp}.fp16.onnx")
        write_fp16(fp32_files[comp], written[(comp, "fp16")].path)
    fp16 = {c: ref.features(c, written[(c, "fp16")].path) for c in ENCODERS}
    fp16_outcome = ref.judge_logits(ref.head(written[("fusion_head", "fp16")].path, fp16["image_encoder"],
                                             fp16["text_encoder"]))
    bf16_outcome = ref.judge_logits(ref.head(fp32_files["fusion_head"], bf16_round(ref.fp32["image_encoder"]),
                                             bf16_round(ref.fp32["text_encoder"])))
    noise_flips = max(fp16_outcome["flips"], bf16_outcome["flips"])
    noise = {"fp16_flips": fp16_outcome["flips"], "bf16_features_flips": bf16_outcome["flips"], "flips": noise_flips,
             "band": noise_band(noise_flips, criterion.noise_quantile), "samples": len(held_out)}

    kept, searches = {t: {} for t in TARGETS}, {t: {} for t in TARGETS}
    with tempfile.TemporaryDirectory(prefix="fusionrt-quant-") as tmp:
        for comp in progress(COMPONENTS, "quantizing + per-layer search", total=len(COMPONENTS)):
            prepared = preprocess_for_quantization(fp32_files[comp], Path(tmp) / f"{comp}.prep.onnx")
            ranges = collect_ranges(prepared, OrtReader(component_feeds[comp]), comp, method,
                                    Path(tmp) / f"{comp}.ranges.json")
            shutil.copy(ranges, update.stage(f"calibration/{comp}.ranges.json").path)
            structural = structural_float(prepared)
            ranked = []
            if requested is None:  # rank once, on the symmetric Q/DQ graph both targets share the scales of
                candidates = [n for n in quantizable_nodes(prepared) if n not in structural]

                def alone(node):  # used within this iteration: the loop's names are the ones meant
                    others = [n for n in candidates if n != node]
                    return quantize_component(prepared, comp, "int8-trt", ranges, Path(tmp) / f"{comp}.rank.onnx",
                                              excluded=sorted(structural) + others)

                ranked = rank_layers(prepared, alone, component_feeds[comp][:RANKING_BATCHES],
                                     progress(candidates, f"sensitivity of each layer ({comp})"))
            for target in progress(TARGETS, f"per-layer search and INT8 files ({comp})", total=len(TARGETS)):
                written[(comp, target)] = staged = update.stage(f"{comp}.{target.replace('-', '.')}.onnx")
                chosen, search = _fallback(comp, target, prepared, ranges, structural, ranked, ref, noise_flips,
                                           criterion, Path(tmp)) if requested is None else ([], None)
                quantize_component(prepared, comp, target, ranges, staged.path, excluded=sorted(structural) + chosen)
                if target == "int8-trt":  # what TensorRT computes, and what int8-trt is judged on: FP16 underneath
                    written[(comp, STRONGLY_TYPED_INT8)] = half = update.stage(f"{comp}.int8.trt.fp16.onnx")
                    write_int8_fp16(staged.path, half.path)
                errors = dict(ranked)
                kept[target][comp] = [{"node": n, "why": why} for n, why in sorted(structural.items())] + [
                    {"node": n, "why": f"per-layer search: sensitivity rank {i + 1} (alone in INT8, output error "
                                       f"{errors[n]:.3g})"} for i, n in enumerate(chosen)]
                if search is not None:
                    searches[target][comp] = search

    # Fidelity on the held-out split, per target: INT8 parts use that target's Q/DQ model; FP16 is one file.
    fp16_files = {c: written[(c, "fp16")].path for c in COMPONENTS}
    branches = {"fp16": {c: cosine_stats(ref.fp32[c], fp16[c]) for c in ENCODERS}}
    outcomes, rows, times = {}, [], {}
    for target in progress(TARGETS, "fidelity on the held-out split", total=len(TARGETS)):
        q_files = {c: written[(c, JUDGED[target])].path for c in COMPONENTS}
        q_seconds = {}  # the CPU target runs here: its INT8 speed is measured, not estimated
        q_feats = {c: ref.features(c, q_files[c], EXACT_QDQ[target], q_seconds) for c in ENCODERS}
        branches[target] = {c: cosine_stats(ref.fp32[c], q_feats[c]) for c in ENCODERS}
        features = {"int8": q_feats, "fp16": fp16, "fp32": ref.fp32}
        heads = {"int8": q_files["fusion_head"], "fp16": fp16_files["fusion_head"], "fp32": fp32_files["fusion_head"]}

        def logits_of(config):  # called within this iteration: the loop's names are the ones meant
            int8_head = config["fusion_head"] == "int8"
            return ref.head(heads[config["fusion_head"]], features[config["image_encoder"]]["image_encoder"],
                            features[config["text_encoder"]]["text_encoder"], EXACT_QDQ[target] and int8_head,
                            q_seconds if int8_head else None)

        _judge_configurations(target, logits_of, ref, noise_flips, criterion, outcomes, rows)
        if not EXACT_QDQ[target]:  # CPU kernels: FP16 runs as FP32 on ONNX Runtime's CPU (no FP16 math there)
            times[target] = {c: {"fp32": ref.seconds[c], "fp16": ref.seconds[c], "int8": q_seconds[c]} for c in COMPONENTS}

    targets = TARGETS
    if is_available("openvino"):  # OpenVINO's own kernels: fp32 forced, fp16 = BF16 where the CPU has it
        _measure_openvino(ref, written, fp32_files, outcomes, rows, times, branches, noise_flips, criterion)
        kept[OV_TARGET], targets = kept["int8-trt"], (*TARGETS, OV_TARGET)

    # One policy per target: different Q/DQ graphs on different hardware, so INT8 that one cannot hold does not
    # cost the other its speed.
    policies = {}
    for target in targets:
        if requested is None:
            key, reason = choose_policy({k: {target: o[target]} for k, o in outcomes.items()}, ref.outcome["accuracy"],
                                        COMPONENTS, criterion, ref.seconds, {target: noise_flips}, times.get(target))
        else:
            key, reason = tuple(requested[c] for c in COMPONENTS), "chosen by the user (--precision)"
        policies[target] = {"precision": dict(zip(COMPONENTS, key)), "reason": reason,
                            "outcome": outcomes.get(key, {}).get(target, ref.outcome),
                            "kept_float": {c: kept[target][c] for c in COMPONENTS if key[COMPONENTS.index(c)] == "int8"}}
    cpu = cpu_info()
    report = {
        "calibration": {"method": method, "samples": len(calib), "data": str(data)},
        "held_out": {"count": len(held_out), "data": str(eval_data or f"{data} (samples not used for calibration)")},
        "criterion": dataclasses.asdict(criterion),
        "noise_floor": noise,
        # int8-cpu figures hold for CPUs like this one (U8S8 kernels differ with and without VNNI)
        "measured_on": {"cpu": cpu["model"], "vnni": cpu["vnni"],
                        "int8-trt": "Q/DQ run as written on an FP16 base (exact integer arithmetic, FP16 between, as "
                                    "TensorRT computes it)"},
        "fp32": ref.outcome,
        "fp32_model_ms": {c: 1e3 * ref.seconds[c] for c in COMPONENTS},  # held-out split, this CPU
        "measured_ms": {t: {c: {p: 1e3 * s for p, s in v.items()} for c, v in tt.items()} for t, tt in times.items()},
        "branches": branches,
        "end_to_end": rows,
        "kept_float": kept,
        "fallback_search": {t: {c: [{"kept": k, "passed": ok, "rule": rule} for k, ok, rule in s.trace]
                                for c, s in per.items()} for t, per in searches.items()},
        "policy": {t: {"chosen": format_precision(p["precision"]), "reason": p["reason"]} for t, p in policies.items()},
    }
    report["summary"] = {
        "fp32_accuracy": ref.outcome["accuracy"], "noise_floor_flips": noise_flips,
        **{t: {"precision": format_precision(p["precision"]), **p["outcome"],
               "layers_kept_float": {c: len(v) for c, v in p["kept_float"].items()},
               **{f"{c}_cosine_min": branches[t][c]["min"] for c in ENCODERS}} for t, p in policies.items()},
    }
    update.stage("reports/fidelity.json").path.write_text(json.dumps(report, indent=2) + "\n")
    update.stage("reports/fidelity.md").path.write_text(fidelity_markdown(report))

    components = {}
    for comp in COMPONENTS:
        files = dict(m.components[comp].files)
        for flavour in (*TARGETS, "fp16", STRONGLY_TYPED_INT8):
            staged = written[(comp, flavour)]
            files[flavour] = ModelFile(staged.name, sha256_of(staged.path))
        components[comp] = dataclasses.replace(m.components[comp], files=files)
    update.commit(dataclasses.replace(
        m, components=components, precision=policies["int8-cpu"]["precision"],
        precision_reason=policies["int8-cpu"]["reason"],
        policies={t: {"precision": p["precision"], "reason": p["reason"], "kept_float": p["kept_float"]}
                  for t, p in policies.items()},
        fidelity={"summary": report["summary"], "report": "reports/fidelity.json"},
        calibration={**report["calibration"], "ranges": {c: f"calibration/{c}.ranges.json" for c in COMPONENTS},
                     "cpu": cpu["model"], "cpu_vnni": cpu["vnni"]},
    ))
    return report


def _measure_openvino(ref: Evaluator, written: dict, fp32_files: dict, outcomes: dict, rows: list, times: dict,
                      branches: dict, noise_flips: int, criterion: Criterion) -> None:
    """Every configuration on OpenVINO, as its backend runs it: fp32 (FP32 forced), fp16 (the CPU's 16-bit float on
    the FP32 file), int8 (the int8-trt Q/DQ file); fidelity against FP32 and the time of each part."""
    files = {"fp32": fp32_files, "fp16": fp32_files, "int8": {c: written[(c, "int8-trt")].path for c in COMPONENTS}}
    seconds = {c: {} for c in COMPONENTS}
    features = {}
    for precision in progress(("fp32", "fp16", "int8"), "OpenVINO fidelity and speed", total=3):
        measured = {}
        features[precision] = {c: ref.features_ov(c, files[precision][c], precision, measured) for c in ENCODERS}
        ref.head_ov(files[precision]["fusion_head"], ref.fp32["image_encoder"], ref.fp32["text_encoder"], precision,
                    measured)
        for comp, value in measured.items():
            seconds[comp][precision] = value
    branches[OV_TARGET] = {c: cosine_stats(ref.fp32[c], features["int8"][c]) for c in ENCODERS}

    def logits_of(config):
        head = config["fusion_head"]
        return ref.head_ov(files[head]["fusion_head"], features[config["image_encoder"]]["image_encoder"],
                           features[config["text_encoder"]]["text_encoder"], head)

    _judge_configurations(OV_TARGET, logits_of, ref, noise_flips, criterion, outcomes, rows)
    times[OV_TARGET] = seconds


def _judge_configurations(target: str, logits_of, ref: Evaluator, noise_flips: int, criterion: Criterion,
                          outcomes: dict, rows: list) -> None:
    """Every configuration but all-FP32 on `target`: `logits_of(config)` judged against FP32, into `outcomes` (key ->
    {target: outcome}) and `rows`."""
    for config in combinations(COMPONENTS):
        key = tuple(config[c] for c in COMPONENTS)
        if key == ("fp32",) * len(COMPONENTS):
            continue
        outcome = ref.judge_logits(logits_of(config))
        outcome["rule"] = judge(outcome, ref.outcome["accuracy"], noise_flips, criterion)[1]
        outcomes.setdefault(key, {})[target] = outcome
        rows.append({"config": format_precision(config), "target": target, **outcome})


def _fallback(comp: str, target: str, prepared: Path, ranges: Path, structural: dict, ranked: list, ref: Evaluator,
              noise_flips: int, criterion: Criterion, tmp: Path) -> tuple:
    """(layers to keep float beyond the structural ones, the search): the fewest of the most sensitive layers for
    `comp` alone in INT8 (the other parts FP32) to pass the criterion on the held-out split."""
    trial = tmp / f"{comp}.{target}.trial.onnx"

    def passes(extra: list) -> tuple:
        quantize_component(prepared, comp, target, ranges, trial, excluded=sorted(structural) + extra)
        judged = write_int8_fp16(trial, tmp / f"{comp}.{target}.trial.fp16.onnx") if target == "int8-trt" else trial
        outcome = ref.component_alone(comp, judged, EXACT_QDQ[target])
        return judge(outcome, ref.outcome["accuracy"], noise_flips, criterion)

    search = search_fallback([name for name, _ in ranked], passes)
    return search.kept, search
