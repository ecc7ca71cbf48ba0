"""The few differences between TensorRT 10.x, TensorRT 11.x and TensorRT-RTX, in one place.

| | TensorRT 10.x | TensorRT 11.x | TensorRT-RTX |
|---|---|---|---|
| network typing | weak (builder flags pick precisions) | strongly typed, always | strongly typed (flag) |
| FP16 | fp32 ONNX + BuilderFlag.FP16 | FP16 ONNX (LayerNorm/Softmax in FP32) | FP16 ONNX |
| INT8 | Q/DQ ONNX + BuilderFlag.INT8 | Q/DQ ONNX | Q/DQ ONNX |
| timing cache | yes | yes | no-op (deprecated in 1.2): kernels are JIT-compiled on the GPU |
| build without a GPU | no | no | yes, for a named compute capability |

Versions are compared with packaging.version, never as strings."""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

from fusionrt.runtime.errors import BackendUnavailable
from fusionrt.runtime.optional import require

__all__ = ["PRODUCTS", "TrtApi", "load_api", "runtime_cache_path", "save_runtime_cache"]

PRODUCTS = ("tensorrt", "tensorrt_rtx")


@dataclass(frozen=True)
class TrtApi:
    product: str
    trt: ModuleType
    version: object  # packaging.version.Version

    @property
    def strongly_typed(self) -> bool:
        from packaging.version import Version

        return self.product == "tensorrt_rtx" or self.version >= Version("11")

    @property
    def has_timing_cache(self) -> bool:
        return self.product == "tensorrt"

    @property
    def builds_without_gpu(self) -> bool:
        return self.product == "tensorrt_rtx"

    @property
    def builtin_cuda_graphs(self) -> bool:
        """TensorRT-RTX captures and replays CUDA graphs itself, per context and for dynamic shapes too
        (IRuntimeConfig.cuda_graph_strategy, from TensorRT-RTX 1.2 on): fusionrt's own capture is not used there."""
        from packaging.version import Version

        return self.product == "tensorrt_rtx" and hasattr(self.trt, "CudaGraphStrategy") and \
            self.version >= Version("1.2")

    def check_cuda_graphs(self, records) -> None:
        """Warn where cuda_graphs=True cannot take effect: TensorRT-RTX before 1.2 has no CUDA graphs, and its engines
        capture only when built stream-capturable (`fusionrt build --cuda-graphs`, recorded in the manifest)."""
        import warnings
        from packaging.version import Version

        if self.product != "tensorrt_rtx":
            return
        if self.version < Version("1.2"):
            warnings.warn(f"cuda_graphs=True: TensorRT-RTX {self.version} has no CUDA graphs (1.2 and later do); the "
                          "pipeline runs without.", RuntimeWarning, stacklevel=4)
            return
        plain = [r.path for r in records if not getattr(r, "capturable", False)]
        if plain:
            warnings.warn(f"cuda_graphs=True: {', '.join(plain)} were not built stream-capturable; TensorRT-RTX runs "
                          "them without graphs. Rebuild with `fusionrt build --target tensorrt-rtx --cuda-graphs`.",
                          RuntimeWarning, stacklevel=4)

    def runtime_cache(self, engine, record):
        """TensorRT-RTX: a RuntimeCache of its JIT-compiled kernels, read from the cache folder (per engine sha256),
        written back by `save_runtime_cache`; None elsewhere."""
        if self.product != "tensorrt_rtx" or not getattr(record, "sha256", None):
            return None
        config = engine.create_runtime_config()
        if not hasattr(config, "create_runtime_cache"):
            return None
        cache = config.create_runtime_cache()
        path = runtime_cache_path(record)
        if path.is_file():
            cache.deserialize(path.read_bytes())  # rejected (left empty) when made by another GPU or version
        return cache

    def set_capturable(self, config) -> None:
        """At build, when CUDA graphs are wanted: TensorRT-RTX engines are stream-capturable only when built with
        REQUIRE_USER_ALLOCATION (TensorRT 10/11 need nothing)."""
        if self.product == "tensorrt_rtx":
            config.set_flag(self.trt.BuilderFlag.REQUIRE_USER_ALLOCATION)

    def create_context(self, engine, cuda_graphs: bool = False, runtime_cache=None):
        """An execution context (None where TensorRT cannot make one); on TensorRT-RTX, with the shared runtime cache
        and, with `cuda_graphs`, its built-in CUDA graphs on."""
        if runtime_cache is None and not (cuda_graphs and self.builtin_cuda_graphs):
            return engine.create_execution_context()
        config = engine.create_runtime_config()
        if runtime_cache is not None:
            config.set_runtime_cache(runtime_cache)
        if cuda_graphs and self.builtin_cuda_graphs:
            config.cuda_graph_strategy = self.trt.CudaGraphStrategy.WHOLE_GRAPH_CAPTURE
        return engine.create_execution_context(config)

    def execution(self, precision: str, available=()):
        """What a `precision` engine is built from and computes (`available`: the component's flavours), as the one
        resolver says (`fusionrt.runtime.resolve`)."""
        from fusionrt.runtime.resolve import resolve

        return resolve(self.product, precision, "gpu", strongly_typed=self.strongly_typed, available=available)

    def onnx_flavour(self, precision: str, available=()) -> str:
        """Which bundle ONNX file a `precision` engine is built from."""
        return self.execution(precision, available).flavour

    def create_network(self, builder):
        flags = 0
        creation = self.trt.NetworkDefinitionCreationFlag
        # 11.x: always strongly typed (the flag is deprecated); RTX: ask for it; 10.x: weak, builder flags decide.
        if self.product == "tensorrt_rtx":
            flags = 1 << int(creation.STRONGLY_TYPED)
        return builder.create_network(flags)

    def set_precision(self, config, precision: str) -> None:
        """The builder flags the resolver names: none where strongly typed (the ONNX's own types rule); on 10.x FP16,
        or INT8 with FP16 (the Q/DQ nodes say where INT8 goes, and what they keep float runs in FP16)."""
        for flag in self.execution(precision).hints["builder_flags"]:
            config.set_flag(getattr(self.trt.BuilderFlag, flag))

    def set_target(self, config, compute_capability: str | None) -> None:
        """TensorRT-RTX builds for a named compute capability ('8.9') when there is no GPU; the others build
        for the GPU they run on."""
        if self.product != "tensorrt_rtx":
            return
        targets = self.trt.ComputeCapability
        if compute_capability is None:
            choice = targets.CURRENT
        else:
            name = "SM" + compute_capability.replace(".", "")
            if not hasattr(targets, name):
                known = sorted(n[2:] for n in dir(targets) if n.startswith("SM"))
                raise BackendUnavailable(f"{self.product} {self.version} cannot target compute capability "
                                         f"{compute_capability}: it targets sm{', sm'.join(known)}.")
            choice = getattr(targets, name)
        config.num_compute_capabilities = 1
        config.set_compute_capability(choice, 0)


def runtime_cache_path(record):
    """Where TensorRT-RTX's runtime cache of an engine lives: the user's cache (bundles may be read-only)."""
    from fusionrt.runtime.environment import cache_root

    return cache_root() / "tensorrt-rtx" / f"{record.sha256[:32]}.cache"


def save_runtime_cache(cache, record) -> None:
    """Write a runtime cache back (atomically); a read-only home only costs the next process its compile time."""
    import os

    path = runtime_cache_path(record)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_bytes(bytes(cache.serialize()))
        os.replace(tmp, path)
    except OSError:
        pass


def load_api(product: str) -> TrtApi:
    from packaging.version import Version

    if product not in PRODUCTS:
        raise BackendUnavailable(f"TensorRT product '{product}' unknown: expected one of {PRODUCTS}.")
    trt = require(product, "TensorRT engines")
    return TrtApi(product, trt, Version(trt.__version__))
