"""Backends found by name and imported only when chosen."""

from __future__ import annotations

import importlib

from fusionrt.runtime.errors import BackendUnavailable

__all__ = ["BACKENDS", "backend_module", "resolve_backend"]

# name -> module holding `open_component(bundle, component, precision, options) -> Backend`
BACKENDS = {
    "onnxruntime": "fusionrt.runtime.backends.onnxruntime",
    "tensorrt": "fusionrt.runtime.backends.tensorrt",
    "tensorrt_rtx": "fusionrt.runtime.backends.tensorrt",
}


def backend_module(name: str):
    if name not in BACKENDS:
        raise BackendUnavailable(f"unknown backend '{name}': expected one of {sorted(BACKENDS)} or 'auto'.")
    return importlib.import_module(BACKENDS[name])


def resolve_backend(name: str) -> str:
    """'auto' -> 'tensorrt' when TensorRT and a GPU are usable, else 'onnxruntime'."""
    if name != "auto":
        backend_module(name)  # validates the name
        return name
    import importlib.util

    for product in ("tensorrt", "tensorrt_rtx"):
        if importlib.util.find_spec(product) is None:
            continue
        try:
            if backend_module(product).usable(product):
                return product
        except BackendUnavailable:
            pass
    return "onnxruntime"
