"""examples/camera_app.py run as a user runs it, on a real video file. The window calls (cv2.imshow and waitKey,
which a headless OpenCV lacks) are stood in for by a shim that records the frames shown and presses keys:
'n' after the 4th frame (a new note, typed on stdin), 'q' after the 9th."""

import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.cli.test_camera import read_video, write_video

APP = Path(__file__).resolve().parents[2] / "examples" / "camera_app.py"

SHIM = """
import runpy, sys
import cv2, numpy as np
app, out = sys.argv[1], sys.argv[2]
shown, keys = [], iter([-1] * 3 + [ord("n")] + [-1] * 4 + [ord("q")] + [-1] * 100)
cv2.imshow = lambda window, frame: shown.append(frame.copy())
cv2.waitKey = lambda delay: next(keys)
cv2.destroyAllWindows = lambda: None
sys.argv = [app, *sys.argv[3:]]
try:
    runpy.run_path(app, run_name="__main__")
finally:
    np.save(out, np.stack(shown) if shown else np.zeros((0,)))
"""


def test_camera_app_is_short_enough_to_copy():
    assert len(APP.read_text().splitlines()) <= 80  # a sample a user reads in one go and copies


def test_camera_app_shows_annotated_frames_takes_a_new_note_and_stops_on_q(tiny_bundle, tmp_path):
    video = write_video(tmp_path / "in.mp4", count=24)
    shown = tmp_path / "shown.npy"
    result = subprocess.run([sys.executable, "-c", SHIM, str(APP), str(shown), str(tiny_bundle), "--source", str(video),
                             "--note", "a red circle"], input="a blue circle\n", capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    frames, source = np.load(shown), read_video(video)
    assert len(frames) == 9  # every frame of a file (policy "all") until q, then a clean stop
    assert "note> " in result.stdout  # 'n' asked for the new note on stdin
    assert "classified 9 frames at" in result.stdout and "dropped 0" in result.stdout
    for shown_frame, raw in zip(frames, source):
        assert shown_frame.shape == raw.shape and not np.array_equal(shown_frame, raw)  # the overlay is drawn on it


def test_camera_app_says_when_the_source_does_not_open(tiny_bundle, tmp_path):
    result = subprocess.run([sys.executable, str(APP), str(tiny_bundle), "--source", str(tmp_path / "none.mp4")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "no such file" in result.stderr


def test_camera_app_with_serve_answers_while_it_runs(tiny_bundle, tmp_path):
    """--serve: the shim scrapes /metrics and /readyz from inside the run (at the 5th frame shown)."""
    import pytest

    pytest.importorskip("aiohttp", reason="the site needs aiohttp: pip install 'fusionrt[site]'")
    scrape = SHIM.replace('cv2.imshow = lambda window, frame: shown.append(frame.copy())', '''import urllib.request
url = open(sys.argv[3]).read()
def show(window, frame):
    shown.append(frame.copy())
    if len(shown) == 5:
        print("METRICS", "fusionrt_source_frames_classified_total" in urllib.request.urlopen(url + "/metrics").read().decode())
        print("READY", urllib.request.urlopen(url + "/readyz").status)
cv2.imshow = show''').replace("sys.argv = [app, *sys.argv[3:]]", "sys.argv = [app, *sys.argv[4:]]")
    video = write_video(tmp_path / "in.mp4", count=24)
    port_file = tmp_path / "url"
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    port_file.write_text(f"http://127.0.0.1:{port}")
    result = subprocess.run([sys.executable, "-c", scrape, str(APP), str(tmp_path / "shown.npy"), str(port_file),
                             str(tiny_bundle), "--source", str(video), "--serve", f"127.0.0.1:{port}"],
                            input="a blue circle\n", capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"live view: http://127.0.0.1:{port}/" in result.stdout
    assert "METRICS True" in result.stdout and "READY 200" in result.stdout
