import threading
import time

import numpy as np
import pytest

from fusionrt.data.dataset import LabeledDataset
from fusionrt.runtime.errors import InputError
from fusionrt.runtime.pipeline import Pipeline
from fusionrt.runtime.preprocess import load_image
from fusionrt.runtime.text_cache import TextFeatureCache


@pytest.fixture(scope="module")
def frames(shape_data):
    return [load_image(s.image) for s in LabeledDataset.read(shape_data[1])]


def test_cache_is_lru_and_ignores_padding():
    cache = TextFeatureCache(size=2)
    short = {"input_ids": np.array([[101, 7, 102, 0]]), "attention_mask": np.array([[1, 1, 1, 0]])}
    unpadded = {"input_ids": np.array([[101, 7, 102]]), "attention_mask": np.array([[1, 1, 1]])}
    assert cache.keys(short) == cache.keys(unpadded)
    assert cache.lookup(cache.keys(short)) is None and cache.misses == 1
    cache.store([b"a", b"b"], np.eye(2, dtype=np.float32))
    assert cache.lookup([b"a"]).tolist() == [[1.0, 0.0]]  # "a" is now the most recent
    cache.store([b"c"], np.ones((1, 2), np.float32))
    assert cache.lookup([b"b"]) is None and cache.lookup([b"a", b"c"]) is not None and len(cache) == 2
    with pytest.raises(ValueError, match="text_cache=0"):
        TextFeatureCache(0)


def test_cached_text_skips_the_branch_and_gives_the_same_answer(tiny_bundle, frames):
    with Pipeline.load(tiny_bundle, text_cache=0) as plain, Pipeline.load(tiny_bundle) as cached:
        first = cached.classify(frames[0], "a red circle")
        assert cached.timings.text_ms > 0
        again = cached.classify(frames[1], "a red circle")
        assert cached.timings.text_ms == 0.0 and cached.text_cache.hits == 1
        for frame, result in ((frames[0], first), (frames[1], again)):
            reference = plain.classify(frame, "a red circle")
            assert result.label == reference.label
            np.testing.assert_allclose(result.probs, reference.probs, atol=1e-5)
        assert plain.text_cache is None


def test_stream_all_classifies_every_frame_in_order(tiny_bundle, frames):
    with Pipeline.load(tiny_bundle) as pipe:
        results = list(pipe.stream(frames, "a shape", policy="all"))
        assert [r.index for r in results] == list(range(len(frames)))
        assert results[-1].processed == len(frames) and results[-1].dropped == 0
        assert not results[0].text_cached and all(r.text_cached for r in results[1:])
        assert all(r.latency_ms > 0 for r in results) and results[-1].fps > 0
        for frame, result in zip(frames, results):
            assert result.prediction.label == pipe.classify(frame, "a shape").label
            assert result.frame is frame


def test_latest_policy_drops_stale_frames_and_counts_them(tiny_bundle, frames):
    many = [frames[i % len(frames)] for i in range(60)]
    with Pipeline.load(tiny_bundle) as pipe:
        results = []
        for r in pipe.stream(many, "a shape", policy="latest"):
            results.append(r)
            time.sleep(0.02)  # a consumer slower than the source
    last = results[-1]
    assert last.dropped > 0 and last.processed + last.dropped == len(many)
    indexes = [r.index for r in results]
    assert indexes == sorted(set(indexes)) and indexes[-1] == len(many) - 1  # the newest frame is never lost


def test_text_can_change_during_a_stream(tiny_bundle, frames):
    texts = iter(["a red circle"] * 3 + ["a blue square"] * 3)
    with Pipeline.load(tiny_bundle) as pipe:
        results = list(pipe.stream(frames[:6], lambda: next(texts), policy="all"))
    assert [r.text_cached for r in results] == [False, True, True, False, True, True]


def test_stream_errors_are_clear(tiny_bundle, frames, tmp_path):
    with Pipeline.load(tiny_bundle) as pipe:
        with pytest.raises(InputError, match="policy 'newest' unknown"):
            next(pipe.stream(frames, "x", policy="newest"))
        with pytest.raises(InputError, match="non-empty str"):
            list(pipe.stream(frames[:2], "  ", policy="all"))
        with pytest.raises(InputError, match="missing.png"):  # raised by the reader thread, surfaced here
            list(pipe.stream([frames[0], tmp_path / "missing.png"], "x", policy="all"))


def test_callback_form_runs_on_a_thread_and_stops(tiny_bundle, frames):
    endless = (frames[i % len(frames)] for i in iter(int, 1))  # a source that never ends, like a camera
    seen, enough = [], threading.Event()

    def on_prediction(result):
        seen.append(result.index)
        if len(seen) >= 5:
            enough.set()

    with Pipeline.load(tiny_bundle) as pipe:
        handle = pipe.start_stream(endless, "a shape", on_prediction)
        assert enough.wait(30)
        handle.stop()
        last = handle.join(10)
        assert not handle.running and last is not None and last.index == seen[-1]
