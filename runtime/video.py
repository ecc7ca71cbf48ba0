"""Video sources for camera apps: a camera index, a video file or a stream URL, through OpenCV."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from fusionrt.runtime.errors import InputError
from fusionrt.runtime.optional import require

__all__ = ["VideoSource", "is_live"]

_STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")


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
        while self.capture is not None:
            ok, frame = self.capture.read()
            if not ok:
                return
            yield frame

    def close(self) -> None:
        if self.capture is not None:
            self.capture.release()
            self.capture = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
