"""The one Backend protocol: named input/output specs, `infer(dict) -> dict`, `close()`.

As in Polygraphy's runners, the public `infer` does the shared checks (names, dtypes, ranks,
fixed dimensions) and then calls the backend's `_infer` hook, so a backend stays small.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from fusionrt.runtime.errors import InputError
from fusionrt.runtime.manifest import TensorSpec

__all__ = ["Backend"]


class Backend:
    """One model (ONNX file or engine) ready to run. Use as a context manager or call `close()`."""

    name = "base"

    def __init__(self, inputs: tuple, outputs: tuple):
        self.input_specs: tuple = inputs
        self.output_specs: tuple = outputs
        self._closed = False

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict:
        """Run the model on `feeds` (name -> array). Returns name -> array; the caller owns the arrays."""
        if self._closed:
            raise InputError(f"{self.name} backend is closed: expected an open backend. Load the pipeline again.")
        self._check_feeds(feeds)
        return self._infer(feeds)

    def _check_feeds(self, feeds: Mapping[str, np.ndarray]) -> None:
        expected = {s.name for s in self.input_specs}
        if set(feeds) != expected:
            raise InputError(f"expected inputs {sorted(expected)}, found {sorted(feeds)}.")
        for spec in self.input_specs:
            _check_tensor(spec, feeds[spec.name])

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict:
        raise NotImplementedError

    def close(self) -> None:
        self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _check_tensor(spec: TensorSpec, array) -> None:
    if not isinstance(array, np.ndarray):
        raise InputError(f"input '{spec.name}': expected a numpy array, found {type(array).__name__}.")
    if array.dtype != np.dtype(spec.dtype):
        raise InputError(f"input '{spec.name}': expected dtype {spec.dtype}, found {array.dtype}.")
    if array.ndim != len(spec.shape):
        raise InputError(f"input '{spec.name}': expected shape {list(spec.shape)}, found {list(array.shape)}.")
    for axis, (want, got) in enumerate(zip(spec.shape, array.shape)):
        if isinstance(want, int) and want != got:
            raise InputError(f"input '{spec.name}': expected size {want} on axis {axis}, found {got} (shape {list(array.shape)}).")
