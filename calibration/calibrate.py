"""`fusionrt calibrate`, as stages with typed results:

1. splits: calibration samples (ranges), and the held-out samples dealt into a selection and a report split;
2. noise floor: what a harmless perturbation (the FP16 model, BF16-rounded features) flips, on each split;
3. quantize: ranges from real data, the INT8 file of each target per part (the convs' biases corrected for their
   weights' error), the layers kept float found by the per-layer search on the selection split;
4. judge: every configuration of every target, run as the resolver says that target runs (the runtime's own
   backends; TensorRT emulated as its Q/DQ arithmetic is written; OpenVINO on NNCF's INT8 IR where nncf is installed),
   on both splits, timed where it runs here, checked
   for batch invariance;
5. policy: the configurations that pass on both splits are the target's candidates; calibration's choice is the
   fastest measured here (the loading machine's tuning picks again there);
6. report: the report split's figures (`reports/fidelity.json`, `.md`) and the manifest.
Every file is staged in a BundleUpdate and committed with the manifest at the end: a failure or a kill on the way
leaves the bundle as it was."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fusionrt.bundling.staging import update_bundle
from fusionrt.calibration.bias_correction import conv_input_means
from fusionrt.calibration.criterion import Criterion, judge, noise_band
from fusionrt.calibration.evaluation import ENCODERS, REFERENCE, Evaluator, bf16_round
from fusionrt.calibration.fallback import (quantizable_nodes, rank_layers, search_fallback, searched_why,
                                          structural_float)
from fusionrt.calibration.fidelity import fidelity_markdown
from fusionrt.calibration.half import write_fp16, write_int8_fp16
from fusionrt.calibration.int8_float import int8_floats, pick_int8_float
from fusionrt.calibration.judge import JUDGED_ON, execution_for, judge_target, probe_rows
from fusionrt.calibration import openvino_int8, openvino_target
from fusionrt.calibration.openvino_target import OV_TARGET
from fusionrt.calibration.openvino_linear import LINEAR_FORMS
from fusionrt.calibration.policy import choose_policy
from fusionrt.calibration.quantize import RECIPE, collect_ranges, preprocess_for_quantization, quantize_component
from fusionrt.calibration.reader import CalibrationSource, OrtReader, select_calibration, split_held_out
from fusionrt.data.dataset import LabeledDataset
from fusionrt.runtime.bundle import Bundle
from fusionrt.runtime.cpu import cpu_kind
from fusionrt.runtime.errors import InputError
from fusionrt.runtime.manifest import (COMPONENTS, FUSION_HEAD, IMAGE_ENCODER, TEXT_ENCODER, Candidate, ModelFile, Policy,
                                       sha256_of)
from fusionrt.runtime.precision import format_precision, parse_precision
from fusionrt.runtime.progress import progress

__all__ = ["calibrate_bundle", "TARGETS", "Splits", "NoiseFloor"]

TARGETS = ("int8-cpu", "int8-trt")  # the INT8 Q/DQ ONNX files written, one per target
FP16_BASE = "int8-trt-fp16"  # the int8-trt graph on an FP16 base: what TensorRT computes, and what it is judged on
RANKING_BATCHES = 4  # calibration batches the per-layer sensitivity is measured on


@dataclass(frozen=True)
class Splits:
    calibration: LabeledDataset
    selection: LabeledDataset  # the per-layer search and the policy's choice
    report: LabeledDataset  # the fidelity the report and the manifest give


@dataclass(frozen=True)
class NoiseFloor:
    fp16_flips: int
    bf16_features_flips: int
    samples: int
    band: int  # the most flips that read as noise on these samples

    @property
    def flips(self) -> int:
        return max(self.fp16_flips, self.bf16_features_flips)

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "flips": self.flips}


@dataclass(frozen=True)
class Quantized:
    kept: dict  # target -> component -> [{"node", "why"}]: the layers each INT8 file keeps float
    searches: dict  # target -> Fallback: the search over the whole model's ranked layers
    openvino: str  # what the int8-ov target runs: "nncf" (its own IR files), "int8-trt" or "" (no openvino here)
    openvino_linear: str = ""  # the int8-ov text's linear layers: "matmul", 1x1 "conv" (INT8 math) or "weights"
    openvino_linear_ms: dict = dataclasses.field(default_factory=dict)  # form -> ms, where `auto` timed them


def calibrate_bundle(bundle_dir, data, eval_data=None, method: str = "percentile", samples: int = 128,
                     precision: str = "auto", criterion: Criterion = Criterion(), batch_size: int = 8,
                     openvino_linear: str = "auto") -> dict:
    """Calibrate, quantize, judge, choose each target's policy; update the bundle; return the report.

    precision 'auto' searches, per target, the fewest of the whole model's most sensitive layers to keep float for
    the pipeline in INT8 to pass `criterion` on the selection split; an explicit precision ('int8', 'image=int8,...') keeps only the structural layers float (the most
    INT8, the user's call) and still reports its fidelity.

    openvino_linear: the int8-ov text encoder's linear layers in INT8 math as NNCF writes them ('matmul') or as 1x1
    convolutions ('conv', OpenVINO's fast INT8 kernel on a CPU without VNNI), or INT8 weights with float math
    ('weights', NNCF's weight compression); 'auto' searches this CPU kind's INT8-math form, then takes 'weights' where
    they pass too and run the calibration texts faster here (calibration/openvino_target.py)."""
    if openvino_linear not in ("auto", *LINEAR_FORMS):
        raise InputError(f"calibrate: openvino_linear expected one of auto, {', '.join(LINEAR_FORMS)}; "
                         f"found {openvino_linear!r}.")
    with update_bundle(Bundle.open(bundle_dir), "calibrate") as update:
        return _calibrate(update, data, eval_data, method, samples, precision, criterion, batch_size,
                          openvino_linear)


def _calibrate(update, data, eval_data, method: str, samples: int, precision: str, criterion: Criterion,
               batch_size: int, openvino_linear: str) -> dict:
    bundle = update.current  # the manifest as committed now, read under the write lock
    m = bundle.manifest
    splits = _splits(data, eval_data, samples)
    requested = None if precision == "auto" else parse_precision(precision)
    fp32 = {c: bundle.file(m.components[c].files["fp32"].path) for c in COMPONENTS}
    evaluators = {name: Evaluator(m, fp32, list(progress(CalibrationSource(bundle, split, batch_size),
                                                          f"held-out inputs ({name})")), split.label_indices(m.labels))
                  for name, split in (("selection", splits.selection), ("report", splits.report))}
    written = {}  # (component, flavour) -> StagedFile

    def files(component: str, flavour: str) -> Path:
        return fp32[component] if flavour == "fp32" else written[(component, flavour)].path

    for comp in COMPONENTS:
        written[(comp, "fp16")] = update.stage(f"{comp}.fp16.onnx")
        write_fp16(fp32[comp], written[(comp, "fp16")].path)
    noise = {name: _noise_floor(ev, {c: files(c, "fp16") for c in COMPONENTS}, criterion)
             for name, ev in evaluators.items()}
    calib_feeds = list(progress(CalibrationSource(bundle, splits.calibration, batch_size), "calibration inputs"))
    quantized = _quantize(update, written, m, fp32, _component_feeds(m, fp32, calib_feeds), evaluators["selection"],
                          noise["selection"], criterion, method, requested, openvino_linear)
    targets = TARGETS + ((OV_TARGET,) if quantized.openvino else ())
    available = {flavour for _, flavour in written} | {"fp32"}
    probe = probe_rows(evaluators["report"].feeds)
    kept = {OV_TARGET: quantized.kept["int8-trt"], **quantized.kept}  # without nncf, OpenVINO runs int8-trt's files
    cosines, policies, chosen, rows = {}, {}, {}, []
    for target in progress(targets, "judging every configuration", total=len(targets)):
        judge_one = functools.partial(judge_target, target, files, evaluators, probe,
                                      {k: v.flips for k, v in noise.items()}, criterion, m.tokenizer.max_seq_len,
                                      available)
        policies[target], chosen[target], cosines[target], judged_rows = _judged_policy(
            target, judge_one, kept[target], requested, evaluators["report"])
        rows += judged_rows
    report = _report(data, eval_data, method, splits, criterion, noise, evaluators, rows, cosines, quantized,
                     kept, policies, chosen)
    update.stage("reports/fidelity.json").path.write_text(json.dumps(report, indent=2) + "\n")
    update.stage("reports/fidelity.md").path.write_text(fidelity_markdown(report))
    _commit(update, m, written, policies, report)
    return report


def _splits(data, eval_data, samples: int) -> Splits:
    calib, rest = select_calibration(LabeledDataset.read(data), samples)
    selection, report = split_held_out(LabeledDataset.read(eval_data) if eval_data else rest)
    return Splits(calib, selection, report)


def _noise_floor(evaluator: Evaluator, fp16_files: dict, criterion: Criterion) -> NoiseFloor:
    """What the FP16 model and BF16-rounded features flip on this split: the flips INT8 is allowed as noise."""
    fp16 = {c: evaluator.features(c, fp16_files[c], REFERENCE) for c in ENCODERS}
    fp16_logits = evaluator.head(fp16_files[FUSION_HEAD], fp16[IMAGE_ENCODER], fp16[TEXT_ENCODER], REFERENCE)
    bf16_logits = evaluator.head(evaluator.files[FUSION_HEAD], bf16_round(evaluator.fp32[IMAGE_ENCODER]),
                                 bf16_round(evaluator.fp32[TEXT_ENCODER]), REFERENCE)
    fp16_flips = evaluator.judge_logits(fp16_logits)["flips"]
    bf16_flips = evaluator.judge_logits(bf16_logits)["flips"]
    band = noise_band(max(fp16_flips, bf16_flips), evaluator.n, criterion.noise_quantile, criterion.min_noise_rate)
    return NoiseFloor(fp16_flips, bf16_flips, evaluator.n, band)


def _component_feeds(m, fp32: dict, calib_feeds: list) -> dict:
    """The calibration inputs of each part: the encoders' from the data, the head's the encoders' FP32 outputs
    (batch by batch: feeds[FUSION_HEAD][i] holds batch i's image and text features)."""
    from fusionrt.calibration.evaluation import run_part

    w = m.wiring
    feeds = {c: [{s.name: f[s.name] for s in m.components[c].inputs} for f in calib_feeds] for c in ENCODERS}
    sizes = [len(f[w.image_input]) for f in calib_feeds]
    features = {c: np.split(run_part(m.components[c], fp32[c], REFERENCE, feeds[c]), np.cumsum(sizes)[:-1])
                for c in ENCODERS}
    feeds[FUSION_HEAD] = [{w.image_output: i, w.text_output: t} for i, t in
                            zip(features[IMAGE_ENCODER], features[TEXT_ENCODER])]
    return feeds


@contextlib.contextmanager
def _logits_readout(m, fp32: dict, feeds: dict, component: str):
    """readout for `rank_layers`: an encoder's outputs for calibration batch i, through the FP32 head beside the
    other branch's FP32 features of that batch: the error ranked is the classifier's. None for the head."""
    if component == FUSION_HEAD:
        yield None
        return
    from fusionrt.calibration.evaluation import open_part

    w, head_spec = m.wiring, m.components[FUSION_HEAD]
    mine = w.image_output if component == IMAGE_ENCODER else w.text_output

    def readout(i: int, outputs: list) -> np.ndarray:
        feed = {**feeds[FUSION_HEAD][i], mine: np.asarray(outputs[0], dtype=np.float32)}
        return head.infer(feed)[w.logits]

    with open_part(head_spec, fp32[FUSION_HEAD], REFERENCE) as head:
        yield readout


@dataclass(frozen=True)
class _Part:
    """A part ready to quantize: its prepared model, its activation ranges and its structurally float layers."""

    component: str
    prepared: Path
    ranges: Path
    structural: dict
    input_means: dict  # each conv's per-channel input mean on calibration data: its bias correction

    def write(self, target: str, out: Path, kept: list) -> Path:
        return quantize_component(self.prepared, self.component, target, self.ranges, out,
                                  sorted(self.structural) + list(kept), self.input_means)


def _quantize(update, written: dict, m, fp32: dict, feeds: dict, selection: Evaluator, noise: NoiseFloor,
              criterion: Criterion, method: str, requested, linear: str) -> Quantized:
    """Ranges, the sensitivity ranking and search per target, and each target's INT8 file of each part (staged)."""
    kept, searches, rankings = {t: {} for t in TARGETS}, {}, {}
    with tempfile.TemporaryDirectory(prefix="fusionrt-quant-") as folder:
        tmp = Path(folder)
        parts = {}
        for comp in progress(COMPONENTS, "activation ranges", total=len(COMPONENTS)):
            prepared = preprocess_for_quantization(fp32[comp], tmp / f"{comp}.prep.onnx")
            ranges = collect_ranges(prepared, OrtReader(feeds[comp]), comp, method, tmp / f"{comp}.ranges.json")
            shutil.copy(ranges, update.stage(f"calibration/{comp}.ranges.json").path)
            parts[comp] = _Part(comp, prepared, ranges, structural_float(prepared),
                                conv_input_means(prepared, feeds[comp]))
        for target in progress(TARGETS, "INT8 files and per-layer search", total=len(TARGETS)):
            ranked = [] if requested is not None else _ranked(target, parts, m, fp32, feeds, tmp)
            search = None if requested is not None else _search(target, parts, ranked, selection, noise,
                                                                 criterion, tmp)
            chosen = search.kept if search is not None else []
            errors = {(c, n): e for c, n, e in ranked}
            for comp, part in parts.items():
                written[(comp, target)] = staged = update.stage(f"{comp}.{target.replace('-', '.')}.onnx")
                part.write(target, staged.path, [n for c, n in chosen if c == comp])
                if target == "int8-trt":  # what TensorRT computes, and what int8-trt is judged on: FP16 underneath
                    written[(comp, FP16_BASE)] = half = update.stage(f"{comp}.int8.trt.fp16.onnx")
                    write_int8_fp16(staged.path, half.path)
                kept[target][comp] = [{"node": n, "why": why} for n, why in sorted(part.structural.items())] + [
                    {"node": n, "why": searched_why(i + 1, len(ranked), errors[(c, n)])}
                    for i, (c, n) in enumerate(chosen) if c == comp]
            if search is not None:
                searches[target] = search
            rankings[target] = ranked

        def passes(files: dict) -> tuple:  # the whole pipeline from these files on OpenVINO, by the criterion
            # INT8 over FP32: the search finds the INT8 error; the float under it is judged after (int8_float.py)
            return judge(selection.pipeline(files, execution_for(OV_TARGET, "int8", int8_float="fp32")),
                         selection.outcome["accuracy"], noise.flips, criterion)

        openvino, form, timed = openvino_target.quantize(update, written, kept, searches, fp32, feeds, parts,
                                                         rankings, None if requested is not None else passes, tmp,
                                                         linear)
    return Quantized(kept, searches, openvino, form, timed)


def _ranked(target: str, parts: dict, m, fp32: dict, feeds: dict, tmp: Path) -> list:
    """[(component, layer, logit error)] over the whole model, most sensitive first: each quantizable layer alone in
    `target`'s INT8 (its own scheme: 7-bit U8S8 or per-token for int8-cpu, symmetric for int8-trt), the rest of the
    model FP32, by the error it puts in the logits on calibration data (one scale for every part's layers)."""
    ranked = []
    for comp, part in parts.items():
        candidates = [n for n in quantizable_nodes(part.prepared) if n not in part.structural]

        def alone(node: str, part=part, candidates=candidates) -> Path:
            return part.write(target, tmp / f"{part.component}.rank.onnx", [n for n in candidates if n != node])

        with _logits_readout(m, fp32, feeds, comp) as readout:
            found = rank_layers(part.prepared, alone, feeds[comp][:RANKING_BATCHES],
                                progress(candidates, f"sensitivity ({comp}, {target})"), readout)
        ranked += [(comp, node, error) for node, error in found]
    return sorted(ranked, key=lambda item: -item[2])


def _search(target: str, parts: dict, ranked: list, selection: Evaluator, noise: NoiseFloor, criterion: Criterion,
            tmp: Path):
    """The fewest of the model's most sensitive layers to keep float for the whole pipeline in INT8 to pass the
    criterion on the selection split, run as `target` runs it (errors of the parts add up: each part passing alone
    is not enough)."""
    execution = execution_for(target, "int8")
    written: dict = {}

    def trial(comp: str, kept: tuple) -> Path:
        if (comp, kept) not in written:  # a part whose kept layers did not change is not written again
            path = parts[comp].write(target, tmp / f"{comp}.{target}.trial{len(written)}.onnx", list(kept))
            if execution.flavour == FP16_BASE:
                path = write_int8_fp16(path, tmp / f"{comp}.{target}.trial{len(written)}.fp16.onnx")
            written[(comp, kept)] = path
        return written[(comp, kept)]

    def passes(extra: list) -> tuple:
        files = {c: trial(c, tuple(n for k, n in extra if k == c)) for c in parts}
        outcome = selection.pipeline(files, execution)
        return judge(outcome, selection.outcome["accuracy"], noise.flips, criterion)

    return search_fallback([(comp, node) for comp, node, _ in ranked], passes, max_checks=14)


def _judged_policy(target: str, judge_one, kept: dict, requested, report: Evaluator) -> tuple:
    """(Policy, the Judged it chose or None, cosines, the report's rows) of `target`, judged by
    judge_one(int8_float, cache). int8-ov is judged under each float its INT8 parts may run over on this CPU, and the
    policy says which it keeps, and why (int8_float.py)."""
    cache, judged, chosen, policies, cosines, rows = {}, {}, {}, {}, {}, []
    for int8_float in int8_floats() if target == OV_TARGET else (None,):
        judged[int8_float], cosines[int8_float] = judge_one(int8_float, cache)
        policies[int8_float], chosen[int8_float] = _policy(target, judged[int8_float], kept, requested, report)
        # a configuration without an INT8 part computes the same under every float: its row is written once
        rows += [{**j.row(target), **({"int8_float": int8_float} if int8_float else {})} for j in judged[int8_float]
                 if int8_float in (None, "fp32") or "int8" in j.precision]
    if target != OV_TARGET:
        return policies[None], chosen[None], cosines[None], rows
    int8_float, why = pick_int8_float(chosen, judged)
    policy = dataclasses.replace(policies[int8_float], int8_float=int8_float,
                                 reason=f"{policies[int8_float].reason}; {why}")
    return policy, chosen[int8_float], cosines[int8_float], rows


def _policy(target: str, judged: list, kept: dict, requested, report: Evaluator) -> tuple:
    """(Policy, the Judged it chose or None)."""
    if requested is not None:
        key = tuple(requested[c] for c in COMPONENTS)
        chosen = next((j for j in judged if j.precision == key), None)
        order, reason = ([chosen] if chosen is not None else []), "chosen by the user (--precision)"
    else:
        order, key, reason = choose_policy(judged, COMPONENTS, report.seconds)
        chosen = order[0] if order and order[0].precision == key else None
    int8_parts = {c for j in order for c, p in zip(COMPONENTS, j.precision) if p == "int8"} | \
        {c for c, p in zip(COMPONENTS, key) if p == "int8"}
    candidates = tuple(Candidate(dict(zip(COMPONENTS, j.precision)), j.report["top1_agreement"], j.report["flips"],
                                 j.report["n"], j.batch_invariant, j.batch_deviation,
                                 None if j.seconds is None else 1e3 * j.seconds) for j in order)
    policy = Policy(dict(zip(COMPONENTS, key)), reason, {c: tuple(kept[c]) for c in COMPONENTS if c in int8_parts},
                    candidates, portable=target != OV_TARGET, measured_on=cpu_kind().to_dict())
    return policy, chosen


def _report(data, eval_data, method: str, splits: Splits, criterion: Criterion, noise: dict, evaluators: dict,
            rows: list, cosines: dict, quantized: Quantized, kept: dict, policies: dict, chosen: dict) -> dict:
    report_ev = evaluators["report"]
    cpu = cpu_kind().to_dict()
    report = {
        "calibration": {"method": method, "samples": len(splits.calibration), "data": str(data), "recipe": RECIPE,
                        **({"openvino_linear": quantized.openvino_linear,
                            "openvino_linear_ms": quantized.openvino_linear_ms,
                            "openvino_sources": openvino_target.sources()}
                           if quantized.openvino == "nncf" else {})},
        "held_out": {"count": len(splits.selection) + len(splits.report), "selection": len(splits.selection),
                     "report": len(splits.report),
                     "data": str(eval_data or f"{data} (samples not used for calibration)")},
        "criterion": dataclasses.asdict(criterion),
        "noise_floor": {name: n.to_dict() for name, n in noise.items()},
        "measured_on": {"cpu": cpu, "targets": {t: f"{JUDGED_ON[t][0]} ({JUDGED_ON[t][1]})" for t in policies},
                        "int8-trt": "Q/DQ run as written on an FP16 base (exact integer arithmetic, FP16 between, as "
                                    "TensorRT computes it)",
                        **({OV_TARGET: openvino_target.judged_on(quantized.openvino, quantized.openvino_linear)}
                           if quantized.openvino else {})},
        "fp32": report_ev.outcome,
        "fp32_model_ms": {c: 1e3 * report_ev.seconds[c] for c in COMPONENTS},  # report split, this CPU
        "branches": cosines,
        "end_to_end": rows,
        "kept_float": kept,
        "fallback_search": {t: [{"kept": k, "passed": ok, "rule": rule} for k, ok, rule in s.trace]
                            for t, s in quantized.searches.items()},
        "policy": {t: {"chosen": format_precision(p.precision), "reason": p.reason,
                       **({"int8_float": p.int8_float} if p.int8_float else {}),
                       "candidates": [format_precision(c.precision) for c in p.candidates]}
                   for t, p in policies.items()},
    }
    report["summary"] = {
        "fp32_accuracy": report_ev.outcome["accuracy"], "noise_floor_flips": noise["report"].flips,
        **{t: {"precision": format_precision(p.precision),
               **({k: v for k, v in chosen[t].report.items() if k not in ("passed",)} if chosen[t] else
                  report_ev.outcome),
               "candidates": len(p.candidates), "layers_kept_float": {c: len(v) for c, v in p.kept_float.items()},
               **{f"{c}_cosine_min": cosines[t][c]["min"] for c in ENCODERS}} for t, p in policies.items()},
    }
    return report


def _commit(update, m, written: dict, policies: dict, report: dict) -> None:
    components = {}
    for comp in COMPONENTS:
        files = dict(m.components[comp].files)
        for flavour in (*TARGETS, "fp16", FP16_BASE):
            staged = written[(comp, flavour)]
            files[flavour] = ModelFile(staged.name, sha256_of(staged.path))
        files.pop(OV_TARGET, None)  # an earlier calibration's; this one's, where it wrote one
        if (comp, OV_TARGET) in written:
            xml = written[(comp, OV_TARGET)]
            weights = openvino_int8.weights_of(xml.path)
            files[OV_TARGET] = ModelFile(xml.name, sha256_of(xml.path), openvino_int8.weights_of(xml.name).as_posix(),
                                         sha256_of(weights))
        components[comp] = dataclasses.replace(m.components[comp], files=files)
    cpu = cpu_kind()
    update.commit(dataclasses.replace(
        m, components=components, precision=dict(policies["int8-cpu"].precision),
        precision_reason=policies["int8-cpu"].reason, policies=policies,
        fidelity={"summary": report["summary"], "report": "reports/fidelity.json"},
        calibration={**report["calibration"], "ranges": {c: f"calibration/{c}.ranges.json" for c in COMPONENTS},
                     "cpu": cpu.label, "cpu_kind": cpu.to_dict(), "cpu_vnni": cpu.vnni},
    ))

