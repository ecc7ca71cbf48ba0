"""Precision policy: INT8 per part unless it breaks the fidelity thresholds; then that part falls back to
FP16, or to FP32 when FP16 breaks them too. Among the passing configurations, the one with the most model time
in INT8 wins."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Thresholds", "choose_policy"]


@dataclass(frozen=True)
class Thresholds:
    min_agreement: float = 0.99  # top-1 agreement with FP32
    max_accuracy_drop: float = 0.01  # absolute (1 point)


def _passes(outcome: dict, fp32_accuracy: float, t: Thresholds) -> bool:
    return outcome["top1_agreement"] >= t.min_agreement and fp32_accuracy - outcome["accuracy"] <= t.max_accuracy_drop


def choose_policy(outcomes: dict, fp32_accuracy: float, parts: tuple, t: Thresholds = Thresholds(),
                  weights: dict | None = None) -> tuple:
    """outcomes: config key (tuple of precisions for `parts`) -> {target: outcome}. A configuration passes
    when every target passes. weights: part -> its share of the model time (FP32), default equal.
    Returns (chosen key, reason): the passing configuration that puts the most model time in INT8, then in
    FP16, ties broken by the worst agreement; all-FP32 when none passes. (By time, not by count: INT8 on a text
    encoder that takes 80 % of the time beats INT8 on a head that takes 1 %.)"""
    weights = {p: float(weights[p]) if weights else 1.0 for p in parts}
    total = sum(weights.values()) or 1.0

    def share(key, precision):
        return sum(weights[p] for p, prec in zip(parts, key) if prec == precision) / total

    def worst(key):
        return min(o["top1_agreement"] for o in outcomes[key].values())

    passing = [k for k in outcomes if all(_passes(o, fp32_accuracy, t) for o in outcomes[k].values())]
    if not passing:
        return tuple("fp32" for _ in parts), (
            f"no INT8 or FP16 configuration met top-1 agreement >= {t.min_agreement:.0%} and accuracy drop <= "
            f"{100 * t.max_accuracy_drop:.1f} points on every target; kept FP32")
    best = max(passing, key=lambda k: (round(share(k, "int8"), 9), round(share(k, "fp16"), 9), worst(k)))
    targets = {target for o in outcomes.values() for target in o}
    why = (f"{'worst-target ' if len(targets) > 1 else ''}top-1 agreement {worst(best):.2%} (>= {t.min_agreement:.0%}) "
           f"and accuracy drop <= {100 * t.max_accuracy_drop:.1f} points")
    fallen = [f"{part} kept {p.upper()}" for part, p in zip(parts, best) if p != "int8"]
    if fallen:
        why += f"; {', '.join(fallen)}: INT8 there as well broke the thresholds"
        if any(p == "int8" for p in best):
            why += f" (INT8 where it held, on {share(best, 'int8'):.0%} of the FP32 model time)"
    return best, why
