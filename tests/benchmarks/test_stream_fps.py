"""benchmarks/stream_fps.py --sources: batched and independent rows for the same sources, from one run."""

import pytest

from fusionrt.benchmarks.stream_fps import many_sources_fps
from tests.cli.test_camera import write_video


def test_batched_and_independent_rows_from_the_same_cameras(tiny_bundle, tmp_path):
    video = write_video(tmp_path / "v.mp4", count=12)
    batched, independent = many_sources_fps(tiny_bundle, video, 3, precision="fp32", source_fps=20, seconds=1.0)
    for row in (batched, independent):
        assert row["sources"] == 3 and 3 <= row["frames"] <= 60  # at most what the cameras offered
        assert row["aggregate_fps"] == pytest.approx(row["frames"] / row["seconds"], rel=0.02, abs=0.1)
        assert row["source_fps_mean"] == pytest.approx(row["aggregate_fps"] / 3, rel=0.02, abs=0.02)
        assert row["fairness"] == pytest.approx(row["source_fps_min"] / row["source_fps_mean"], abs=0.01)
        assert 0 < row["latency_ms_p50"] and row["latency_ms_p99"] < row["seconds"] * 1000  # each frame in the run
    # every classified frame came from one of the batched calls, none of more than the three cameras
    assert batched["mode"].startswith("batched") and 1 <= batched["mean_batch"] <= 3
    assert batched["mean_batch"] * batched["calls"] == pytest.approx(batched["frames"], abs=0.01 * batched["calls"])
    assert independent["mode"] == "independent pipelines" and "mean_batch" not in independent
