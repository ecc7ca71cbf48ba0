"""Classify image+text pairs on a Triton Inference Server that serves a `fusionrt triton` repository, and get the
embedded runtime's `Prediction` back (HTTP or gRPC, over `tritonclient`).

    with TritonClient("127.0.0.1:8000") as client:            # or protocol="grpc", url "127.0.0.1:8001"
        prediction = client.classify("frame.png", "a red car")

Images go as encoded bytes: a path sends the file, a numpy BGR frame is encoded as PNG (lossless, so the server sees
the same pixels), bytes go as they are. The labels come from the served model's config, so a client needs no bundle;
pass `bundle=` to check that the server serves that bundle's model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from fusionrt.runtime.errors import FusionRTError, InputError
from fusionrt.runtime.optional import require
from fusionrt.runtime.prediction import Prediction, predictions
from fusionrt.runtime.tokenize import check_text
from fusionrt.serving.repository import ENSEMBLE, IMAGE, TEXT
from fusionrt.runtime.manifest import FUSION_HEAD

__all__ = ["TritonClient", "ServingError", "encode_image"]

_PORTS = {"http": 8000, "grpc": 8001}


class ServingError(FusionRTError):
    """The server is unreachable, lacks the model, or serves a model that is not the expected one."""


def encode_image(image) -> bytes:
    """What goes over the wire: a file's bytes, bytes as given, or a BGR uint8 frame encoded as PNG."""
    import cv2

    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise InputError(f"image file '{path}' not found. Check the path (relative paths are from the current "
                             "directory).")
        return path.read_bytes()
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise InputError(f"expected a uint8 image, found dtype {image.dtype}. Convert with "
                             "`np.clip(img, 0, 255).astype(np.uint8)`.")
        ok, data = cv2.imencode(".png", image)
        if not ok:
            raise InputError(f"the frame of shape {image.shape} could not be encoded: expected HxWx3 BGR (or HxW).")
        return data.tobytes()
    raise InputError(f"expected an image path, encoded image bytes or a numpy BGR frame, found {type(image).__name__}.")


class TritonClient:
    def __init__(self, url: str | None = None, protocol: str = "http", model: str = ENSEMBLE, bundle=None,
                 timeout_s: float = 30.0):
        if protocol not in _PORTS:
            raise InputError(f"protocol: expected 'http' or 'grpc', found '{protocol}'.")
        self.protocol, self.model = protocol, model
        self.url = url or f"127.0.0.1:{_PORTS[protocol]}"
        self._api = require(f"tritonclient.{protocol}", "fusionrt.client")
        self._errors = require("tritonclient.utils").InferenceServerException
        if protocol == "http":
            self._client = self._api.InferenceServerClient(self.url, connection_timeout=timeout_s,
                                                           network_timeout=timeout_s)
        else:
            self._client = self._api.InferenceServerClient(self.url)
        self._timeout_s = timeout_s
        self.labels, self.logits = self._check_model(bundle)

    # -- what the server serves -------------------------------------------------------------------------------
    def _call(self, what: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except self._errors as exc:
            raise ServingError(f"Triton at {self.url} ({self.protocol}) refused {what}: {exc.message()}") from None
        except (OSError, ConnectionError) as exc:  # refused, reset, unreachable host, timeouts
            raise ServingError(f"could not reach Triton at {self.url} over {self.protocol} ({exc}): expected a server "
                               "there. Start it (README: 'Serve on Triton') or pass the right url.") from None

    def _config(self) -> dict:
        if self.protocol == "http":
            return self._call("the model config", self._client.get_model_config, self.model)
        return self._call("the model config", self._client.get_model_config, self.model, as_json=True)["config"]

    def _check_model(self, bundle) -> tuple:
        if not self._call("a liveness check", self._client.is_server_live):
            raise ServingError(f"Triton at {self.url} answers but is not live: wait for it to start, or check its log.")
        if not self._call("a readiness check", self._client.is_model_ready, self.model):
            index = self._call("the repository index", self._client.get_model_repository_index)
            models = index if isinstance(index, list) else index.get("models", [])
            ready = sorted(m.get("name", "?") for m in models if m.get("state") == "READY")
            raise ServingError(f"Triton at {self.url} has no ready model '{self.model}' (ready: {ready or 'none'}): "
                               "start it on a `fusionrt triton` repository, or pass model=NAME.")
        config = self._config()
        inputs = {t["name"]: t.get("data_type") for t in config.get("input", [])}
        params = {k: v.get("string_value") for k, v in config.get("parameters", {}).items()}
        expected = {IMAGE: "TYPE_STRING", TEXT: "TYPE_STRING"}
        if inputs != expected or "labels" not in params or "logits" not in params:
            raise ServingError(f"model '{self.model}' on {self.url} takes {inputs} (parameters {sorted(params)}): "
                               f"expected {expected} with 'labels' and 'logits' parameters, the ensemble `fusionrt "
                               "triton` writes. Serve that repository, or pass model=NAME.")
        labels, logits = tuple(json.loads(params["labels"])), params["logits"]
        if bundle is not None:
            from fusionrt.runtime.bundle import Bundle

            m = (bundle if isinstance(bundle, Bundle) else Bundle.open(bundle)).manifest
            wanted = (tuple(m.labels), m.components[FUSION_HEAD].outputs[0].name)
            if (labels, logits) != wanted:
                raise ServingError(f"model '{self.model}' on {self.url} has labels {list(labels)} and output "
                                   f"'{logits}'; the bundle has {list(wanted[0])} and '{wanted[1]}': the server "
                                   "serves another model. Write its repository from this bundle with `fusionrt triton`.")
        return labels, logits

    # -- classifying ------------------------------------------------------------------------------------------
    def classify(self, image, text: str) -> Prediction:
        return self.classify_batch([image], [text])[0]

    def classify_batch(self, images: Sequence, texts: Sequence[str]) -> list:
        """One Prediction per (image, text) pair, in one request (the server's batcher may merge it with others)."""
        if isinstance(texts, str) or len(images) != len(texts) or not len(images):
            raise InputError(f"expected as many texts as images (at least one), found {len(images)} images and "
                             f"{1 if isinstance(texts, str) else len(texts)} texts.")
        for i, text in enumerate(texts):
            check_text(text, f"text {i}: ")
        payload = {IMAGE: np.array([[encode_image(i)] for i in images], dtype=object),
                   TEXT: np.array([[t.encode("utf-8")] for t in texts], dtype=object)}
        inputs = []
        for name, array in payload.items():
            tensor = self._api.InferInput(name, list(array.shape), "BYTES")
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        outputs = [self._api.InferRequestedOutput(self.logits)]
        extra = {"timeout": int(self._timeout_s * 1e6)} if self.protocol == "http" else \
            {"client_timeout": self._timeout_s}
        result = self._call("the request (a bad image or text?)", self._client.infer, self.model, inputs,
                            outputs=outputs, **extra)
        return predictions(self.labels, result.as_numpy(self.logits))

    def close(self) -> None:
        try:
            self._client.close()
        except (OSError, AttributeError):
            pass

    def __enter__(self) -> "TritonClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
