"""When is a quantized configuration faithful enough? A decision that knows its noise floor.

Some held-out samples sit on a decision boundary and flip under any perturbation of INT8's size (the demo's image
encoder in plain BF16 flips 5 of 382), so a raw agreement cut measures noise as much as INT8. A configuration
passes when all three hold:
1. accuracy: at least `min_accuracy_ratio` (99 %) of FP32's (MLPerf's rule for INT8);
2. significance: not significantly worse than FP32 on the same samples (McNemar's exact test on per-sample
   correctness, one-sided, at `alpha`);
3. agreement: top-1 agreement with FP32 at least `min_agreement`, or, below it, no more flips than a harmless
   perturbation gives (the noise floor: what the FP16 model and BF16-rounded features flip), read as a binomial
   count over the same n samples at that rate (its `noise_quantile` upper bound), the rate at least
   `min_noise_rate`: a band that scales with n (at n = 10 and a floor of 0 it admits no flip).
The report says which rule decided."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["Criterion", "sample_outcome", "noise_band", "judge", "mcnemar_p"]


@dataclass(frozen=True)
class Criterion:
    min_accuracy_ratio: float = 0.99  # INT8 accuracy >= 99 % of FP32's
    alpha: float = 0.05  # McNemar: "significantly worse" below this p-value
    min_agreement: float = 0.99  # agreement that passes outright, whatever the noise floor
    noise_quantile: float = 0.95  # flips up to this quantile of Binomial(n, noise rate) are noise
    min_noise_rate: float = 0.005  # the noise rate assumed where the floor measured less: half of 1 - min_agreement


def mcnemar_p(worse: int, better: int) -> float:
    """One-sided exact McNemar p-value: the chance of `worse` or more of the `worse + better` discordant samples going
    against the candidate if it were as good as the reference (binomial, p = 1/2)."""
    n = worse + better
    if n == 0:
        return 1.0
    return float(sum(math.comb(n, k) for k in range(worse, n + 1)) / 2 ** n)


def sample_outcome(pred: np.ndarray, fp32_pred: np.ndarray, labels) -> dict:
    """Per-sample counts of a configuration against FP32: flips (top-1 disagreements) and, with labels, McNemar's
    discordant pairs (worse: FP32 right and this wrong; better: the reverse) and its p-value."""
    pred, fp32_pred = np.asarray(pred), np.asarray(fp32_pred)
    out = {"n": int(pred.size), "flips": int((pred != fp32_pred).sum())}
    if labels is not None:
        truth = np.asarray(labels)
        worse = int(((fp32_pred == truth) & (pred != truth)).sum())
        better = int(((fp32_pred != truth) & (pred == truth)).sum())
        out.update(worse=worse, better=better, mcnemar_p=mcnemar_p(worse, better))
    return out


def noise_band(noise_flips: int, samples: int, quantile: float = 0.95, min_rate: float = 0.005) -> int:
    """The most flips of `samples` still read as noise: the `quantile` point of Binomial(samples, rate), rate the
    floor's share of flips (at least `min_rate`). Summed in log space, so it ends for any n (a Poisson sum from
    exp(-rate) underflowed past about 746 flips and never ended)."""
    if samples <= 0:
        return 0
    rate = min(max(noise_flips / samples, min_rate), 1.0)
    if rate >= 1.0:
        return samples
    log_p, log_q = math.log(rate), math.log1p(-rate)
    cumulative = 0.0
    for k in range(samples + 1):
        cumulative += math.exp(math.lgamma(samples + 1) - math.lgamma(k + 1) - math.lgamma(samples - k + 1)
                               + k * log_p + (samples - k) * log_q)
        if cumulative >= quantile:
            return k
    return samples


def judge(outcome: dict, fp32_accuracy: float, noise_flips: int | None, c: Criterion = Criterion()) -> tuple:
    """(passed, rule): the rule that decided, in words. `outcome` holds top1_agreement and accuracy, and (for the
    statistical rules) flips, n, worse, better, mcnemar_p; `noise_flips` is the noise floor (None: not measured)."""
    accuracy = outcome.get("accuracy")
    if accuracy is not None and accuracy < c.min_accuracy_ratio * fp32_accuracy - 1e-12:
        return False, (f"accuracy {accuracy:.2%} < {c.min_accuracy_ratio:.0%} of FP32's {fp32_accuracy:.2%}")
    p = outcome.get("mcnemar_p")
    if p is not None and p < c.alpha:
        return False, (f"significantly worse than FP32 on the same samples (McNemar p = {p:.3g} < {c.alpha}: "
                       f"{outcome['worse']} right only in FP32, {outcome['better']} right only here)")
    agreement = outcome["top1_agreement"]
    if agreement >= c.min_agreement:
        return True, f"agreement {agreement:.2%} >= {c.min_agreement:.0%}"
    if noise_flips is not None and "flips" in outcome and "n" in outcome:
        band = noise_band(noise_flips, outcome["n"], c.noise_quantile, c.min_noise_rate)
        if outcome["flips"] <= band:
            return True, (f"agreement {agreement:.2%}: {outcome['flips']} flips, within the noise floor (a harmless "
                          f"FP16/BF16 perturbation flips {noise_flips}; up to {band} is noise)")
        return False, (f"agreement {agreement:.2%}: {outcome['flips']} flips, above the noise floor ({noise_flips} "
                       f"flips; up to {band} is noise) and below {c.min_agreement:.0%}")
    return False, f"agreement {agreement:.2%} < {c.min_agreement:.0%}"
