"""FP32 vs INT8 fidelity on a held-out split: per-branch cosine similarity, end-to-end agreement and metrics."""

from __future__ import annotations

import itertools

import numpy as np

from fusionrt.calibration.criterion import sample_outcome
from fusionrt.data.metrics import classification_metrics
from fusionrt.runtime.prediction import softmax

__all__ = ["cosine_stats", "head_outcome", "combinations", "fidelity_markdown"]


def cosine_stats(reference: np.ndarray, candidate: np.ndarray) -> dict:
    ref, cand = reference.astype(np.float64), candidate.astype(np.float64)
    cos = (ref * cand).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1) + 1e-12)
    return {"mean": float(cos.mean()), "min": float(cos.min())}


def head_outcome(logits: np.ndarray, fp32_logits: np.ndarray, labels_true, num_classes: int) -> dict:
    """Agreement with FP32, max |Δprob|, the per-sample counts the criterion reads (flips; with labels, McNemar's
    discordant pairs) and (when labels exist) the metrics of one configuration."""
    pred, ref = logits.argmax(1), fp32_logits.argmax(1)
    out = {
        "top1_agreement": float((pred == ref).mean()),
        "max_abs_dprob": float(np.abs(softmax(logits) - softmax(fp32_logits)).max()),
        **sample_outcome(pred, ref, labels_true),
    }
    if labels_true is not None:
        out.update({k: v for k, v in classification_metrics(labels_true, pred, num_classes).items() if k != "count"})
    return out


def combinations(parts, precisions=("int8", "fp16", "fp32")) -> list:
    """Every choice of precision for each of `parts`, as dicts part -> precision."""
    return [dict(zip(parts, choice)) for choice in itertools.product(precisions, repeat=len(parts))]


def _shown(config: str, chosen: str) -> bool:
    """The rows a reader needs: each precision throughout, each part alone in INT8, and the chosen one."""
    precisions = [part.split("=")[1] for part in config.split(",")]
    uniform = len(set(precisions)) == 1
    one_int8 = precisions.count("int8") == 1 and precisions.count("fp32") == len(precisions) - 1
    return uniform or one_int8 or config == chosen


def fidelity_markdown(report: dict) -> str:
    held = report["held_out"]
    lines = [f"# INT8 and FP16 fidelity vs FP32 ({held['report']} held-out samples reported; {held['selection']} "
             f"others chose the policy; calibration: {report['calibration']['method']} on "
             f"{report['calibration']['samples']} samples)", ""]
    lines += ["| branch | target | INT8 cosine mean | INT8 cosine min |", "|---|---|---|---|"]
    for target, branches in report["branches"].items():
        for branch, stats in branches.items():
            lines.append(f"| {branch} | {target} | {stats['mean']:.5f} | {stats['min']:.5f} |")
    for split, noise in report.get("noise_floor", {}).items():
        lines += ["", f"**Noise floor ({split} split):** on its {noise['samples']} samples a harmless perturbation "
                      f"flips {noise['fp16_flips']} (the FP16 model) and {noise['bf16_features_flips']} (features "
                      f"rounded to BF16); up to {noise['band']} flips read as noise."]
    lines += ["", "| configuration | target | top-1 agreement | flips | McNemar p | max abs dprob | accuracy | macro F1 "
                  "| batch-invariant | selection split | report split |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    fp32 = report["fp32"]
    lines.append(f"| fp32 | - | 100.00 % | 0 | - | 0 | {100 * fp32['accuracy']:.2f} % | {100 * fp32['macro_f1']:.2f} % "
                 "| reference | | |")
    for row in (r for r in report["end_to_end"] if _shown(r["config"], report["policy"][r["target"]]["chosen"])):
        p = f"{row['mcnemar_p']:.3g}" if "mcnemar_p" in row else "-"
        invariant = "yes" if row["batch_invariant"] else f"no ({row['batch_deviation']:.2g})"
        target = row["target"] + (" (INT8 over BF16)" if row.get("int8_float") == "bf16" else "")
        lines.append(f"| {row['config']} | {target} | {100 * row['top1_agreement']:.2f} % | {row.get('flips', '-')} "
                     f"| {p} | {row['max_abs_dprob']:.4f} | {100 * row['accuracy']:.2f} % | {100 * row['macro_f1']:.2f} % "
                     f"| {invariant} | {row['selection']['rule']} | {row.get('rule', '')} |")
    kept = report.get("kept_float", {})
    if kept:
        lines += ["", "| target | part | layers kept float (structural + found by the per-layer search) |", "|---|---|---|"]
        for target, parts in kept.items():
            for part, entries in parts.items():
                searched = [e["node"] for e in entries if not e["why"].startswith("structural")]
                structural = len(entries) - len(searched)
                lines.append(f"| {target} | {part} | {structural} structural; {len(searched)} by sensitivity"
                             + (f": {', '.join(searched[:8])}{' ...' if len(searched) > 8 else ''}" if searched else "")
                             + " |")
    cpu = report.get("measured_on", {}).get("cpu", {})
    lines += ["", f"Every configuration is in {report.get('json', 'fidelity.json')}, measured on {cpu.get('label', '?')}. "
              "int8-cpu ran on ONNX Runtime's CPU kernels with 7-bit weights, whose integer sums are the same on every "
              "x86 CPU (with or without VNNI). int8-trt was measured on its Q/DQ arithmetic as written over an FP16 "
              "base (*.int8.trt.fp16.onnx: what TensorRT computes, INT8 with FP16 between; LayerNorm, Softmax and "
              "reductions FP32), so the layers its search keeps out of INT8 run in FP16."
              + (" int8-ov was measured on OpenVINO's CPU kernels of this CPU (fp16 there is its 16-bit float: BF16 "
                 "where it has it), which differ between CPU kinds." if "int8-ov" in report["policy"] else ""), ""]
    for target, policy in report["policy"].items():
        lines.append(f"**Chosen for {target}:** {policy['chosen']} — {policy['reason']}; candidates for the loading "
                     f"machine's tuning: {', '.join(policy['candidates']) or 'none (FP32)'}  ")
    lines.append("")
    return "\n".join(lines)
