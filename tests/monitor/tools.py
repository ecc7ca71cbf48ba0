"""Real servers for the site's tests (Prometheus, mosquitto, Chromium, ffmpeg), found on PATH or skipped with the
reason: `make test` installs their Debian packages first."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

__all__ = ["tool", "free_port", "wait_until", "Server", "http_get"]

_PACKAGES = {"prometheus": "prometheus", "promtool": "prometheus", "mosquitto": "mosquitto", "chromium": "chromium",
             "ffmpeg": "ffmpeg", "ffprobe": "ffmpeg"}


def tool(name: str) -> str:
    path = shutil.which(name, path=os.environ.get("PATH", "") + os.pathsep + "/usr/sbin" + os.pathsep + "/sbin")
    if path is None:
        pytest.skip(f"{name} is not installed and `make test` could not install it (apt-get install "
                    f"{_PACKAGES.get(name, name)} needs root or sudo here)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check, timeout_s: float, what: str, every_s: float = 0.1):
    """Poll `check()` until it returns something truthy; fail naming `what` past `timeout_s`."""
    deadline, last = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (OSError, ValueError, KeyError, IndexError) as exc:
            last = exc
        else:
            if last and not isinstance(last, Exception):
                return last
        time.sleep(every_s)
    pytest.fail(f"waited {timeout_s} s for {what}; last: {last!r}")


def http_get(url: str, timeout_s: float = 5.0) -> tuple:
    """(status, body as text), also for 4xx/5xx answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def http_json(url: str):
    return json.loads(http_get(url)[1])


class Server:
    """A server process for one test: its log in `log`, killed (and waited for) on exit."""

    def __init__(self, args: list, log: Path):
        self.args, self.log = args, log
        self.proc = None
        self.start()

    def start(self) -> None:
        self._out = open(self.log, "ab")
        self.proc = subprocess.Popen(self.args, stdout=self._out, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._out.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.kill()
