"""The int8-ov target's files: OpenVINO IR of every part, its layers kept float found by the per-layer search run on
OpenVINO, staged into the bundle (calibrate.py judges and commits them like every target's)."""

from __future__ import annotations

import functools
import shutil
from pathlib import Path
from typing import Callable

from fusionrt.calibration import openvino_int8
from fusionrt.calibration.fallback import searched_why
from fusionrt.runtime.manifest import COMPONENTS, FUSION_HEAD, IMAGE_ENCODER
from fusionrt.runtime.optional import is_available

__all__ = ["OV_TARGET", "OV_FROM_INT8_CPU", "quantize", "sources", "judged_on"]

OV_TARGET = "int8-ov"  # judged on OpenVINO's kernels where openvino is installed: its IR files where nncf is too,
# else the int8-trt Q/DQ files (what OpenVINO then runs)

# The parts whose IR is the int8-cpu recipe's Q/DQ file read by OpenVINO rather than NNCF's: on the demo's
# EfficientNet-Lite0 NNCF's INT8 flipped 16-18 of 382 held-out samples (its search kept 29 layers float) where the
# int8-cpu recipe (asymmetric u8 activations, 7-bit weights, bias correction) flips 0 with 2 float, and OpenVINO runs
# that file as fast (ResNet-50) or faster (EfficientNet-Lite0). The text encoder's int8-cpu is per-token INT8 in ONNX
# Runtime's own operators, which OpenVINO does not read: its IR is NNCF's.
OV_FROM_INT8_CPU = (IMAGE_ENCODER, FUSION_HEAD)

_JUDGED_ON = {
    "nncf": "OpenVINO IR on OpenVINO's CPU kernels (static ranges, 7-bit weights): NNCF's INT8 of the text encoder, "
            "the int8-cpu recipe's Q/DQ of the image encoder and the head",
    "int8-trt": "the int8-trt Q/DQ files on OpenVINO's CPU kernels (nncf is not installed: pip install "
                "'fusionrt[openvino]' and calibrate again for OpenVINO's own faster INT8)"}
_CONV_FORM = ", the text encoder's linear layers as 1x1 convolutions (OpenVINO's fast INT8 kernel without VNNI)"


def sources() -> dict:
    """component -> what its IR is made from: 'int8-cpu' (our recipe's Q/DQ) or 'nncf'."""
    return {c: "int8-cpu" if c in OV_FROM_INT8_CPU else "nncf" for c in COMPONENTS}


def judged_on(runs: str, linear: str) -> str:
    """What the int8-ov target was judged on, in words (the report's measured_on)."""
    return _JUDGED_ON[runs] + (_CONV_FORM if linear == "conv" else "")


def quantize(update, written: dict, kept: dict, searches: dict, fp32: dict, feeds: dict, parts: dict,
             rankings: dict, passes: Callable[[dict], tuple] | None, tmp: Path, linear: str) -> str:
    """The int8-ov files, staged, where openvino and nncf are installed; returns what the target runs: 'nncf' (these
    IR files), 'int8-trt' (openvino without nncf) or '' (no openvino).

    parts: component -> calibrate's prepared part (its `write(target, out, kept)` writes our recipe's Q/DQ);
    rankings: target -> [(component, layer, logit error)]; passes(files) -> (ok, rule): None when the precision was
    the user's (no search). Each part's layers are ranked in the scheme its IR comes from (int8-cpu's for
    OV_FROM_INT8_CPU, int8-trt's, symmetric like NNCF's, for the text) and the search keeps the fewest of them float
    for the whole pipeline on OpenVINO to pass."""
    if not is_available("openvino"):
        return ""
    if not openvino_int8.available():
        return "int8-trt"
    ranked = sorted([r for r in rankings.get("int8-cpu", []) if r[0] in OV_FROM_INT8_CPU]
                    + [r for r in rankings.get("int8-trt", []) if r[0] not in OV_FROM_INT8_CPU], key=lambda r: -r[2])
    result = openvino_int8.quantize_parts(
        fp32, feeds, tmp, [(c, n) for c, n, _ in ranked] if passes else None, passes, linear=linear,
        writers={c: functools.partial(_int8_cpu_ir, parts[c]) for c in OV_FROM_INT8_CPU})
    errors = {(c, n): (i, e) for i, (c, n, e) in enumerate(ranked)}
    kept[OV_TARGET] = {c: ([{"node": n, "why": why} for n, why in sorted(parts[c].structural.items())]
                           if c in OV_FROM_INT8_CPU else [])
                       + [{"node": n, "why": searched_why(errors[(c, n)][0] + 1, len(ranked), errors[(c, n)][1],
                                                          " on OpenVINO")} for n in result.kept[c]]
                       for c in COMPONENTS}
    if result.search is not None:
        searches[OV_TARGET] = result.search
    for comp, xml in result.files.items():
        staged_xml, staged_bin = update.stage(f"{comp}.int8.ov.xml", "bin")
        shutil.copyfile(xml, staged_xml.path)
        shutil.copyfile(openvino_int8.weights_of(xml), staged_bin.path)
        written[(comp, OV_TARGET)] = staged_xml  # its .bin: the same stem (see BundleUpdate.stage)
    return "nncf"


def _int8_cpu_ir(part, kept: tuple, out_xml: Path) -> Path:
    """The int8-cpu recipe's Q/DQ file of `part` with `kept` float too, as OpenVINO IR."""
    return openvino_int8.ir_of(part.write("int8-cpu", out_xml.with_suffix(".onnx"), list(kept)), out_xml)
