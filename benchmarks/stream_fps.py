"""Streaming fps of a bundle on a real encoded video, per precision, text cache on and off.

    python -m fusionrt.benchmarks.stream_fps BUNDLE [--video FILE] [--frames 150] [--precision fp32,int8]

Without --video it writes one (scikit-image's photos, panned, MPEG-4). Every frame is classified
(policy 'all') so the figures are the pipeline's own rate, not the source's."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from fusionrt.runtime.pipeline import Pipeline
from fusionrt.runtime.video import VideoSource

__all__ = ["write_pan_video", "stream_fps"]


def write_pan_video(path: Path, frames: int = 150, size=(640, 480)) -> Path:
    """A camera pan over real photos (scikit-image's chelsea and coffee), so decode and resize are real work."""
    import cv2
    from skimage import data

    scene = np.concatenate([cv2.resize(img[:, :, ::-1], (size[0], size[1])) for img in (data.chelsea(), data.coffee())], 1)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, size)
    for i in range(frames):
        x = int((scene.shape[1] - size[0]) * i / max(1, frames - 1))
        writer.write(np.ascontiguousarray(scene[:, x:x + size[0]]))
    writer.release()
    return path


def stream_fps(bundle, video: Path, precision: str, text_cache: int) -> dict:
    with Pipeline.load(bundle, precision=precision, text_cache=text_cache) as pipe, VideoSource(str(video)) as source:
        backend = pipe.backend_name
        latencies, last = [], None
        for last in pipe.stream(source, "a photo taken by a dashboard camera on a sunny day", policy="all"):
            latencies.append(last.latency_ms)
    return {"backend": backend, "precision": precision, "text_cache": bool(text_cache), "frames": last.processed,
            "fps": round(last.fps, 1), "latency_ms_p50": round(float(np.percentile(latencies[5:], 50)), 1)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("--video")
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--precision", default="fp32,int8")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        video = Path(args.video) if args.video else write_pan_video(Path(tmp) / "pan.mp4", args.frames)
        rows = [stream_fps(args.bundle, video, p, cache) for p in args.precision.split(",") for cache in (0, 64)]
    print("| backend | precision | text cache | frames | fps | latency p50 ms |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['backend']} | {r['precision']} | {'on' if r['text_cache'] else 'off'} | {r['frames']} | {r['fps']} | "
              f"{r['latency_ms_p50']} |")
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
