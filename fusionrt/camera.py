"""The camera app (`fusionrt camera`, and `examples/camera_app.py` embeds it): one or many live or recorded videos
classified by one pipeline (`Pipeline.stream_many` batches their frames); overlay, a window (one source's frames, or
the mosaic of many), annotated videos (one per source, or one mosaic), one JSONL with source ids, and a summary."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np

from fusionrt.runtime.errors import InputError

__all__ = ["run_cameras", "mosaic", "output_paths", "TILE", "DEFAULT_FPS"]

WINDOW = "fusionrt"
TILE = (480, 270)  # one source's cell in the mosaic (width, height)
DEFAULT_FPS = 25.0  # a live source's annotated video, where the source does not say its rate


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


def _show(frame: np.ndarray, on_key: Callable[[int], None] | None = None) -> bool:
    """Show the frame; False when the user pressed q or Esc. Any other key goes to `on_key`."""
    import cv2

    try:
        cv2.imshow(WINDOW, frame)
        key = cv2.waitKey(1) & 0xFF
    except cv2.error as exc:
        raise InputError("this OpenCV has no window support (opencv-python-headless): pass --headless "
                         "(with --out or --jsonl), or install opencv-python for a window.") from exc
    if key in (ord("q"), 27):
        return False
    if on_key is not None and key != 0xFF:
        on_key(key)
    return True


def _refuse_to_overwrite(outputs, overwrite: bool) -> None:
    """(option, path) pairs: an existing file is kept unless `overwrite`, so no earlier results are lost."""
    for option, path in outputs:
        if path and Path(path).exists() and not overwrite:
            raise InputError(f"{option} {path} already exists: expected a new file, so no earlier results are lost. "
                             "Choose another path, or pass --overwrite to replace it.")


def output_paths(out, count: int) -> list:
    """One annotated video per source: OUT's name with the source's number (`annotated.mp4` -> `annotated-0.mp4`)."""
    out = Path(out)
    return [out.with_name(f"{out.stem}-{i}{out.suffix}") for i in range(count)]


def mosaic(tiles: list, names: list) -> np.ndarray:
    """The sources' latest annotated frames in a grid (letterboxed into TILE cells), each with its source's name."""
    import cv2

    cols = math.ceil(math.sqrt(len(tiles)))
    rows = math.ceil(len(tiles) / cols)
    width, height = TILE
    grid = np.zeros((rows * height, cols * width, 3), np.uint8)
    for i, (tile, name) in enumerate(zip(tiles, names)):
        y, x = (i // cols) * height, (i % cols) * width
        if tile is not None:
            scale = min(width / tile.shape[1], height / tile.shape[0])
            w, h = max(1, round(tile.shape[1] * scale)), max(1, round(tile.shape[0] * scale))
            cell = cv2.resize(tile, (w, h), interpolation=cv2.INTER_AREA)
            top, left = y + (height - h) // 2, x + (width - w) // 2
            grid[top:top + h, left:left + w] = cell
        cv2.putText(grid, name[-40:], (x + 6, y + height - 10), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 255, 255), 1,
                    cv2.LINE_AA)
    return grid


def _fps_of(source) -> float:
    """A file's own frame rate, for its annotated video (live sources: 25)."""
    from fusionrt.runtime.video import VideoSource, is_live

    if is_live(str(source)) or not Path(str(source)).is_file():
        return DEFAULT_FPS
    with VideoSource(str(source)) as video:
        return video.fps or DEFAULT_FPS


def _checked(sources: list, texts, headless: bool, out, jsonl, mosaic_out: bool, overwrite: bool) -> tuple:
    """(source ids, a text per id, the video paths): what a run writes, checked before any frame is read."""
    from fusionrt.runtime.stream import source_ids

    if not callable(texts) and len(texts) not in (1, len(sources)):
        raise InputError(f"expected one --text for all sources or one --text-per-source for each of the "
                         f"{len(sources)} sources, found {len(texts)} texts.")
    if headless and not (out or jsonl):
        raise InputError("--headless shows nothing: pass --out annotated.mp4 (several sources: one per source, or "
                         "--mosaic), --jsonl predictions.jsonl, or a site's --serve, --mqtt or --events.")
    ids = list(source_ids(list(sources)))
    single = len(sources) == 1 and not mosaic_out
    videos = ([Path(out)] if mosaic_out or single else output_paths(out, len(sources))) if out else []
    _refuse_to_overwrite([("--out", v) for v in videos] + ([("--jsonl", jsonl)] if jsonl else []), overwrite)
    text_of = texts if callable(texts) else dict(zip(ids, texts * len(ids) if len(texts) == 1 else texts))
    return ids, text_of, videos


def _record(r) -> str:
    p = r.prediction
    return json.dumps({"source": r.source, "frame": r.index, "label": p.label, "score": round(p.score, 6),
                       "latency_ms": round(r.latency_ms, 3), "fps": round(r.fps, 2), "batch": r.batch,
                       "dropped": r.dropped, "text_cached": r.text_cached}) + "\n"


def run_cameras(pipeline, sources: list, texts, headless: bool, out=None, jsonl=None, policy=None,
                max_frames=None, mosaic_out: bool = False, say=print, overwrite: bool = False,
                on_key: Callable[[int], None] | None = None, max_reconnects: int | None = None,
                monitor=None) -> dict:
    """Run until every source has ended (or, with `max_frames`, given that many), Ctrl-C or q/Esc; returns the
    summary (also said). `texts`: one text for all sources or one per source, in order, or a callable(source id)
    giving a source's current text. `on_key(key)`: a key pressed in the window (not q or Esc). A live source that
    fails is reopened with backoff, and dropped after `max_reconnects` reopenings in a row (None: for ever); each
    such event is said as it happens. `monitor`: a `fusionrt.monitor.Site` (metrics, health, events, clips, live
    view) or any StreamMonitor."""
    from fusionrt.overlay import annotate
    from fusionrt.runtime.video import is_live

    ids, text_of, videos = _checked(sources, texts, headless and monitor is None, out, jsonl, mosaic_out, overwrite)
    policy = policy or ("latest" if any(is_live(str(s)) for s in sources) else "all")
    single = len(ids) == 1 and not mosaic_out
    writers = [_Writer(v, _fps_of(s)) for v, s in zip(videos, sources)] if out and not mosaic_out else \
        ([_Writer(videos[0], _fps_of(sources[0]))] if out else [])
    position = {sid: i for i, sid in enumerate(ids)}
    tiles: list = [None] * len(ids)
    say(f"{len(ids)} source{'s' * (len(ids) > 1)}, policy '{policy}': " + ", ".join(ids))
    records = None  # opened at the first result: a run that reads no frame leaves no file behind
    started, interrupted, counted, pending = time.perf_counter(), False, dict.fromkeys(ids, 0), 0
    streams = pipeline.stream_many(dict(zip(ids, sources)), text_of, policy=policy, max_reconnects=max_reconnects,
                                   on_event=lambda sid, e: say(f"source {sid}: {e['event']}"), monitor=monitor)
    try:
        for r in streams:
            if max_frames and counted[r.source] >= max_frames:
                if all(counted[s] >= max_frames for s in ids):
                    break
                continue
            counted[r.source] += 1
            if jsonl:
                records = records or open(jsonl, "w")
                records.write(_record(r))
            if not (writers or not headless):
                continue
            frame = annotate(r.frame, r)
            tiles[position[r.source]] = frame
            if writers and not mosaic_out:
                writers[position[r.source]].write(frame)
            pending += 1
            if pending < r.batch:
                continue  # one window or mosaic frame per call: after its last result
            pending = 0
            shown = frame if single else mosaic(tiles, ids)
            if mosaic_out and writers:
                writers[0].write(shown)
            if not headless and not _show(shown, on_key):
                break
    except KeyboardInterrupt:
        interrupted = True
    finally:
        streams.stop()  # stops and joins the frame readers before the captures are released
        for w in writers:
            w.close()
        if records:
            records.close()
        if not headless:
            _close_windows()
    return _summary(pipeline, streams, policy, counted, time.perf_counter() - started, interrupted, videos, say)


def _summary(pipeline, streams, policy: str, counted: dict, wall: float, interrupted: bool, videos: list,
             say) -> dict:
    per_source = streams.summary()
    failed = {sid: s["events"][-1]["event"] for sid, s in per_source.items() if s["events"] and s["processed"] == 0}
    if not any(counted.values()) and failed and len(failed) == len(per_source):  # nothing ran: say why, fail
        raise InputError("no source gave a frame: " + "; ".join(f"{sid}: {e}" for sid, e in failed.items()))
    cache = pipeline.text_cache
    summary = {"sources": per_source, "policy": policy, "processed": sum(counted.values()),
               "dropped": sum(s["dropped"] for s in per_source.values()),
               "fps": round(sum(counted.values()) / wall, 2) if wall > 0 else 0.0,
               "mean_batch": round(float(np.mean(streams.batch_sizes)), 2) if streams.batch_sizes else None,
               "text_cache": {"hits": cache.hits, "misses": cache.misses} if cache is not None else None,
               "interrupted": interrupted, "outputs": [str(v) for v in videos]}
    for sid, s in per_source.items():
        say(f"{sid}: {s['processed']} frames, {s['fps']} fps, p50 {s['latency_ms_p50']} ms, p99 "
            f"{s['latency_ms_p99']} ms, dropped {s['dropped']}, reconnects {s['reconnects']}"
            + (f", last event: {s['events'][-1]['event']}" if s["events"] else ""))
    say(json.dumps(summary))
    return summary


def _close_windows() -> None:
    import cv2

    try:
        cv2.destroyAllWindows()
    except cv2.error:
        pass  # headless OpenCV: there was no window
