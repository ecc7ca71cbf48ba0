"""Video sources for camera apps: a camera index, a video file or a stream URL, through OpenCV.

A stream's reader thread may be blocked in `read()` (a stalled RTSP camera) when the app closes the source. Releasing
an OpenCV capture while another thread is inside its `read()` can crash the process, so `close()` waits for the read
in flight (network reads time out after `READ_TIMEOUT_MS`); if it is still blocked then, the reader releases the
capture itself when its read returns."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Iterator

from fusionrt.runtime.errors import InputError
from fusionrt.runtime.optional import require

__all__ = ["VideoSource", "is_live"]

_STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")
OPEN_TIMEOUT_MS = READ_TIMEOUT_MS = 10_000  # a network source that says nothing for this long ends its read


def is_live(source: str) -> bool:
    """Cameras and network streams run at their own pace (frames go stale); files wait for the reader."""
    return str(source).isdigit() or str(source).lower().startswith(_STREAM_SCHEMES)


class VideoSource:
    """Iterable of BGR frames; a context manager that releases the capture."""

    def __init__(self, source: str):
        cv2 = require("cv2", "video sources")
        self.source = str(source)
        self.live = is_live(self.source)
        if not self.live and not Path(self.source).is_file():
            raise InputError(f"video source '{self.source}': no such file. Expected a camera index (0, 1, ...), "
                             "a video file, or a stream URL (rtsp://, http://).")
        target = int(self.source) if self.source.isdigit() else self.source
        self._lock, self._closing = threading.Lock(), False
        if self.live and not self.source.isdigit():  # bounded waits, so a dead stream cannot hold a read forever
            self.capture = cv2.VideoCapture(target, cv2.CAP_FFMPEG, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, OPEN_TIMEOUT_MS,
                                                                     cv2.CAP_PROP_READ_TIMEOUT_MSEC, READ_TIMEOUT_MS])
        else:
            self.capture = cv2.VideoCapture(target)
        if not self.capture.isOpened():
            self.capture.release()
            raise InputError(f"video source '{self.source}' did not open: " + (
                "is the camera connected, and free (not used by another app)?" if self.source.isdigit() else
                "is the URL reachable and the stream H.264/MJPEG?" if self.live else
                "OpenCV cannot decode this file; re-encode it (e.g. ffmpeg -i IN -c:v libx264 OUT.mp4)."))
        fps = self.capture.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and fps > 0 else None

    def __iter__(self) -> Iterator:
        while True:
            with self._lock:
                if self.capture is None or self._closing:
                    self._release_if_closing()
                    return
                ok, frame = self.capture.read()
                if self._closing:  # closed while this read ran: the capture is ours to release
                    self._release_if_closing()
                    return
            if not ok:
                return
            yield frame

    def _release_if_closing(self) -> None:
        if self._closing and self.capture is not None:
            self.capture.release()
            self.capture = None

    def close(self, timeout_s: float = READ_TIMEOUT_MS / 1e3 + 1.0) -> None:
        """Release the capture; a read in flight on another thread finishes first (or, past `timeout_s`, releases it
        itself when it returns)."""
        self._closing = True
        if self._lock.acquire(timeout=timeout_s):
            try:
                self._release_if_closing()
            finally:
                self._lock.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
