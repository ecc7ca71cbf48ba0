"""Streaming, one engine for one camera or many: frames batched across sources into one inference call (what
DeepStream's nvstreammux does), for a single camera app, surveillance boxes with 4-16 cameras and cars with 6-8
surround cameras. A single source (`Pipeline.stream`) is a stream of one.

One reader thread per source decodes and preprocesses into a mailbox ("latest": one slot, a stale frame is dropped
and counted; "all": a bounded queue, for files). The batcher takes the newest frame of every source that has one,
waits at most `max_wait_ms` after the first for the others, and runs one call per `max_batch` frames. A slow or
stalled source is simply not in the batch; a live source (camera index, RTSP/HTTP URL, or a callable that opens
one) that ends or fails is reopened with exponential backoff; a file or iterable that ends is removed and the rest
go on (a single `stream`'s source raises instead). Every such event is in the per-source summary. The text branch
runs only for texts the cache does not hold (`Pipeline.infer_texts`). Decoding and preprocessing of the next frames
overlap inference of the current ones.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping, Protocol

import numpy as np

from fusionrt.runtime.errors import FusionRTError, InputError
from fusionrt.runtime.mailbox import POLICIES, READER_JOIN_S, Mailbox, rate
from fusionrt.runtime.prediction import Prediction
from fusionrt.runtime.preprocess import load_image, preprocess_batch

__all__ = ["SourceFrame", "FramePrediction", "SourceStatus", "StreamMonitor", "MultiStream", "StreamHandle",
           "MultiStreamHandle", "source_ids", "stream"]

_LATENCY_WINDOW = 2000  # latencies each source keeps for its summary percentiles
_FPS_WINDOW = 30  # predictions a source's fps figure averages over


@dataclass(frozen=True)
class SourceFrame:
    source: str  # the source's id
    index: int  # the frame's position in its source (counting on across reconnects)
    frame: np.ndarray = field(repr=False)  # BGR, for overlays
    prediction: Prediction
    latency_ms: float  # frame taken from its source -> prediction ready
    fps: float  # this source's predictions per second over its last few
    batch: int  # frames classified in the same call
    processed: int  # this source's frames classified so far, this one included
    dropped: int  # this source's stale frames dropped so far
    text_cached: bool  # this frame's text features came from the cache


FramePrediction = SourceFrame  # what `Pipeline.stream` yields: the same record, for its one source


@dataclass(frozen=True)
class SourceStatus:
    """A source's running account, read while the stream runs (a site's metrics and health)."""

    source: str
    kind: str  # "live", "file" or "frames"
    received: int  # frames its reader delivered (stale ones included)
    processed: int  # frames classified
    dropped: int  # stale frames replaced before they were classified
    reconnects: int
    fps: float  # predictions per second over its last few
    last_frame_age_s: float  # seconds since its reader delivered a frame (since the stream started, before one)
    ended: bool  # its reader is done and will deliver nothing more


class StreamMonitor(Protocol):
    """What `Pipeline.stream_many(monitor=...)` reports to (fusionrt.monitor.Site is one): `attach` once when the
    stream starts, `observe` once per inference call with its results and the call's timings (one per pipeline call;
    two when a new text ran its branch in a call of its own), `detach` when the stream ends. Called on the stream's
    thread, so each must return at once."""

    def attach(self, stream: "MultiStream") -> None: ...

    def observe(self, results: list, timings: list) -> None: ...

    def source_event(self, source_id: str, event: dict) -> None: ...  # a reconnect or removal, as `on_event` hears it

    def detach(self, stream: "MultiStream") -> None: ...


def source_ids(sources) -> dict:
    """id -> source: a mapping's keys; for a list, the source itself (a camera index, path or URL) or 'source-N',
    made unique."""
    if isinstance(sources, Mapping):
        items = [(str(k), v) for k, v in sources.items()]
    elif isinstance(sources, (str, bytes)) or not hasattr(sources, "__iter__"):
        raise InputError(f"sources: expected a list or a mapping of sources, found {type(sources).__name__}.")
    else:
        items = [(str(s) if isinstance(s, (str, int, Path)) else f"source-{i}", s) for i, s in enumerate(sources)]
    out: dict = {}
    for i, (key, source) in enumerate(items):
        out[key if key not in out else f"{key}#{i}"] = source
    if not out:
        raise InputError("sources: expected at least one source, found none.")
    return out


class _Feed:
    """One source: its reader thread, mailbox and running account."""

    def __init__(self, sid: str, source, spec, policy: str, queue_size: int, stop: threading.Event, on_put,
                 backoff_s: tuple, max_reconnects: int | None, raise_errors: bool = False, pixel_cap=None,
                 on_event: Callable | None = None):
        from fusionrt.runtime.video import is_live

        self.id, self.source, self.spec, self.stop = sid, source, spec, stop
        self.live = callable(source) or (isinstance(source, (str, int)) and is_live(str(source)))
        self.source_kind = "live" if self.live else ("file" if isinstance(source, (str, Path)) else "frames")
        self.box = Mailbox(policy, queue_size, stop, on_put)
        self.backoff_s, self.max_reconnects, self.raise_errors = backoff_s, max_reconnects, raise_errors
        self.pixel_cap, self.on_event = pixel_cap, on_event
        self.events: list = []
        self.reconnects = self.processed = 0
        self.latencies: deque = deque(maxlen=_LATENCY_WINDOW)
        self.recent: deque = deque(maxlen=_FPS_WINDOW)  # when its last few predictions were ready
        self.first_at = self.last_at = None
        self.next_index = 0
        self.received_at: float | None = None  # monotonic time of its reader's last frame
        self.thread = threading.Thread(target=self._run, name=f"fusionrt-source-{sid}", daemon=True)

    def _event(self, what: str) -> None:
        event = {"t": round(time.time(), 3), "event": what}
        self.events.append(event)
        if self.on_event is not None:
            self.on_event(self.id, event)

    def _open(self):
        if callable(self.source):
            return self.source(), None
        if isinstance(self.source, (str, int, Path)):
            from fusionrt.runtime.video import VideoSource

            video = VideoSource(str(self.source))
            return video, video
        return self.source, None

    def _run(self) -> None:
        try:
            self._read()
        except BaseException as exc:  # not the source's failure (those are events): handed to the consumer
            self.box.close(exc)
        else:
            self.box.close()

    def _read(self) -> None:
        delay, outage = self.backoff_s[0], 0  # outage: reconnects in a row that did not stay up
        while not self.stop.is_set():
            frames = closer = opened_at = None
            read = 0
            try:
                frames, closer = self._open()
                opened_at = time.monotonic()  # after the open: one that times out is an outage, not an uptime
                for frame in frames:
                    if self.stop.is_set():
                        break
                    taken = time.perf_counter()
                    image = load_image(frame, self.pixel_cap) if isinstance(frame, (str, Path)) else frame
                    self.box.put((self.next_index, image, preprocess_batch([image], self.spec), taken))
                    self.next_index += 1
                    self.received_at = time.monotonic()
                    read += 1
                outcome = f"ended after {read} frames"
            except Exception as exc:  # noqa: BLE001 - a failing source is an event of its own; the others go on
                if self.raise_errors and not self.live:
                    raise  # a stream of one: its consumer gets the error
                outcome = f"failed after {read} frames: {exc if isinstance(exc, FusionRTError) else repr(exc)}"
            finally:
                if closer is not None:
                    closer.close()
            if self.stop.is_set():
                break
            if read and time.monotonic() - opened_at >= self.backoff_s[1]:
                delay, outage = self.backoff_s[0], 0  # it stayed up a while: a new outage starts from the shortest wait
            if not self.live or (self.max_reconnects is not None and outage >= self.max_reconnects):
                self._event(f"{outcome}; removed" + (f" after {outage} reconnects in a row" if self.live else ""))
                break
            self._event(f"{outcome}; reconnecting in {delay:g} s")
            if self.stop.wait(delay):
                break
            self.reconnects += 1
            outage += 1
            delay = min(delay * 2, self.backoff_s[1])

    def status(self, started_at: float) -> SourceStatus:
        age = time.monotonic() - (self.received_at if self.received_at is not None else started_at)
        recent, now = list(self.recent), time.perf_counter()
        fps = rate(recent)
        if fps and now - recent[-1] > 2 / fps:  # silent for two of its intervals: the rate falls, up to now
            fps = (len(recent) - 1) / (now - recent[0])
        return SourceStatus(self.id, self.source_kind, self.next_index, self.processed, self.box.dropped,
                            self.reconnects, fps, age, self.box.finished)

    def summary(self) -> dict:
        seconds = (self.last_at - self.first_at) if self.first_at is not None else 0.0
        lat = np.asarray(self.latencies) if self.latencies else None
        return {"kind": self.source_kind, "processed": self.processed, "dropped": self.box.dropped,
                "fps": round((self.processed - 1) / seconds, 2) if seconds > 0 else 0.0,
                "latency_ms_p50": round(float(np.percentile(lat, 50)), 2) if lat is not None else None,
                "latency_ms_p99": round(float(np.percentile(lat, 99)), 2) if lat is not None else None,
                "reconnects": self.reconnects, "ended": self.box.finished, "events": list(self.events)}


class MultiStream:
    """Iterate for SourceFrame results; `summary()` per source; `stop()`; a context manager (stops and joins)."""

    def __init__(self, pipeline, sources, text, policy: str = "latest", max_batch: int | None = None,
                 max_wait_ms: float = 10.0, queue_size: int = 2, backoff_s: tuple = (0.5, 8.0),
                 max_reconnects: int | None = None, raise_errors: bool = False, on_event: Callable | None = None,
                 monitor: StreamMonitor | None = None):
        if policy not in POLICIES:
            raise InputError(f"stream policy '{policy}' unknown: expected one of {POLICIES}.")
        limit = pipeline.manifest.profile.batch[2]
        max_batch = limit if max_batch is None else max_batch
        if type(max_batch) is not int or not 1 <= max_batch <= limit:
            raise InputError(f"max_batch: expected 1..{limit} (the bundle's profile maximum batch), found {max_batch!r}.")
        if max_wait_ms < 0 or queue_size < 1:
            raise InputError(f"max_wait_ms must be >= 0 and queue_size >= 1, found {max_wait_ms} and {queue_size}.")
        self.pipeline, self.max_batch, self.max_wait_s = pipeline, max_batch, max_wait_ms / 1e3
        self._ids = source_ids(sources)
        self._text = _text_for(text, self._ids)
        self._stop = threading.Event()
        self._arrived = threading.Condition()
        if max_reconnects is not None and (type(max_reconnects) is not int or max_reconnects < 0):
            raise InputError(f"max_reconnects: expected None (for ever) or a count >= 0, found {max_reconnects!r}.")
        if len(backoff_s) != 2 or not 0 < backoff_s[0] <= backoff_s[1]:
            raise InputError(f"backoff_s: expected (shortest, longest) waits with 0 < shortest <= longest, found "
                             f"{backoff_s!r}.")
        hear = _both(on_event, monitor.source_event if monitor is not None else None)
        self._feeds = [_Feed(sid, src, pipeline.manifest.preprocess, policy, queue_size, self._stop, self._notify,
                             backoff_s, max_reconnects, raise_errors, getattr(pipeline, "max_pixels", None), hear)
                       for sid, src in self._ids.items()]
        self._turn = 0
        self.batch_sizes: list = []  # frames in each call
        self._started = False
        self.started_at = time.monotonic()
        self.monitor = monitor

    def _notify(self) -> None:
        with self._arrived:
            self._arrived.notify_all()

    def __iter__(self) -> Iterator[SourceFrame]:
        if self._started:
            raise InputError("a MultiStream runs once: call Pipeline.stream_many again for another run.")
        self._started = True
        self.started_at = time.monotonic()
        if self.monitor is not None:
            self.monitor.attach(self)
        for feed in self._feeds:
            feed.thread.start()
        try:
            while (batch := self._next_batch()) is not None:
                for start in range(0, len(batch), self.max_batch):
                    yield from self._classify(batch[start:start + self.max_batch])
        finally:
            self.stop()
            if self.monitor is not None:
                self.monitor.detach(self)

    def _next_batch(self) -> list | None:
        """(feed, item) for every source with a frame: after the first one is ready, up to max_wait for the rest."""
        with self._arrived:
            while True:
                if self._stop.is_set():
                    return None
                ready = [f for f in self._feeds if f.box.items]
                for feed in self._feeds:
                    if feed.box.error is not None:
                        raise feed.box.error
                if ready:
                    break
                if all(f.box.finished for f in self._feeds):
                    return None
                self._arrived.wait(0.1)
            deadline = time.perf_counter() + self.max_wait_s
            while not self._stop.is_set():
                waiting = [f for f in self._feeds if not f.box.items and not f.box.finished]
                left = deadline - time.perf_counter()
                if not waiting or left <= 0:
                    break
                self._arrived.wait(left)
        # rotate who comes first, so that with more sources than max_batch the same ones do not always wait
        order = self._feeds[self._turn:] + self._feeds[:self._turn]
        self._turn = (self._turn + 1) % len(self._feeds)
        return [(f, item) for f in order if (item := f.box.take()) is not None]

    def _classify(self, batch: list):
        texts = []
        for feed, _ in batch:
            words = self._text(feed.id)
            if not isinstance(words, str) or not words.strip():
                raise InputError(f"source '{feed.id}': its text must be a non-empty str, found {words!r}.")
            texts.append(words)
        pixels = np.concatenate([item[2] for _, item in batch])
        logits, cached, timings = self.pipeline.infer_texts(pixels, texts)
        self.batch_sizes.append(len(batch))
        now = time.perf_counter()
        results = []
        for (feed, (index, image, _, taken)), prediction, hit in zip(batch, self.pipeline.predictions(logits), cached):
            feed.processed += 1
            feed.first_at = feed.first_at if feed.first_at is not None else now
            feed.last_at = now
            latency = (now - taken) * 1e3
            feed.latencies.append(latency)
            feed.recent.append(now)
            results.append(SourceFrame(feed.id, index, image, prediction, latency, rate(feed.recent), len(batch),
                                       feed.processed, feed.box.dropped, hit))
        if self.monitor is not None:
            self.monitor.observe(results, timings)
        yield from results

    def status(self) -> list:
        """Each source's SourceStatus now: safe to call from another thread while the stream runs."""
        return [feed.status(self.started_at) for feed in self._feeds]

    @property
    def source_ids(self) -> list:
        return [feed.id for feed in self._feeds]

    def source_of(self, sid: str):
        """What source `sid` reads (a path, URL, camera index, iterable or callable)."""
        return self._ids[sid]

    def summary(self) -> dict:
        """Per source: kind, processed, dropped, fps, latency p50/p99, reconnects, ended, events."""
        return {feed.id: feed.summary() for feed in self._feeds}

    def stop(self) -> None:
        """Stop the readers (each leaves at its next frame; a stalled one is waited for a bounded time, once)."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._notify()
        deadline = time.monotonic() + READER_JOIN_S  # one bounded wait for all, however many sources stalled
        for feed in self._feeds:
            if feed.thread.is_alive():
                feed.thread.join(timeout=max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> "MultiStream":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _both(first: Callable | None, second: Callable | None) -> Callable | None:
    if first is None or second is None:
        return first or second

    def both(*args):
        first(*args)
        second(*args)
    return both


def _text_for(text, ids: dict) -> Callable[[str], str]:
    if isinstance(text, str):
        return lambda sid: text
    if isinstance(text, Mapping):
        keyed = {str(k): v for k, v in text.items()}
        missing = sorted(set(ids) - set(keyed))
        if missing:
            raise InputError(f"text: a mapping needs a text for every source; missing {missing} (sources: "
                             f"{sorted(ids)}).")
        return keyed.__getitem__
    if callable(text):
        return text
    raise InputError(f"text: expected a str, a mapping source id -> str, or a callable(source_id) -> str, found "
                     f"{type(text).__name__}.")


def stream(pipeline, frames, text, policy: str = "latest", queue_size: int = 2):
    """A stream of one source: each frame of `frames` (BGR arrays or image paths; a VideoSource) classified with
    `text` (a str, or a callable giving the current text); SourceFrame results (`FramePrediction`). An error reading
    the frames is raised here. A generator: close it (or leave the loop) to stop its reader."""
    streams = _one(pipeline, frames, text, policy, queue_size)
    with streams:
        yield from streams


def _one(pipeline, frames, text, policy: str, queue_size: int) -> MultiStream:
    texts = (lambda _: text()) if callable(text) else text
    return MultiStream(pipeline, [frames], texts, policy, max_batch=1, max_wait_ms=0, queue_size=queue_size,
                       raise_errors=True)


class StreamHandle:
    """Runs a stream on a thread and hands each result to `on_result`; `join()` returns the last result."""

    def __init__(self, multistream: MultiStream, on_result: Callable):
        self.stream = multistream
        self.error: BaseException | None = None
        self.last = None
        self._results = iter(multistream)
        self._thread = threading.Thread(target=self._run, args=(on_result,), name="fusionrt-stream", daemon=True)
        self._thread.start()

    @classmethod
    def of_one(cls, pipeline, frames, text, on_result: Callable, policy: str = "latest", queue_size: int = 2):
        """The callback form of `stream`."""
        return cls(_one(pipeline, frames, text, policy, queue_size), on_result)

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
        self.stream.stop()

    def join(self, timeout: float | None = None):
        """Wait for the end of the sources (or stop()); raises what the stream raised; returns the last result."""
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


class MultiStreamHandle(StreamHandle):
    """A StreamHandle whose `join()` returns the per-source summary."""

    def join(self, timeout: float | None = None) -> dict:
        """Wait for every source to end (or stop()); raises what the stream raised; returns the summary."""
        super().join(timeout)
        return self.stream.summary()
