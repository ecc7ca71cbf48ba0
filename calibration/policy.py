"""The policy stage: of a target's judged configurations, those that pass the criterion on both the selection and
the report split are its candidates (the loading machine's tuning picks among them); calibration's own choice is
the fastest batch-invariant one as measured here, or, for a target that cannot be timed here (TensorRT without a
GPU), the one with the most FP32 model time in INT8 (an estimate). None passing: FP32, which is the reference."""

from __future__ import annotations

from fusionrt.calibration.criterion import Criterion
from fusionrt.calibration.judge import Judged

__all__ = ["Criterion", "choose_policy"]


def choose_policy(judged: list, parts: tuple, weights: dict | None = None) -> tuple:
    """([Judged] candidates, calibration's choice first; the chosen precision key; reason). weights: part -> FP32
    seconds on the reference (the estimate's weights, and FP32's time where the target's own FP32 was not judged)."""
    weights_given = bool(weights)
    weights = {p: float(weights[p]) if weights else 1.0 for p in parts}
    total = sum(weights.values()) or 1.0

    def share(j: Judged, precision: str) -> float:
        return sum(weights[p] for p, prec in zip(parts, j.precision) if prec == precision) / total

    def agreement(j: Judged) -> float:
        return min(j.selection["top1_agreement"], j.report["top1_agreement"])

    passing = [j for j in judged if j.passed]
    timed = bool(passing) and all(j.seconds is not None for j in passing)
    if timed:
        order = sorted(passing, key=lambda j: (not j.batch_invariant, round(j.seconds, 6), -agreement(j)))
    else:
        order = sorted(passing, key=lambda j: (not j.batch_invariant, -round(share(j, "int8"), 9),
                                               -round(share(j, "fp16"), 9), -agreement(j)))
    fp32_key = tuple("fp32" for _ in parts)
    if not order or not order[0].batch_invariant:
        rejected = max(judged, key=agreement, default=None)  # the closest miss says most
        why = (f"selection split: {rejected.selection['rule']}; report split: {rejected.report['rule']}"
               if rejected else "nothing judged")
        return order, fp32_key, f"no INT8 or FP16 configuration passed on both splits and batch-invariant ({why}); kept FP32"
    best = order[0]
    if timed:
        fp32 = next((j.seconds for j in judged if j.precision == fp32_key), None) or (sum(weights.values())
                                                                                   if weights_given else None)
        ratio = f" ({fp32 / best.seconds:.2f}x FP32's {1e3 * fp32:.1f} ms)" if fp32 else ""
        speed = f"the fastest that passed, as measured: {1e3 * best.seconds:.1f} ms on the report split{ratio}"
    else:
        speed = f"the most FP32 model time in INT8 ({share(best, 'int8'):.0%}; an estimate, not timed on this target)"
    why = (f"selection split: {best.selection['rule']}; report split: {best.report['rule']}; {speed}; "
           f"{len(order)} configurations passed")
    fallen = [f"{part} kept {p.upper()}" for part, p in zip(parts, best.precision) if p != "int8"]
    if fallen:
        why += f"; {', '.join(fallen)}"
    return order, best.precision, why
