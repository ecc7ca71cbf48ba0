"""One Pipeline shared by many threads gives what the same calls give one by one; `clone()` gives another thread its
own pipeline over the same loaded models."""

import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from fusionrt.runtime.errors import BackendUnavailable

from fusionrt.data.dataset import LabeledDataset
from fusionrt.runtime.pipeline import Pipeline
from tests.hardware import needs_rtx

THREADS, CALLS = 8, 24


def _jobs(samples, count, seed=0):
    rng = np.random.default_rng(seed)
    images, texts = [s.image for s in samples], [s.text for s in samples]
    jobs = []
    for _ in range(count):
        idx = rng.choice(len(images), size=int(rng.integers(1, 4)), replace=False)
        # texts made distinct per call, so a 3-entry text cache keeps evicting while other threads read it
        jobs.append(([images[i] for i in idx], [f"{texts[i]} {int(rng.integers(0, 12))}" for i in idx]))
        if len(jobs) % 4 == 1:
            jobs.append(jobs[-1])  # the same texts again at once: a hit, one by one
    return jobs


def _run_all(pipe_for, jobs):
    """Every job's probabilities, from THREADS threads released together; `pipe_for(worker)` is the pipeline a thread
    uses. Asserts that calls of different threads did run at the same time (else this tests nothing)."""
    start = threading.Barrier(THREADS)
    spans = []  # (began, ended, worker) of every call

    def work(worker):
        pipe = pipe_for(worker)
        start.wait()
        out = []
        for i in range(worker, len(jobs), THREADS):
            began = time.perf_counter()
            out.append((i, [p.probs for p in pipe.classify_batch(*jobs[i])]))
            spans.append((began, time.perf_counter(), worker))
        return out

    with ThreadPoolExecutor(THREADS) as pool:
        done = [r for part in pool.map(work, range(THREADS)) for r in part]
    assert _overlapping(spans) > 0, "no two threads' calls overlapped"
    return [probs for _, probs in sorted(done, key=lambda r: r[0])]


def _overlapping(spans) -> int:
    """How many calls began while a call of another thread was still running."""
    spans = sorted(spans)
    return sum(any(b0 < a1 and wb != wa for a0, a1, wa in spans[:i]) for i, (b0, _, wb) in enumerate(spans))


def _same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_allclose(np.stack(x), np.stack(y), rtol=0, atol=1e-6)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_one_pipeline_from_eight_threads_gives_the_sequential_results(tiny_bundle, shape_data, backend):
    samples = LabeledDataset.read(shape_data[1])
    jobs = _jobs(samples, THREADS * CALLS)
    with Pipeline.load(tiny_bundle, backend=backend, text_cache=3) as pipe:
        sequential = [[p.probs for p in pipe.classify_batch(*job)] for job in jobs]
        assert pipe.text_cache.hits > 0 and pipe.text_cache.misses > 0
        pipe.text_cache.clear()
        threaded = _run_all(lambda worker: pipe, jobs)
        distinct = len({t for _, texts in jobs for t in texts})
        # filled and evicted while threads read it: a 3-entry cache misses every distinct text at least once
        assert len(pipe.text_cache) == 3 and pipe.text_cache.misses >= distinct > 3
    _same(threaded, sequential)


def test_clones_share_the_sessions_and_close_on_their_own(tiny_bundle, shape_data):
    samples = LabeledDataset.read(shape_data[1])
    jobs = _jobs(samples, 4 * THREADS, seed=1)
    with Pipeline.load(tiny_bundle, backend="onnxruntime") as pipe:
        clones = [pipe.clone() for _ in range(THREADS)]
        assert all(c.backends["image_encoder"].session is pipe.backends["image_encoder"].session for c in clones)
        sequential = [[p.probs for p in pipe.classify_batch(*job)] for job in jobs]
        _same(_run_all(lambda worker: clones[worker], jobs), sequential)
        for clone in clones:
            clone.close()
        _same([[p.probs for p in pipe.classify_batch(*job)] for job in jobs[:3]], sequential[:3])  # still open


@needs_rtx
def test_tensorrt_from_threads_one_pipeline_and_clones(built, calibrated, monkeypatch, tmp_path):
    """On the emulated GPU: calls from many threads into one TensorRT pipeline are serialized (one context, one set
    of buffers); clones get their own context, buffers and stream on the same engine."""
    from tests.runtime.trt_emulation import emulate_tensorrt

    from fusionrt.engines.build import build_engines
    from tests.conftest import RTX_CC

    bundle = tmp_path / "bundle"
    shutil.copytree(built[0], bundle)
    build_engines(bundle, "tensorrt_rtx", "fp32", compute_capability=RTX_CC, contexts=THREADS + 1)  # a profile each
    gpu = emulate_tensorrt(monkeypatch, bundle)
    jobs = _jobs(LabeledDataset.read(calibrated[3]), 4 * THREADS, seed=2)
    with Pipeline.load(bundle, backend="onnxruntime", precision="fp32") as ref:
        expected = [[p.probs for p in ref.classify_batch(*job)] for job in jobs]
    with Pipeline.load(bundle, backend="tensorrt_rtx", precision="fp32", cuda_graphs=True) as pipe:
        _same(_run_all(lambda worker: pipe, jobs), expected)
        clone = pipe.clone()
        image, twin = pipe.backends["image_encoder"], clone.backends["image_encoder"]
        assert twin.engine is image.engine and twin.context is not image.context
        assert twin.io.device_address("pixel_values") != image.io.device_address("pixel_values")
        assert twin.stream.handle != image.stream.handle
        clones = [clone] + [pipe.clone() for _ in range(THREADS - 1)]
        _same(_run_all(lambda worker: clones[worker], jobs), expected)
        with pytest.raises(BackendUnavailable, match=r"optimization profile\(s\), all in use.*--contexts"):
            pipe.clone()  # TensorRT runs one context per profile at once: one more is refused, clearly
        for c in clones:
            c.close()
        _same([[p.probs for p in pipe.classify_batch(*job)] for job in jobs[:2]], expected[:2])
    assert not gpu.open
