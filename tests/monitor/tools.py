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


def http_get(url: str, timeout_s: float = 5.0, raw: bool = False) -> tuple:
    """(status, body as text, or bytes with `raw`), also for 4xx/5xx answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            status, body = r.status, r.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    return status, body if raw else body.decode()


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


class Broker(Server):
    """mosquitto on a loopback port, with persistence (a subscriber's session and its queued QoS 1 messages survive a
    restart, as on a real site's broker)."""

    def __init__(self, folder: Path):
        self.port = free_port()
        conf = folder / "mosquitto.conf"
        (folder / "data").mkdir(exist_ok=True)
        conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
                        f"persistence_location {folder / 'data'}/\n")
        super().__init__([tool("mosquitto"), "-c", str(conf)], folder / "mosquitto.log")
        self.wait_listening()

    def wait_listening(self) -> None:
        def listening():
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.port)) == 0
        wait_until(listening, 10, f"mosquitto listening on {self.port}")

    def stop(self) -> None:
        """SIGTERM: mosquitto saves its state and exits, as a restarted service does."""
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self._out.close()

    def restart(self) -> None:
        self.start()
        self.wait_listening()


class Subscriber:
    """A paho-mqtt subscriber to PREFIX/# (QoS 1, a persistent session): `messages` is (topic, payload, retained)."""

    def __init__(self, port: int, prefix: str, client_id: str = "fusionrt-test-subscriber", clean: bool = False):
        import paho.mqtt.client as mqtt

        self.messages: list = []
        self.subscribed = __import__("threading").Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean)
        self.client.reconnect_delay_set(0.2, 1.0)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(f"{prefix}/#", qos=1)
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, m.payload.decode(), bool(m.retain)))
        self.client.connect("127.0.0.1", port, keepalive=5)
        self.client.loop_start()
        wait_until(self.subscribed.is_set, 10, "the subscriber's subscription")

    def events(self) -> list:
        return [json.loads(p) for t, p, _ in list(self.messages) if t.endswith("/events")]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class VideoStreamServer:
    """A live H.264 stream over HTTP on loopback, as a camera or an NVR serves one: each client gets the video played
    in real time (ffmpeg -re, stream copy, MPEG-TS), so several readers (the frame reader, a clip ring) see one
    stream at the same pace."""

    def __init__(self, video: Path):
        import http.server
        import threading

        ffmpeg = tool("ffmpeg")

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "video/mp2t")
                self.end_headers()
                play = subprocess.Popen([ffmpeg, "-v", "error", "-re", "-i", str(video), "-c", "copy", "-f", "mpegts",
                                         "-"], stdout=subprocess.PIPE)
                try:
                    while chunk := play.stdout.read(4096):
                        self.wfile.write(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                finally:
                    play.kill()
                    play.wait()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/live.ts"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
