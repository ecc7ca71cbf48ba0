"""The site's Prometheus metrics (prometheus_client): per-source counters and gauges read from the stream's status at
each scrape, latency and batch-size histograms observed once per inference call, and the loaded model as info."""

from __future__ import annotations

from typing import Callable

from fusionrt.runtime.optional import require

__all__ = ["SiteMetrics", "LATENCY_BUCKETS", "BATCH_BUCKETS"]

# seconds: a CPU pair is 5-200 ms, a GPU one 0.5-5 ms; one set of buckets for every instance, so quantiles sum
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0,
                   2.0, 5.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)
_BRANCHES = (("image", "image_ms"), ("text", "text_ms"), ("head", "head_ms"))
_SOURCE_METRICS = (  # (SourceStatus field, kind, name, help), one series per source
    ("received", "counter", "fusionrt_source_frames_received", "Frames a source's reader delivered (stale ones too)"),
    ("processed", "counter", "fusionrt_source_frames_classified", "Frames of a source classified"),
    ("dropped", "counter", "fusionrt_source_frames_dropped", "Stale frames of a source replaced before classified"),
    ("reconnects", "counter", "fusionrt_source_reconnects", "Times a live source was reopened"),
    ("fps", "gauge", "fusionrt_source_fps", "A source's predictions per second over its last few"),
    ("last_frame_age_s", "gauge", "fusionrt_source_last_frame_age_seconds", "Seconds since a source last delivered "
     "a frame"),
    ("ended", "gauge", "fusionrt_source_ended", "1 when a source ended and delivers no more"),
)


class SiteMetrics:
    """`exposition()` is the text format for `/metrics`. `status()` returns the sources' SourceStatus list (empty
    before a stream is attached); `cache()` the text cache (or None)."""

    def __init__(self, model: dict, status: Callable[[], list], cache: Callable[[], object]):
        client = require("prometheus_client", "site metrics")
        self._client = client
        self.registry = client.CollectorRegistry(auto_describe=True)
        self.backend = model["backend"]
        self.call = client.Histogram("fusionrt_inference_seconds", "Model time of one inference call, per branch "
                                     "(image, text, head) and in all (total)", ["backend", "branch"],
                                     buckets=LATENCY_BUCKETS, registry=self.registry)
        self.frame = client.Histogram("fusionrt_frame_latency_seconds", "A frame taken from its source to its "
                                      "prediction ready", ["source"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch = client.Histogram("fusionrt_batch_size", "Frames classified in one inference call",
                                      ["backend"], buckets=BATCH_BUCKETS, registry=self.registry)
        client.Info("fusionrt_model", "The loaded bundle, its backend and precision policy",
                    registry=self.registry).info({k: str(v) for k, v in model.items()})
        self.registry.register(_StreamCollector(require("prometheus_client.core", "site metrics"), status, cache))

    def events_counter(self):
        return self._client.Counter("fusionrt_events", "Events emitted (label changes, score crossings, source "
                                    "events)", ["type"], registry=self.registry)

    def observe(self, results: list, timings: list) -> None:
        """One inference call's results (SourceFrame) and its Timings (one per pipeline call)."""
        for t in timings:
            for branch, field in _BRANCHES:
                value = getattr(t, field)
                if branch != "text" or value > 0:  # a cached text ran no branch: not a 0 ms sample
                    self.call.labels(self.backend, branch).observe(value / 1e3)
            self.call.labels(self.backend, "total").observe((t.branches_ms + t.head_ms) / 1e3)
        if results:
            self.batch.labels(self.backend).observe(results[0].batch)
        for r in results:
            self.frame.labels(r.source).observe(r.latency_ms / 1e3)

    def exposition(self) -> tuple:
        """(body, content type) of the Prometheus text format."""
        return self._client.generate_latest(self.registry), self._client.CONTENT_TYPE_LATEST


class _StreamCollector:
    """Reads the sources' running counts at scrape time: nothing is counted twice, and a stalled source's age rises
    between its frames."""

    def __init__(self, core, status, cache):
        self.core, self.status, self.cache = core, status, cache

    def describe(self):
        return []  # the metric families depend on the sources attached; collected at each scrape

    def collect(self):
        core, sources = self.core, self.status()
        families = {key: getattr(core, f"{kind.title()}MetricFamily")(name, text, labels=["source"])
                    for key, kind, name, text in _SOURCE_METRICS}
        for s in sources:
            for key, family in families.items():
                family.add_metric([s.source], float(getattr(s, key)))
        yield from families.values()
        cache = self.cache()
        if cache is not None:
            yield core.CounterMetricFamily("fusionrt_text_cache_hits", "Texts whose features came from the cache",
                                           value=cache.hits)
            yield core.CounterMetricFamily("fusionrt_text_cache_misses", "Texts that ran the text branch",
                                           value=cache.misses)
