"""Clips around events, cut without re-encoding (ffmpeg stream copy): from a video file itself, which already holds
the frames before and after the event, or from a live stream's ring of segments (monitor/ring.py). A clip starts on
the keyframe at or before `pre` seconds ahead of the event (a stream copy can start nowhere else) and ends `post`
seconds after it; one clip per event, named by source and
time; the folder's clips stay under `max_mb`, the oldest deleted first. Cut on a worker thread: frames never wait."""

from __future__ import annotations

import bisect
import re
import shutil
import subprocess
import time
from pathlib import Path

from fusionrt.monitor.worker import Worker
from fusionrt.runtime.errors import InputError

__all__ = ["ClipRecorder", "keyframe_times", "clip_name"]

FFMPEG_TIMEOUT_S = 60
_OURS = re.compile(r".+-\d{8}-\d{6}\.\d{3}-[a-z_]+\.mp4")  # clip_name's pattern: only our clips are ever deleted


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise InputError(f"--clips needs {name}, which is not on PATH: install it (Debian: apt-get install ffmpeg).")
    return path


def keyframe_times(path) -> list:
    """Seconds of every keyframe of the first video stream, read by ffprobe."""
    probe = subprocess.run([_tool("ffprobe"), "-v", "error", "-select_streams", "v:0", "-skip_frame", "nokey",
                            "-show_entries", "frame=pts_time", "-of", "csv=p=0", str(path)],
                           capture_output=True, text=True, timeout=FFMPEG_TIMEOUT_S, check=True)
    return sorted(float(v) for line in probe.stdout.split() if (v := line.strip(",")))


def _safe(source: str) -> str:
    """A source id as a file name part (a URL's ':' and '/' replaced)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in source)[-60:]


def clip_name(source: str, at: float, kind: str) -> str:
    safe = _safe(source)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(at)) + f".{int(at * 1000) % 1000:03d}"
    return f"{safe}-{stamp}-{kind}.mp4"


class ClipRecorder:
    def __init__(self, folder, pre_s: float = 3.0, post_s: float = 5.0, max_mb: float = 500.0, on_error=None):
        if pre_s < 0 or post_s < 0 or pre_s + post_s <= 0:
            raise InputError(f"--pre/--post: expected seconds >= 0, not both 0, found {pre_s} and {post_s}.")
        if max_mb <= 0:
            raise InputError(f"--clips-max-mb: expected a size > 0, found {max_mb}.")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.pre_s, self.post_s, self.max_bytes = pre_s, post_s, max_mb * 2**20
        self.ffmpeg = _tool("ffmpeg")
        _tool("ffprobe")
        self.written: list = []  # paths of the clips written, in order
        self.deleted: list = []  # paths removed to keep the folder under max_mb
        self._keyframes: dict = {}  # file -> its keyframe times
        self._rings: list = []
        self._worker = Worker("fusionrt-clips", self._cut, on_error=on_error)

    def keyframes(self, path) -> list:
        """The file's keyframe times (read once, then kept)."""
        key = str(path)
        if key not in self._keyframes:
            self._keyframes[key] = keyframe_times(path)
        return self._keyframes[key]

    def request(self, path, source: str, at_video_s: float, kind: str) -> Path:
        """Queue the clip of `path` around `at_video_s`; returns the path it will have."""
        out = self.folder / clip_name(source, time.time(), kind)
        self._worker.submit(("file", Path(path), at_video_s, out))
        return out

    def ring(self, url: str, source: str):
        """A StreamRing keeping the last `pre + post` seconds of a live stream, for `request_live`."""
        from fusionrt.monitor.ring import StreamRing

        ring = StreamRing(self.ffmpeg, url, self.folder / ".ring" / _safe(source), self.pre_s + self.post_s,
                          lambda segments, out: self._worker.submit(("segments", segments, out)))
        self._rings.append(ring)
        return ring

    def request_live(self, ring, source: str, at_wall: float, kind: str) -> Path:
        """The clip of a live stream around wall time `at_wall`, cut once its post-roll is recorded."""
        out = self.folder / clip_name(source, at_wall, kind)
        ring.request(at_wall - self.pre_s, at_wall + self.post_s, out)
        return out

    def window(self, path, at_video_s: float) -> tuple:
        """(start, duration): from the keyframe at or before `at - pre` to `at + post`."""
        keys = self.keyframes(path) or [0.0]
        want = max(0.0, at_video_s - self.pre_s)
        start = keys[max(0, bisect.bisect_right(keys, want + 1e-6) - 1)]
        return start, at_video_s + self.post_s - start

    def _cut(self, job) -> None:
        out = job[-1]
        partial = out.with_name(out.stem + ".part.mp4")
        if job[0] == "file":
            _, path, at, _ = job
            start, duration = self.window(path, at)
            # -ss before -i on a keyframe's time: the copy starts on that keyframe (a hair past it, so rounding
            # cannot land on the keyframe before)
            source = ["-ss", f"{start + 1e-3:.3f}", "-i", str(path), "-t", f"{duration:.3f}"]
        else:
            listing = out.with_name(out.stem + ".txt")
            listing.write_text("".join(f"file '{p.resolve()}'\n" for p in job[1]))
            source = ["-f", "concat", "-safe", "0", "-i", str(listing)]
        try:
            subprocess.run([self.ffmpeg, "-nostdin", "-v", "error", "-y", *source, "-map", "0:v:0", "-c", "copy",
                            "-avoid_negative_ts", "make_zero", "-movflags", "+faststart", str(partial)], check=True,
                           capture_output=True, timeout=FFMPEG_TIMEOUT_S)
        finally:
            if job[0] == "segments":
                listing.unlink(missing_ok=True)
        partial.replace(out)  # a clip is whole or absent
        self.written.append(out)
        self._bound()

    def _bound(self) -> None:
        clips = sorted((p for p in self.folder.glob("*.mp4") if _OURS.fullmatch(p.name)),
                       key=lambda p: p.stat().st_mtime)
        total = sum(p.stat().st_size for p in clips)
        while clips and total > self.max_bytes and len(clips) > 1:  # the newest clip stays, whatever its size
            oldest = clips.pop(0)
            total -= oldest.stat().st_size
            oldest.unlink()
            self.deleted.append(oldest)

    def drain(self, timeout_s: float = 60.0) -> bool:
        return self._worker.drain(timeout_s)

    @property
    def failed(self) -> int:
        return self._worker.failed

    def close(self) -> None:
        """Stop the rings (their waiting clips are cut from what was recorded), then finish every queued cut."""
        for ring in self._rings:
            ring.close()
        self._worker.close(FFMPEG_TIMEOUT_S)
        for ring in self._rings:  # the segments were scratch: the clips are cut
            shutil.rmtree(ring.folder, ignore_errors=True)
        if self._rings and not any((self.folder / ".ring").iterdir()):
            (self.folder / ".ring").rmdir()
