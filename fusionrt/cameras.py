"""`fusionrt camera` with several `--source`s: one pipeline batches their frames (`Pipeline.stream_many`); one
annotated video per source (or one mosaic), one JSONL with source ids, and a summary per source."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

from fusionrt.camera import _close_windows, _refuse_to_overwrite, _show, _Writer
from fusionrt.runtime.errors import InputError

__all__ = ["run_cameras", "mosaic", "output_paths"]

TILE = (480, 270)  # one source's cell in the mosaic (width, height)


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
        return 25.0
    with VideoSource(str(source)) as video:
        return video.fps or 25.0


def run_cameras(pipeline, sources: list, texts: list, headless: bool, out=None, jsonl=None, policy=None,
                max_frames=None, mosaic_out: bool = False, say=print, overwrite: bool = False) -> dict:
    """Run until every source has ended (or, with `max_frames`, given that many), Ctrl-C or q/Esc; returns the
    summary (also printed). `texts`: one text for all sources, or one per source, in order."""
    from fusionrt.runtime.multistream import source_ids
    from fusionrt.overlay import annotate
    from fusionrt.runtime.video import is_live

    if len(texts) not in (1, len(sources)):
        raise InputError(f"expected one --text for all sources or one --text-per-source for each of the "
                         f"{len(sources)} sources, found {len(texts)} texts.")
    if headless and not (out or jsonl):
        raise InputError("--headless shows nothing: pass --out annotated.mp4 (one per source, or --mosaic) and/or "
                         "--jsonl predictions.jsonl.")
    ids = list(source_ids(list(sources)))
    videos = ([Path(out)] if mosaic_out else output_paths(out, len(sources))) if out else []
    _refuse_to_overwrite([("--out", v) for v in videos] + ([("--jsonl", jsonl)] if jsonl else []), overwrite)
    text_of = dict(zip(ids, texts * len(ids) if len(texts) == 1 else texts))
    policy = policy or ("latest" if any(is_live(str(s)) for s in sources) else "all")
    writers = ([_Writer(videos[0], _fps_of(sources[0]))] if mosaic_out else
               [_Writer(v, _fps_of(s)) for v, s in zip(videos, sources)]) if out else []
    position = {sid: i for i, sid in enumerate(ids)}
    tiles: list = [None] * len(ids)
    say(f"{len(ids)} sources, policy '{policy}': " + ", ".join(ids))
    records = open(jsonl, "w") if jsonl else None
    started, interrupted, counted, pending = time.perf_counter(), False, dict.fromkeys(ids, 0), 0
    streams = pipeline.stream_many(dict(zip(ids, sources)), text_of, policy=policy)
    try:
        for r in streams:
            if max_frames and counted[r.source] >= max_frames:
                if all(counted[s] >= max_frames for s in ids):
                    break
                continue
            counted[r.source] += 1
            if records:
                p = r.prediction
                records.write(json.dumps({
                    "source": r.source, "frame": r.index, "label": p.label, "score": round(p.score, 6),
                    "latency_ms": round(r.latency_ms, 3), "fps": round(r.fps, 2), "batch": r.batch,
                    "dropped": r.dropped, "text_cached": r.text_cached}) + "\n")
            if writers or not headless:
                frame = annotate(r.frame, r)
                tiles[position[r.source]] = frame
                if writers and not mosaic_out:
                    writers[position[r.source]].write(frame)
                pending += 1
                if pending >= r.batch:  # the call's last result: one mosaic frame per call
                    pending = 0
                    grid = mosaic(tiles, ids) if (mosaic_out or not headless) else None
                    if mosaic_out and writers:
                        writers[0].write(grid)
                    if not headless and not _show(grid):
                        break
    except KeyboardInterrupt:
        interrupted = True
    finally:
        streams.stop()
        for w in writers:
            w.close()
        if records:
            records.close()
        if not headless:
            _close_windows()
    wall = time.perf_counter() - started
    per_source = streams.summary()
    summary = {"sources": per_source, "policy": policy, "processed": sum(counted.values()),
               "fps": round(sum(counted.values()) / wall, 2) if wall > 0 else 0.0,
               "mean_batch": round(float(np.mean(streams.batch_sizes)), 2) if streams.batch_sizes else None,
               "interrupted": interrupted, "outputs": [str(v) for v in videos]}
    for sid, s in per_source.items():
        say(f"{sid}: {s['processed']} frames, {s['fps']} fps, p50 {s['latency_ms_p50']} ms, p99 "
            f"{s['latency_ms_p99']} ms, dropped {s['dropped']}, reconnects {s['reconnects']}"
            + (f", last event: {s['events'][-1]['event']}" if s["events"] else ""))
    say(json.dumps(summary))
    return summary
