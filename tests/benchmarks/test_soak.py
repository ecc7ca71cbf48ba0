"""The soak benchmark's own logic, on a short run: windows, memory and drift figures, and its exit status."""

import json

from fusionrt.benchmarks import soak


def test_a_short_soak_reports_windows_growth_and_drift(tiny_bundle, tmp_path, capsys):
    assert soak.main([str(tiny_bundle), "--n", "300", "--window", "100", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "soak.json").read_text())
    assert [w["calls"] for w in result["windows"]] == [100, 200, 300]
    assert all(w["rss_mb"] > 0 and 0 < w["p50_ms"] <= w["p99_ms"] for w in result["windows"])
    assert result["rss_growth_mb"] == round(result["windows"][-1]["rss_mb"] - result["windows"][0]["rss_mb"], 2)
    assert result["within_goal"] and "memory growth after the first window" in (tmp_path / "soak.md").read_text()


def test_growth_past_the_goal_fails_the_run(monkeypatch, tiny_bundle):
    readings = iter(range(100, 10_000, 30))  # 30 MB more at every window: a leak
    monkeypatch.setattr(soak, "rss_mb", lambda: float(next(readings)))
    assert soak.main([str(tiny_bundle), "--n", "30", "--window", "10"]) == 1
