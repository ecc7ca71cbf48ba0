"""Backends found by name and imported only when chosen."""

from __future__ import annotations

import importlib

from fusionrt.runtime.errors import BackendUnavailable

__all__ = ["BACKENDS", "GPU_BACKENDS", "CPU_BACKENDS", "backend_class", "resolve_backend", "choose_backend", "usable_backends"]

# name -> "module:class" of its Backend subclass; a module is imported when its backend is chosen
BACKENDS = {
    "onnxruntime": "fusionrt.runtime.backends.onnxruntime:OnnxRuntimeBackend",
    "openvino": "fusionrt.runtime.backends.openvino:OpenVINOBackend",
    "tensorrt": "fusionrt.runtime.backends.tensorrt:TensorRTBackend",
    "tensorrt_rtx": "fusionrt.runtime.backends.tensorrt:TensorRTRTXBackend",
}
GPU_BACKENDS = ("tensorrt", "tensorrt_rtx")  # 'auto' takes the first that runs here with the bundle's engines
CPU_BACKENDS = ("openvino", "onnxruntime")  # else the fastest of these as measured here (fusionrt.runtime.tune)
_AUTO_ORDER = GPU_BACKENDS + CPU_BACKENDS


def backend_class(name: str) -> type:
    """The Backend subclass registered under `name`."""
    if name not in BACKENDS:
        raise BackendUnavailable(f"unknown backend '{name}': expected one of {sorted(BACKENDS)} or 'auto'.")
    module, _, attr = BACKENDS[name].partition(":")
    cls = getattr(importlib.import_module(module), attr)
    if cls.name != name:  # the table and the class must agree, or options and errors would name the wrong one
        raise BackendUnavailable(f"backend table error: '{name}' maps to {attr}, which is named '{cls.name}'.")
    return cls


def resolve_backend(name: str, bundle=None) -> str:
    """The backend `name` stands for here ('auto': see `choose_backend`)."""
    return choose_backend(name, bundle)[0]


def usable_backends(bundle=None) -> tuple:
    """(usable, skipped): the backends of _AUTO_ORDER that can run here (their package imports, their device exists;
    for the TensorRT ones, `bundle` holds their engines), in that order, and why each other one cannot."""
    usable, skipped = [], []
    for candidate in _AUTO_ORDER:
        cls = backend_class(candidate)
        if not cls.usable():
            skipped.append(f"{candidate} cannot run here")
        elif candidate in GPU_BACKENDS and bundle is not None and not any(
                e.product == cls.product for c in bundle.manifest.components.values() for e in c.engines):
            skipped.append(f"{candidate} can run here but the bundle has no {candidate} engines (fusionrt build)")
        else:
            usable.append(candidate)
    return usable, skipped


def choose_backend(name: str, bundle=None) -> tuple:
    """(backend, why) without measuring: 'auto' takes the first usable of TensorRT, TensorRT-RTX, OpenVINO, ONNX
    Runtime (`Pipeline.load` measures the CPU ones instead: `fusionrt.runtime.selection`); another name is checked
    and taken as asked."""
    if name != "auto":
        backend_class(name)
        return name, "asked for"
    usable, skipped = usable_backends(bundle)
    if not usable:
        raise BackendUnavailable("no backend can run here: expected at least ONNX Runtime. Install it: pip install "
                                 "'fusionrt[cpu]'.")
    return usable[0], "auto: the first usable of " + ", ".join(_AUTO_ORDER) + (
        f" ({'; '.join(skipped)})" if skipped else "")
