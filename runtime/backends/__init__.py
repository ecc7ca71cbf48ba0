"""Backends found by name and imported only when chosen."""

from __future__ import annotations

import importlib

from fusionrt.runtime.errors import BackendUnavailable

__all__ = ["BACKENDS", "backend_class", "resolve_backend"]

# name -> "module:class" of its Backend subclass; a module is imported when its backend is chosen
BACKENDS = {
    "onnxruntime": "fusionrt.runtime.backends.onnxruntime:OnnxRuntimeBackend",
    "openvino": "fusionrt.runtime.backends.openvino:OpenVINOBackend",
    "tensorrt": "fusionrt.runtime.backends.tensorrt:TensorRTBackend",
    "tensorrt_rtx": "fusionrt.runtime.backends.tensorrt:TensorRTRTXBackend",
}
_AUTO_ORDER = ("tensorrt", "tensorrt_rtx")  # tried in this order by 'auto'; ONNX Runtime when neither can run


def backend_class(name: str) -> type:
    """The Backend subclass registered under `name`."""
    if name not in BACKENDS:
        raise BackendUnavailable(f"unknown backend '{name}': expected one of {sorted(BACKENDS)} or 'auto'.")
    module, _, attr = BACKENDS[name].partition(":")
    cls = getattr(importlib.import_module(module), attr)
    if cls.name != name:  # the table and the class must agree, or options and errors would name the wrong one
        raise BackendUnavailable(f"backend table error: '{name}' maps to {attr}, which is named '{cls.name}'.")
    return cls


def resolve_backend(name: str) -> str:
    """'auto' -> 'tensorrt' (or 'tensorrt_rtx') when it can run here, else 'onnxruntime'; other names are checked."""
    if name != "auto":
        backend_class(name)
        return name
    for candidate in _AUTO_ORDER:
        if backend_class(candidate).usable():
            return candidate
    return "onnxruntime"
