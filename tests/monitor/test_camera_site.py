"""`fusionrt camera` with the site's options: events, clips and the server around a real run of the CLI."""

import json
import threading

import pytest

from fusionrt.cli import main
from tests.monitor.conftest import TEXT
from tests.monitor.test_events import _changes, write_video
from tests.monitor.tools import http_get, tool, wait_until

pytest.importorskip("prometheus_client", reason="the site needs prometheus_client: pip install 'fusionrt[site]'")
pytest.importorskip("aiohttp", reason="the site's server needs aiohttp: pip install 'fusionrt[site]'")


def test_camera_writes_events_and_clips_and_serves_while_it_runs(colour_bundle, tmp_path, capsys):
    tool("ffmpeg")
    video = write_video(tmp_path / "door.mp4")
    args = ["camera", str(colour_bundle), "--source", str(video), "--text", TEXT, "--headless", "--backend",
            "onnxruntime", "--events", str(tmp_path / "events.jsonl"), "--clips", str(tmp_path / "clips"),
            "--pre", "1", "--post", "1", "--serve", "127.0.0.1:0"]
    assert main(args) == 0
    out = capsys.readouterr().err  # what the command says goes to stderr; stdout has the summary
    assert "site: http://127.0.0.1:" in out and "/metrics" in out
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    changes = [e for e in events if e["type"] == "label_change"]
    assert [(e["previous"], e["label"], e["frame"]) for e in changes] == _changes()
    clips = sorted((tmp_path / "clips").glob("*.mp4"))
    assert len(clips) == 2 and {c.name for c in clips} == {e["clip"].rpartition("/")[2] for e in changes}


def test_camera_serves_metrics_while_a_live_run_goes_on(colour_bundle, colour_frames, tmp_path, capsys):
    """The server is up during the run (read from another thread), and gone after it."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    video = write_video(tmp_path / "long.mp4", script=(("red", 300),))
    seen = {}

    def scrape():
        seen["metrics"] = wait_until(lambda: (r := http_get(f"http://127.0.0.1:{port}/metrics"))[0] == 200 and
                                     "fusionrt_source_frames_classified_total" in r[1] and r[1], 60, "/metrics")
    reader = threading.Thread(target=scrape)
    reader.start()
    assert main(["camera", str(colour_bundle), "--source", str(video), "--text", TEXT, "--headless", "--backend",
                 "onnxruntime", "--serve", f"127.0.0.1:{port}", "--policy", "latest"]) == 0
    reader.join()
    assert 'fusionrt_source_frames_classified_total{source="' in seen["metrics"]
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()  # the run ended: so did its server


def test_headless_with_nothing_to_write_names_the_site_options(colour_bundle, tmp_path, capsys):
    assert main(["camera", str(colour_bundle), "--source", "x.mp4", "--text", TEXT, "--headless"]) == 2
    assert "--serve, --mqtt or --events" in capsys.readouterr().err
