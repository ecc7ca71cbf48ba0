"""What the live view shows: each source's latest frame (kept by reference; JPEG-encoded only when a viewer asks, at
most once per frame) and its latest prediction."""

from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np

__all__ = ["LiveView", "TILE_WIDTH"]

TILE_WIDTH = 480  # pixels: a tile's JPEG is scaled down to this width
_RECENT = 512  # frame latencies the summary's percentiles cover


class LiveView:
    def __init__(self, quality: int = 75):
        self.quality = quality
        self._latest: dict = {}  # source -> (frame index, BGR frame, label, score, fps, monotonic time)
        self._encoded: dict = {}  # source -> (frame index, JPEG bytes)
        self.latencies: deque = deque(maxlen=_RECENT)
        self._lock = threading.Lock()

    def update(self, results: list) -> None:
        now = time.monotonic()
        with self._lock:
            for r in results:
                self._latest[r.source] = (r.index, r.frame, r.prediction.label, r.prediction.score, r.fps, now)
                self.latencies.append(r.latency_ms)

    def latest(self, source: str):
        """(frame index, label, score, fps, seconds since classified) or None before its first prediction."""
        with self._lock:
            entry = self._latest.get(source)
        if entry is None:
            return None
        index, _, label, score, fps, at = entry
        return index, label, score, fps, time.monotonic() - at

    def latency_p(self, q: float) -> float | None:
        with self._lock:
            values = list(self.latencies)
        return float(np.percentile(values, q)) if values else None

    def jpeg(self, source: str):
        """(frame index, JPEG bytes) of the source's latest frame, or None before its first."""
        import cv2

        with self._lock:
            entry, cached = self._latest.get(source), self._encoded.get(source)
        if entry is None:
            return None
        if cached is not None and cached[0] == entry[0]:
            return cached
        frame = entry[1]
        if frame.shape[1] > TILE_WIDTH:
            height = max(1, round(frame.shape[0] * TILE_WIDTH / frame.shape[1]))
            frame = cv2.resize(frame, (TILE_WIDTH, height), interpolation=cv2.INTER_AREA)
        ok, data = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        if not ok:
            return None
        encoded = (entry[0], data.tobytes())
        with self._lock:
            self._encoded[source] = encoded
        return encoded
