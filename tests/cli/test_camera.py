import json

import cv2
import numpy as np
import pytest

from fusionrt.cli import main
from fusionrt.runtime.pipeline import Pipeline


def write_video(path, count=24, size=(96, 64)):
    """A real MPEG-4 file: a coloured disc moving over a dark background."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, size)
    assert writer.isOpened()
    for i in range(count):
        frame = np.full((size[1], size[0], 3), 30, np.uint8)
        cv2.circle(frame, (10 + 3 * i, size[1] // 2), 14, (40, 40, 220) if i < count // 2 else (220, 60, 40), -1)
        writer.write(frame)
    writer.release()
    return path


def read_video(path) -> list:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames


def test_camera_headless_writes_annotated_video_and_jsonl(tiny_bundle, tmp_path, capsys):
    video = write_video(tmp_path / "in.mp4")
    out, jsonl = tmp_path / "annotated.mp4", tmp_path / "predictions.jsonl"
    assert main(["camera", str(tiny_bundle), "--source", str(video), "--text", "a circle", "--headless",
                 "--out", str(out), "--jsonl", str(jsonl)]) == 0
    source = read_video(video)
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [r["frame"] for r in records] == list(range(len(source)))  # a file: every frame (policy 'all')
    assert {"label", "score", "latency_ms", "fps", "dropped", "text_cached"} <= set(records[0])
    assert [r["text_cached"] for r in records[:2]] == [False, True]
    with Pipeline.load(tiny_bundle) as pipe:  # the same answers as classifying the decoded frames one by one
        assert [r["label"] for r in records] == [pipe.classify(f, "a circle").label for f in source]
    annotated = read_video(out)
    assert len(annotated) == len(source) and annotated[0].shape == source[0].shape
    corner = (slice(0, 12), slice(0, 40))
    assert np.abs(annotated[0][corner].astype(int) - source[0][corner]).mean() > 10  # the overlay is drawn
    summary = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert summary["processed"] == len(source) and summary["dropped"] == 0 and summary["policy"] == "all"
    assert summary["text_cache"] == {"hits": len(source) - 1, "misses": 1}


def test_camera_max_frames_and_latest_policy(tiny_bundle, tmp_path):
    video = write_video(tmp_path / "in.mp4")
    jsonl = tmp_path / "p.jsonl"
    assert main(["camera", str(tiny_bundle), "--source", str(video), "--text", "x", "--headless", "--jsonl", str(jsonl),
                 "--policy", "latest", "--max-frames", "3"]) == 0
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    frames = [r["frame"] for r in records]
    assert frames == sorted(set(frames)) and 1 <= len(frames) <= 3  # newest frames only, in order, at most 3
    assert len(frames) == 3 or frames[-1] == 23  # fewer only when the file ended first (latest drops the rest)


@pytest.mark.parametrize("make, extra, message", [
    (lambda p: p / "nothing.mp4", ["--headless", "--jsonl", "x.jsonl"], "no such file"),
    (lambda p: (p / "junk.mp4").write_bytes(b"not a video") and p / "junk.mp4", ["--headless", "--jsonl", "x.jsonl"],
     "did not open"),
    (lambda p: write_video(p / "in.mp4", 2), ["--headless"], "--headless shows nothing"),
    (lambda p: write_video(p / "in.mp4", 2), ["--headless", "--out", "/no/such/dir/out.mp4"], "could not open it for writing"),
])
def test_camera_bad_input(tiny_bundle, tmp_path, capsys, make, extra, message):
    source = make(tmp_path)
    assert main(["camera", str(tiny_bundle), "--source", str(source), "--text", "x", *extra]) == 2
    assert message in capsys.readouterr().err


def test_camera_window_without_gui_opencv_says_what_to_do(tiny_bundle, tmp_path, capsys):
    if not _gui_line().endswith("NONE"):
        pytest.skip("this OpenCV can open windows")
    video = write_video(tmp_path / "in.mp4", 2)
    assert main(["camera", str(tiny_bundle), "--source", str(video), "--text", "x"]) == 2
    assert "pass --headless" in capsys.readouterr().err


def _gui_line() -> str:
    return next((line for line in cv2.getBuildInformation().splitlines() if line.strip().startswith("GUI:")), "NONE")


def test_camera_refuses_to_overwrite_results_unless_asked(tiny_bundle, tmp_path, capsys):
    video = write_video(tmp_path / "in.mp4", count=6)
    jsonl = tmp_path / "predictions.jsonl"
    jsonl.write_text('{"frame": 0, "label": "from an earlier run"}\n')
    args = ["camera", str(tiny_bundle), "--source", str(video), "--text", "a circle", "--headless", "--jsonl", str(jsonl)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"--jsonl {jsonl} already exists" in err and "--overwrite" in err
    assert jsonl.read_text() == '{"frame": 0, "label": "from an earlier run"}\n'  # nothing lost
    assert main([*args, "--overwrite"]) == 0
    assert len(jsonl.read_text().splitlines()) == 6
