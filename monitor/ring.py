"""A live stream's recent past, for clips with pre-roll: a second reader of the stream (ffmpeg, stream copy) writes it
as MPEG-TS segments, each starting on a keyframe (the segment muxer cuts only there); a watcher thread notes when
each segment began, deletes the ones older than any clip could need, restarts the reader with backoff when the
stream drops, and hands a requested clip to the cutter once its post-roll is written. A clip is the segments that
overlap its window, joined by the concat demuxer without re-encoding: it starts on a keyframe at or before the
pre-roll."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

__all__ = ["StreamRing", "SEGMENT_S"]

SEGMENT_S = 1.0  # the segments' target length (a segment runs to the next keyframe past it)
_TICK_S = 0.2
_RESTART_S = (0.5, 8.0)
_SPARE_S = 10.0  # kept beyond what the longest clip needs


class StreamRing:
    def __init__(self, ffmpeg: str, url: str, folder: Path, keep_s: float, on_ready, segment_s: float = SEGMENT_S):
        """`on_ready(segments, out)`: called on the watcher thread with a clip's segment paths, in order."""
        self.ffmpeg, self.url, self.folder = ffmpeg, url, Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        for old in self.folder.glob("seg*.ts"):
            old.unlink()
        self.keep_s, self.segment_s, self.on_ready = keep_s + _SPARE_S, segment_s, on_ready
        self.started: dict = {}  # segment path -> wall time it was first seen (its start)
        self.restarts = 0
        self._pending: list = []  # (start wall, end wall, out path, deadline)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._proc = None
        self._run_index = 0
        self._thread = threading.Thread(target=self._watch, name="fusionrt-site-ring", daemon=True)
        self._thread.start()

    def _spawn(self) -> None:
        self._run_index += 1  # a restarted reader's segments get new names: none is overwritten under a cut
        rtsp = ["-rtsp_transport", "tcp"] if self.url.lower().startswith(("rtsp://", "rtsps://")) else []
        self._proc = subprocess.Popen(
            [self.ffmpeg, "-nostdin", "-v", "error", *rtsp, "-i", self.url, "-map", "0:v:0", "-c", "copy", "-f",
             "segment", "-segment_time", f"{self.segment_s:g}", "-segment_format", "mpegts", "-reset_timestamps", "0",
             str(self.folder / f"seg{self._run_index:03d}-%06d.ts")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def request(self, start_wall: float, end_wall: float, out: Path) -> None:
        """A clip of wall-clock times [start, end]; cut once a segment began after `end` (or 3 segments late)."""
        with self._lock:
            self._pending.append((start_wall, end_wall, out, end_wall + 3 * self.segment_s + 5.0))

    def _watch(self) -> None:
        delay, up_since = _RESTART_S[0], None
        while not self._stop.is_set():
            if self._proc is None or self._proc.poll() is not None:
                if self._proc is not None:  # the stream dropped: reopen with backoff, as the frame reader does
                    if up_since is not None and time.time() - up_since > _RESTART_S[1]:
                        delay = _RESTART_S[0]
                    if self._stop.wait(delay):
                        break
                    delay = min(delay * 2, _RESTART_S[1])
                    self.restarts += 1
                self._spawn()
                up_since = time.time()
            now = time.time()
            for seg in sorted(self.folder.glob("seg*.ts")):
                self.started.setdefault(seg, now)
            self._serve_pending(now)
            self._prune(now)
            self._stop.wait(_TICK_S)

    def _segments(self, last_ends: float | None = None) -> list:
        """(path, start, end) of each segment in order; the one being written has no end (or `last_ends`)."""
        order = sorted(self.started.items(), key=lambda item: (item[1], item[0].name))
        return [(p, start, order[i + 1][1] if i + 1 < len(order) else last_ends) for i, (p, start) in enumerate(order)]

    def _serve_pending(self, now: float, final: bool = False) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        segments = self._segments(now if final else None)
        latest = segments[-1][1] if segments else 0.0
        for start, end, out, deadline in pending:
            if latest <= end and now < deadline and not final:
                with self._lock:
                    self._pending.append((start, end, out, deadline))  # its post-roll is still being written
                continue
            chosen = [p for p, s, e in segments if e is not None and e > start and s <= end]
            if chosen:
                self.on_ready(chosen, out)

    def _prune(self, now: float) -> None:
        with self._lock:
            oldest_needed = min([s for s, _, _, _ in self._pending], default=now)
        horizon = min(now - self.keep_s, oldest_needed - self.segment_s)
        for path, start, end in self._segments()[:-1]:
            if end is not None and end < horizon:
                path.unlink(missing_ok=True)
                self.started.pop(path, None)

    def close(self) -> None:
        """Stop the reader; the clips still waiting get what was written (their post-roll may be short)."""
        self._stop.set()
        self._thread.join(timeout=5.0)
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()  # SIGTERM: ffmpeg closes its last segment whole
            try:
                self._proc.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        now = time.time()
        for seg in sorted(self.folder.glob("seg*.ts")):
            self.started.setdefault(seg, now)
        self._serve_pending(now, final=True)
