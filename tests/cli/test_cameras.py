"""`fusionrt camera` with several --source options: one pipeline batches them; outputs per source, or a mosaic."""

import json

import cv2
import numpy as np

from fusionrt.camera import TILE, output_paths
from fusionrt.cli import main
from fusionrt.runtime.pipeline import Pipeline
from tests.cli.test_camera import read_video


def disc_video(path, bgr, count=10, size=(96, 64)):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, size)
    for i in range(count):
        frame = np.full((size[1], size[0], 3), 30, np.uint8)
        cv2.circle(frame, (14 + 4 * i, size[1] // 2), 14, bgr, -1)
        writer.write(frame)
    writer.release()
    return path


def test_several_sources_give_one_video_each_and_one_jsonl_with_source_ids(tiny_bundle, tmp_path, capsys):
    red = disc_video(tmp_path / "red.mp4", (40, 40, 220), count=10)
    blue = disc_video(tmp_path / "blue.mp4", (220, 60, 40), count=7)
    out, jsonl = tmp_path / "annotated.mp4", tmp_path / "p.jsonl"
    texts = ["a red circle", "a square on a dark background"]
    assert main(["camera", str(tiny_bundle), "--source", str(red), "--source", str(blue),
                 "--text-per-source", texts[0], "--text-per-source", texts[1], "--headless",
                 "--out", str(out), "--jsonl", str(jsonl)]) == 0
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    by_source = {str(red): [], str(blue): []}
    for r in records:
        by_source[r["source"]].append(r)
    frames = {str(red): read_video(red), str(blue): read_video(blue)}
    with Pipeline.load(tiny_bundle) as pipe:
        for (source, rows), text in zip(by_source.items(), texts):
            assert [r["frame"] for r in rows] == list(range(len(frames[source])))  # files: every frame
            assert [r["label"] for r in rows] == [pipe.classify(f, text).label for f in frames[source]]
    videos = output_paths(out, 2)
    assert [len(read_video(v)) for v in videos] == [10, 7]
    summary = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert summary["processed"] == 17 and set(summary["sources"]) == set(by_source)
    assert summary["sources"][str(blue)]["events"][-1]["event"] == "ended after 7 frames; removed"


def test_mosaic_writes_one_grid_video(tiny_bundle, tmp_path):
    sources = [disc_video(tmp_path / f"{i}.mp4", (40, 40, 220), count=6) for i in range(3)]
    out = tmp_path / "grid.mp4"
    args = ["camera", str(tiny_bundle), *sum((["--source", str(s)] for s in sources), []), "--text", "a circle",
            "--headless", "--mosaic", "--out", str(out)]
    assert main(args) == 0
    grid = read_video(out)
    assert grid and grid[0].shape == (2 * TILE[1], 2 * TILE[0], 3)  # 3 sources: a 2 x 2 grid
    assert main(args) == 2  # the mosaic is kept unless --overwrite


def test_texts_must_match_the_sources(tiny_bundle, tmp_path, capsys):
    video = disc_video(tmp_path / "v.mp4", (40, 40, 220), count=2)
    assert main(["camera", str(tiny_bundle), "--source", str(video), "--source", str(video),
                 "--text-per-source", "only one", "--headless", "--jsonl", str(tmp_path / "p.jsonl")]) == 2
    assert "one --text-per-source for each of the 2" in capsys.readouterr().err
    assert not (tmp_path / "p.jsonl").exists()


def test_dead_stream_urls_end_the_run_with_what_happened_instead_of_waiting_for_ever(tiny_bundle, tmp_path, capsys):
    """Two RTSP URLs nothing listens on: each is retried --max-reconnects times in a row (the events said as they
    happen), then dropped; with no source left the command ends, saying no source gave a frame and why."""
    import socket

    ports = []
    for _ in range(2):
        with socket.socket() as s:  # a port that was free a moment ago: nothing listens on it
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    urls = [f"rtsp://127.0.0.1:{p}/cam" for p in ports]
    jsonl = tmp_path / "p.jsonl"
    assert main(["camera", str(tiny_bundle), "--source", urls[0], "--source", urls[1], "--text", "x", "--headless",
                 "--jsonl", str(jsonl), "--max-reconnects", "1"]) == 2
    said = capsys.readouterr().err
    for url in urls:
        tries = said.count(f"source {url}: failed after 0 frames: video source '{url}' did not open")
        assert tries == 2 and said.count(f"source {url}: ") == 2  # the first try and one reconnect
    assert said.count("removed after 1 reconnects in a row") >= 2  # as it happened, then in the summary
    assert "error: no source gave a frame" in said and not jsonl.exists()
