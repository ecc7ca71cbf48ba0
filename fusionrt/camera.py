"""`fusionrt camera`: classify a live or recorded video with a bundle; overlay, annotated video, JSONL."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from fusionrt.runtime.errors import InputError

__all__ = ["run_camera"]

WINDOW = "fusionrt"


class _Writer:
    """The annotated video, opened on the first frame (its size comes from the source)."""

    def __init__(self, path, fps: float):
        self.path, self.fps, self.writer = path, fps, None

    def write(self, frame: np.ndarray) -> None:
        import cv2

        if self.writer is None:
            fourcc = cv2.VideoWriter_fourcc(*"mp4v")
            self.writer = cv2.VideoWriter(str(self.path), fourcc, self.fps, (frame.shape[1], frame.shape[0]))
            if not self.writer.isOpened():
                raise InputError(f"--out {self.path}: OpenCV could not open it for writing; use a .mp4 or .avi path "
                                 "in an existing, writable folder.")
        self.writer.write(frame)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()


def _show(frame: np.ndarray) -> bool:
    """Show the frame; False when the user pressed q or Esc."""
    import cv2

    try:
        cv2.imshow(WINDOW, frame)
        key = cv2.waitKey(1) & 0xFF
    except cv2.error as exc:
        raise InputError("this OpenCV has no window support (opencv-python-headless): pass --headless "
                         "(with --out or --jsonl), or install opencv-python for a window.") from exc
    return key not in (ord("q"), 27)


def _refuse_to_overwrite(outputs, overwrite: bool) -> None:
    """(option, path) pairs: an existing file is kept unless `overwrite`, so no earlier results are lost."""
    for option, path in outputs:
        if path and Path(path).exists() and not overwrite:
            raise InputError(f"{option} {path} already exists: expected a new file, so no earlier results are lost. "
                             "Choose another path, or pass --overwrite to replace it.")


def run_camera(pipeline, source, text: str, headless: bool, out=None, jsonl=None, policy=None, max_frames=None,
               say=print, overwrite: bool = False) -> dict:
    """Run until the source ends, Ctrl-C, q/Esc, or `max_frames`; returns the summary (also printed)."""
    from fusionrt.overlay import annotate
    from fusionrt.runtime.video import VideoSource

    if headless and not (out or jsonl):
        raise InputError("--headless shows nothing: pass --out annotated.mp4 and/or --jsonl predictions.jsonl.")
    _refuse_to_overwrite([("--out", out), ("--jsonl", jsonl)], overwrite)
    latencies, started, last, interrupted = [], time.perf_counter(), None, False
    with VideoSource(source) as video:
        policy = policy or ("latest" if video.live else "all")
        writer = _Writer(out, video.fps or 25.0) if out else None
        records = open(jsonl, "w") if jsonl else None
        say(f"{source}: {'live' if video.live else 'file'}, {video.fps or '?'} fps, policy '{policy}'")
        results = pipeline.stream(video, text, policy=policy)
        try:
            for result in results:
                last = result
                latencies.append(result.latency_ms)
                if records:
                    p = result.prediction
                    records.write(json.dumps({
                        "frame": result.index, "label": p.label, "score": round(p.score, 6),
                        "latency_ms": round(result.latency_ms, 3), "fps": round(result.fps, 2),
                        "dropped": result.dropped, "text_cached": result.text_cached}) + "\n")
                if writer or not headless:
                    frame = annotate(result.frame, result)
                    if writer:
                        writer.write(frame)
                    if not headless and not _show(frame):
                        break
                if max_frames and result.processed >= max_frames:
                    break
        except KeyboardInterrupt:
            interrupted = True
        finally:
            results.close()  # stops and joins the frame reader before the capture is released
            if writer:
                writer.close()
            if records:
                records.close()
            if not headless:
                _close_windows()
    wall = time.perf_counter() - started
    processed = last.processed if last else 0
    summary = {
        "source": str(source), "policy": policy, "processed": processed, "dropped": last.dropped if last else 0,
        "fps": processed / wall if wall > 0 else 0.0,
        "latency_ms_p50": float(np.percentile(latencies, 50)) if latencies else None,
        "latency_ms_p95": float(np.percentile(latencies, 95)) if latencies else None,
        "text_cache": ({"hits": pipeline.text_cache.hits, "misses": pipeline.text_cache.misses}
                       if pipeline.text_cache is not None else None),
        "interrupted": interrupted,
    }
    say(json.dumps(summary))
    return summary


def _close_windows() -> None:
    import cv2

    try:
        cv2.destroyAllWindows()
    except cv2.error:
        pass  # headless OpenCV: there was no window
