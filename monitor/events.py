"""Events from a source's predictions: a label change or a score crossing a threshold, each counted only once it held
for `debounce` frames in a row (one odd frame is not an event), and a per-source state; JSONL sink for sites without
a broker. The schema (as the README documents it):

    {"id": hex, "type": "label_change" | "score_above" | "score_below" | "source",
     "source": id, "time": unix seconds, "frame": index, "label": str, "score": float,
     "previous": the label before (label_change), "threshold": float (score_*), "detail": str (source),
     "video_time": seconds into a file source, "clip": the clip's path (with --clips), else null}
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from fusionrt.runtime.errors import InputError

__all__ = ["EventDetector", "JsonlSink", "event_record", "state_record"]


def event_record(kind: str, source: str, **fields) -> dict:
    record = {"id": uuid.uuid4().hex, "type": kind, "source": source, "time": round(time.time(), 3)}
    record.update(fields)
    return record


def state_record(result) -> dict:
    """A source's retained state: what it shows now (published as it classifies a frame: never stale then)."""
    return {"source": result.source, "label": result.prediction.label, "score": round(result.prediction.score, 4),
            "fps": round(result.fps, 2), "frame": result.index, "time": round(time.time(), 3), "stale": False}


@dataclass
class _Debounced:
    """A value that changes only after the same new value was seen `need` times in a row."""

    value: object = None
    candidate: object = None
    streak: int = 0

    def see(self, value, need: int):
        """The previous value when `value` just became the held one (None: no change, or the first value held)."""
        if value == self.value:
            self.candidate, self.streak = None, 0
            return None
        self.streak = self.streak + 1 if value == self.candidate else 1
        self.candidate = value
        if self.streak < need:
            return None
        previous, self.value, self.candidate, self.streak = self.value, value, None, 0
        return (previous,) if previous is not None else None


class EventDetector:
    """`update(result)` -> the events this SourceFrame completes (usually none). The first label a source holds is
    its state, not an event."""

    def __init__(self, debounce: int = 3, score_threshold: float | None = None):
        if type(debounce) is not int or debounce < 1:
            raise InputError(f"debounce: expected a frame count >= 1, found {debounce!r}.")
        if score_threshold is not None and not 0.0 < score_threshold < 1.0:
            raise InputError(f"score threshold: expected a probability between 0 and 1, found {score_threshold!r}.")
        self.debounce, self.threshold = debounce, score_threshold
        self._labels: dict = {}
        self._above: dict = {}
        self._lock = threading.Lock()

    def update(self, result) -> list:
        p, sid = result.prediction, result.source
        common = {"frame": result.index, "label": p.label, "score": round(p.score, 4)}
        out = []
        with self._lock:
            changed = self._labels.setdefault(sid, _Debounced()).see(p.label, self.debounce)
            if changed:
                out.append(event_record("label_change", sid, previous=changed[0], **common))
            if self.threshold is not None:
                crossed = self._above.setdefault(sid, _Debounced()).see(p.score >= self.threshold, self.debounce)
                if crossed:
                    kind = "score_above" if p.score >= self.threshold else "score_below"
                    out.append(event_record(kind, sid, threshold=self.threshold, **common))
        return out


class JsonlSink:
    """One JSON line per event, appended and flushed as it comes (a crash loses none that were written)."""

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise InputError(f"--events {self.path}: its folder does not exist; create it or choose another path.")
        self._file = open(self.path, "a", encoding="utf-8")
        self._lock = threading.Lock()

    def event(self, record: dict) -> None:
        with self._lock:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()

    def state(self, record: dict) -> None:
        pass  # a file keeps the events; the state is the latest of them

    def close(self) -> None:
        with self._lock:
            self._file.close()
