"""INT8 for OpenVINO's own kernels (the `int8-ov` flavour): NNCF's post-training quantization of the OpenVINO model
read from a part's FP32 ONNX, saved as OpenVINO IR (.xml + .bin).

OpenVINO runs the symmetric Q/DQ ONNX written for TensorRT, but on a CPU without AMX it runs BERT's Q/DQ MatMuls
slower than its own FP32; NNCF's FakeQuantize graph is what its CPU plugin fuses into INT8 kernels on every x86 kind.
A part takes NNCF's default (performance) scheme, a text encoder `model_type=TRANSFORMER` (SmoothQuant, NNCF's
float for the attention's Softmax and LayerNorm); `ir_of` writes a Q/DQ file of our own recipe as IR instead (which
parts take which: calibration/openvino_target.py). The layers calibration's per-layer search
keeps float are NNCF's `ignored_scope`. Ranges are static (from the calibration batches), so an answer does not
depend on its batch companions. `compress_openvino` writes a part's INT8 weights with float math instead (NNCF's
weight compression), for where that runs faster than INT8 math."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from fusionrt.calibration.fallback import Fallback, search_fallback
from fusionrt.calibration.openvino_linear import linear_as_conv
from fusionrt.runtime.manifest import TEXT_ENCODER
from fusionrt.runtime.optional import is_available, require

__all__ = ["RECIPE", "available", "ir_of", "ov_names", "quantize_openvino", "compress_openvino", "quantize_parts",
           "OpenVINOInt8", "weights_of"]

RECIPE = 3  # bumped whenever what NNCF is asked to do changes
# OpenVINO's ONNX reader splits a Conv/Gemm with a bias into '<name>/WithoutBiases' + an Add named '<name>'
_BIAS_SPLIT = "/WithoutBiases"


def available() -> bool:
    """True when this machine can write the int8-ov flavour (openvino and nncf import)."""
    return is_available("openvino") and is_available("nncf")


def _nncf():
    return require("nncf", "OpenVINO INT8 calibration (the int8-ov flavour)")


def _ov():
    return require("openvino", "OpenVINO INT8 calibration (the int8-ov flavour)")


def weights_of(xml: Path) -> Path:
    """The .bin beside an IR's .xml."""
    return Path(xml).with_suffix(".bin")


def ov_names(model, onnx_nodes) -> list:
    """The OpenVINO op names of ONNX nodes (NNCF's ignored scope names ops as OpenVINO does): a node's own name,
    and the weighted op of a node OpenVINO split from its bias."""
    names = {op.get_friendly_name() for op in model.get_ops()}
    return sorted({n for node in onnx_nodes for n in (node, node + _BIAS_SPLIT) if n in names})


def quantize_openvino(onnx_path: Path, component: str, feeds: list, out_xml: Path, kept_float=(),
                      linear: str = "matmul") -> Path:
    """NNCF INT8 of the part in `onnx_path` over the calibration `feeds` (one dict of input arrays per batch), the
    ONNX nodes in `kept_float` left float; written as IR to `out_xml` (+ its .bin). Returns `out_xml`.
    linear 'conv': the [batch, sequence, K] linear layers as 1x1 convolutions first (see openvino_linear.py)."""
    ov = _ov()
    nncf = _nncf()
    model = ov.Core().read_model(str(onnx_path))
    ignored = ov_names(model, kept_float)
    if linear == "conv":
        linear_as_conv(model, set(ignored))
    rows = _rows(feeds)
    kwargs = {"subset_size": len(rows)}
    if ignored:
        kwargs["ignored_scope"] = nncf.IgnoredScope(names=ignored, validate=False)
    if component == TEXT_ENCODER:
        kwargs["model_type"] = nncf.ModelType.TRANSFORMER
    # 7-bit weights everywhere (NNCF's overflow fix): without VNNI (AVX2, AVX-512 without VNNI) the u8 x s8 kernels
    # sum pairs of products in 16 bits, which saturates with 8-bit weights; 7-bit ones give the same answers on every
    # x86 kind, so what was judged on one CPU is what another computes.
    kwargs["advanced_parameters"] = nncf.AdvancedQuantizationParameters(overflow_fix=nncf.OverflowFix.ENABLE)
    quantized = nncf.quantize(model, nncf.Dataset(rows), **kwargs)
    out_xml = Path(out_xml)
    ov.save_model(quantized, str(out_xml), compress_to_fp16=False)  # FP32 constants: the float parts stay exact
    return out_xml


def compress_openvino(onnx_path: Path, out_xml: Path) -> Path:
    """The part in `onnx_path` with NNCF's INT8 weight compression (INT8_ASYM, per output channel): INT8 weights,
    float math. Where INT8 math gains nothing (short sequences on a CPU without VNNI) a quarter of the weight bytes
    is what is faster. OpenVINO's CPU plugin would quantize these layers' activations on the fly (its dynamic
    quantization, on CPUs with fast INT8 math only), which changes answers between CPU kinds: the IR turns it off in
    its own runtime options, so every CPU computes what calibration judged. Returns `out_xml`."""
    ov = _ov()
    nncf = _nncf()
    model = nncf.compress_weights(ov.Core().read_model(str(onnx_path)), mode=nncf.CompressWeightsMode.INT8_ASYM)
    model.set_rt_info("0", ["runtime_options", "DYNAMIC_QUANTIZATION_GROUP_SIZE"])
    ov.save_model(model, str(out_xml), compress_to_fp16=False)
    return Path(out_xml)


def ir_of(onnx_path: Path, out_xml: Path) -> Path:
    """An INT8 Q/DQ ONNX file as OpenVINO IR (its reader turns each Q/DQ pair into a FakeQuantize, which the CPU
    plugin fuses into INT8 kernels). Returns `out_xml`."""
    ov = _ov()
    ov.save_model(ov.Core().read_model(str(onnx_path)), str(out_xml), compress_to_fp16=False)
    return Path(out_xml)


def _rows(feeds: list) -> list:
    """The calibration batches as one-row items: NNCF's statistics are per item."""
    return [{k: np.ascontiguousarray(v[i:i + 1]) for k, v in f.items()} for f in feeds
            for i in range(len(next(iter(f.values()))))]


@dataclass(frozen=True)
class OpenVINOInt8:
    """The int8-ov files of every part and what they keep float."""

    files: dict  # component -> IR .xml (its .bin beside it)
    kept: dict  # component -> [ONNX node names the per-layer search kept float]
    search: Fallback | None  # None: the precision was the user's, no search ran


def quantize_parts(fp32: dict, feeds: dict, folder: Path, ranked: list | None = None,
                   passes: Callable[[dict], tuple] | None = None, max_checks: int = 14,
                   linear: str = "matmul", writers: dict | None = None) -> OpenVINOInt8:
    """NNCF INT8 of every part (fp32: component -> ONNX; feeds: component -> calibration batches) into `folder`.
    With `ranked` ([(component, node)], most sensitive first) and `passes(files) -> (ok, rule)` (the whole pipeline
    run from these IR files on OpenVINO, judged by the criterion), the fewest of the ranked layers kept float (NNCF's
    ignored scope) for the pipeline to pass, as the other targets' searches find theirs; a part whose kept layers did
    not change is not quantized again. linear: as in quantize_openvino. writers: component -> `write(kept, out_xml)`
    for a part whose IR comes from elsewhere than NNCF (an INT8 Q/DQ file of our own recipe, see `ir_of`)."""
    made: dict = {}
    writers = writers or {}

    def part(comp: str, kept: tuple) -> Path:
        if (comp, kept) not in made:
            out = Path(folder) / f"{comp}.int8-ov.{len(made)}.xml"
            made[(comp, kept)] = (writers[comp](kept, out) if comp in writers else
                                  quantize_openvino(fp32[comp], comp, feeds[comp], out, kept, linear))
        return made[(comp, kept)]

    def files_for(extra: list) -> dict:
        return {c: part(c, tuple(n for k, n in extra if k == c)) for c in fp32}

    if ranked is None or passes is None:
        return OpenVINOInt8(files_for([]), {c: [] for c in fp32}, None)
    search = search_fallback(list(ranked), lambda extra: passes(files_for(extra)), max_checks)
    return OpenVINOInt8(files_for(search.kept), {c: [n for k, n in search.kept if k == c] for c in fp32}, search)
