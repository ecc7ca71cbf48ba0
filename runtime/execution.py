"""How one call runs the three components: an `Executor`. `BranchExecutor` is the generic one (ONNX Runtime, and any
backend run with concurrent=False): the image branch on a worker thread while the text branch runs on the caller's,
or one after the other, then the head. A backend with a better way gives its own (`Backend.executor`): OpenVINO runs
the image branch as an asynchronous request; TensorRT runs both branches on CUDA streams and the head on the device
(`TensorRTFusion`). Each call returns its own `Timings`, measured by the executor, so figures of concurrent calls
never mix."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from fusionrt.runtime.errors import InputError
from fusionrt.runtime.wiring import Wiring
from fusionrt.runtime.manifest import FUSION_HEAD, IMAGE_ENCODER, TEXT_ENCODER

__all__ = ["Timings", "Result", "Executor", "BranchExecutor", "host_results_only"]


def host_results_only(device_output: bool, sync: bool, who: str) -> None:
    """InputError for device results asked of an executor that gives host arrays."""
    if device_output or not sync:
        raise InputError(f"device_output=True (and sync=False): expected a backend that runs on the GPU (tensorrt, "
                         f"tensorrt_rtx); {who} returns host arrays.")


@dataclass
class Timings:
    """Milliseconds spent in each stage of one call."""

    prepare_ms: float = 0.0  # preprocess + tokenize (classify calls; 0 for prepared inputs)
    image_ms: float = 0.0
    text_ms: float = 0.0  # 0 when the text's features were given (the pipeline's text cache)
    branches_ms: float = 0.0  # wall time of both branches together (< image + text when concurrent)
    head_ms: float = 0.0


@dataclass(frozen=True)
class Result:
    logits: np.ndarray  # (N, classes); the caller owns it
    text_features: np.ndarray  # what the head got from the text side: the text branch's output, or the given ones
    timings: Timings


class Executor:
    """What runs one call of a pipeline: both branches (the text one only without `text_features`), then the head."""

    def run(self, pixels, tokens: Mapping[str, np.ndarray], text_features: np.ndarray | None = None,
            device_output: bool = False, sync: bool = True) -> Result:
        """Logits for prepared inputs. device_output / sync=False: on a GPU, results left there (see TensorRTFusion);
        host executors refuse them."""
        raise NotImplementedError

    def close(self) -> None:
        """Free what the executor owns (not the backends: the pipeline closes those)."""


def _timed(backend, feeds: Mapping[str, np.ndarray], output: str) -> tuple:
    start = time.perf_counter()
    value = backend.infer(feeds)[output]
    return value, (time.perf_counter() - start) * 1e3


class BranchExecutor(Executor):
    """Both encoders (at once when `concurrent`), then the head, each through its backend's checked `infer`."""

    def __init__(self, backends: Mapping, wiring: Wiring, concurrent: bool = True):
        self.image, self.text, self.head = (backends[c] for c in (IMAGE_ENCODER, TEXT_ENCODER, FUSION_HEAD))
        self.wiring = wiring
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fusionrt-image") if concurrent else None

    def run(self, pixels: np.ndarray, tokens: Mapping[str, np.ndarray], text_features: np.ndarray | None = None,
            device_output: bool = False, sync: bool = True) -> Result:
        """Logits for prepared inputs; with `text_features` given, the text branch does not run."""
        host_results_only(device_output, sync, "this backend")
        w, timings = self.wiring, Timings()
        image_feeds = {w.image_input: pixels}
        start = time.perf_counter()
        if text_features is not None:
            image_features, timings.image_ms = _timed(self.image, image_feeds, w.image_output)
        elif self._pool is not None:
            future = self._pool.submit(_timed, self.image, image_feeds, w.image_output)
            text_features, timings.text_ms = _timed(self.text, w.text_feeds(tokens), w.text_output)
            image_features, timings.image_ms = future.result()
        else:
            image_features, timings.image_ms = _timed(self.image, image_feeds, w.image_output)
            text_features, timings.text_ms = _timed(self.text, w.text_feeds(tokens), w.text_output)
        timings.branches_ms = (time.perf_counter() - start) * 1e3
        features = {w.image_output: image_features, w.text_output: text_features}
        logits, timings.head_ms = _timed(self.head, {n: features[n] for n in w.head_inputs}, w.logits)
        return Result(logits, text_features, timings)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
