"""The two-branch pipeline: preprocess + tokenize, image and text branches at once, then the fusion head.

One inference path (`infer`): the text cache and a backend's fused device path are options of it, not copies."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from fusionrt.runtime.backends import backend_class
from fusionrt.runtime.bundle import Bundle
from fusionrt.runtime.errors import FusionRTError, InputError
from fusionrt.runtime.execution import Timings
from fusionrt.runtime.manifest import COMPONENTS
from fusionrt.runtime.prediction import Prediction, predictions, softmax
from fusionrt.runtime.preprocess import preprocess_batch
from fusionrt.runtime.selection import select
from fusionrt.runtime.stream import MultiStream, MultiStreamHandle, StreamHandle, stream
from fusionrt.runtime.text_cache import TextFeatureCache
from fusionrt.runtime.tokenize import TextTokenizer

__all__ = ["Pipeline", "Prediction", "Inference", "Timings", "softmax", "TEXT_CACHE"]

TEXT_CACHE = 64  # texts whose features a pipeline keeps (LRU), by default


@dataclass(frozen=True)
class Inference:
    logits: np.ndarray  # (N, classes)
    timings: Timings
    text_cached: bool  # the text branch was skipped: every text's features came from the cache


class Pipeline:
    """Load with `Pipeline.load(bundle)`; use as a context manager, or call `close()`."""

    def __init__(self, bundle: Bundle, backends: Mapping, backend_name: str, precision: Mapping[str, str],
                 tokenizer: TextTokenizer, executor, options, text_cache: int = TEXT_CACHE, concurrent: bool = True,
                 backend_reason: str = "asked for", precision_reason: str = "asked for", tuning=None):
        self.bundle = bundle
        self.manifest = bundle.manifest
        self.labels = self.manifest.labels
        self.backends = dict(backends)
        self.backend_name = backend_name
        self.backend_reason = backend_reason  # why this backend (backend='auto': what was measured, or the order)
        self.precision = dict(precision)
        self.precision_reason = precision_reason  # why these precisions (measured here, calibration's, or asked)
        self.tuning = tuning  # the fusionrt.runtime.tune.Choice that chose them, when one was measured
        self.options = options  # the backend's typed options, as validated at load
        self.tokenizer = tokenizer
        self.text_cache: TextFeatureCache | None = TextFeatureCache(text_cache) if text_cache else None
        self.timings = Timings()  # the last call's (of whichever thread): `infer` returns each call's own
        self.concurrent = concurrent
        self.max_pixels: int | None = None  # the pixel cap of encoded images; None: max_pixels()
        self._executor = executor

    @classmethod
    def load(cls, bundle, backend: str = "auto", precision=None, concurrent: bool = True, text_cache: int = TEXT_CACHE,
             tune: bool = True, max_pixels: int | None = None, **options) -> "Pipeline":
        """Open a bundle directory.

        backend: 'auto' (TensorRT or TensorRT-RTX where they run here with the bundle's engines; else the faster of
            OpenVINO and ONNX Runtime as measured here; `backend_reason` says why) | 'onnxruntime' | 'openvino' |
            'tensorrt' | 'tensorrt_rtx'.
        precision: None (on a CPU backend: the fastest here of the configurations calibration let pass for its target,
            measured once and cached, see `fusionrt.runtime.tune`; on TensorRT: calibration's int8-trt choice), 'fp32' |
            'fp16' | 'int8' for all parts, or a mapping / 'image=int8,text=int8,head=fp32' string per part.
        tune: measure on this machine (False: calibration's choice, and 'auto' takes the first usable backend).
        concurrent: both branches at once (on TensorRT: on two CUDA streams, fused with the head).
        text_cache: how many texts' features `classify*` and `stream` keep (LRU); 0 turns the cache off.
            `logits` never uses it (benchmarks time the text branch).
        max_pixels: an encoded image (path or bytes) larger than this is refused from its header, undecoded
            (default: FUSIONRT_MAX_PIXELS, else `fusionrt.runtime.preprocess.MAX_PIXELS`).
        options: the backend's own, typed and checked (an unknown one is an InputError listing the valid ones):
            onnxruntime: device, providers, threads, spinning, allow_fallback, optimize, verify; openvino: device, threads,
            precision_hint, performance_hint, pinning, verify; tensorrt and tensorrt_rtx: stream (your CUDA stream
            handle: results land on it), cuda_graphs, device, verify.
        """
        bundle = bundle if isinstance(bundle, Bundle) else Bundle.open(bundle)
        chosen = select(bundle, backend, precision, concurrent, tune, options)
        name, backend_cls, opts = chosen.backend, backend_class(chosen.backend), chosen.options
        m = bundle.manifest
        tokenizer = TextTokenizer(bundle.read(m.tokenizer.file, m.tokenizer.sha256, verify=opts.verify),
                                  m.tokenizer.max_seq_len)
        opened, executor = {}, None
        try:
            for comp in COMPONENTS:
                opened[comp] = backend_cls.open(bundle, comp, chosen.precision[comp], opts)
            executor = _executor(backend_cls, opened, m.wiring, opts, concurrent)
            pipeline = cls(bundle, opened, name, chosen.precision, tokenizer, executor, opts, text_cache, concurrent,
                           chosen.backend_reason, chosen.precision_reason, chosen.tuning)
            pipeline.max_pixels = max_pixels
            return pipeline
        except BaseException:
            _close_all([executor, *opened.values()])
            raise

    def clone(self) -> "Pipeline":
        """A second pipeline over the same loaded models, for another thread to run at full speed: ONNX Runtime
        sessions and TensorRT engines are shared, each clone has its own TensorRT contexts, buffers and streams; the
        text cache is shared. Close each clone (closing one leaves the others open)."""
        self._running()
        backends, executor = {}, None
        try:
            for comp, backend in self.backends.items():
                backends[comp] = backend.clone()
            executor = _executor(backend_class(self.backend_name), backends, self.manifest.wiring, self.options,
                                 self.concurrent)
            twin = Pipeline(self.bundle, backends, self.backend_name, self.precision, self.tokenizer, executor,
                            self.options, 0, self.concurrent, self.backend_reason, self.precision_reason, self.tuning)
        except BaseException:
            _close_all([executor, *backends.values()])
            raise
        twin.text_cache, twin.max_pixels = self.text_cache, self.max_pixels
        return twin

    # -- the stages ------------------------------------------------------------------------------
    def prepare(self, images: Sequence, texts: Sequence[str]) -> tuple:
        """Images + texts -> (pixels, tokens), the branch inputs."""
        if isinstance(texts, str):
            raise InputError("classify_batch expects a list of texts, found one str. Wrap it: [text].")
        for what, items in (("images (paths or BGR arrays)", images), ("texts", texts)):
            if not isinstance(items, Sequence) or isinstance(items, (str, bytes)):
                raise InputError(f"expected a list of {what}, found {type(items).__name__}. Wrap one in a list.")
        if len(images) != len(texts):
            raise InputError(f"expected as many texts as images, found {len(images)} images and {len(texts)} texts.")
        return preprocess_batch(images, self.manifest.preprocess, self.max_pixels), self.tokenizer(texts)

    def infer(self, pixels, tokens: Mapping[str, np.ndarray], text_cache: bool = True,
              device_output: bool = False, sync: bool = True) -> Inference:
        """Model time only: prepared inputs -> logits. With `text_cache` (and the pipeline's cache on), the text
        branch runs only when some text's features are not cached. On TensorRT, `pixels` may be a device array
        (`__cuda_array_interface__`: CuPy, torch) and `device_output=True` returns the logits as a DeviceArray
        (the pipeline's buffer, valid until its next call), neither going through the host; with `sync=False` too,
        the call returns without waiting for the GPU: the logits are ready on the head's stream (yours, with
        `stream=`), and the call's timings are not measured."""
        cache = self.text_cache if text_cache else None
        keys = cache.keys(tokens) if cache is not None else None
        known = cache.lookup(keys) if cache is not None else None
        result = self._running().run(pixels, tokens, known, device_output, sync)
        if cache is not None and known is None:
            cache.store(keys, result.text_features)
        self.timings = result.timings
        return Inference(result.logits, result.timings, known is not None)

    def logits(self, pixels: np.ndarray, tokens: Mapping[str, np.ndarray]) -> np.ndarray:
        """(N, classes) logits; always runs both branches (no text cache)."""
        return self.infer(pixels, tokens, text_cache=False).logits

    def cached_logits(self, pixels: np.ndarray, tokens: Mapping[str, np.ndarray]) -> np.ndarray:
        """Like `logits`, but the text branch runs only for texts the cache has not seen."""
        return self.infer(pixels, tokens).logits

    def infer_texts(self, pixels: np.ndarray, texts: Sequence[str]) -> tuple:
        """(logits, which rows' text features came from the cache, each call's Timings) for prepared pixels and raw
        texts: a text the cache lacks runs the text branch once, in a call of its first row; the other rows run on
        cached features. What streams call: a camera's text rarely changes, so its branch rarely runs."""
        cache = self.text_cache
        if cache is None:
            result = self.infer(pixels, self.tokenizer(list(texts)), text_cache=False)
            return result.logits, [False] * len(texts), [result.timings]
        missing = [t for t in dict.fromkeys(texts) if cache.keys(self.tokenizer([t]))[0] not in cache]
        first_rows = sorted(texts.index(t) for t in missing)
        rest = [i for i in range(len(texts)) if i not in first_rows]
        logits = np.empty((len(texts), len(self.labels)), np.float32)
        timings = []
        for rows in (first_rows, rest):
            if rows:
                result = self.infer(pixels[rows], self.tokenizer([texts[i] for i in rows]))
                logits[rows] = result.logits
                timings.append(result.timings)
        return logits, [i not in first_rows for i in range(len(texts))], timings

    # -- the public calls ------------------------------------------------------------------------
    def classify_batch(self, images: Sequence, texts: Sequence[str]) -> list:
        """Images (paths or BGR uint8 arrays) and texts -> one Prediction per pair."""
        start = time.perf_counter()
        pixels, tokens = self.prepare(images, texts)
        prepare_ms = (time.perf_counter() - start) * 1e3
        result = self.infer(pixels, tokens)
        self.timings = dataclasses.replace(result.timings, prepare_ms=prepare_ms)
        return self.predictions(result.logits)

    def classify(self, image, text: str) -> Prediction:
        return self.classify_batch([image], [text])[0]

    def predictions(self, logits: np.ndarray) -> list:
        return predictions(self.labels, logits)

    def stream(self, frames, text, policy: str = "latest", queue_size: int = 2):
        """Predictions over `frames` (BGR arrays or image paths) as a generator of FramePrediction: a stream of one
        source (`fusionrt.runtime.stream`). `text` is a str or a callable returning the current text."""
        return stream(self, frames, text, policy, queue_size)

    def start_stream(self, frames, text, on_prediction, policy: str = "latest", queue_size: int = 2):
        """The callback form of `stream`: runs on a thread, calls `on_prediction(FramePrediction)`; returns a
        StreamHandle (stop(), join(), a context manager)."""
        return StreamHandle.of_one(self, frames, text, on_prediction, policy, queue_size)

    def stream_many(self, sources, text, policy: str = "latest", max_batch: int | None = None,
                    max_wait_ms: float = 10.0, queue_size: int = 2, backoff_s: tuple = (0.5, 8.0),
                    max_reconnects: int | None = None, on_event=None, monitor=None) -> MultiStream:
        """Many sources batched into one call per round: iterate the result for SourceFrame (source id, frame index,
        prediction, latency, drops); `.summary()` per source. `sources`: a list or a mapping id -> source (camera
        index, video file, stream URL, an iterable of frames, or a callable that opens one: reopened when it ends).
        `text`: one str for all, a mapping source id -> str, or a callable(source_id) -> str. See
        `fusionrt.runtime.stream`. A live source that fails is reopened after backoff_s[0] seconds, doubling up to
        backoff_s[1]; after `max_reconnects` reopenings in a row that did not stay up backoff_s[1] it is removed
        (None: for ever). `on_event(source_id, {"t", "event"})` hears each source event as it happens. `monitor`: a
        `fusionrt.runtime.stream.StreamMonitor` (e.g. `fusionrt.monitor.Site`: metrics, health, events, clips, a live
        view) that hears each call's results and reads the sources' status."""
        self._running()
        return MultiStream(self, sources, text, policy, max_batch, max_wait_ms, queue_size, backoff_s, max_reconnects,
                           on_event=on_event, monitor=monitor)

    def start_stream_many(self, sources, text, on_result, **options) -> MultiStreamHandle:
        """The callback form of `stream_many`: runs on a thread, calls `on_result(SourceFrame)`; returns a handle
        (stop(), join() -> the summary, a context manager)."""
        return MultiStreamHandle(self.stream_many(sources, text, **options), on_result)

    @property
    def closed(self) -> bool:
        return self._executor is None

    def _running(self):
        if self._executor is None:
            raise InputError("this Pipeline is closed: its models and buffers are released. Load the bundle again "
                             "(Pipeline.load), or call it inside its `with` block.")
        return self._executor

    def close(self) -> None:
        """Close the executor and every backend; all are closed even when one raises (the first error is raised)."""
        executor, self._executor = self._executor, None
        backends, self.backends = list(self.backends.values()), {}
        _close_all([executor, *backends])

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _executor(backend_cls, backends: Mapping, wiring, options, concurrent: bool):
    """What runs a call: the backend's own executor (`Backend.executor`)."""
    return backend_cls.executor(backends, wiring, options, concurrent)


def _close_all(resources) -> None:
    """Close every resource, even when some raise; then raise: the one error, or one naming them all."""
    errors = []
    for resource in resources:
        if resource is None:
            continue
        try:
            resource.close()
        except Exception as exc:  # keep closing the rest
            errors.append(exc)
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise FusionRTError(f"closing failed {len(errors)} times: " + "; ".join(f"{type(e).__name__}: {e}"
                                                                                for e in errors)) from errors[0]
