"""The int8-ov IR's linear layers as 1x1 convolutions: exact in FP32, quantized by NNCF, found by the search's names,
and chosen by the CPU kind."""

import numpy as np
import pytest

from fusionrt.calibration.openvino_linear import linear_as_conv, int8_linear_form
from fusionrt.runtime.bundle import Bundle
from fusionrt.runtime.cpu import CpuKind, cpu_kind

ov = pytest.importorskip("openvino", reason="the rewrite is of an OpenVINO model (fusionrt[openvino])")


def _kind(vnni, isa_limit=""):
    return CpuKind("AuthenticAMD", "EPYC", 2, True, vnni, vnni, False, False, isa_limit)


def test_the_form_follows_vnni_and_the_onednn_isa_limit():
    assert int8_linear_form(_kind(False)) == "conv"  # AVX2 only: oneDNN's INT8 GEMM is slow there
    assert int8_linear_form(_kind(True)) == "matmul"
    assert int8_linear_form(_kind(True, "AVX2")) == "conv"  # VNNI present, but oneDNN told not to use it
    assert int8_linear_form(_kind(True, "AVX512_CORE_VNNI")) == "matmul"


def _text(tiny_bundle):
    bundle = Bundle.open(tiny_bundle)
    comp = bundle.manifest.components["text_encoder"]
    rng = np.random.default_rng(0)
    feeds = {"input_ids": rng.integers(1, 50, (3, 7)).astype(np.int64), "attention_mask": np.ones((3, 7), np.int64)}
    return bundle.file(comp.files["fp32"].path), {t.name: feeds[t.name] for t in comp.inputs}


def _weighted_matmuls(model) -> list:
    return [op.get_friendly_name() for op in model.get_ops() if op.get_type_name() == "MatMul"
            and op.input_value(1).get_node().get_type_name() == "Constant"]


def test_the_rewrite_is_exact_in_fp32_and_keeps_the_layer_names(tiny_bundle):
    path, feeds = _text(tiny_bundle)
    core = ov.Core()
    model = core.read_model(str(path))
    before = _weighted_matmuls(model)
    reference = core.compile_model(core.read_model(str(path)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(feeds)[0]
    assert linear_as_conv(model) == len(before) > 0
    assert _weighted_matmuls(model) == []
    convs = {op.get_friendly_name() for op in model.get_ops() if op.get_type_name() == "Convolution"}
    assert convs == set(before)  # the per-layer search's names still find each layer
    rewritten = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(feeds)[0]
    np.testing.assert_allclose(rewritten, reference, rtol=1e-5, atol=1e-5)


def test_nncf_quantizes_the_convolutions_and_leaves_a_kept_one_float(tiny_bundle, tmp_path):
    pytest.importorskip("nncf", reason="NNCF (fusionrt[openvino]) writes the int8-ov flavour")
    from fusionrt.calibration.openvino_int8 import quantize_openvino

    path, feeds = _text(tiny_bundle)
    core = ov.Core()
    names = _weighted_matmuls(core.read_model(str(path)))
    xml = quantize_openvino(path, "text_encoder", [feeds, feeds], tmp_path / "t.xml", [names[0]], linear="conv")
    model = core.read_model(str(xml))
    convs = {op.get_friendly_name(): op for op in model.get_ops() if op.get_type_name() == "Convolution"}
    through_fq = {n for n, op in convs.items() if op.input_value(1).get_node().get_type_name() != "Constant"}
    assert _weighted_matmuls(model) == [names[0]]  # kept float: a MatMul still (FP32 runs fastest so), its weight FP32
    assert through_fq == set(convs) == set(names[1:])  # the rest: convolutions with INT8 weights
    int8 = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(feeds)[0]
    fp32 = core.compile_model(core.read_model(str(path)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(feeds)[0]
    cosine = (int8 * fp32).sum(1) / np.linalg.norm(int8, axis=1) / np.linalg.norm(fp32, axis=1)
    assert cosine.min() > 0.95


def test_calibration_writes_the_form_this_cpu_kind_runs_fast(calibrated):
    pytest.importorskip("nncf", reason="NNCF (fusionrt[openvino]) writes the int8-ov flavour")
    bundle = Bundle.open(calibrated[0])
    form = int8_linear_form(cpu_kind())
    assert bundle.manifest.calibration["openvino_linear"] == form
    record = bundle.manifest.components["text_encoder"].files["int8-ov"]
    model = ov.Core().read_model(bundle.read(record.path, record.sha256), bundle.read(record.weights,
                                                                                       record.weights_sha256))
    kinds = {op.get_type_name() for op in model.get_ops()}
    assert ("Convolution" in kinds) == (form == "conv")
    assert ("convolutions" in calibrated[1]["measured_on"]["int8-ov"]) == (form == "conv")
    from fusionrt.runtime.backends.openvino import int8_source

    flavour, why = int8_source(bundle.manifest)  # what `fusionrt info` says
    assert flavour == "int8-ov" and ("1x1 convolutions" in why) == (form == "conv")


def test_info_says_when_the_bundles_form_is_the_slow_one_on_this_cpu(calibrated):
    import dataclasses

    from fusionrt.runtime.backends.openvino import int8_source

    pytest.importorskip("nncf", reason="NNCF (fusionrt[openvino]) writes the int8-ov flavour")
    m = Bundle.open(calibrated[0]).manifest
    here = int8_linear_form(cpu_kind())
    other = "matmul" if here == "conv" else "conv"
    moved = dataclasses.replace(m, calibration={**m.calibration, "openvino_linear": other})
    assert f"this CPU runs the '{here}' form faster" in int8_source(moved)[1]
    assert "this CPU runs" not in int8_source(m)[1]


def test_an_unknown_form_is_refused_before_the_bundle_is_touched(tiny_bundle):
    from fusionrt.calibration.calibrate import calibrate_bundle
    from fusionrt.runtime.errors import InputError

    before = (tiny_bundle / "manifest.json").read_bytes()
    with pytest.raises(InputError, match="openvino_linear expected one of auto, matmul, conv, weights; found 'gemm'"):
        calibrate_bundle(tiny_bundle, "unused.csv", openvino_linear="gemm")
    assert (tiny_bundle / "manifest.json").read_bytes() == before
