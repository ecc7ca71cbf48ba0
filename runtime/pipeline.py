"""The two-branch pipeline: preprocess + tokenize, image and text branches at once, then the fusion head."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from fusionrt.runtime.backends import backend_module, resolve_backend
from fusionrt.runtime.bundle import Bundle
from fusionrt.runtime.errors import InputError
from fusionrt.runtime.manifest import COMPONENTS
from fusionrt.runtime.precision import parse_precision
from fusionrt.runtime.preprocess import preprocess_batch
from fusionrt.runtime.text_cache import TextFeatureCache
from fusionrt.runtime.tokenize import TextTokenizer

__all__ = ["Pipeline", "Prediction", "Timings"]


@dataclass(frozen=True)
class Prediction:
    label: str
    index: int
    score: float
    probs: np.ndarray = field(repr=False)

    def to_dict(self, labels: Sequence[str]) -> dict:
        return {"label": self.label, "index": self.index, "score": self.score,
                "probs": {name: float(p) for name, p in zip(labels, self.probs)}}


@dataclass
class Timings:
    """Milliseconds spent in each stage of the last call."""

    preprocess_ms: float = 0.0
    tokenize_ms: float = 0.0
    image_ms: float = 0.0
    text_ms: float = 0.0
    branches_ms: float = 0.0  # wall time of both branches together (< image + text when concurrent)
    head_ms: float = 0.0


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


class Pipeline:
    """Load with `Pipeline.load(bundle)`; use as a context manager, or call `close()`."""

    def __init__(self, bundle: Bundle, backends: Mapping, backend_name: str, precision: Mapping[str, str],
                 concurrent: bool = True):
        self.bundle = bundle
        self.manifest = bundle.manifest
        self.labels = self.manifest.labels
        self.backends = dict(backends)
        self.backend_name = backend_name
        self.precision = dict(precision)
        self.concurrent = concurrent
        self.tokenizer = TextTokenizer(
            bundle.file(self.manifest.tokenizer.file, self.manifest.tokenizer.sha256), self.manifest.tokenizer.max_seq_len
        )
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fusionrt-image") if concurrent else None
        self.timings = Timings()
        self.text_cache: TextFeatureCache | None = None
        self._fused = None

    @classmethod
    def load(cls, bundle, backend: str = "auto", precision=None, concurrent: bool = True, text_cache: int = 64,
             **options) -> "Pipeline":
        """Open a bundle directory.

        backend: 'auto' | 'onnxruntime' | 'tensorrt' | 'tensorrt_rtx'.
        precision: None (the policy calibration chose for this backend's INT8 target: int8-cpu or int8-trt),
        'fp32' | 'fp16' | 'int8' for all parts, or a mapping / 'image=int8,text=int8,head=fp32' string per part.
        text_cache: how many texts' features `classify*` and `stream` keep (LRU); 0 turns the cache off.
            `logits` and `branches` never use it (benchmarks time the text branch).
        options: passed to the backend (onnxruntime: providers, threads, allow_fallback, verify; tensorrt:
            stream (your CUDA stream handle: results land on it), cuda_graphs, verify).
        """
        bundle = bundle if isinstance(bundle, Bundle) else Bundle.open(bundle)
        name = resolve_backend(backend)
        module = backend_module(name)
        chosen = parse_precision(precision, default=bundle.manifest.precision_for(module.int8_target(options)))
        opened = {}
        try:
            for comp in COMPONENTS:
                opened[comp] = module.open_component(bundle, comp, chosen[comp], {**options, "product": name})
        except BaseException:
            for b in opened.values():
                b.close()
            raise
        pipe = cls(bundle, opened, name, chosen, concurrent)
        pipe.text_cache = TextFeatureCache(text_cache) if text_cache else None
        fuse = getattr(module, "fuse", None)  # GPU backends: both branches on their own streams, one sync
        try:
            pipe._fused = fuse(opened, options) if fuse is not None and concurrent else None
        except BaseException:
            pipe.close()
            raise
        return pipe

    # -- the stages ------------------------------------------------------------------------------
    def prepare(self, images: Sequence, texts: Sequence[str]) -> tuple:
        """Images + texts -> (pixels, tokens), the branch inputs; times each step."""
        if isinstance(texts, str):
            raise InputError("classify_batch expects a list of texts, found one str. Wrap it: [text].")
        if len(images) != len(texts):
            raise InputError(f"expected as many texts as images, found {len(images)} images and {len(texts)} texts.")
        t0 = time.perf_counter()
        pixels = preprocess_batch(images, self.manifest.preprocess)
        t1 = time.perf_counter()
        tokens = self.tokenizer(texts)
        self.timings.preprocess_ms = (t1 - t0) * 1e3
        self.timings.tokenize_ms = (time.perf_counter() - t1) * 1e3
        return pixels, tokens

    def encode_image(self, pixels: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        out = self.backends["image_encoder"].infer({"pixel_values": pixels})["image_features"]
        self.timings.image_ms = (time.perf_counter() - t0) * 1e3
        return out

    def encode_text(self, tokens: Mapping[str, np.ndarray]) -> np.ndarray:
        t0 = time.perf_counter()
        out = self.backends["text_encoder"].infer(tokens)["text_features"]
        self.timings.text_ms = (time.perf_counter() - t0) * 1e3
        return out

    def head(self, image_features: np.ndarray, text_features: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        logits = self.backends["fusion_head"].infer(
            {"image_features": image_features, "text_features": text_features}
        )["logits"]
        self.timings.head_ms = (time.perf_counter() - t0) * 1e3
        return logits

    def branches(self, pixels: np.ndarray, tokens: Mapping[str, np.ndarray], text_features=None) -> tuple:
        """Run both encoders, at once when `concurrent`; pass `text_features` to skip the text branch."""
        t0 = time.perf_counter()
        if text_features is not None:
            image_features = self.encode_image(pixels)
            self.timings.text_ms = 0.0
        elif self._pool is not None:
            future = self._pool.submit(self.encode_image, pixels)
            text_features = self.encode_text(tokens)
            image_features = future.result()
        else:
            image_features = self.encode_image(pixels)
            text_features = self.encode_text(tokens)
        self.timings.branches_ms = (time.perf_counter() - t0) * 1e3
        return image_features, text_features

    def logits(self, pixels: np.ndarray, tokens: Mapping[str, np.ndarray]) -> np.ndarray:
        """Model time only: prepared inputs -> (N, classes) logits."""
        if self._fused is not None:
            return self._fused.logits(pixels, tokens, self.timings)
        return self.head(*self.branches(pixels, tokens))

    def cached_logits(self, pixels: np.ndarray, tokens: Mapping[str, np.ndarray]) -> np.ndarray:
        """Like `logits`, but the text branch runs only for texts the cache has not seen."""
        if self.text_cache is None:
            return self.logits(pixels, tokens)
        keys = self.text_cache.keys(tokens)
        known = self.text_cache.lookup(keys)
        if self._fused is not None:  # GPU: the image branch and the head stay on the device either way
            if known is not None:
                return self._fused.logits_with_text_features(pixels, known, self.timings)
            logits = self._fused.logits(pixels, tokens, self.timings)
            self.text_cache.store(keys, self._fused.text_features())
            return logits
        image_features, text_features = self.branches(pixels, tokens, text_features=known)
        if known is None:
            self.text_cache.store(keys, text_features)
        return self.head(image_features, text_features)

    # -- the public calls ------------------------------------------------------------------------
    def classify_batch(self, images: Sequence, texts: Sequence[str]) -> list:
        """Images (paths or BGR uint8 arrays) and texts -> one Prediction per pair."""
        pixels, tokens = self.prepare(images, texts)
        return self.predictions(self.cached_logits(pixels, tokens))

    def classify(self, image, text: str) -> Prediction:
        return self.classify_batch([image], [text])[0]

    def predictions(self, logits: np.ndarray) -> list:
        probs = softmax(logits.astype(np.float32))
        out = []
        for row in probs:
            index = int(row.argmax())
            out.append(Prediction(self.labels[index], index, float(row[index]), row))
        return out

    def stream(self, frames, text, policy: str = "latest", queue_size: int = 2):
        """Predictions over `frames` (BGR arrays or image paths) as a generator of FramePrediction; see
        `fusionrt.runtime.stream`. `text` is a str or a callable returning the current text."""
        from fusionrt.runtime.stream import stream

        return stream(self, frames, text, policy, queue_size)

    def start_stream(self, frames, text, on_prediction, policy: str = "latest", queue_size: int = 2):
        """The callback form of `stream`: runs on a thread, calls `on_prediction(FramePrediction)`; returns a
        StreamHandle (stop(), join(), a context manager)."""
        from fusionrt.runtime.stream import StreamHandle

        return StreamHandle(self, frames, text, on_prediction, policy, queue_size)

    def close(self) -> None:
        if self._fused is not None:
            self._fused.close()
            self._fused = None
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        for backend in self.backends.values():
            backend.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
