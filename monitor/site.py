"""A site around one pipeline's streams: `Pipeline.stream_many(..., monitor=site)` reports each call to it, and it
serves metrics, health, the live view, events (MQTT and/or JSONL) and clips. Everything slow runs on threads of its
own (the HTTP server, paho's network loop, the clip cutter); what the frame loop calls only records and hands off."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

from fusionrt.monitor.events import EventDetector, JsonlSink, event_record, state_record
from fusionrt.runtime.errors import InputError
from fusionrt.runtime.precision import format_precision

__all__ = ["Site", "SiteOptions"]

STALE_AFTER_S = 5.0  # a source without a frame for this long is stale: /readyz says 503 and names it


@dataclass(frozen=True)
class SiteOptions:
    serve: str | None = None  # HOST:PORT of the HTTP server (port 0: a free one); None: no server
    mqtt: str | None = None  # HOST:PORT of an MQTT broker
    topic: str = "fusionrt"  # the MQTT topic prefix
    events: str | Path | None = None  # a JSONL file the events are appended to
    clips: str | Path | None = None  # a folder for clips around events (file and network-stream sources)
    pre_s: float = 3.0
    post_s: float = 5.0
    clips_max_mb: float = 500.0
    debounce: int = 3  # frames a new label (or side of the threshold) must hold before it is an event
    score_threshold: float | None = None  # also an event when a source's top score crosses this
    stale_after_s: float = STALE_AFTER_S
    view_fps: float = 5.0  # the most frames per second the live view sends a viewer, per tile (each costs a JPEG)


class Site:
    """A StreamMonitor (fusionrt.runtime.stream) with a server; a context manager. One stream at a time."""

    def __init__(self, pipeline, options: SiteOptions = SiteOptions()):
        from fusionrt.monitor.live import LiveView
        from fusionrt.monitor.metrics import SiteMetrics

        if options.stale_after_s <= 0 or options.view_fps <= 0:
            raise InputError(f"stale_after_s and view_fps: expected > 0, found {options.stale_after_s} and "
                             f"{options.view_fps}.")
        self.pipeline, self.options, self.view_fps = pipeline, options, options.view_fps
        self.model = {"bundle": Path(pipeline.bundle.root).name, "backend": pipeline.backend_name,
                      "precision": format_precision(pipeline.precision), "reason": pipeline.precision_reason[:200]}
        self.stream = self._ended = None
        self._files: dict = {}  # file source -> (its path, its frame rate), read at attach
        self._rings: dict = {}  # live stream source -> its StreamRing (with clips)
        self._lock = threading.Lock()
        self.live = LiveView()
        self.metrics = SiteMetrics(self.model, self._status, lambda: pipeline.text_cache)
        self.detector = EventDetector(options.debounce, options.score_threshold)
        self.sinks: list = []
        self.clips = self.server = None
        self.errors: list = []  # what failed off the frame loop (a clip, a sink), newest last
        self._events = self.metrics.events_counter()
        try:
            self._open_outputs(options)
        except BaseException:
            self.close()
            raise

    def _open_outputs(self, options: SiteOptions) -> None:
        if options.events:
            self.sinks.append(JsonlSink(options.events))
        if options.mqtt:
            from fusionrt.monitor.mqtt import MqttSink

            self.sinks.append(MqttSink(options.mqtt, options.topic))
        if options.clips:
            from fusionrt.monitor.clips import ClipRecorder

            self.clips = ClipRecorder(options.clips, options.pre_s, options.post_s, options.clips_max_mb,
                                      on_error=self._failed)
        if options.serve:
            from fusionrt.monitor.address import parse_address
            from fusionrt.monitor.server import SiteServer

            self.server = SiteServer(self, *parse_address(options.serve, "--serve", 8080))

    @property
    def url(self) -> str | None:
        return self.server.url if self.server is not None else None

    def _failed(self, message: str) -> None:
        self.errors = (self.errors + [message])[-20:]

    # -- the StreamMonitor calls (on the frame loop's thread) -------------------------------------
    def attach(self, stream) -> None:
        with self._lock:
            if self.stream is not None:
                raise InputError("a Site watches one stream at a time: this one already watches another.")
            self.stream = stream
        from fusionrt.runtime.video import VideoSource

        self._files = {}  # read now, before the first frame, not at the first event
        for sid in stream.source_ids:
            if (path := _file(stream.source_of(sid))) is not None:
                with VideoSource(str(path)) as video:
                    self._files[sid] = (path, video.fps)
                if self.clips is not None:
                    self.clips.keyframes(path)
            elif self.clips is not None and sid not in self._rings and (url := _stream_url(stream.source_of(sid))):
                self._rings[sid] = self.clips.ring(url, sid)  # a second reader keeps the stream's recent past

    def detach(self, stream) -> None:
        """The ended stream's sources stay on view (and unready); another stream may be attached."""
        with self._lock:
            self._ended, self.stream = stream, None

    def observe(self, results: list, timings: list) -> None:
        self.metrics.observe(results, timings)
        self.live.update(results)
        for r in results:
            found = self.detector.update(r)
            for event in found:
                self._emit(event, r)
            if found or r.processed == 1 or r.processed % 100 == 0:
                self._state(r)

    def source_event(self, source_id: str, event: dict) -> None:
        self._emit(event_record("source", source_id, detail=event["event"]), None)

    # -- events ----------------------------------------------------------------------------------
    def _emit(self, record: dict, result) -> None:
        path, fps = self._files.get(record["source"], (None, None)) if result is not None else (None, None)
        record["video_time"] = round(result.index / fps, 3) if fps else None
        record["clip"] = None
        ring = self._rings.get(record["source"])
        if fps and self.clips is not None:
            record["clip"] = str(self.clips.request(path, record["source"], result.index / fps, record["type"]))
        elif ring is not None and result is not None:
            taken = time.time() - result.latency_ms / 1e3  # when the event's frame arrived, as the ring saw it too
            record["clip"] = str(self.clips.request_live(ring, record["source"], taken, record["type"]))
        self._events.labels(record["type"]).inc()
        for sink in self.sinks:
            sink.event(record)

    def _state(self, result) -> None:
        record = state_record(result)
        for sink in self.sinks:
            sink.state(record)

    # -- what the server reads --------------------------------------------------------------------
    def _shown(self):
        """The stream on view: the running one, else the last that ended."""
        return self.stream if self.stream is not None else self._ended

    def _status(self) -> list:
        stream = self._shown()
        return stream.status() if stream is not None else []

    def source_ids(self) -> list:
        stream = self._shown()
        return stream.source_ids if stream is not None else []

    def readiness(self) -> tuple:
        """(ready, reasons): the bundle is loaded and every source delivered a frame within stale_after_s."""
        if self.pipeline.closed:
            return False, ["the pipeline is closed"]
        status = self._status()
        if not status:
            return False, ["no stream is running"]
        reasons = [f"source {s.source}: " + ("ended" if s.ended else
                                             f"no frame for {s.last_frame_age_s:.1f} s" if s.received else
                                             f"no frame yet after {s.last_frame_age_s:.1f} s")
                   for s in status if s.ended or s.last_frame_age_s > self.options.stale_after_s]
        return not reasons, reasons

    def snapshot(self) -> dict:
        """What /api/state returns: the model, readiness, each source's latest prediction and counts, a summary."""
        ready, reasons = self.readiness()
        sources = []
        for s in self._status():
            latest = self.live.latest(s.source)
            stale = s.ended or s.last_frame_age_s > self.options.stale_after_s
            sources.append({"source": s.source, "kind": s.kind, "label": latest[1] if latest else None,
                            "score": round(latest[2], 4) if latest else None, "fps": round(s.fps, 2),
                            "last_frame_age_s": round(s.last_frame_age_s, 3), "stale": stale,
                            "received": s.received, "processed": s.processed, "dropped": s.dropped,
                            "reconnects": s.reconnects, "ended": s.ended})
        cache = self.pipeline.text_cache
        p50, p99 = self.live.latency_p(50), self.live.latency_p(99)
        return {"model": self.model, "ready": ready, "reasons": reasons, "sources": sources,
                "summary": {"fps": round(sum(s["fps"] for s in sources), 2),
                            "latency_ms_p50": round(p50, 2) if p50 is not None else None,
                            "latency_ms_p99": round(p99, 2) if p99 is not None else None,
                            "text_cache": {"hits": cache.hits, "misses": cache.misses} if cache else None,
                            "errors": list(self.errors)}}

    # -- lifetime ----------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the server, finish the queued clips, close the sinks (MQTT says offline)."""
        for part in [self.server, self.clips, *self.sinks]:
            if part is not None:
                try:
                    part.close()
                except Exception as exc:  # noqa: BLE001 - close the rest
                    self._failed(f"closing {type(part).__name__}: {exc}")
        self.server = self.clips = None
        self.sinks = []

    def __enter__(self) -> "Site":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _file(source):
    return source if isinstance(source, (str, Path)) and Path(source).is_file() else None


def _stream_url(source) -> str | None:
    """A network stream another reader can open too (not a local camera, which one process holds)."""
    from fusionrt.runtime.video import is_live

    text = str(source) if isinstance(source, (str, Path)) else ""
    return text if text and is_live(text) and not text.isdigit() else None
