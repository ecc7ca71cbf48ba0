import json

import numpy as np
import onnx
import pytest

from fusionrt.data.dataset import LabeledDataset
from fusionrt.calibration.policy import Criterion, choose_policy
from fusionrt.calibration.reader import CalibrationSource, select_calibration
from fusionrt.runtime.bundle import Bundle
from fusionrt.runtime.cpu import cpu_info
from fusionrt.runtime.errors import DataError
from fusionrt.runtime.pipeline import Pipeline
from fusionrt.runtime.precision import format_precision


def _ops(path):
    return onnx.load(str(path)).graph


def test_two_targets_written_and_recorded(calibrated):
    bundle, report, _, _ = calibrated
    m = Bundle.open(bundle).manifest
    for comp in m.components.values():
        assert {"fp32", "fp16", "int8-cpu", "int8-trt"} <= set(comp.files)
    assert Bundle.open(bundle).verify()
    assert (bundle / "reports" / "fidelity.json").is_file() and (bundle / "reports" / "fidelity.md").is_file()
    assert json.loads((bundle / "calibration" / "image_encoder.ranges.json").read_text())
    for target in ("int8-cpu", "int8-trt"):  # one policy per target, each recorded with its reason
        assert m.fidelity["summary"][target]["precision"] == report["policy"][target]["chosen"]
        assert format_precision(m.precision_for(target)) == report["policy"][target]["chosen"]
        assert m.reason_for(target) == report["policy"][target]["reason"]
    assert m.precision == m.precision_for("int8-cpu")  # the default runtime's
    assert m.calibration["cpu_vnni"] == cpu_info()["vnni"]


def test_tensorrt_target_is_symmetric_int8_with_float_bias(calibrated):
    bundle = calibrated[0]
    graph = _ops(bundle / "image_encoder.int8.trt.onnx")
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
    q_nodes = [n for n in graph.node if n.op_type == "QuantizeLinear"]
    assert q_nodes and any(n.op_type == "DequantizeLinear" for n in graph.node)
    for node in q_nodes:
        zero_point = inits[node.input[2]]
        assert zero_point.dtype == np.int8 and not zero_point.any()
    assert not any(v.dtype == np.int32 for v in inits.values())  # no INT32 bias Q/DQ (TensorRT's parser rejects it)
    conv_weights = [inits[n.input[0]] for n in graph.node if n.op_type == "DequantizeLinear" and
                    n.input[0] in inits and inits[n.input[0]].ndim == 4]
    assert conv_weights and all(w.dtype == np.int8 for w in conv_weights)


def _float_nodes(path) -> set:
    """The Conv/MatMul/Gemm nodes of a Q/DQ model that read no dequantized input (they run in float)."""
    graph = _ops(path)
    dequantized = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    integer = {"MatMulInteger", "ConvInteger", "DynamicQuantizeLinear"}
    if any(n.op_type in integer for n in graph.node):  # dynamic INT8: quantized MatMuls became MatMulInteger
        return {n.name for n in graph.node if n.op_type in ("MatMul", "Gemm", "Conv")}
    return {n.name for n in graph.node if n.op_type in ("Conv", "MatMul", "Gemm")
            and not any(i in dequantized for i in n.input[:2])}


def test_the_layers_kept_float_are_the_ones_the_report_records_and_why(calibrated):
    bundle, report, _, _ = calibrated
    for target in ("int8-cpu", "int8-trt"):
        for comp in ("image_encoder", "text_encoder", "fusion_head"):
            recorded = report["kept_float"][target][comp]
            assert all(e["why"].startswith(("structural:", "per-layer search: sensitivity rank")) for e in recorded)
            path = bundle / f"{comp}.{target.replace('-', '.')}.onnx"
            assert {e["node"] for e in recorded} == _float_nodes(path), (target, comp)
            searched = [e for e in recorded if e["why"].startswith("per-layer search")]
            trace = report["fallback_search"][target][comp]
            assert trace and trace[-1]["kept"] >= 0 and any(t["passed"] for t in trace) or not searched
    text = report["kept_float"]["int8-trt"]["text_encoder"]
    assert any(e["why"].startswith("structural: a MatMul of two activations") for e in text)  # attention's


def test_the_manifest_records_per_target_which_layers_stay_float(calibrated):
    bundle, report, _, _ = calibrated
    m = Bundle.open(bundle).manifest
    for target, policy in m.policies.items():
        int8_parts = {c for c, p in policy["precision"].items() if p == "int8"}
        assert set(policy["kept_float"]) == int8_parts
        for comp in int8_parts:
            assert policy["kept_float"][comp] == report["kept_float"][target][comp]


def test_the_report_shows_the_noise_floor_and_the_deciding_rule(calibrated):
    bundle, report, _, test = calibrated
    noise = report["noise_floor"]
    assert noise["flips"] == max(noise["fp16_flips"], noise["bf16_features_flips"]) and noise["band"] >= noise["flips"]
    assert noise["samples"] == len(LabeledDataset.read(test))
    assert all("rule" in row and "flips" in row and "mcnemar_p" in row for row in report["end_to_end"])
    text = (bundle / "reports" / "fidelity.md").read_text()
    assert "noise floor" in text.lower() and "layers kept float" in text


def test_fp16_model_keeps_float32_io_and_normalization(calibrated):
    bundle = calibrated[0]
    graph = _ops(bundle / "text_encoder.fp16.onnx")
    half = onnx.TensorProto.FLOAT16
    assert any(i.data_type == half for i in graph.initializer)
    assert graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    produced = {o: n for n in graph.node for o in n.output}
    for node in (n for n in graph.node if n.op_type in ("Softmax", "LayerNormalization")):
        source = produced.get(node.input[0])
        assert source is not None and source.op_type == "Cast"  # fed float32 through a cast


def test_int8_trt_on_an_fp16_base_keeps_every_weight_within_half_a_step(calibrated, tmp_path):
    """What int8-trt is judged on and TensorRT 11 / TensorRT-RTX build from: FP16 scales (opset 19), the INT8
    weights requantized on them, LayerNorm and Softmax still fed FP32; every part of a calibrated bundle has it."""
    from onnx import numpy_helper

    from fusionrt.calibration.half import write_int8_fp16

    bundle = calibrated[0]
    src = onnx.load(str(bundle / "text_encoder.int8.trt.onnx"))
    half = onnx.load(str(write_int8_fp16(bundle / "text_encoder.int8.trt.onnx", tmp_path / "t.onnx")))
    assert next(o.version for o in half.opset_import if o.domain in ("", "ai.onnx")) >= 19
    old = {i.name: numpy_helper.to_array(i) for i in src.graph.initializer}
    new = {i.name: numpy_helper.to_array(i) for i in half.graph.initializer}
    weights = [n for n in half.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in new]
    assert weights
    for node in weights:
        q, scale = new[node.input[0]], new[node.input[1]]
        assert scale.dtype == np.float16
        shape = [1] * q.ndim
        if scale.ndim:
            shape[next((a.i for a in node.attribute if a.name == "axis"), 1) % q.ndim] = -1
        before = old[node.input[0]] * old[node.input[1]].astype(np.float64).reshape(shape)
        after = q * scale.astype(np.float64).reshape(shape)
        assert np.all(np.abs(after - before) <= 0.5 * scale.astype(np.float64).reshape(shape) + 1e-12), node.name
    produced = {o: n for n in half.graph.node for o in n.output}
    for node in (n for n in half.graph.node if n.op_type in ("Softmax", "LayerNormalization")):
        assert produced[node.input[0]].op_type == "Cast"  # fed FP32 through a cast
    m = Bundle.open(bundle).manifest
    assert all("int8-trt-fp16" in m.components[c].files for c in m.components)
    assert "FP16 base" in (bundle / "reports" / "fidelity.md").read_text()


def test_cpu_target_is_u8s8_and_dynamic_for_text(calibrated):
    bundle = calibrated[0]
    image = _ops(bundle / "image_encoder.int8.cpu.onnx")
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in image.initializer}
    zero_points = [inits[n.input[2]] for n in image.node if n.op_type == "QuantizeLinear"]
    assert zero_points and all(z.dtype == np.uint8 for z in zero_points)
    text_ops = {n.op_type for n in _ops(bundle / "text_encoder.int8.cpu.onnx").node}
    assert "DynamicQuantizeLinear" in text_ops or "MatMulInteger" in text_ops
    trt_text_ops = [n.op_type for n in _ops(bundle / "text_encoder.int8.trt.onnx").node]
    assert "QuantizeLinear" in trt_text_ops
    for op in ("Softmax",):  # kept in float: no Q/DQ right around it
        assert op in trt_text_ops


def test_fidelity_report_figures(calibrated):
    _, report, _, test = calibrated
    assert report["held_out"]["count"] == len(LabeledDataset.read(test))
    for target in ("int8-cpu", "int8-trt"):
        for branch in ("image_encoder", "text_encoder"):
            stats = report["branches"][target][branch]
            assert -1 <= stats["min"] <= stats["mean"] <= 1 + 1e-9
    rows = report["end_to_end"]
    # 3 precisions ** 3 parts, less all-FP32, per target: ONNX Runtime CPU, TensorRT's Q/DQ, and OpenVINO (installed)
    assert len(rows) == 26 * 3 and {r["target"] for r in rows} == {"int8-cpu", "int8-trt", "int8-ov"}
    assert all(0 <= r["top1_agreement"] <= 1 and 0 <= r["accuracy"] <= 1 for r in rows)


def test_runtime_loads_int8(calibrated):
    bundle, _, _, test = calibrated
    data = LabeledDataset.read(test)
    with Pipeline.load(bundle, backend="onnxruntime", precision="int8") as pipe:
        preds = pipe.classify_batch([s.image for s in data], [s.text for s in data])
        assert pipe.precision == {"image_encoder": "int8", "text_encoder": "int8", "fusion_head": "int8"}
    assert len(preds) == len(data)
    m = Bundle.open(bundle).manifest
    with Pipeline.load(bundle, backend="onnxruntime") as pipe:  # what calibration chose for ONNX Runtime's CPU kernels
        assert pipe.precision == m.precision_for("int8-cpu")


def test_each_backend_loads_its_targets_policy(calibrated, monkeypatch, tmp_path):
    import dataclasses
    import shutil

    from fusionrt.runtime.backends.onnxruntime import OnnxRuntimeBackend, OnnxRuntimeOptions

    bundle = Bundle.open(shutil.copytree(calibrated[0], tmp_path / "bundle"))
    policies = {"int8-cpu": {"precision": {"image_encoder": "fp32", "text_encoder": "int8", "fusion_head": "int8"},
                             "reason": "test"},
                "int8-trt": {"precision": {"image_encoder": "int8", "text_encoder": "fp16", "fusion_head": "int8"},
                             "reason": "test"}}
    bundle.save(dataclasses.replace(bundle.manifest, policies=policies))
    assert OnnxRuntimeBackend.int8_target(OnnxRuntimeOptions(device="tensorrt")) == "int8-trt"
    assert OnnxRuntimeBackend.int8_target(OnnxRuntimeOptions(providers=("CPUExecutionProvider",))) == "int8-cpu"
    opened = []
    real_open = OnnxRuntimeBackend.open.__func__
    monkeypatch.setattr(OnnxRuntimeBackend, "open", classmethod(
        lambda cls, b, comp, prec, options: opened.append((comp, prec)) or real_open(cls, b, comp, prec,
                                                                                     OnnxRuntimeOptions())))
    with Pipeline.load(bundle.root, backend="onnxruntime", device="tensorrt") as pipe:  # the TensorRT EP: the TensorRT flavour's policy
        assert pipe.precision == policies["int8-trt"]["precision"]
    assert dict(opened) == policies["int8-trt"]["precision"]
    with Pipeline.load(bundle.root, backend="onnxruntime") as pipe:
        assert pipe.precision == policies["int8-cpu"]["precision"]


def test_tensorrt_fidelity_is_measured_on_exact_qdq_arithmetic(calibrated):
    """The int8-trt figures come from its Q/DQ graph on the FP16 base as written (what TensorRT computes), not from
    this CPU's fused integer kernels; the int8-cpu figures from those kernels (what ONNX Runtime runs)."""
    from fusionrt.calibration.evaluation import run_component
    from fusionrt.calibration.fidelity import cosine_stats

    bundle_dir, report, _, test = calibrated
    bundle = Bundle.open(bundle_dir)
    m = bundle.manifest
    feeds = list(CalibrationSource(bundle, LabeledDataset.read(test), 8))
    spec = m.components["image_encoder"]
    fp32 = run_component(spec, bundle.file(spec.files["fp32"].path), feeds)
    for target, flavour, exact in (("int8-trt", "int8-trt-fp16", True), ("int8-cpu", "int8-cpu", False)):
        q = run_component(spec, bundle.file(spec.files[flavour].path), feeds, exact=exact)
        assert report["branches"][target]["image_encoder"] == pytest.approx(cosine_stats(fp32, q), abs=1e-7)


PARTS = ("image_encoder", "text_encoder", "fusion_head")


def test_policy_falls_back_the_part_that_breaks_thresholds():
    ok = {"top1_agreement": 0.995, "accuracy": 0.90}
    bad = {"top1_agreement": 0.90, "accuracy": 0.80}
    outcomes = {
        ("int8", "int8", "int8"): {"cpu": bad, "trt": bad},
        ("fp32", "int8", "int8"): {"cpu": ok, "trt": ok},
        ("int8", "fp32", "int8"): {"cpu": ok, "trt": bad},
        ("fp32", "fp32", "int8"): {"cpu": ok, "trt": ok},
    }
    chosen, reason = choose_policy(outcomes, 0.905, PARTS, Criterion())
    assert chosen == ("fp32", "int8", "int8") and "image_encoder kept FP32" in reason
    chosen, reason = choose_policy({("int8", "int8", "int8"): {"cpu": bad}}, 0.905, PARTS)
    assert chosen == ("fp32", "fp32", "fp32") and "kept FP32" in reason


def test_policy_prefers_fp16_over_fp32_for_a_fallen_part():
    ok = {"top1_agreement": 1.0, "accuracy": 0.90}
    bad = {"top1_agreement": 0.95, "accuracy": 0.85}
    outcomes = {
        ("int8", "int8", "int8"): {"cpu": bad},
        ("fp16", "int8", "int8"): {"cpu": ok},
        ("fp32", "int8", "int8"): {"cpu": ok},
        ("fp16", "fp16", "fp16"): {"cpu": ok},
    }
    chosen, reason = choose_policy(outcomes, 0.90, PARTS)
    assert chosen == ("fp16", "int8", "int8") and "image_encoder kept FP16" in reason


def test_policy_puts_int8_where_the_model_time_is():
    ok = {"top1_agreement": 0.995, "accuracy": 0.90}
    bad = {"top1_agreement": 0.97, "accuracy": 0.90}
    outcomes = {
        ("int8", "int8", "int8"): {"cpu": bad},
        ("fp16", "int8", "fp16"): {"cpu": ok},  # the text encoder in INT8
        ("fp16", "fp16", "int8"): {"cpu": ok},  # the head in INT8
        ("fp16", "fp16", "fp16"): {"cpu": ok},
    }
    seconds = {"image_encoder": 1.9, "text_encoder": 3.0, "fusion_head": 0.1}
    chosen, reason = choose_policy(outcomes, 0.90, PARTS, Criterion(), seconds)
    assert chosen == ("fp16", "int8", "fp16") and "the most FP32 model time in INT8 (60%; an estimate" in reason
    seconds["fusion_head"], seconds["text_encoder"] = 3.0, 0.1  # a model whose time is in the head
    assert choose_policy(outcomes, 0.90, PARTS, Criterion(), seconds)[0] == ("fp16", "fp16", "int8")


def test_report_records_where_the_fp32_time_goes(calibrated):
    report = calibrated[1]
    assert set(report["fp32_model_ms"]) == {"image_encoder", "text_encoder", "fusion_head"}
    assert all(ms > 0 for ms in report["fp32_model_ms"].values())


def test_calibration_source_is_ordered_reiterable_and_refuses_small_sets(tiny_bundle, shape_data):
    data = LabeledDataset.read(shape_data[0])
    calib, rest = select_calibration(data, 16)
    assert len(calib) == 16 and len(rest) == len(data) - 16
    assert {s.label for s in calib} == set(data.labels)  # strided, not the first rows of one class
    assert select_calibration(data, 16)[0] == calib
    source = CalibrationSource(Bundle.open(tiny_bundle), calib, batch_size=5)
    first, second = list(source), list(source)
    assert len(source) == len(first) == 4
    assert all(np.array_equal(a["pixel_values"], b["pixel_values"]) for a, b in zip(first, second))
    with pytest.raises(DataError, match="at least 16 real samples"):
        select_calibration(data.head(10), 16)


def test_int8_cpu_on_another_kind_of_cpu_warns(calibrated, tmp_path):
    """U8S8 kernels round differently with and without VNNI: the measured policy holds for CPUs like the one
    that measured it, and loading it elsewhere says so."""
    import dataclasses
    import shutil
    import warnings

    bundle = Bundle.open(shutil.copytree(calibrated[0], tmp_path / "bundle"))
    here = cpu_info()["vnni"]
    if here is None:
        pytest.skip("this OS does not say whether the CPU has VNNI")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Pipeline.load(bundle.root, backend="onnxruntime", precision="int8").close()  # same kind of CPU: silent
    bundle.save(dataclasses.replace(bundle.manifest, calibration={**bundle.manifest.calibration, "cpu_vnni": not here}))
    with pytest.warns(RuntimeWarning, match="Re-run `fusionrt calibrate` on this kind of CPU"):
        Pipeline.load(bundle.root, backend="onnxruntime", precision="int8").close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Pipeline.load(bundle.root, backend="onnxruntime", precision="fp32").close()  # no INT8 part: nothing to say
