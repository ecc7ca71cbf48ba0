"""`fusionrt build`: TensorRT engines for a bundle's three components, one code path for TensorRT 10.x,
11.x and TensorRT-RTX (differences in `trt_compat`).

Engines are plain plans under `engines/<product>-<version>-<gpu>/`, built with the bundle's optimization
profile; a cache key (ONNX sha256 + product + version + GPU + precision + profile) skips an unchanged build;
TensorRT's timing cache is kept beside the engines. Each engine is recorded in the manifest."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from fusionrt.bundling.staging import TEMP_PREFIX, update_bundle
from fusionrt.runtime.backends.trt_compat import TrtApi, load_api
from fusionrt.runtime.bundle import Bundle
from fusionrt.runtime.errors import BackendUnavailable, BundleError
from fusionrt.runtime.manifest import COMPONENTS, EngineRecord, Profile, sha256_of
from fusionrt.runtime.precision import parse_precision

__all__ = ["BuildResult", "build_engines", "engine_folder"]

TIMING_CACHE = "timing.cache"


@dataclass(frozen=True)
class BuildResult:
    component: str
    record: EngineRecord
    skipped: bool  # the cache key matched an engine already built
    layers: dict  # layer type -> count in the parsed network (empty when skipped)
    seconds: float
    float_compute: dict = dataclasses.field(default_factory=dict)  # 'FP16' / 'FP32' -> float compute layers parsed


def _target(api: TrtApi, compute_capability: str | None) -> tuple:
    """(device tag, compute capability string) of the build target."""
    if compute_capability and api.builds_without_gpu:
        return f"sm{compute_capability.replace('.', '')}", compute_capability
    from fusionrt.runtime import cuda

    if cuda.device_count() == 0:
        hint = ("pass --compute-capability 8.9 (or another it targets) to build without a GPU" if api.builds_without_gpu
                else "TensorRT builds on the GPU the engine will run on; build there, or use --target tensorrt-rtx "
                     "--compute-capability X.Y to build TensorRT-RTX engines on a CPU")
        raise BackendUnavailable(f"no CUDA GPU found: {hint}.")
    (major, minor), name = cuda.compute_capability(0)
    if compute_capability and compute_capability != f"{major}.{minor}":
        raise BackendUnavailable(f"{api.product} builds for the GPU it runs on ({name}, {major}.{minor}), not "
                                 f"{compute_capability}: drop --compute-capability or build on such a GPU.")
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return f"{slug}-sm{major}{minor}", f"{major}.{minor}"


CONTEXTS = 2  # optimization profiles per engine by default: a pipeline and one clone may run it at once


def engine_folder(api: TrtApi, device: str) -> str:
    return f"engines/{api.product}-{api.version}-{device}"


def _cache_key(onnx_sha: str, api: TrtApi, device: str, precision: str, profile: Profile,
               capturable: bool = False, contexts: int = 1) -> str:
    parts = [onnx_sha, api.product, str(api.version), device, precision, profile.to_dict()] + (["capturable"] if
                                                                                                capturable else [])
    parts += [f"contexts={contexts}"] if contexts != 1 else []
    blob = json.dumps(parts, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _layer_counts(network) -> dict:
    counts = {}
    for i in range(network.num_layers):
        name = network.get_layer(i).type.name
        counts[name] = counts.get(name, 0) + 1
    return counts


_COMPUTE = ("CONVOLUTION", "MATRIX_MULTIPLY", "ELEMENTWISE", "ACTIVATION", "NORMALIZATION", "SOFTMAX", "REDUCE",
            "POOLING", "UNARY")


def _float_compute(network) -> dict:
    """How many of the parsed network's float compute layers give FP16 and FP32 (a strongly typed network runs each
    at its output's type; a Q/DQ layer's INT8 math shows as the float it dequantizes to)."""
    counts = {}
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type.name in _COMPUTE and layer.num_outputs:
            kind = {"HALF": "FP16", "FLOAT": "FP32", "BF16": "BF16"}.get(layer.get_output(0).dtype.name)
            if kind:
                counts[kind] = counts.get(kind, 0) + 1
    return counts


def _build_one(api: TrtApi, logger, onnx_name: str, onnx: bytes, comp, precision: str, profile: Profile, cc,
               folder: Path, workspace_mib: int | None, capturable: bool = False, contexts: int = 1) -> tuple:
    """(plan bytes, layer counts, float compute counts) of one engine, parsed from `onnx`: the bytes whose sha256 was
    just checked."""
    trt = api.trt
    builder = trt.Builder(logger)
    network = api.create_network(builder)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BundleError(f"{api.product} {api.version} could not parse {onnx_name}: {errors}")
    config = builder.create_builder_config()
    if capturable:
        api.set_capturable(config)
    api.set_precision(config, precision)
    api.set_target(config, cc)
    if workspace_mib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    for _ in range(contexts):  # identical profiles: TensorRT runs one context per profile at once
        optimization = builder.create_optimization_profile()
        for spec in comp.inputs:
            optimization.set_shape(spec.name, *profile.shapes_for(spec))
        if config.add_optimization_profile(optimization) < 0:
            raise BundleError(f"{api.product} refused the optimization profile of {onnx_name}: {profile.to_dict()}.")
    cache_file = folder / TIMING_CACHE
    timing = None
    if api.has_timing_cache:
        timing = config.create_timing_cache(cache_file.read_bytes() if cache_file.is_file() else b"")
        if not config.set_timing_cache(timing, ignore_mismatch=False):  # one of another TensorRT or GPU: start anew
            timing = config.create_timing_cache(b"")
            config.set_timing_cache(timing, ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise BackendUnavailable(f"{api.product} {api.version} failed to build {onnx_name} at {precision} "
                                 "(its log above says why).")
    if timing is not None:
        _write_atomic(cache_file, bytes(timing.serialize()))
    return bytes(plan), _layer_counts(network), _float_compute(network)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f"{TEMP_PREFIX}{path.name}")  # removed by the next writer if we are killed first
    tmp.write_bytes(data)
    os.replace(tmp, path)


def build_engines(bundle_dir, product: str = "tensorrt", precision: str = "auto", batch: tuple | None = None,
                  seq: tuple | None = None, compute_capability: str | None = None, force: bool = False,
                  workspace_mib: int | None = None, verbose: bool = False, cuda_graphs: bool = False,
                  contexts: int = CONTEXTS) -> list:
    """Build (or skip, when unchanged) one engine per component; returns a BuildResult per component. The engines and
    their records are committed together, under the bundle's write lock. contexts: identical optimization profiles,
    so that many execution contexts (a pipeline and its clones) may run the engine at once."""
    api = load_api(product)
    if type(contexts) is not int or contexts < 1:
        raise BundleError(f"contexts: expected a whole number >= 1, found {contexts!r}.")
    with update_bundle(Bundle.open(bundle_dir), "build") as update:
        return _build_all(update, api, precision, batch, seq, compute_capability, force, workspace_mib, verbose,
                          cuda_graphs, contexts)


def _build_all(update, api: TrtApi, precision: str, batch, seq, compute_capability, force: bool, workspace_mib,
               verbose: bool, cuda_graphs: bool = False, contexts: int = CONTEXTS) -> list:
    bundle = update.current
    m = bundle.manifest
    profile = Profile(tuple(batch or m.profile.batch), tuple(seq or m.profile.seq))
    Profile.from_dict(profile.to_dict()).check_seq(m.tokenizer.max_seq_len)  # validates the ranges
    precisions = parse_precision(None if precision == "auto" else precision, default=m.precision_for("int8-trt"))
    device, cc = _target(api, compute_capability)
    rel_folder = engine_folder(api, device)
    folder = bundle.root / rel_folder
    folder.mkdir(parents=True, exist_ok=True)
    logger = api.trt.Logger(api.trt.Logger.INFO if verbose else api.trt.Logger.WARNING)
    results, components = [], dict(m.components)
    for name in COMPONENTS:
        comp, prec = components[name], precisions[name]
        flavour = api.onnx_flavour(prec, comp.files)
        if flavour not in comp.files:
            raise BundleError(f"{name}: a {prec} engine for {api.product} {api.version} is built from the bundle's "
                              f"'{flavour}' model, which it lacks (has {sorted(comp.files)}): run `fusionrt calibrate` first.")
        source = comp.files[flavour]
        key = _cache_key(source.sha256, api, device, prec, profile, cuda_graphs, contexts)
        known = next((e for e in comp.engines if e.cache_key == key), None)
        if not force and known and (bundle.root / known.path).is_file() \
                and sha256_of(bundle.root / known.path) == known.sha256:
            results.append(BuildResult(name, known, True, {}, 0.0))
            continue
        started = time.perf_counter()
        plan, layers, float_compute = _build_one(api, logger, source.path, bundle.read(source.path, source.sha256),
                                                 comp, prec, profile, cc, folder, workspace_mib, cuda_graphs, contexts)
        staged = update.stage(f"{rel_folder}/{name}.{prec}.plan")
        staged.path.write_bytes(plan)
        record = EngineRecord(staged.name, hashlib.sha256(plan).hexdigest(), api.product, str(api.version), device,
                              cc or "", prec, profile.to_dict(), key, capturable=cuda_graphs, contexts=contexts)
        # one engine per product, version, GPU and precision: the one it replaces is deleted at the commit
        same_slot = (api.product, str(api.version), device, prec)
        engines = tuple(e for e in comp.engines if (e.product, e.version, e.device, e.precision) != same_slot) + (record,)
        components[name] = dataclasses.replace(comp, engines=engines)
        results.append(BuildResult(name, record, False, layers, time.perf_counter() - started, float_compute))
    if any(not r.skipped for r in results):
        update.commit(dataclasses.replace(m, components=components))
    return results
