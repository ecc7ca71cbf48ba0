"""The fidelity criterion on synthetic per-sample outcomes: a pure-noise perturbation passes, a real degradation
does not, and the rule that decided is named."""

import numpy as np

from fusionrt.calibration.criterion import Criterion, judge, mcnemar_p, noise_band, sample_outcome
from fusionrt.calibration.fidelity import head_outcome


def _outcome(pred, fp32_pred, truth):
    return {"top1_agreement": float((pred == fp32_pred).mean()), "accuracy": float((pred == truth).mean()),
            **sample_outcome(pred, fp32_pred, truth)}


def _fp32(n=382, classes=9, accuracy=0.88, seed=0):
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, classes, n)
    fp32 = truth.copy()
    wrong = rng.choice(n, int(n * (1 - accuracy)), replace=False)
    fp32[wrong] = (truth[wrong] + 1) % classes
    return rng, truth, fp32


def test_mcnemar_and_the_noise_band():
    assert mcnemar_p(0, 0) == 1.0 and mcnemar_p(3, 3) > 0.5
    assert mcnemar_p(10, 0) < 0.001 and 0.05 < mcnemar_p(6, 2) < 0.2
    assert noise_band(0, 382) == 4 and noise_band(5, 382) == 9 and noise_band(20, 382) > 20


def test_the_noise_band_scales_with_n_and_ends_for_any_n():
    """A floor of zero flips at n = 10 admits no flip (the old Poisson band admitted 2: 80 % agreement); the band is
    a share of n, and it is computed for floors far past where exp(-rate) underflows (about 746 flips)."""
    assert noise_band(0, 10) == 0
    assert noise_band(0, 100) < noise_band(0, 1000) < noise_band(0, 10000)
    assert noise_band(0, 10000) / 10000 < 0.01
    assert 800 < noise_band(800, 2000) < 900 and noise_band(5000, 10000) < 10000
    assert noise_band(10, 10) == 10 and noise_band(0, 0) == 0
    flips = 2
    outcome = {"top1_agreement": 0.8, "accuracy": 0.9, "flips": flips, "n": 10, "worse": 1, "better": 1,
               "mcnemar_p": 0.75}
    ok, rule = judge(outcome, 0.9, noise_flips=0)
    assert not ok and "up to 0 is noise" in rule


def test_a_pure_noise_perturbation_passes_on_the_noise_floor():
    """Boundary samples flip both ways: 5 flips of 382 (98.7 % agreement, under a raw 99 % bar) with accuracy kept."""
    rng, truth, fp32 = _fp32()
    pred = fp32.copy()
    right, wrong = np.flatnonzero(fp32 == truth), np.flatnonzero(fp32 != truth)
    now_wrong = rng.choice(right, 2, replace=False)
    pred[now_wrong] = (truth[now_wrong] + 2) % 9  # two now wrong
    flipped_back = rng.choice(wrong, 3, replace=False)
    pred[flipped_back] = truth[flipped_back]  # three now right
    outcome = _outcome(pred, fp32, truth)
    assert outcome["flips"] == 5 and outcome["top1_agreement"] < 0.99
    fp32_accuracy = float((fp32 == truth).mean())
    assert not judge(outcome, fp32_accuracy, noise_flips=None)[0]  # a raw agreement cut calls it a failure
    ok, rule = judge(outcome, fp32_accuracy, noise_flips=5)
    assert ok and "within the noise floor" in rule and "flips 5" in rule and "up to 9 is noise" in rule


def test_a_real_degradation_is_refused_even_inside_the_agreement_and_accuracy_bars():
    """20 flips of 5,000 pass a raw 99 % agreement bar and lose only 0.4 % accuracy, but every one is a sample FP32
    had right (a class INT8 cannot hold): McNemar says it is significantly worse."""
    rng, truth, fp32 = _fp32(n=5000)
    pred = fp32.copy()
    hit = rng.choice(np.flatnonzero(fp32 == truth), 20, replace=False)
    pred[hit] = (truth[hit] + 1) % 9
    outcome = _outcome(pred, fp32, truth)
    assert outcome["top1_agreement"] >= 0.99 and outcome["accuracy"] >= 0.99 * float((fp32 == truth).mean())
    ok, rule = judge(outcome, float((fp32 == truth).mean()), noise_flips=5)
    assert not ok and "significantly worse than FP32" in rule and "20 right only in FP32" in rule


def test_an_accuracy_drop_past_one_percent_of_fp32_is_refused_first():
    ok, rule = judge({"top1_agreement": 1.0, "accuracy": 0.86}, 0.88, noise_flips=0, c=Criterion())
    assert not ok and rule.startswith("accuracy 86.00% < 99% of FP32's 88.00%")
    assert judge({"top1_agreement": 0.995, "accuracy": 0.875}, 0.88, None)[0]


def test_head_outcome_carries_the_counts_the_criterion_reads():
    fp32 = np.eye(3)[[0, 1, 2, 0]] * 5
    logits = np.eye(3)[[0, 1, 0, 0]] * 5
    out = head_outcome(logits, fp32, [0, 1, 2, 1], 3)
    assert (out["n"], out["flips"], out["worse"], out["better"]) == (4, 1, 1, 0)
    assert out["mcnemar_p"] == 0.5
