"""Streaming over frames for camera apps: decode/preprocess of frame N+1 overlaps inference of frame N, and
a late answer is worth less than a dropped frame.

Policies (never an unbounded queue):
- "latest": one slot; a new frame replaces a waiting one, which is dropped and counted (live cameras).
- "all": a bounded queue; the reader waits when it is full, so every frame is classified (video files)."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from fusionrt.runtime.errors import InputError
from fusionrt.runtime.prediction import Prediction
from fusionrt.runtime.preprocess import load_image, preprocess_batch

__all__ = ["POLICIES", "FramePrediction", "Mailbox", "rate", "stream", "StreamHandle"]

POLICIES = ("latest", "all")
READER_JOIN_S = 1.0  # how long closing a stream waits for a reader blocked in its source
_FPS_WINDOW = 30  # predictions the fps figure averages over


@dataclass(frozen=True)
class FramePrediction:
    index: int  # the frame's position in the source
    frame: np.ndarray = field(repr=False)  # BGR, for overlays
    prediction: Prediction
    latency_ms: float  # frame taken from the source -> prediction ready
    fps: float  # predictions per second over the last few
    processed: int  # frames classified so far, this one included
    dropped: int  # stale frames dropped so far
    text_cached: bool  # the text branch was skipped: the text's features were cached


def rate(times) -> float:
    """Events per second over `times` (perf_counter stamps, oldest first); 0 until two are apart."""
    span = times[-1] - times[0] if len(times) > 1 else 0.0
    return (len(times) - 1) / span if span > 0 else 0.0


class Mailbox:
    """Hands frames from a reader thread to the consumer under a policy. `on_put` (optional) is called after each
    put and at close: a batcher over many mailboxes waits on one condition instead of polling each."""

    def __init__(self, policy: str, size: int, stop: threading.Event, on_put: Callable[[], None] | None = None):
        self.capacity = 1 if policy == "latest" else size
        self.policy, self.stop = policy, stop
        self.items: deque = deque()
        self.dropped = 0
        self.closed = False
        self.error: BaseException | None = None
        self.cond = threading.Condition()
        self._on_put = on_put or (lambda: None)

    def put(self, item) -> None:
        with self.cond:
            if self.policy == "latest":
                while len(self.items) >= self.capacity:
                    self.items.popleft()
                    self.dropped += 1
            else:
                while len(self.items) >= self.capacity and not self.stop.is_set():
                    self.cond.wait(0.1)
            self.items.append(item)
            self.cond.notify_all()
        self._on_put()

    def take(self):
        """The next item without waiting, or None when there is none now."""
        with self.cond:
            if not self.items:
                return None
            item = self.items.popleft()
            self.cond.notify_all()
            return item

    @property
    def finished(self) -> bool:
        """Closed and emptied: the reader will put nothing more."""
        with self.cond:
            return self.closed and not self.items

    def get(self):
        """The next item, or None at the end of the source (or on stop)."""
        with self.cond:
            while not self.items and not self.closed and not self.stop.is_set():
                self.cond.wait(0.1)
            if self.error is not None:
                raise self.error
            if self.stop.is_set() or not self.items:
                return None
            item = self.items.popleft()
            self.cond.notify_all()
            return item

    def close(self, error: BaseException | None = None) -> None:
        with self.cond:
            self.closed, self.error = True, error
            self.cond.notify_all()
        self._on_put()


def _read(frames: Iterable, spec, box: Mailbox) -> None:
    try:
        for index, frame in enumerate(frames):
            if box.stop.is_set():
                break
            taken = time.perf_counter()
            image = load_image(frame) if isinstance(frame, (str, Path)) else frame
            box.put((index, image, preprocess_batch([image], spec), taken))
        box.close()
    except BaseException as exc:  # handed to the consumer, raised there
        box.close(exc)


def stream(pipeline, frames: Iterable, text: str | Callable[[], str], policy: str = "latest", queue_size: int = 2,
           stop: threading.Event | None = None) -> Iterator[FramePrediction]:
    """Classify each frame with `text` (a str, or a callable giving the current text); see the module doc."""
    if policy not in POLICIES:
        raise InputError(f"stream policy '{policy}' unknown: expected one of {POLICIES}.")
    if queue_size < 1:
        raise InputError(f"queue_size must be >= 1, found {queue_size}.")
    current_text = text if callable(text) else (lambda: text)
    stop = stop or threading.Event()
    box = Mailbox(policy, queue_size, stop)
    reader = threading.Thread(target=_read, args=(frames, pipeline.manifest.preprocess, box), name="fusionrt-frames",
                              daemon=True)
    reader.start()
    done: deque = deque(maxlen=_FPS_WINDOW)
    tokens_for, processed = {}, 0
    try:
        while (item := box.get()) is not None:
            index, image, pixels, taken = item
            words = current_text()
            if not isinstance(words, str) or not words.strip():
                raise InputError(f"the stream's text must be a non-empty str, found {words!r}.")
            if words not in tokens_for:  # tokenized once per distinct text
                tokens_for.clear()
                tokens_for[words] = pipeline.tokenizer([words])
            result = pipeline.infer(pixels, tokens_for[words])
            now = time.perf_counter()
            done.append(now)
            processed += 1
            fps = rate(done)
            yield FramePrediction(index, image, pipeline.predictions(result.logits)[0], (now - taken) * 1e3, fps,
                                  processed, box.dropped, result.text_cached)
    finally:
        # The reader may be blocked in the source's read (a stalled camera): a bounded wait, then go on; it leaves
        # at its next frame. VideoSource.close() does not release a capture under a read in flight.
        stop.set()
        reader.join(timeout=READER_JOIN_S)


class StreamHandle:
    """Runs a stream on a thread and hands each FramePrediction to `on_prediction`."""

    def __init__(self, pipeline, frames, text, on_prediction: Callable, policy: str = "latest", queue_size: int = 2):
        stop = threading.Event()
        self._begin(stream(pipeline, frames, text, policy, queue_size, stop), stop.set, on_prediction)

    def _begin(self, results: Iterator, stop: Callable[[], None], on_result: Callable) -> None:
        """Hand each of `results` (a generator) to `on_result` on a thread; `stop()` ends the results early."""
        self._results, self._stop = results, stop
        self.error: BaseException | None = None
        self.last = None
        self._thread = threading.Thread(target=self._run, args=(on_result,), name="fusionrt-stream", daemon=True)
        self._thread.start()

    def _run(self, on_result) -> None:
        try:
            for result in self._results:
                self.last = result
                on_result(result)
        except BaseException as exc:  # kept for join() to raise in the caller's thread
            self.error = exc
        finally:
            self._results.close()

    def stop(self) -> None:
        self._stop()

    def join(self, timeout: float | None = None) -> FramePrediction | None:
        """Wait for the end of the source (or stop()); raises what the stream raised; returns the last result."""
        self._thread.join(timeout)
        if self.error is not None:
            raise self.error
        return self.last

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
        self.join()
