import subprocess
import sys
from pathlib import Path

APP = Path(__file__).resolve().parents[2] / "examples" / "camera_app.py"


def test_camera_app_is_short_and_runs():
    assert len(APP.read_text().splitlines()) <= 80  # a sample a user reads in one go and copies
    result = subprocess.run([sys.executable, str(APP), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "--source" in result.stdout


def test_camera_app_says_when_the_source_does_not_open(tiny_bundle, tmp_path):
    result = subprocess.run([sys.executable, str(APP), str(tiny_bundle), "--source", str(tmp_path / "none.mp4")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "no such file" in result.stderr
