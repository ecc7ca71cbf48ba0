"""A Triton Inference Server model repository from a bundle (`fusionrt triton`).

Five models: `preprocess` (Triton's Python backend running fusionrt's own preprocessing and tokenizer, so clients
send encoded image bytes and UTF-8 text), `image_encoder`, `text_encoder`, `fusion_head` (the bundle's files at the
chosen precision, on the chosen Triton backend), and the ensemble `fusionrt` that wires them: both branches after
`preprocess`, in parallel, the head after both. Tensor names, dtypes and shapes come from the manifest.

Triton batches requests only when their shapes agree, so `preprocess` pads token ids to a multiple of `seq_bucket`:
texts of similar length then batch together in the text encoder (the attention mask keeps the answers the same)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from fusionrt.runtime.bundle import Bundle
from fusionrt.bundling.staging import TEMP_PREFIX, replace_directory
from fusionrt.runtime.errors import BundleError, InputError
from fusionrt.runtime.manifest import COMPONENTS, FUSION_HEAD, IMAGE_ENCODER, TEXT_ENCODER, TensorSpec
from fusionrt.runtime.precision import parse_precision
from fusionrt.runtime.resolve import resolve
from fusionrt.serving.pbtxt import Enum, dumps

__all__ = ["RepositoryOptions", "write_repository", "PLATFORMS", "ENSEMBLE", "PREPROCESS", "IMAGE", "TEXT"]

PLATFORMS = ("onnxruntime", "tensorrt", "openvino", "python")
ENSEMBLE, PREPROCESS = "fusionrt", "preprocess"
IMAGE, TEXT = "IMAGE", "TEXT"  # the ensemble's inputs: encoded image bytes, UTF-8 text
TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64", "int32": "TYPE_INT32",
                "uint8": "TYPE_UINT8"}
# The fusionrt backend whose arithmetic each platform's instances compute (CPU device, GPU device): the resolver
# then says which file, which float and which hints, as for the embedded runtime.
_RUNS_AS = {"onnxruntime": ("onnxruntime", "cpu", "cuda"), "python": ("onnxruntime", "cpu", "cpu"),
            "openvino": ("openvino", "CPU", "GPU"), "tensorrt": ("tensorrt", "gpu", "gpu")}
MARKER = ".fusionrt-repository.json"  # what `--overwrite` checks before it replaces a folder


@dataclass(frozen=True)
class RepositoryOptions:
    platform: str = "onnxruntime"  # the Triton backend that runs the three components (see PLATFORMS)
    max_batch: int | None = None  # None: the bundle's profile maximum (or the engines' for tensorrt)
    instances: int = 1  # model instances of each component (instance_group count)
    precision: str | None = None  # None / 'auto': the calibrated policy for the platform; or 'fp32', 'image=int8,...'
    device: str | None = None  # 'cpu' | 'gpu' instances; None: gpu for tensorrt, cpu for the others
    queue_delay_us: int = 1000  # how long the dynamic batcher waits for a fuller batch
    seq_bucket: int = 16  # token ids are padded to a multiple of this, so similar texts batch together
    engines: str | None = None  # tensorrt: which engine set (folder under the bundle's engines/)
    threads: int = 0  # python platform: ONNX Runtime intra-op threads per instance (0: its default)
    max_pixels: int | None = None  # preprocess refuses an encoded image past this many pixels, undecoded (None: the
    # runtime's default, FUSIONRT_MAX_PIXELS in the server's environment or MAX_PIXELS)

    def checked(self) -> "RepositoryOptions":
        if self.platform not in PLATFORMS:
            raise InputError(f"platform: expected one of {list(PLATFORMS)}, found '{self.platform}'.")
        if self.device not in (None, "cpu", "gpu"):
            raise InputError(f"device: expected 'cpu' or 'gpu', found '{self.device}'.")
        if self.platform == "tensorrt" and self.device == "cpu":
            raise InputError("platform 'tensorrt' runs on GPU instances: drop --device cpu, or choose --platform "
                             "onnxruntime, openvino or python for CPU instances.")
        optional = tuple(n for n in ("max_batch", "max_pixels") if getattr(self, n) is not None)
        for name in ("instances", "seq_bucket") + optional:
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise InputError(f"{name}: expected a whole number >= 1, found {value!r}.")
        if type(self.queue_delay_us) is not int or self.queue_delay_us < 0:
            raise InputError(f"queue_delay_us: expected a whole number >= 0, found {self.queue_delay_us!r}.")
        return self

    @property
    def instance_kind(self) -> str:
        """Triton's instance_group kind: KIND_GPU or KIND_CPU."""
        device = self.device or ("gpu" if self.platform == "tensorrt" else "cpu")
        return "KIND_GPU" if device == "gpu" else "KIND_CPU"

    def execution(self, precision: str, available=None, int8_float=None):
        """What an instance of this platform computes for a part at `precision` (`fusionrt.runtime.resolve`);
        int8_float: the float under INT8 parts its policy names (`Manifest.int8_float_for`)."""
        backend, cpu, gpu = _RUNS_AS[self.platform]
        return resolve(backend, precision, gpu if self.instance_kind == "KIND_GPU" else cpu, available=available,
                       int8_float=int8_float)


def write_repository(bundle, out, options: RepositoryOptions = RepositoryOptions(), overwrite: bool = False) -> dict:
    """Write the model repository at `out` (new or empty; with `overwrite`, a repository this wrote before).
    Returns a summary: platform, precision per component, max batch, the models written."""
    options = options.checked()
    bundle = bundle if isinstance(bundle, Bundle) else Bundle.open(bundle)
    out = Path(out)
    _check_target(out, overwrite)
    m = bundle.manifest
    wiring = m.wiring
    precision = parse_precision(options.precision, m.precision_for(options.execution("int8").target))
    engines = _engine_set(bundle, options) if options.platform == "tensorrt" else {}
    max_batch = _max_batch(m, options, engines)
    staging = out.with_name(f"{TEMP_PREFIX}{out.name}.{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        for name in COMPONENTS:
            comp = m.components[name]
            folder = staging / name / "1"
            folder.mkdir(parents=True)
            platform_config = _component_files(bundle, comp, precision[name], options, engines, folder)
            _write_config(staging / name, {
                "name": name, **platform_config, "max_batch_size": max_batch,
                "input": [_tensor(t) for t in comp.inputs], "output": [_tensor(t) for t in comp.outputs],
                **_batching(max_batch, options)})
        _write_preprocess(bundle, wiring, max_batch, options, staging / PREPROCESS)
        _write_ensemble(m, wiring, max_batch, staging / ENSEMBLE)
        summary = {"platform": options.platform, "precision": precision, "max_batch": max_batch,
                   "instances": options.instances, "kind": options.instance_kind, "bundle": str(bundle.root),
                   "models": [PREPROCESS, *COMPONENTS, ENSEMBLE], "ensemble": ENSEMBLE,
                   "options": dataclasses.asdict(options)}
        (staging / MARKER).write_text(json.dumps(summary, indent=2) + "\n")
        out.parent.mkdir(parents=True, exist_ok=True)
        replace_directory(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return summary


def _check_target(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise InputError(f"'{out}' is a file: expected a new or empty folder for the model repository.")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise InputError(f"'{out}' is not empty and is not a model repository fusionrt wrote: expected a new or "
                             "empty folder. Choose another --out (nothing was changed).")
        if not overwrite:
            raise InputError(f"'{out}' already holds a model repository: pass --overwrite to replace it.")


def _tensor(spec: TensorSpec) -> dict:
    """A config.pbtxt tensor: the batch axis (the first, when named 'batch') is Triton's, dynamic axes are -1."""
    dims = [d if isinstance(d, int) else -1 for d in spec.shape[1:]]
    return {"name": spec.name, "data_type": Enum(TRITON_TYPES[spec.dtype]), "dims": dims}


def _batching(max_batch: int, options: RepositoryOptions) -> dict:
    preferred = sorted({b for b in (1, 2, 4, 8, 16, 32, 64) if b <= max_batch} | {max_batch})[-3:]
    return {"dynamic_batching": {"preferred_batch_size": preferred,
                                 "max_queue_delay_microseconds": options.queue_delay_us},
            "instance_group": [{"count": options.instances, "kind": Enum(options.instance_kind)}]}


def _max_batch(m, options: RepositoryOptions, engines: dict) -> int:
    """The bundle's profile maximum, or the engines' (what they can run), or the user's, when that fits."""
    limit = min(r.profile["batch"][2] for r in engines.values()) if engines else m.profile.batch[2]
    if options.max_batch is None:
        return limit
    if engines and options.max_batch > limit:
        raise InputError(f"max_batch {options.max_batch} is larger than the engines' profile maximum {limit}: "
                         f"pass --max-batch {limit} or less, or rebuild with `fusionrt build --batch 1:8:{options.max_batch}`.")
    return options.max_batch


def _component_files(bundle, comp, precision: str, options: RepositoryOptions, engines: dict, folder: Path) -> dict:
    """Copy the component's model file into `folder` (version 1); return its backend's part of the config."""
    platform = options.platform
    if platform == "tensorrt":
        shutil.copyfile(bundle.file(engines[comp.name].path, engines[comp.name].sha256), folder / "model.plan")
        return {"platform": "tensorrt_plan"}
    target = options.execution("int8").target
    execution = options.execution(precision, comp.files, bundle.manifest.int8_float_for(target))
    flavour = _flavour(comp, precision, execution)
    record = comp.files[flavour]
    if record.weights:  # an OpenVINO IR (int8-ov): Triton's OpenVINO backend reads model.xml with model.bin beside it
        shutil.copyfile(bundle.file(record.path, record.sha256), folder / "model.xml")
        shutil.copyfile(bundle.file(record.weights, record.weights_sha256), folder / "model.bin")
    else:
        shutil.copyfile(bundle.file(record.path, record.sha256), folder / "model.onnx")
    if platform == "onnxruntime":
        return {"platform": "onnxruntime_onnx"}
    if platform == "openvino":  # the file and the float the resolver names, as the embedded OpenVINO backend runs them
        params = {"PERFORMANCE_HINT": "LATENCY", **execution.hints}
        return {"backend": "openvino", "default_model_filename": "model.xml" if record.weights else "model.onnx",
                "parameters": _parameters(params)}
    specs = {"inputs": [t.to_dict() for t in comp.inputs], "outputs": [t.to_dict() for t in comp.outputs],
             "threads": options.threads, "precision": precision, "flavour": flavour}
    (folder / "component.json").write_text(json.dumps(specs, indent=2) + "\n")
    _write_shim(folder, "ComponentModel")
    return {"backend": "python"}


def _flavour(comp, precision: str, execution) -> str:
    if execution.flavour not in comp.files:
        raise BundleError(f"{comp.name}: the bundle has no {execution.flavour} model for precision {precision} (it has "
                          f"{sorted(comp.files)}). Run `fusionrt calibrate BUNDLE --data DATA` for int8, or pass "
                          "--precision fp32.")
    return execution.flavour


def _engine_set(bundle, options: RepositoryOptions) -> dict:
    """component -> EngineRecord of one engine set (a folder under engines/), TensorRT's (not TensorRT-RTX's)."""
    sets: dict = {}
    for name in COMPONENTS:
        for record in bundle.manifest.components[name].engines:
            sets.setdefault(Path(record.path).parent.name, {})[name] = record
    complete = {k: v for k, v in sets.items() if len(v) == len(COMPONENTS)}
    if not complete:
        raise BundleError("platform 'tensorrt' serves the bundle's TensorRT engines, and it has none for all three "
                          "parts: build them on a GPU like the server's with `fusionrt build BUNDLE`, then run this again.")
    if options.engines is None and len(complete) > 1:
        raise InputError(f"the bundle has several engine sets {sorted(complete)}: choose the server GPU's with --engines.")
    key = options.engines or next(iter(complete))
    if key not in complete:
        raise InputError(f"--engines '{key}': expected one of the bundle's engine sets {sorted(complete)}.")
    chosen = complete[key]
    products = {r.product for r in chosen.values()}
    if products != {"tensorrt"}:
        raise BundleError(f"engine set '{key}' was built by {sorted(products)}: Triton's tensorrt_plan backend loads "
                          "TensorRT engines only. Build with `fusionrt build BUNDLE` (TensorRT) on the server's GPU.")
    return chosen


def _write_preprocess(bundle, wiring, max_batch: int, options: RepositoryOptions, folder: Path) -> None:
    m = bundle.manifest
    version = folder / "1"
    version.mkdir(parents=True)
    shutil.copyfile(bundle.file(m.tokenizer.file, m.tokenizer.sha256), version / "tokenizer.json")
    image_spec = m.components[IMAGE_ENCODER].inputs[0]
    text_specs = {t.name: t for t in m.components[TEXT_ENCODER].inputs}
    settings = {"preprocess": m.preprocess.to_dict(), "max_seq_len": m.tokenizer.max_seq_len,
                "seq_bucket": options.seq_bucket, "max_pixels": options.max_pixels, "image_input": IMAGE,
                "text_input": TEXT,
                "pixels": image_spec.to_dict(), "tokens": [text_specs[n].to_dict() for n in wiring.text_inputs]}
    (version / "preprocess.json").write_text(json.dumps(settings, indent=2) + "\n")
    _write_shim(version, "PreprocessModel")
    _write_config(folder, {
        "name": PREPROCESS, "backend": "python", "max_batch_size": max_batch,
        "input": [{"name": IMAGE, "data_type": Enum("TYPE_STRING"), "dims": [1]},
                  {"name": TEXT, "data_type": Enum("TYPE_STRING"), "dims": [1]}],
        "output": [_tensor(image_spec), *(_tensor(text_specs[n]) for n in wiring.text_inputs)],
        **_batching(max_batch, dataclasses.replace(options, device="cpu"))})


def _write_ensemble(m, wiring, max_batch: int, folder: Path) -> None:
    (folder / "1").mkdir(parents=True)
    comps = m.components
    logits = comps[FUSION_HEAD].outputs[0]

    def step(model: str, inputs, outputs) -> dict:
        return {"model_name": model, "model_version": -1,
                "input_map": [{"key": k, "value": v} for k, v in inputs],
                "output_map": [{"key": k, "value": v} for k, v in outputs]}

    names = lambda specs: [(t.name, t.name) for t in specs]  # noqa: E731 - tensors keep their manifest names
    _write_config(folder, {
        "name": ENSEMBLE, "platform": "ensemble", "max_batch_size": max_batch,
        "input": [{"name": IMAGE, "data_type": Enum("TYPE_STRING"), "dims": [1]},
                  {"name": TEXT, "data_type": Enum("TYPE_STRING"), "dims": [1]}],
        "output": [_tensor(logits)],
        "ensemble_scheduling": {"step": [
            step(PREPROCESS, [(IMAGE, IMAGE), (TEXT, TEXT)],
                 [(wiring.image_input, wiring.image_input), *((n, n) for n in wiring.text_inputs)]),
            step(IMAGE_ENCODER, names(comps[IMAGE_ENCODER].inputs), names(comps[IMAGE_ENCODER].outputs)),
            step(TEXT_ENCODER, names(comps[TEXT_ENCODER].inputs), names(comps[TEXT_ENCODER].outputs)),
            step(FUSION_HEAD, names(comps[FUSION_HEAD].inputs), names(comps[FUSION_HEAD].outputs)),
        ]},
        # what fusionrt.client reads back: the labels of the logits, and the tensor that holds them
        "parameters": _parameters({"labels": json.dumps(list(m.labels), ensure_ascii=False),
                                   "logits": logits.name, "image_input": IMAGE, "text_input": TEXT}),
    })


def _parameters(values: dict) -> list:
    return [{"key": k, "value": {"string_value": v}} for k, v in values.items()]


def _write_config(folder: Path, config: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.pbtxt").write_text(dumps(config))


def _write_shim(folder: Path, model_class: str) -> None:
    """model.py: Triton's Python backend loads `TritonPythonModel` from it; the code is fusionrt's, installed in the
    server's Python environment (one place to fix, one version to check)."""
    (folder / "model.py").write_text(
        f'"""Written by `fusionrt triton`: the model is fusionrt.serving.python_models.{model_class}."""\n\n'
        f"from fusionrt.serving.python_models import {model_class} as TritonPythonModel  # noqa: F401\n")
