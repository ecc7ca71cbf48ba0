"""benchmarks/stream_fps.py --sources: batched and independent rows for the same sources, from one run."""

from fusionrt.benchmarks.stream_fps import many_sources_fps
from tests.cli.test_camera import write_video


def test_batched_and_independent_rows_from_the_same_cameras(tiny_bundle, tmp_path):
    video = write_video(tmp_path / "v.mp4", count=12)
    batched, independent = many_sources_fps(tiny_bundle, video, 3, precision="fp32", source_fps=20, seconds=1.0)
    for row in (batched, independent):
        assert row["sources"] == 3 and 3 <= row["frames"] <= 60  # at most what the cameras offered
        assert 0 < row["source_fps_min"] <= row["source_fps_mean"] and 0 < row["fairness"] <= 1
        assert row["latency_ms_p50"] <= row["latency_ms_p99"]
    assert batched["mode"].startswith("batched") and 1 <= batched["mean_batch"] <= 3
    assert independent["mode"] == "independent pipelines"
