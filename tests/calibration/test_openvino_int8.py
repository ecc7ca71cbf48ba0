"""The int8-ov flavour: NNCF's INT8 of every part as OpenVINO IR, judged on OpenVINO's kernels like every target,
and what a bundle without it does on OpenVINO."""

import json

import pytest

from fusionrt.runtime.bundle import Bundle
from fusionrt.runtime.manifest import COMPONENTS

pytest.importorskip("nncf", reason="NNCF (fusionrt[openvino]) writes the int8-ov flavour")


def test_calibrate_writes_nncf_ir_hashed_and_contained(calibrated):
    bundle = Bundle.open(calibrated[0])
    for comp in COMPONENTS:
        record = bundle.manifest.components[comp].files["int8-ov"]
        assert record.path.endswith(".xml") and record.weights == record.path[:-4] + ".bin"
        assert bundle.manifest.files()[record.weights] == record.weights_sha256
        assert b"FakeQuantize" in bundle.read(record.path, record.sha256)  # NNCF's INT8, not a float copy
    assert bundle.verify()[record.weights] == "ok"


def test_the_openvino_policy_is_judged_on_nncfs_files_and_batch_invariant(calibrated):
    bundle, report = Bundle.open(calibrated[0]), calibrated[1]
    assert "NNCF" in report["measured_on"]["int8-ov"]
    rows = [r for r in report["end_to_end"] if r["target"] == "int8-ov"]
    every_int8 = next(r for r in rows if r["config"] == "image=int8,text=int8,head=int8")
    assert every_int8["batch_invariant"] and every_int8["n"] > 0
    assert every_int8["passed"] and every_int8["selection"]["passed"]  # within the criterion on both splits
    ov, trt = report["branches"]["int8-ov"], report["branches"]["int8-trt"]
    for encoder in ("image_encoder", "text_encoder"):  # close to FP32, and not the Q/DQ files OpenVINO ran before
        assert 0.95 < ov[encoder]["min"] < 1.0 and ov[encoder] != trt[encoder]
    policy = bundle.manifest.policies["int8-ov"]
    assert policy.candidates and all(c.batch_invariant for c in policy.candidates)
    assert "int8-ov" in report["fallback_search"]  # the per-layer search ran on OpenVINO too


def test_a_changed_weights_file_is_refused(calibrated, tmp_path):
    import shutil

    from fusionrt.runtime.errors import BundleError
    from fusionrt.runtime.pipeline import Pipeline

    copy = tmp_path / "b"
    shutil.copytree(calibrated[0], copy)
    record = Bundle.open(copy).manifest.components["fusion_head"].files["int8-ov"]
    path = copy / record.weights
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="does not match the sha256"):
        Pipeline.load(copy, backend="openvino", precision="int8", tune=False)


def _runs_int8(model, node: str) -> bool:
    """Whether the weighted op OpenVINO made of ONNX `node` runs in INT8: its input through a FakeQuantize."""
    ops = {op.get_friendly_name(): op for op in model.get_ops()}
    op = ops.get(node + "/WithoutBiases", ops.get(node))
    return op.input_value(0).get_node().get_type_name() == "FakeQuantize"


def test_the_search_keeps_float_exactly_the_ranked_layers_it_needs(tiny_bundle, tmp_path):
    """The per-layer search on OpenVINO: NNCF's ignored scope takes the ONNX names of the layers kept float (mapped to
    OpenVINO's ops), and the search keeps the fewest ranked layers for `passes` to hold."""
    import numpy as np
    import openvino as ov

    from fusionrt.calibration.fallback import quantizable_nodes
    from fusionrt.calibration.openvino_int8 import quantize_parts
    from fusionrt.calibration.quantize import preprocess_for_quantization

    bundle = Bundle.open(tiny_bundle)
    m = bundle.manifest
    fp32 = {c: bundle.file(m.components[c].files["fp32"].path) for c in COMPONENTS}
    rng = np.random.default_rng(0)
    feeds = {}
    for c in COMPONENTS:
        spec = {t.name: t for t in m.components[c].inputs}
        sizes = {"batch": 4, "sequence": 6, "seq": 6}
        feeds[c] = [{n: (rng.integers(1, 50, [sizes.get(d, d) if isinstance(d, str) else d for d in t.shape]) if
                         t.dtype == "int64" else rng.standard_normal(
                             [sizes.get(d, d) if isinstance(d, str) else d for d in t.shape])).astype(t.dtype)
                     for n, t in spec.items()} for _ in range(2)]
    for t in m.components["text_encoder"].inputs:  # a real mask: every token attended
        if "mask" in t.name:
            for f in feeds["text_encoder"]:
                f[t.name] = np.ones_like(f[t.name])
    convs = quantizable_nodes(preprocess_for_quantization(fp32["image_encoder"], tmp_path / "prep.onnx"))
    ranked = [("image_encoder", convs[1]), ("image_encoder", convs[0]), ("fusion_head", "never-checked")]
    core = ov.Core()

    def passes(files):
        ok = not _runs_int8(core.read_model(str(files["image_encoder"])), convs[1])
        return ok, "kept" if ok else "quantized"

    result = quantize_parts(fp32, feeds, tmp_path, ranked, passes)
    assert result.kept == {"image_encoder": [convs[1]], "text_encoder": [], "fusion_head": []}
    assert [k for k, _, _ in result.search.trace] == [0, 1]
    image = core.read_model(str(result.files["image_encoder"]))
    assert not _runs_int8(image, convs[1]) and _runs_int8(image, convs[0])


def test_the_image_encoder_and_head_ir_is_the_int8_cpu_recipe_and_the_text_nncfs(calibrated):
    """OpenVINO's image encoder and head are the int8-cpu Q/DQ files as IR (our ranges, 7-bit weights, bias
    correction: faithful where NNCF's default flipped samples); the text encoder, whose int8-cpu OpenVINO cannot read,
    is NNCF's."""
    import numpy as np
    import openvino as ov

    bundle = Bundle.open(calibrated[0])
    m = bundle.manifest
    assert m.calibration["openvino_sources"] == {"image_encoder": "int8-cpu", "text_encoder": "nncf",
                                                 "fusion_head": "int8-cpu"}
    core, rng = ov.Core(), np.random.default_rng(1)
    for comp in ("image_encoder", "fusion_head"):
        spec = m.components[comp]
        feeds = {t.name: rng.standard_normal([2 if isinstance(d, str) else d for d in t.shape]).astype(np.float32)
                 for t in spec.inputs}
        ir, cpu = spec.files["int8-ov"], spec.files["int8-cpu"]
        searched = {t: {k["node"] for k in calibrated[1]["kept_float"][t][comp] if "search" in k["why"]}
                    for t in ("int8-cpu", "int8-ov")}
        assert searched["int8-cpu"] == searched["int8-ov"], searched  # the tiny model: none needed either way
        from_ir = core.compile_model(core.read_model(bundle.read(ir.path, ir.sha256), bundle.read(
            ir.weights, ir.weights_sha256)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(feeds)[0]
        from_onnx = core.compile_model(str(bundle.file(cpu.path)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(feeds)[0]
        np.testing.assert_array_equal(from_ir, from_onnx)
    text = bundle.read(m.components["text_encoder"].files["int8-ov"].path)
    assert b"nncf" in text.lower()  # NNCF writes its version into the IR's rt_info
    assert b"nncf" not in bundle.read(m.components["image_encoder"].files["int8-ov"].path).lower()
