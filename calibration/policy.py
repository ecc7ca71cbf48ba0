"""Precision policy: INT8 per part unless it breaks the fidelity thresholds; then that part falls back to
FP16, or to FP32 when FP16 breaks them too."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Thresholds", "choose_policy"]


@dataclass(frozen=True)
class Thresholds:
    min_agreement: float = 0.99  # top-1 agreement with FP32
    max_accuracy_drop: float = 0.01  # absolute (1 point)


def _passes(outcome: dict, fp32_accuracy: float, t: Thresholds) -> bool:
    return outcome["top1_agreement"] >= t.min_agreement and fp32_accuracy - outcome["accuracy"] <= t.max_accuracy_drop


def choose_policy(outcomes: dict, fp32_accuracy: float, parts: tuple, t: Thresholds = Thresholds()) -> tuple:
    """outcomes: config key (tuple of precisions for `parts`) -> {target: outcome}. A configuration passes
    when every target passes. Returns (chosen key, reason): the passing configuration with the most INT8
    parts, then the most FP16 parts, ties broken by the worst agreement; all-FP32 when none passes."""
    def worst(key):
        return min(o["top1_agreement"] for o in outcomes[key].values())

    passing = [k for k in outcomes if all(_passes(o, fp32_accuracy, t) for o in outcomes[k].values())]
    if not passing:
        return tuple("fp32" for _ in parts), (
            f"no INT8 or FP16 configuration met top-1 agreement >= {t.min_agreement:.0%} and accuracy drop <= "
            f"{100 * t.max_accuracy_drop:.1f} points on every target; kept FP32")
    best = max(passing, key=lambda k: (k.count("int8"), k.count("fp16"), worst(k)))
    targets = {t for o in outcomes.values() for t in o}
    why = (f"{'worst-target ' if len(targets) > 1 else ''}top-1 agreement {worst(best):.2%} (>= {t.min_agreement:.0%}) and accuracy drop "
           f"<= {100 * t.max_accuracy_drop:.1f} points")
    fallen = [f"{part} kept {p.upper()}" for part, p in zip(parts, best) if p != "int8"]
    if fallen:
        why += f"; {', '.join(fallen)} because INT8 there broke the thresholds"
    return best, why
