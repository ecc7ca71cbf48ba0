"""Resources: a failed load closes what it opened; close() closes everything and reports every error; loading and
closing pipelines again and again does not grow memory; a stream over a stalled source shuts down cleanly, and the
capture is never released under a read in flight."""

import threading
import time

import numpy as np
import pytest

from fusionrt.runtime.backends.onnxruntime import OnnxRuntimeBackend
from fusionrt.runtime.errors import BackendUnavailable, FusionRTError
from fusionrt.runtime.pipeline import Pipeline


def test_a_failed_load_closes_what_it_opened(tiny_bundle, monkeypatch):
    opened, real_open = [], OnnxRuntimeBackend.open.__func__

    def open_or_fail(cls, bundle, component, precision, options):
        if component == "fusion_head":
            raise BackendUnavailable("the head did not load (test)")
        opened.append(real_open(cls, bundle, component, precision, options))
        return opened[-1]

    monkeypatch.setattr(OnnxRuntimeBackend, "open", classmethod(open_or_fail))
    with pytest.raises(BackendUnavailable, match="the head did not load"):
        Pipeline.load(tiny_bundle, backend="onnxruntime", tune=False)
    assert len(opened) == 2 and all(b.session is None and b._closed for b in opened)


def test_close_closes_everything_and_reports_every_error(tiny_bundle):
    pipe = Pipeline.load(tiny_bundle, backend="onnxruntime")
    image, text, head = (pipe.backends[c] for c in ("image_encoder", "text_encoder", "fusion_head"))

    def failing(backend, what):
        real = backend.close

        def close():
            real()
            raise RuntimeError(what)
        return close

    image.close, text.close = failing(image, "image close failed"), failing(text, "text close failed")
    with pytest.raises(FusionRTError, match="closing failed 2 times: RuntimeError: image close failed; "
                                            "RuntimeError: text close failed"):
        pipe.close()
    assert image.session is None and text.session is None and head.session is None and head._closed


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:")) / 1024


def test_loading_and_closing_200_pipelines_keeps_memory_bounded(tiny_bundle):
    frame = np.zeros((32, 32, 3), np.uint8)

    def cycle():
        with Pipeline.load(tiny_bundle, backend="onnxruntime") as pipe:
            pipe.classify(frame, "a red circle")

    for _ in range(20):  # allocator pools and lazy imports settle first
        cycle()
    before = _rss_mb()
    for _ in range(200):
        cycle()
    growth = _rss_mb() - before
    assert growth < 20, f"200 load/close cycles grew memory by {growth:.1f} MB (bound 20 MB; 0.9 MB measured)"
    assert not [t for t in threading.enumerate() if t.name.startswith("fusionrt-image")]  # every pool shut down


class StalledSource:
    """Two frames, then a read that blocks until `release` is set (a camera that stopped sending)."""

    def __init__(self):
        self.release, self.reading = threading.Event(), threading.Event()

    def __iter__(self):
        for _ in range(2):
            yield np.full((24, 24, 3), 128, np.uint8)
        self.reading.set()
        self.release.wait(30)


def test_a_stream_over_a_stalled_source_shuts_down_cleanly(tiny_bundle):
    from fusionrt.runtime.stream import READER_JOIN_S

    source = StalledSource()
    with Pipeline.load(tiny_bundle, backend="onnxruntime") as pipe:
        results = pipe.stream(source, "a grey square", policy="all")
        first = [next(results), next(results)]
        assert [r.index for r in first] == [0, 1]
        assert source.reading.wait(10)
        started = time.perf_counter()
        results.close()  # the reader is blocked in the source: close must not hang on it
        assert time.perf_counter() - started < READER_JOIN_S + 1.0
    source.release.set()  # the source wakes up: the reader sees the stop and leaves
    deadline = time.time() + 10
    while [t for t in threading.enumerate() if t.name == "fusionrt-frames"] and time.time() < deadline:
        time.sleep(0.05)
    assert not [t for t in threading.enumerate() if t.name == "fusionrt-frames"]


class BlockingCapture:
    """A stand-in for cv2.VideoCapture whose second read blocks until `unblock`; it records a release made while a
    read is in flight (what crashes a real capture)."""

    def __init__(self, *args):
        self.unblock, self.in_read, self.reads = threading.Event(), threading.Event(), 0
        self.released = self.released_during_read = False

    def isOpened(self):
        return True

    def get(self, prop):
        return 25.0

    def read(self):
        self.reads += 1
        if self.reads == 2:
            self.in_read.set()
            self.unblock.wait(30)
            self.in_read.clear()
        return True, np.zeros((8, 8, 3), np.uint8)

    def release(self):
        self.released_during_read |= self.in_read.is_set()
        self.released = True


def test_video_source_is_never_released_under_a_read_in_flight(tmp_path, monkeypatch):
    import cv2

    from fusionrt.runtime.video import VideoSource

    (tmp_path / "v.mp4").write_bytes(b"stand-in")
    monkeypatch.setattr(cv2, "VideoCapture", BlockingCapture)
    source = VideoSource(str(tmp_path / "v.mp4"))
    capture, frames = source.capture, iter(source)
    next(frames)
    reader = threading.Thread(target=lambda: next(frames, None))
    reader.start()
    assert capture.in_read.wait(10)
    source.close(timeout_s=0.2)  # the read is still blocked: close returns without releasing
    assert not capture.released
    capture.unblock.set()
    reader.join(10)
    assert capture.released and not capture.released_during_read  # the reader released it after its read
