"""The models Triton's Python backend runs (each repository's `model.py` imports one of these as TritonPythonModel).

- `PreprocessModel`: encoded image bytes and UTF-8 text -> the encoders' inputs, with fusionrt's own preprocessing and
  tokenizer (the same code as the embedded runtime, so the same tensors);
- `ComponentModel`: one bundle component on fusionrt's ONNX Runtime backend (`--platform python`, for servers without
  Triton's ONNX Runtime backend).

Both answer every request of a batch: a bad request gets its own error response and the others go on. The Python
backend hands a model the requests Triton's dynamic batcher gathered, unmerged: `ComponentModel` runs the requests
whose shapes agree as one batch. `triton_python_backend_utils` exists only inside Triton's stub; the tests pass a
stand-in with the same names."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fusionrt.runtime.errors import FusionRTError, InputError
from fusionrt.runtime.manifest import PreprocessSpec, TensorSpec
from fusionrt.runtime.preprocess import preprocess_batch
from fusionrt.runtime.tokenize import TextTokenizer

__all__ = ["PreprocessModel", "ComponentModel"]


def _utils():
    import triton_python_backend_utils  # only inside Triton's Python backend stub

    return triton_python_backend_utils


def _version_folder(args) -> Path:
    return Path(args["model_repository"]) / str(args["model_version"])


class _Model:
    """What both models share: the utilities module, and one response per request, errors included."""

    pb = None

    def _answer(self, requests, run) -> list:
        responses = []
        for request, outputs in zip(requests, run(requests)):
            if isinstance(outputs, Exception):
                responses.append(self.pb.InferenceResponse(output_tensors=[], error=self.pb.TritonError(str(outputs))))
            else:
                responses.append(self.pb.InferenceResponse(
                    output_tensors=[self.pb.Tensor(name, np.ascontiguousarray(a)) for name, a in outputs.items()]))
        return responses

    def _input(self, request, name: str) -> np.ndarray:
        tensor = self.pb.get_input_tensor_by_name(request, name)
        if tensor is None:
            raise InputError(f"the request has no input '{name}'.")
        return tensor.as_numpy()

    def finalize(self) -> None:
        pass


class PreprocessModel(_Model):
    def initialize(self, args, utils=None) -> None:
        self.pb = utils or _utils()
        folder = _version_folder(args)
        settings = json.loads((folder / "preprocess.json").read_text())
        self.spec = PreprocessSpec.from_dict(settings["preprocess"])
        self.tokenizer = TextTokenizer(folder / "tokenizer.json", settings["max_seq_len"])
        self.bucket = settings["seq_bucket"]
        self.max_pixels = settings.get("max_pixels")  # None: the runtime's default cap
        self.image_input, self.text_input = settings["image_input"], settings["text_input"]
        self.pixels = TensorSpec.from_dict(settings["pixels"], "preprocess.json")
        self.tokens = [TensorSpec.from_dict(t, "preprocess.json") for t in settings["tokens"]]

    def execute(self, requests) -> list:
        return self._answer(requests, lambda reqs: [self._one(r) for r in reqs])

    def _one(self, request):
        try:
            images = self._input(request, self.image_input).reshape(-1)
            texts = self._input(request, self.text_input).reshape(-1)
            if len(images) != len(texts):
                raise InputError(f"expected one text per image, found {len(images)} images and {len(texts)} texts.")
            frames = []
            for i, data in enumerate(images):
                try:
                    frames.append(bytes(data))
                except TypeError:
                    raise InputError(f"image {i}: expected encoded image bytes, found {type(data).__name__}.") from None
            pixels = preprocess_batch(frames, self.spec, self.max_pixels)
            decoded = [_text(t, i) for i, t in enumerate(texts)]
            tokens = self.tokenizer(decoded, pad_multiple=self.bucket)
            outputs = {self.pixels.name: pixels.astype(self.pixels.dtype, copy=False)}
            outputs.update({t.name: tokens[t.name].astype(t.dtype, copy=False) for t in self.tokens})
            return outputs
        except FusionRTError as exc:
            return exc
        except MemoryError:  # this request's tensors did not fit: its own error, the batch goes on
            return InputError("the request's images and texts did not fit in the server's memory; send fewer or "
                              "smaller images.")


def _text(value, index: int) -> str:
    if isinstance(value, str):
        return value
    try:
        return bytes(value).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"text {index}: expected UTF-8 text, found bytes that are not UTF-8 ({exc.reason} at byte "
                         f"{exc.start}). Send the text encoded as UTF-8.") from None


class ComponentModel(_Model):
    def initialize(self, args, utils=None) -> None:
        from fusionrt.runtime.backends.onnxruntime import OnnxRuntimeBackend

        self.pb = utils or _utils()
        folder = _version_folder(args)
        specs = json.loads((folder / "component.json").read_text())
        inputs = tuple(TensorSpec.from_dict(t, "component.json") for t in specs["inputs"])
        outputs = tuple(TensorSpec.from_dict(t, "component.json") for t in specs["outputs"])
        self.backend = OnnxRuntimeBackend(folder / "model.onnx", inputs, outputs, threads=specs.get("threads", 0))

    def execute(self, requests) -> list:
        return self._answer(requests, self._batched)

    def _batched(self, requests) -> list:
        """Requests whose inputs agree in all but the batch size run as one batch; each gets its rows back."""
        results: list = [None] * len(requests)
        groups: dict = {}
        for i, request in enumerate(requests):
            try:
                feeds = {s.name: self._input(request, s.name) for s in self.backend.input_specs}
            except FusionRTError as exc:
                results[i] = exc
                continue
            key = tuple((n, a.dtype.str, a.shape[1:]) for n, a in sorted(feeds.items()))
            groups.setdefault(key, []).append((i, feeds))
        for members in groups.values():
            try:
                merged = {name: np.concatenate([f[name] for _, f in members]) for name in members[0][1]}
                outputs = self.backend.infer(merged)
            except FusionRTError as exc:
                for i, _ in members:
                    results[i] = exc
                continue
            start = 0
            for i, feeds in members:
                rows = len(next(iter(feeds.values())))
                results[i] = {name: value[start:start + rows] for name, value in outputs.items()}
                start += rows
        return results

    def finalize(self) -> None:
        self.backend.close()
