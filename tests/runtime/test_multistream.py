"""Pipeline.stream_many: frames of many sources batched into one call, each result back to its own source.

The tiny bundle's labels are colours, so sources of different colours are sources of known, different content."""

import threading
import time

import cv2
import numpy as np
import pytest

from fusionrt.data.dataset import LabeledDataset
from fusionrt.runtime.errors import InputError
from fusionrt.runtime.pipeline import Pipeline


@pytest.fixture(scope="module")
def pipe(tiny_bundle):
    with Pipeline.load(tiny_bundle, backend="onnxruntime") as p:
        yield p


@pytest.fixture(scope="module")
def frames_by_colour(shape_data):
    out = {}
    for s in LabeledDataset.read(shape_data[0]):
        out.setdefault(s.label, []).append(cv2.imread(str(s.image)))
    return out


def _expected(pipe, frame, text):
    return pipe.classify(frame, text)


def test_every_result_carries_its_own_source_and_frame(pipe, frames_by_colour):
    sources = {colour: frames[:6] for colour, frames in frames_by_colour.items()}
    seen = {}
    with pipe.stream_many(sources, "a shape", policy="all", max_wait_ms=20) as streams:
        for r in streams:
            assert (r.source, r.index) not in seen
            seen[(r.source, r.index)] = r
    assert set(seen) == {(c, i) for c in sources for i in range(6)}
    for (colour, index), r in seen.items():
        want = _expected(pipe, sources[colour][index], "a shape")
        assert r.prediction.label == want.label
        np.testing.assert_allclose(r.prediction.probs, want.probs, atol=1e-5)
        assert r.frame is sources[colour][index]
    assert max(r.batch for r in seen.values()) > 1  # frames of several sources did share calls
    summary = streams.summary()
    assert all(summary[c]["processed"] == 6 and summary[c]["ended"] for c in sources)


def test_per_source_texts_reach_their_frames(pipe, frames_by_colour):
    frames = frames_by_colour["red"][:4]
    texts = {"left": "a red circle", "right": "a square on a dark background"}
    results = list(pipe.stream_many({"left": frames, "right": frames}, texts, policy="all"))
    assert len(results) == 8
    for r in results:
        want = _expected(pipe, frames[r.index], texts[r.source])
        np.testing.assert_allclose(r.prediction.probs, want.probs, atol=1e-5)
    by_callable = list(pipe.stream_many({"left": frames, "right": frames}, lambda sid: texts[sid], policy="all"))
    assert sorted((r.source, r.index, r.prediction.label) for r in by_callable) == \
        sorted((r.source, r.index, r.prediction.label) for r in results)
    with pytest.raises(InputError, match=r"missing \['right'\]"):
        pipe.stream_many({"left": frames, "right": frames}, {"left": "x"})


class Stalled:
    """A source whose read blocks after its first frame (a camera whose network went quiet)."""

    def __init__(self, frame):
        self.frame, self.release = frame, threading.Event()

    def __iter__(self):
        yield self.frame
        self.release.wait(60)


def test_a_stalled_source_does_not_delay_the_others_beyond_max_wait(pipe, frames_by_colour):
    stalled = Stalled(frames_by_colour["blue"][0])
    fast = frames_by_colour["red"][:10]
    started = time.perf_counter()
    results = []
    try:
        with pipe.stream_many({"stalled": stalled, "fast": fast}, "a shape", policy="all", max_wait_ms=100) as s:
            for r in s:
                results.append(r)
                if sum(x.source == "fast" for x in results) == len(fast):
                    break
    finally:
        stalled.release.set()
    fast_results = [r for r in results if r.source == "fast"]
    assert [r.index for r in fast_results] == list(range(len(fast)))
    # each fast frame waited at most max_wait for the stalled source (plus the tiny model's call), never its 60 s
    assert max(r.latency_ms for r in fast_results) < 100 + 1500
    assert time.perf_counter() - started < 20


def test_a_source_that_ends_or_fails_is_removed_and_reported_and_the_rest_go_on(pipe, frames_by_colour):
    red = [f for frames in frames_by_colour.values() for f in frames]  # 27 frames

    def failing():
        yield red[0]
        yield red[1]
        raise OSError("camera unplugged")

    with pipe.stream_many({"short": red[:3], "failing": failing(), "long": red[:12]}, "a shape", policy="all") as s:
        results = list(s)
    summary = s.summary()
    assert sum(r.source == "long" for r in results) == 12
    assert summary["short"]["processed"] == 3 and summary["short"]["ended"]
    assert summary["short"]["events"][-1]["event"] == "ended after 3 frames; removed"
    assert summary["failing"]["processed"] == 2
    assert "failed after 2 frames: OSError('camera unplugged')" in summary["failing"]["events"][-1]["event"]


def test_a_live_source_reconnects_with_backoff(pipe, frames_by_colour):
    red = [f for frames in frames_by_colour.values() for f in frames]
    opened = []

    def camera():  # a callable source is live: it is opened again when its frames stop
        opened.append(time.perf_counter())
        yield from red[:2]
        raise OSError("stream reset")

    with pipe.stream_many({"cam": camera, "file": red[:2]}, "a shape", policy="all", backoff_s=(0.05, 0.1),
                          max_reconnects=3) as s:
        results = list(s)
    summary = s.summary()["cam"]
    assert summary["reconnects"] == 3 and len(opened) == 4 and summary["processed"] == 8
    assert [e["event"].split("; ")[1] for e in summary["events"]] == \
        ["reconnecting in 0.05 s", "reconnecting in 0.1 s", "reconnecting in 0.1 s", "removed after 3 reconnects in a row"]
    assert opened[1] - opened[0] >= 0.05 and opened[2] - opened[1] >= 0.1
    assert [r.index for r in results if r.source == "cam"] == list(range(8))  # indices count on across reconnects


def test_batches_never_exceed_the_profile_maximum(pipe, frames_by_colour, monkeypatch):
    limit = pipe.manifest.profile.batch[2]
    red = frames_by_colour["red"][:3]
    sizes = []
    infer = pipe.infer
    monkeypatch.setattr(pipe, "infer", lambda pixels, tokens, **kw: sizes.append(len(pixels)) or infer(pixels, tokens, **kw))
    sources = {f"cam{i}": red for i in range(6)}
    results = list(pipe.stream_many(sources, "a shape", policy="all", max_batch=4, max_wait_ms=50))
    assert len(results) == 18 and max(sizes) <= 4 and max(r.batch for r in results) <= 4
    assert sum(sizes) == 18
    with pytest.raises(InputError, match="profile maximum"):
        pipe.stream_many(sources, "a shape", max_batch=limit + 1)


def test_the_text_branch_runs_only_for_texts_the_cache_lacks(tiny_bundle, frames_by_colour, monkeypatch):
    with Pipeline.load(tiny_bundle, backend="onnxruntime") as fresh:
        rows = []
        text_backend = fresh.backends["text_encoder"]
        infer = text_backend._infer
        monkeypatch.setattr(text_backend, "_infer", lambda feeds: rows.append(len(feeds["input_ids"])) or infer(feeds))
        red = frames_by_colour["red"][:5]
        texts = {"a": "a red circle", "b": "a red circle", "c": "a red square", "d": "a red square"}
        results = list(fresh.stream_many({k: red for k in texts}, texts, policy="all"))
    assert len(results) == 20
    assert sum(rows) == 2  # two distinct texts: one text-branch row each, whatever the batches
    assert sum(not r.text_cached for r in results) == 2


def test_callback_form_runs_on_a_thread_and_joins_with_the_summary(pipe, frames_by_colour):
    seen, caller = [], threading.get_ident()
    red = frames_by_colour["red"][:4]

    def on_result(r):
        seen.append((r.source, r.index, threading.get_ident()))

    with pipe.start_stream_many({"a": red, "b": red}, "a shape", on_result, policy="all") as handle:
        summary = handle.join(30)
    assert not handle.running and sorted(s[:2] for s in seen) == [(k, i) for k in "ab" for i in range(4)]
    assert all(t != caller for *_, t in seen) and summary["a"]["processed"] == summary["b"]["processed"] == 4


def test_stopping_over_many_stalled_sources_waits_once_not_once_per_source(pipe, frames_by_colour):
    from fusionrt.runtime.stream import READER_JOIN_S

    stalled = [Stalled(frames_by_colour["blue"][0]) for _ in range(6)]
    try:
        streams = pipe.stream_many({f"s{i}": s for i, s in enumerate(stalled)}, "a shape", max_wait_ms=10)
        results = iter(streams)
        next(results)
        started = time.perf_counter()
        results.close()  # the consumer leaves: every reader is stopped
        assert time.perf_counter() - started < READER_JOIN_S + 1.0
    finally:
        for s in stalled:
            s.release.set()


def test_the_backoff_grows_for_a_source_whose_open_takes_longer_than_the_longest_wait(pipe, frames_by_colour):
    """An RTSP open times out after 10 s, longer than the 8 s cap: that is an outage, not an uptime, so the wait
    grows (it was reset to the shortest on every try) and max_reconnects counts the tries in a row."""
    opens, heard = [], []

    def dead_camera():  # its open fails after longer than backoff_s[1]
        opens.append(time.perf_counter())
        time.sleep(0.12)
        raise OSError("open timed out")

    with pipe.stream_many({"dead": dead_camera, "file": frames_by_colour["red"][:2]}, "a shape", policy="all",
                          backoff_s=(0.02, 0.1), max_reconnects=3, on_event=lambda sid, e: heard.append((sid, e))) as s:
        list(s)
    events = [e["event"].split("; ")[1] for e in s.summary()["dead"]["events"]]
    assert events == ["reconnecting in 0.02 s", "reconnecting in 0.04 s", "reconnecting in 0.08 s",
                      "removed after 3 reconnects in a row"]
    assert len(opens) == 4
    assert [e for sid, e in heard if sid == "dead"] == s.summary()["dead"]["events"]  # heard as they happened


def test_a_source_that_stays_up_starts_a_new_outage(pipe, frames_by_colour):
    """max_reconnects bounds an outage, not a day: a camera that came back for a while may fail again later."""
    red = frames_by_colour["red"]
    runs = []

    def flaky():  # up for longer than backoff_s[1], then down
        runs.append(len(runs))
        for frame in red[:3]:
            time.sleep(0.05)
            yield frame
        raise OSError("stream reset")

    with pipe.stream_many({"cam": flaky}, "a shape", policy="all", backoff_s=(0.01, 0.1), max_reconnects=1) as s:
        for r in s:
            if r.processed >= 12:
                break
    summary = s.summary()["cam"]
    assert summary["reconnects"] >= 3  # more than max_reconnects in all, each after an uptime
    assert all(e["event"].endswith("reconnecting in 0.01 s") for e in summary["events"])


def test_the_first_call_rotates_over_sources_when_they_outnumber_max_batch(pipe, frames_by_colour):
    """Three sources, calls of two: the one left for the second call (the later result) is each source in turn."""
    red = frames_by_colour["red"][:1] * 6
    sources = {"a": red, "b": red, "c": red}
    results = list(pipe.stream_many(sources, "a shape", policy="all", max_batch=2, max_wait_ms=2000))
    assert len(results) == 18
    alone = [r.source for r in results if r.batch == 1]
    assert len(alone) == 6 and all(alone.count(k) == 2 for k in sources), alone


def test_bad_reconnect_settings_are_refused(pipe, frames_by_colour):
    red = frames_by_colour["red"][:1]
    with pytest.raises(InputError, match="max_reconnects: expected None"):
        pipe.stream_many({"a": red}, "a shape", max_reconnects=-1)
    with pytest.raises(InputError, match="backoff_s: expected"):
        pipe.stream_many({"a": red}, "a shape", backoff_s=(2.0, 1.0))
