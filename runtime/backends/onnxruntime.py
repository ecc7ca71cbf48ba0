"""ONNX Runtime backend: CPU, CUDA or TensorRT execution providers, checked after session creation."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Mapping

import numpy as np

from fusionrt.runtime.backends.base import Backend, BackendOptions
from fusionrt.runtime.cache_lock import cache_lock
from fusionrt.runtime.environment import cache_root
from fusionrt.runtime.errors import BackendUnavailable
from fusionrt.runtime.optional import require

__all__ = ["OnnxRuntimeBackend", "OnnxRuntimeOptions", "engine_cache_folder", "gpu_providers"]

# Off in every session: it quantizes, per tensor, the float weights of the layers a Q/DQ graph keeps float.
DISABLED_OPTIMIZERS = ("WeightBiasQuantization",)
# Off where only the CPU runs: its SkipLayerNormalization is slower than the Add and LayerNorm it fuses.
CPU_SLOW_FUSIONS = ("SkipLayerNormFusion",)


@dataclass(frozen=True)
class OnnxRuntimeOptions(BackendOptions):
    # the execution providers: None and 'cpu' run ONNX Runtime's CPU kernels (a GPU build's CUDA provider only when
    # asked for: what a provider computes is what a policy was judged on, so it is never picked silently)
    device: Literal["cpu", "cuda", "tensorrt"] | None = None
    providers: tuple | None = None  # or an explicit list: names, or (name, provider options) pairs
    threads: int = 0  # intra-op threads per session; 0 = ONNX Runtime's default (one per core)
    # Worker threads spin between a call's ops instead of sleeping, and stop when the call returns. None: on when the
    # branches run one after the other, off when they run at once (one branch's spinning workers take the other's cores).
    spinning: bool | None = None
    allow_fallback: bool = False  # run on the providers that loaded instead of raising
    optimize: bool = True  # False: the graph as written (Q/DQ not fused into this CPU's integer kernels)

    def for_branches(self, concurrent: bool) -> "OnnxRuntimeOptions":
        return self if self.spinning is not None else dataclasses.replace(self, spinning=not concurrent)


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    Options = OnnxRuntimeOptions
    package = "onnxruntime"

    def __init__(self, model, inputs, outputs, providers=None, threads: int = 0, allow_fallback: bool = False,
                 optimize: bool = True, spinning: bool = False):
        """model: the ONNX file's bytes (what `Bundle.read` checked) or its path. optimize=False runs the graph as
        written: Q/DQ pairs stay QuantizeLinear/DequantizeLinear around float ops instead of being fused into this
        CPU's integer kernels (the exact arithmetic TensorRT computes; calibration measures the TensorRT flavour that
        way). spinning: the workers spin between ops while a call runs (see OnnxRuntimeOptions)."""
        super().__init__(inputs, outputs)
        ort = require("onnxruntime", "the onnxruntime backend")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # 0 = ORT's default (one per core)
        options.inter_op_num_threads = 1
        options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                            else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        if spinning:  # a pipeline's sessions each have a pool: one still spinning would take the next one's cores
            options.add_session_config_entry("session.force_spinning_stop", "1")
        requested = list(providers) if providers else ["CPUExecutionProvider"]
        source = bytes(model) if isinstance(model, (bytes, bytearray, memoryview)) else str(model)
        wanted = _provider_names(requested)
        disabled = DISABLED_OPTIMIZERS + (CPU_SLOW_FUSIONS if wanted == ["CPUExecutionProvider"] else ())
        self.session = ort.InferenceSession(source, sess_options=options, providers=requested,
                                            disabled_optimizers=list(disabled))
        self.providers = self.session.get_providers()
        lost = [p for p in wanted if p not in self.providers]
        if lost and not allow_fallback and providers:
            raise BackendUnavailable(
                f"ONNX Runtime providers {lost} were requested but did not load (session runs on {self.providers}). "
                "Install onnxruntime-gpu with matching CUDA/cuDNN (and TensorRT 10 for the TensorRT EP), "
                "or pass allow_fallback=True to run on what loaded."
            )
        self._output_names = [o.name for o in outputs]

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict:
        values = self.session.run(self._output_names, dict(feeds))
        return dict(zip(self._output_names, values))

    def clone(self) -> "OnnxRuntimeBackend":
        """The same session (ONNX Runtime runs one session from many threads at once) behind another handle."""
        twin = copy.copy(self)
        twin._closed = False
        return twin

    def close(self) -> None:
        self.session = None  # ONNX Runtime frees the session when its last handle lets go
        super().close()

    @classmethod
    def device_of(cls, options: OnnxRuntimeOptions) -> str:
        names = _provider_names(options.providers or [])
        if options.device == "tensorrt" or any("Tensorrt" in p for p in names):
            return "tensorrt"
        if options.device == "cuda" or any("CUDA" in p for p in names):
            return "cuda"
        return "cpu"

    @classmethod
    def load(cls, model, component, execution, options: OnnxRuntimeOptions, bundle=None) -> "OnnxRuntimeBackend":
        providers = list(options.providers or [])
        source = bytes(model) if isinstance(model, (bytes, bytearray, memoryview)) else model
        if not providers and execution.device != "cpu":
            providers = gpu_providers(execution, bundle, component.name, source)
        folder = _engine_cache(providers)
        with cache_lock(folder, f"{component.name}'s TensorRT EP engines") if folder else contextlib.nullcontext():
            return cls(source, component.inputs, component.outputs, providers or None, options.threads,
                       options.allow_fallback, options.optimize, bool(options.spinning))


def _provider_names(providers) -> list:
    return [p[0] if isinstance(p, tuple) else p for p in providers]


def gpu_providers(execution, bundle=None, component: str | None = None, model=None) -> list:
    """Providers for an execution on device 'cuda' or 'tensorrt' (the TensorRT EP with the resolver's flags, then CUDA
    for what TensorRT does not take), CPU last for ops neither runs. The EP's engines are cached under
    cache_root()/onnxruntime-tensorrt-ep/, in a folder per model (its bytes' sha256) and ONNX Runtime version: never
    in the bundle, which stays read-only and carries no engine that was not built here from the file it verified."""
    if execution.device == "cuda":
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if execution.device == "tensorrt":
        trt_options = dict(execution.hints)
        if model is not None:
            cache = str(engine_cache_folder(model))
            trt_options.update({"trt_engine_cache_enable": True, "trt_engine_cache_path": cache,
                                "trt_timing_cache_enable": True, "trt_timing_cache_path": cache})
        if bundle is not None and component is not None:
            trt_options.update(_explicit_profile(bundle, component))
        return [("TensorrtExecutionProvider", trt_options), "CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def engine_cache_folder(model) -> Path:
    """Where the TensorRT EP keeps the engines of `model` (its bytes, or a path to them)."""
    onnxruntime = require("onnxruntime", "the onnxruntime backend")
    data = model if isinstance(model, bytes) else Path(model).read_bytes()
    key = f"{hashlib.sha256(data).hexdigest()[:24]}-ort{onnxruntime.__version__}"
    return cache_root() / "onnxruntime-tensorrt-ep" / key


def _engine_cache(providers) -> Path | None:
    for p in providers:
        if isinstance(p, tuple) and p[1].get("trt_engine_cache_enable"):
            return Path(p[1]["trt_engine_cache_path"])
    return None


def _explicit_profile(bundle, component: str) -> dict:
    """The manifest's optimization profile as the TensorRT EP's min/opt/max shape options. Without them the EP
    sizes its profile from the inputs it has seen, and rebuilds the engine each time a larger batch or text comes."""
    ranges = [(spec.name, bundle.manifest.profile.shapes_for(spec)) for spec in
              bundle.manifest.components[component].inputs]
    return {f"trt_profile_{kind}_shapes": ",".join(f"{name}:{'x'.join(map(str, shapes[i]))}" for name, shapes in ranges)
            for i, kind in enumerate(("min", "opt", "max"))}
