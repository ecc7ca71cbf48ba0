"""Precision policy: INT8 per part unless the fidelity criterion (`criterion.judge`) rejects it; then that part
falls back to FP16, or to FP32 when FP16 is rejected too. Among the passing configurations: the fastest as measured
(`times`, on the target at calibration time), else the one with the most FP32 model time in INT8 (an estimate, for a
target that cannot be timed here, such as TensorRT without a GPU)."""

from __future__ import annotations

from fusionrt.calibration.criterion import Criterion, judge

__all__ = ["Criterion", "choose_policy"]


def choose_policy(outcomes: dict, fp32_accuracy: float, parts: tuple, criterion: Criterion = Criterion(),
                  weights: dict | None = None, noise: dict | None = None, times: dict | None = None) -> tuple:
    """outcomes: config key (tuple of precisions for `parts`) -> {target: outcome}; a configuration passes when
    every target passes. weights: part -> FP32 seconds (the estimate); noise: target -> noise-floor flips; times:
    part -> {precision: measured seconds}. Returns (chosen key, reason); all-FP32 when none passes."""
    weights = {p: float(weights[p]) if weights else 1.0 for p in parts}
    total = sum(weights.values()) or 1.0
    noise = noise or {}

    def verdicts(key):
        return {t: judge(o, fp32_accuracy, noise.get(t), criterion) for t, o in outcomes[key].items()}

    def share(key, precision):
        return sum(weights[p] for p, prec in zip(parts, key) if prec == precision) / total

    def worst(key):
        return min(o["top1_agreement"] for o in outcomes[key].values())

    def seconds(key):
        return sum(times[p][prec] for p, prec in zip(parts, key))

    judged = {k: verdicts(k) for k in outcomes}
    passing = [k for k, v in judged.items() if all(ok for ok, _ in v.values())]
    if not passing:
        rejected = "; ".join(f"{t}: {rule}" for t, (_, rule) in judged[max(outcomes, key=worst)].items())
        return tuple("fp32" for _ in parts), f"no INT8 or FP16 configuration passed ({rejected}); kept FP32"
    if times is not None and all(prec in times.get(p, {}) for k in passing for p, prec in zip(parts, k)):
        best = min(passing, key=lambda k: (round(seconds(k), 6), -worst(k)))
        fp32_time = seconds(tuple("fp32" for _ in parts))
        speed = (f"the fastest that passed, as measured: {1e3 * seconds(best):.1f} ms vs FP32 {1e3 * fp32_time:.1f} ms"
                 f" on the held-out split ({fp32_time / seconds(best):.2f}x)")
    else:
        best = max(passing, key=lambda k: (round(share(k, "int8"), 9), round(share(k, "fp16"), 9), worst(k)))
        speed = f"the most FP32 model time in INT8 ({share(best, 'int8'):.0%}; an estimate, not timed on this target)"
    rules = "; ".join(f"{t}: {rule}" for t, (_, rule) in judged[best].items())
    why = f"{rules}; {speed}"
    fallen = [f"{part} kept {p.upper()}" for part, p in zip(parts, best) if p != "int8"]
    if fallen:
        why += f"; {', '.join(fallen)}"
    return best, why
