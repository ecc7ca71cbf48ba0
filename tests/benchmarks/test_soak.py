"""The soak benchmark's own logic, on a short run: windows, memory and drift figures, and its exit status."""

import json

import pytest

from fusionrt.benchmarks import soak


def test_a_short_soak_reports_windows_growth_and_drift(tiny_bundle, monkeypatch):
    """Known memory readings and call times in (the pipeline's calls still run), their growth and drift out."""
    from fusionrt.data.samples import sample_images
    from fusionrt.runtime.pipeline import Pipeline

    readings = iter([500.0, 503.5, 509.0, 511.25])
    monkeypatch.setattr(soak, "rss_mb", lambda: next(readings))
    ms = [1.0] * 200 + [1.2] * 200  # per call: slower in the second half
    ticks = iter([0.0] + [t for i, d in enumerate(ms) for t in (i * 0.01, i * 0.01 + d / 1e3)] + [4.0])
    with Pipeline.load(tiny_bundle, backend="onnxruntime") as pipe:
        result = soak.soak(pipe, sample_images(), 400, 100, clock=lambda: next(ticks))
    assert [w["calls"] for w in result["windows"]] == [100, 200, 300, 400]
    assert [w["rss_mb"] for w in result["windows"]] == [500.0, 503.5, 509.0, 511.25]
    assert result["rss_growth_mb"] == 11.25 and result["memory_within_goal"]
    assert [w["p99_ms"] for w in result["windows"]] == pytest.approx([1.0, 1.0, 1.2, 1.2])
    assert result["p99_drift"] == pytest.approx(1.2) and result["within_goal"]  # windows 4 over 2: 1.2 / 1.0
    assert result["seconds"] == 4.0


def test_the_soak_command_writes_its_figures_with_the_machine(tiny_bundle, tmp_path):
    assert soak.main([str(tiny_bundle), "--n", "200", "--window", "100", "--out", str(tmp_path)]) in (0, 1)
    result = json.loads((tmp_path / "soak.json").read_text())
    assert len(result["windows"]) == 2 and result["machine"]["cpu_kind"]["vendor"]
    assert result["machine"]["cpu"] in (tmp_path / "soak.md").read_text()


def test_drift_is_window_medians_past_the_warm_up():
    assert soak.drift([9.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]) == 1.0  # a slow first window is warm-up
    assert soak.drift([1.0, 1.0, 1.1, 0.9, 5.0, 1.0, 1.0]) == 1.0  # one noisy window is not a drift
    assert soak.drift([1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0]) == 2.0


def test_a_p99_that_drifts_past_its_bound_fails_the_run(monkeypatch, tiny_bundle):
    monkeypatch.setattr(soak, "drift", lambda values: 1.6)
    assert soak.main([str(tiny_bundle), "--n", "30", "--window", "10"]) == 1


def test_growth_past_the_goal_fails_the_run(monkeypatch, tiny_bundle):
    readings = iter(range(100, 10_000, 30))  # 30 MB more at every window: a leak
    monkeypatch.setattr(soak, "rss_mb", lambda: float(next(readings)))
    assert soak.main([str(tiny_bundle), "--n", "30", "--window", "10"]) == 1
