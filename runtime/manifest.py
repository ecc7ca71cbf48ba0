"""The bundle manifest: frozen dataclasses, validated on load, written as JSON.

A manifest is never edited in place: callers build a new one with `dataclasses.replace` and
write it whole, so a reader never sees a half-updated bundle.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from fusionrt.runtime.errors import BundleError
from fusionrt.runtime.wiring import Wiring

__all__ = [
    "SCHEMA_VERSION",
    "COMPONENTS",
    "ENCODERS",
    "IMAGE_ENCODER",
    "TEXT_ENCODER",
    "FUSION_HEAD",
    "BATCH_PROFILE",
    "INT8_TARGETS",
    "TensorSpec",
    "ModelFile",
    "EngineRecord",
    "Component",
    "PreprocessSpec",
    "TokenizerSpec",
    "Profile",
    "Candidate",
    "Policy",
    "Manifest",
    "sha256_of",
]

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
IMAGE_ENCODER, TEXT_ENCODER, FUSION_HEAD = "image_encoder", "text_encoder", "fusion_head"
COMPONENTS = (IMAGE_ENCODER, TEXT_ENCODER, FUSION_HEAD)
ENCODERS = (IMAGE_ENCODER, TEXT_ENCODER)
BATCH_PROFILE = (1, 8, 32)  # the default optimization profile's batch (min, opt, max)
# Precision flavours a component file may exist in. int8 has one file per target: ONNX Runtime's CPU
# kernels are fast on U8S8, TensorRT needs symmetric S8S8 with float biases.
# int8-trt-fp16: the Q/DQ graph on FP16; int8-ov: NNCF's INT8 for OpenVINO, an IR (.xml + .bin)
FLAVOURS = ("fp32", "fp16", "int8-cpu", "int8-trt", "int8-trt-fp16", "int8-ov")
INT8_FLOATS = ("fp32", "bf16")  # the floats under int8-ov's INT8 parts a policy may name (Policy.int8_float)
# policies per target: ONNX Runtime's CPU kernels, TensorRT's Q/DQ arithmetic, OpenVINO's kernels (measured there)
INT8_TARGETS = ("int8-cpu", "int8-trt", "int8-ov")
FP32_POLICY_REASON = "no calibrated policy for this target: FP32 (run `fusionrt calibrate` where it runs)"
DTYPES = ("float32", "float16", "int64", "int32", "uint8")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _need(data: Mapping, key: str, where: str, kind=None):
    if not isinstance(data, Mapping) or key not in data:
        raise BundleError(f"manifest: expected key '{key}' in {where}, found none. Re-export the bundle with `fusionrt export`.")
    value = data[key]
    if kind is not None and not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise BundleError(
            f"manifest: expected {where}.{key} to be {names}, found {type(value).__name__} ({value!r:.60}). "
            "Re-export the bundle with `fusionrt export`."
        )
    return value


def _precision_map(value, where: str) -> dict:
    if not isinstance(value, Mapping):
        raise BundleError(f"manifest: {where} must map components to precisions, found {value!r:.60}.")
    for comp, prec in value.items():
        if comp not in COMPONENTS or prec not in ("fp32", "fp16", "int8"):
            raise BundleError(f"manifest: {where} entry {comp}={prec} invalid; expected components {COMPONENTS} "
                              "and fp32|fp16|int8.")
    return dict(value)


def _kept_float(value, where: str) -> dict:
    """component -> [{"node", "why"}]: the layers a policy keeps out of INT8, and why."""
    if not isinstance(value, Mapping) or not all(
            comp in COMPONENTS and isinstance(items, list) and all(
                isinstance(e, Mapping) and isinstance(e.get("node"), str) and isinstance(e.get("why"), str)
                for e in items) for comp, items in value.items()):
        raise BundleError(f"manifest: {where}.kept_float must map components to lists of {{node, why}}, found "
                          f"{value!r:.80}. Re-run `fusionrt calibrate`.")
    return {comp: [{"node": e["node"], "why": e["why"]} for e in items] for comp, items in value.items()}


@dataclass(frozen=True)
class TensorSpec:
    """A named tensor; `shape` holds ints for fixed axes and names (e.g. 'batch') for dynamic ones."""

    name: str
    dtype: str
    shape: tuple

    @classmethod
    def from_dict(cls, d: Mapping, where: str) -> "TensorSpec":
        dtype = _need(d, "dtype", where, str)
        if dtype not in DTYPES:
            raise BundleError(f"manifest: {where}.dtype must be one of {DTYPES}, found '{dtype}'.")
        shape = tuple(_need(d, "shape", where, list))
        if not all(isinstance(s, (int, str)) for s in shape):
            raise BundleError(f"manifest: {where}.shape must hold ints and axis names, found {shape}.")
        return cls(_need(d, "name", where, str), dtype, shape)

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class ModelFile:
    """A model file; an OpenVINO IR (int8-ov) also has its weights, the .bin beside the .xml, hashed like it."""

    path: str
    sha256: str
    weights: str | None = None
    weights_sha256: str | None = None

    @classmethod
    def from_dict(cls, d: Mapping, where: str) -> "ModelFile":
        if "weights" not in d:
            return cls(_need(d, "path", where, str), _need(d, "sha256", where, str))
        return cls(_need(d, "path", where, str), _need(d, "sha256", where, str), _need(d, "weights", where, str),
                   _need(d, "weights_sha256", where, str))

    def to_dict(self) -> dict:
        extra = {"weights": self.weights, "weights_sha256": self.weights_sha256} if self.weights else {}
        return {"path": self.path, "sha256": self.sha256, **extra}

    def hashed(self) -> dict:
        """Its files, relative path -> sha256."""
        return {self.path: self.sha256, **({self.weights: self.weights_sha256} if self.weights else {})}


@dataclass(frozen=True)
class EngineRecord:
    """A serialized TensorRT engine and what it was built for (checked before deserializing)."""

    path: str
    sha256: str
    product: str  # "tensorrt" | "tensorrt_rtx"
    version: str
    device: str  # GPU name or "sm<cc>" it targets
    compute_capability: str  # "9.0"; "" where the builder targets several
    precision: str
    profile: Mapping[str, list]
    cache_key: str
    capturable: bool = False  # built stream-capturable (TensorRT-RTX needs it for CUDA graphs)
    contexts: int = 1  # identical optimization profiles: how many execution contexts may run it at once

    @classmethod
    def from_dict(cls, d: Mapping, where: str) -> "EngineRecord":
        optional = {"capturable", "contexts"}  # engines recorded before they were are neither
        return cls(**{f.name: _need(d, f.name, where) for f in dataclasses.fields(cls) if f.name not in optional},
                   capturable=bool(d.get("capturable", False)), contexts=int(d.get("contexts", 1)))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Component:
    name: str
    files: Mapping[str, ModelFile]  # flavour -> file; "fp32" always present
    inputs: tuple
    outputs: tuple
    engines: tuple = ()

    @classmethod
    def from_dict(cls, name: str, d: Mapping) -> "Component":
        where = f"components.{name}"
        files = _need(d, "files", where, dict)
        if "fp32" not in files:
            raise BundleError(f"manifest: {where}.files must hold an 'fp32' ONNX file, found {sorted(files)}.")
        unknown = set(files) - set(FLAVOURS)
        if unknown:
            raise BundleError(f"manifest: {where}.files has unknown flavours {sorted(unknown)}; expected some of {FLAVOURS}.")
        return cls(
            name=name,
            files={k: ModelFile.from_dict(v, f"{where}.files.{k}") for k, v in files.items()},
            inputs=tuple(TensorSpec.from_dict(t, f"{where}.inputs") for t in _need(d, "inputs", where, list)),
            outputs=tuple(TensorSpec.from_dict(t, f"{where}.outputs") for t in _need(d, "outputs", where, list)),
            engines=tuple(EngineRecord.from_dict(e, f"{where}.engines") for e in d.get("engines", [])),
        )

    def to_dict(self) -> dict:
        return {
            "files": {k: v.to_dict() for k, v in self.files.items()},
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "engines": [e.to_dict() for e in self.engines],
        }


@dataclass(frozen=True)
class PreprocessSpec:
    """How a BGR uint8 frame becomes the image encoder's NCHW float32 input."""

    height: int
    width: int
    mean: tuple  # per RGB channel, on the 0..1 scale
    std: tuple
    interpolation: str = "linear"  # "linear" upscaling; downscaling always uses area averaging
    channel_order: str = "rgb"  # what the image encoder takes: "rgb" (torchvision, timm) or "bgr" (frames as OpenCV has them)

    @classmethod
    def from_dict(cls, d: Mapping) -> "PreprocessSpec":
        where = "preprocess"
        spec = cls(
            height=_need(d, "height", where, int),
            width=_need(d, "width", where, int),
            mean=tuple(_need(d, "mean", where, list)),
            std=tuple(_need(d, "std", where, list)),
            interpolation=d.get("interpolation", "linear"),
            channel_order=d.get("channel_order", "rgb"),
        )
        if spec.height < 1 or spec.width < 1:
            raise BundleError(f"manifest: preprocess height/width must be >= 1, found {spec.height}x{spec.width}.")
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (*spec.mean, *spec.std))
        if len(spec.mean) != 3 or len(spec.std) != 3 or not numbers or min(spec.std) <= 0:
            raise BundleError(f"manifest: preprocess mean/std must be 3 values with std > 0, found {spec.mean} / {spec.std}.")
        if spec.channel_order not in ("rgb", "bgr"):
            raise BundleError(f"manifest: preprocess.channel_order must be rgb|bgr, found '{spec.channel_order}'.")
        if spec.interpolation not in ("linear", "cubic", "area"):
            raise BundleError(f"manifest: preprocess.interpolation must be linear|cubic|area, found '{spec.interpolation}'.")
        return spec

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "mean": list(self.mean), "std": list(self.std)}


@dataclass(frozen=True)
class TokenizerSpec:
    file: str
    max_seq_len: int
    sha256: str

    @classmethod
    def from_dict(cls, d: Mapping) -> "TokenizerSpec":
        return cls(
            _need(d, "file", "tokenizer", str), _need(d, "max_seq_len", "tokenizer", int), _need(d, "sha256", "tokenizer", str)
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Profile:
    """Optimization-profile ranges (min, opt, max) for the dynamic axes."""

    batch: tuple = BATCH_PROFILE
    seq: tuple = (1, 64, 128)

    @classmethod
    def from_dict(cls, d: Mapping) -> "Profile":
        prof = cls(tuple(_need(d, "batch", "profile", list)), tuple(_need(d, "seq", "profile", list)))
        for axis, rng in (("batch", prof.batch), ("seq", prof.seq)):
            if len(rng) != 3 or not all(type(v) is int for v in rng) or not (1 <= rng[0] <= rng[1] <= rng[2]):
                raise BundleError(f"manifest: profile.{axis} must be [min, opt, max] with 1 <= min <= opt <= max, found {list(rng)}.")
        return prof

    def to_dict(self) -> dict:
        return {"batch": list(self.batch), "seq": list(self.seq)}

    def shapes_for(self, spec: "TensorSpec") -> tuple:
        """(min, opt, max) shapes of one input: named axes take the batch or sequence range."""
        shapes = []
        for i in range(3):
            dims = []
            for axis in spec.shape:
                if isinstance(axis, int):
                    dims.append(axis)
                elif axis == "batch":
                    dims.append(self.batch[i])
                elif axis in ("seq", "sequence"):
                    dims.append(self.seq[i])
                else:
                    raise BundleError(f"input '{spec.name}': dynamic axis '{axis}' has no profile range; expected "
                                      "'batch' or 'sequence'.")
            shapes.append(tuple(dims))
        return tuple(shapes)

    @classmethod
    def for_text(cls, max_seq_len: int, batch: tuple = BATCH_PROFILE) -> "Profile":
        """Text lengths up to the tokenizer's limit, tuned for 64 tokens (or the limit, when shorter)."""
        return cls(tuple(batch), (1, min(64, max_seq_len), max_seq_len))

    def check_seq(self, max_seq_len: int) -> "Profile":
        """Raise when the sequence range goes past the tokenizer's limit: no input is ever longer, and an engine
        built for longer ones indexes past the text encoder's position embeddings."""
        if self.seq[2] > max_seq_len:
            low, opt = min(self.seq[0], max_seq_len), min(self.seq[1], max_seq_len)
            raise BundleError(f"profile seq max {self.seq[2]} is longer than the tokenizer's max_seq_len "
                              f"{max_seq_len}: expected MAX <= {max_seq_len}. Pass --seq {low}:{opt}:{max_seq_len}.")
        return self


@dataclass(frozen=True)
class Candidate:
    """One configuration of a target that passed the criterion at calibration: the loading machine's tuning
    (`fusionrt.runtime.tune`) picks the fastest of them there."""

    precision: Mapping[str, str]  # component -> fp32 | fp16 | int8
    agreement: float  # top-1 agreement with FP32 on the report split
    flips: int
    samples: int
    batch_invariant: bool  # a row's logits alone and in any padded batch agree within round-off (BATCH_TOLERANCE)
    batch_deviation: float  # the largest |logit| difference measured between a row alone and in a batch
    model_ms: float | None = None  # the configuration's model time on the report split, calibrating machine

    @classmethod
    def from_dict(cls, d: Mapping, where: str) -> "Candidate":
        return cls(_precision_map(_need(d, "precision", where, dict), f"{where}.precision"),
                   float(_need(d, "agreement", where, (int, float))), int(_need(d, "flips", where, int)),
                   int(_need(d, "samples", where, int)), bool(_need(d, "batch_invariant", where, bool)),
                   float(_need(d, "batch_deviation", where, (int, float))),
                   None if d.get("model_ms") is None else float(d["model_ms"]))

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "precision": dict(self.precision)}


@dataclass(frozen=True)
class Policy:
    """A target's calibrated precisions: `precision` is calibration's choice (the fastest as measured there, or an
    estimate where it could not time the target), `candidates` every configuration that passed."""

    precision: Mapping[str, str]
    reason: str
    kept_float: Mapping[str, tuple] = field(default_factory=dict)  # component -> ({"node", "why"}, ...)
    candidates: tuple = ()  # Candidate, calibration's choice first
    # the arithmetic judged is the one every CPU computes (int8-cpu's 7-bit weights; int8-trt's exact emulation);
    # False: it depends on the kernels of the CPU kind it was judged on (`measured_on`, a CpuKind as a dict)
    portable: bool = True
    measured_on: Mapping[str, Any] = field(default_factory=dict)
    # int8-ov: the float under its INT8 parts on a CPU, as judged: 'fp32', 'bf16' (the CPU's BF16, where it has it)
    # or '' (a bundle from before the choice was recorded: the CPU's own 16-bit float)
    int8_float: str = ""

    @classmethod
    def from_dict(cls, d: Mapping, where: str, calibration: Mapping | None = None) -> "Policy":
        """`calibration`: the manifest's calibration record, for a policy written before `portable` was (its int8-cpu
        files had 8-bit weights, whose sums saturate without VNNI: they hold on CPUs like the one that judged them)."""
        if not isinstance(d, Mapping):
            raise BundleError(f"manifest: {where} must be a mapping with precision and reason, found {d!r:.60}.")
        kept = _kept_float(d["kept_float"], where) if "kept_float" in d else {}
        calibration = calibration or {}
        old_kind = {"label": calibration.get("cpu", ""), "vnni": calibration.get("cpu_vnni")}
        return cls(_precision_map(_need(d, "precision", where, dict), f"{where}.precision"), str(d.get("reason", "")),
                   {c: tuple(v) for c, v in kept.items()},
                   tuple(Candidate.from_dict(c, f"{where}.candidates") for c in d.get("candidates", [])),
                   bool(d.get("portable", where.endswith("int8-trt"))), dict(d.get("measured_on", old_kind)),
                   _int8_float(d.get("int8_float", ""), where))

    def to_dict(self) -> dict:
        return {"precision": dict(self.precision), "reason": self.reason,
                "kept_float": {c: [dict(e) for e in v] for c, v in self.kept_float.items()},
                "candidates": [c.to_dict() for c in self.candidates], "portable": self.portable,
                "measured_on": dict(self.measured_on), **({"int8_float": self.int8_float} if self.int8_float else {})}


def _int8_float(value, where: str) -> str:
    if value not in ("", *INT8_FLOATS):
        raise BundleError(f"manifest: {where}.int8_float expected 'fp32' or 'bf16', found {value!r:.40}. Run "
                          "`fusionrt calibrate` again.")
    return value


@dataclass(frozen=True)
class Manifest:
    labels: tuple
    preprocess: PreprocessSpec
    tokenizer: TokenizerSpec
    components: Mapping[str, Component]
    profile: Profile = Profile()
    precision: Mapping[str, str] = field(default_factory=lambda: {c: "fp32" for c in COMPONENTS})
    precision_reason: str = "exported FP32; run `fusionrt calibrate` for INT8"
    # per INT8 target ('int8-cpu', 'int8-trt', 'int8-ov'): different arithmetic on different hardware, so each has
    # its own Policy; `precision` is the ONNX Runtime CPU one (the default runtime).
    policies: Mapping[str, Policy] = field(default_factory=dict)
    parity: Mapping[str, Any] = field(default_factory=dict)
    fidelity: Mapping[str, Any] = field(default_factory=dict)
    calibration: Mapping[str, Any] = field(default_factory=dict)
    producer: Mapping[str, str] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    # -- reading ---------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: Mapping) -> "Manifest":
        """Validated: anything malformed is a BundleError (a bad value of a type no check names included)."""
        try:
            return cls._from_dict(d)
        except BundleError:
            raise
        except (TypeError, ValueError, AttributeError, KeyError, IndexError) as exc:
            raise BundleError(f"manifest: malformed ({type(exc).__name__}: {exc}); expected the structure "
                              "`fusionrt export` writes. Re-export the bundle.") from exc

    @classmethod
    def _from_dict(cls, d: Mapping) -> "Manifest":
        version = _need(d, "schema_version", "the manifest", int)
        if version != SCHEMA_VERSION:
            raise BundleError(
                f"manifest: schema_version {SCHEMA_VERSION} expected, found {version}. "
                "Re-export the bundle with this fusionrt version (`fusionrt export`)."
            )
        components = _need(d, "components", "the manifest", dict)
        missing = [c for c in COMPONENTS if c not in components]
        if missing:
            raise BundleError(f"manifest: components {missing} missing; expected {list(COMPONENTS)}. Re-export the bundle.")
        labels = tuple(_need(d, "labels", "the manifest", list))
        if len(labels) < 2 or not all(isinstance(x, str) for x in labels) or len(set(labels)) != len(labels):
            raise BundleError(f"manifest: expected 2 or more distinct labels, found {list(labels)}.")
        precision = _precision_map(d.get("precision", {c: "fp32" for c in COMPONENTS}), "precision")
        policies = {}
        for target, policy in dict(d.get("policies", {})).items():
            if target not in INT8_TARGETS or not isinstance(policy, Mapping):
                raise BundleError(f"manifest: policies entry '{target}' invalid; expected some of {INT8_TARGETS}, each "
                                  "with precision and reason. Re-run `fusionrt calibrate`.")
            policies[target] = Policy.from_dict(policy, f"policies.{target}", d.get("calibration", {}))
        manifest = cls(
            labels=labels,
            preprocess=PreprocessSpec.from_dict(_need(d, "preprocess", "the manifest", dict)),
            tokenizer=TokenizerSpec.from_dict(_need(d, "tokenizer", "the manifest", dict)),
            components={c: Component.from_dict(c, components[c]) for c in COMPONENTS},
            profile=Profile.from_dict(d.get("profile", Profile().to_dict())),
            precision=precision,
            precision_reason=d.get("precision_reason", ""),
            policies=policies,
            parity=d.get("parity", {}),
            fidelity=d.get("fidelity", {}),
            calibration=d.get("calibration", {}),
            producer=d.get("producer", {}),
            schema_version=version,
        )
        manifest.wiring  # the components must connect by name: a conflict raises here, at load
        return manifest

    @classmethod
    def read(cls, bundle_dir: Path) -> "Manifest":
        path = Path(bundle_dir) / MANIFEST_NAME
        if not path.is_file():
            raise BundleError(
                f"no {MANIFEST_NAME} in '{bundle_dir}': expected a bundle directory written by `fusionrt export`. "
                "Check the path or export a bundle first."
            )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BundleError(f"{path} is not valid JSON ({exc}). Re-export the bundle with `fusionrt export`.") from exc
        return cls.from_dict(data)

    # -- writing ---------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "schema_version": self.schema_version,
            "labels": list(self.labels),
            "preprocess": self.preprocess.to_dict(),
            "tokenizer": self.tokenizer.to_dict(),
            "profile": self.profile.to_dict(),
            "components": {k: v.to_dict() for k, v in self.components.items()},
            "precision": dict(self.precision),
            "precision_reason": self.precision_reason,
            "policies": {t: p.to_dict() for t, p in self.policies.items()},
            "parity": dict(self.parity),
            "fidelity": dict(self.fidelity),
            "calibration": dict(self.calibration),
            "producer": dict(self.producer),
            "files": self.files(),
        }

    def write(self, bundle_dir: Path) -> Path:
        """Write atomically (temp file + rename) so a reader never sees half a manifest."""
        path = Path(bundle_dir) / MANIFEST_NAME
        tmp = path.with_name(f".fusionrt-tmp-{MANIFEST_NAME}")
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(self.to_dict(), indent=2) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        return path

    # -- queries ---------------------------------------------------------------------------------
    @property
    def wiring(self) -> Wiring:
        """Which tensor feeds which, by the components' tensor names."""
        return Wiring.of(*(self.components[c] for c in COMPONENTS))

    def files(self) -> dict:
        """Every file the bundle's models need, relative path -> sha256."""
        out = {self.tokenizer.file: self.tokenizer.sha256}
        for comp in self.components.values():
            for f in comp.files.values():
                out.update(f.hashed())
            out.update({e.path: e.sha256 for e in comp.engines})
        return dict(sorted(out.items()))

    def precision_for(self, target: str) -> dict:
        """Calibration's choice for a target ('int8-cpu' | 'int8-trt' | 'int8-ov'); FP32 where that target was never
        judged (a policy judged on other arithmetic is never borrowed)."""
        policy = self.policies.get(target)
        return dict(policy.precision) if policy else {c: "fp32" for c in COMPONENTS}

    def int8_float_for(self, target: str) -> str | None:
        """The float under `target`'s INT8 parts as its policy was judged ('fp32', 'bf16'), for the resolver's
        `int8_float`; None where the policy does not say (the CPU's own 16-bit float)."""
        policy = self.policies.get(target)
        return (policy.int8_float or None) if policy else None

    def reason_for(self, target: str) -> str:
        policy = self.policies.get(target)
        if policy:
            return policy.reason
        return self.precision_reason if not self.policies else FP32_POLICY_REASON

    def candidates_for(self, target: str) -> tuple:
        """Every configuration of `target` that passed the criterion (Candidate), calibration's choice first; () where
        the target was never judged or the bundle predates candidates."""
        policy = self.policies.get(target)
        return tuple(policy.candidates) if policy else ()

    def with_component(self, comp: Component) -> "Manifest":
        return dataclasses.replace(self, components={**self.components, comp.name: comp})
