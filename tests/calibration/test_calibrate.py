import json

import numpy as np
import onnx
import pytest

from fusionrt.data.dataset import LabeledDataset
from fusionrt.calibration.int8_float import int8_floats
from fusionrt.calibration.policy import choose_policy
from fusionrt.calibration.reader import CalibrationSource, select_calibration
from fusionrt.runtime.bundle import Bundle
from fusionrt.runtime.cpu import cpu_info
from fusionrt.runtime.errors import BackendUnavailable, DataError
from fusionrt.runtime.pipeline import Pipeline
from fusionrt.runtime.precision import format_precision
from fusionrt.bundling import save_manifest


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
    assert m.calibration["cpu_vnni"] == cpu_info()["vnni"] and m.calibration["cpu_kind"] == cpu_info()
    for target, policy in m.policies.items():  # every candidate passed on both splits; the choice is the first
        assert policy.candidates and dict(policy.candidates[0].precision) == dict(policy.precision)
        assert all(c.samples == report["held_out"]["report"] for c in policy.candidates)
        assert policy.measured_on == cpu_info() and policy.portable == (target != "int8-ov")


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
    integer = {"MatMulInteger", "ConvInteger", "DynamicQuantizeLinear", "MatMulIntegerToFloat"}
    if any(n.op_type in integer for n in graph.node):  # per-token INT8: quantized MatMuls became integer ops
        return {n.name for n in graph.node if n.op_type in ("MatMul", "Gemm", "Conv")}
    return {n.name for n in graph.node if n.op_type in ("Conv", "MatMul", "Gemm")
            and not any(i in dequantized for i in n.input[:2])}


def test_the_layers_kept_float_are_the_ones_the_report_records_and_why(calibrated):
    bundle, report, _, _ = calibrated
    for target in ("int8-cpu", "int8-trt"):
        searched = 0
        for comp in ("image_encoder", "text_encoder", "fusion_head"):
            recorded = report["kept_float"][target][comp]
            assert all(e["why"].startswith(("structural:", "per-layer search: sensitivity rank")) for e in recorded)
            path = bundle / f"{comp}.{target.replace('-', '.')}.onnx"
            assert {e["node"] for e in recorded} == _float_nodes(path), (target, comp)
            searched += sum(e["why"].startswith("per-layer search") for e in recorded)
        # one search over the whole model: the smallest k it found to pass is the number of searched layers, and
        # every smaller k it tried failed
        trace = report["fallback_search"][target]
        assert trace and trace[0]["kept"] == 0  # it starts from all INT8
        passing = [t["kept"] for t in trace if t["passed"]]
        assert passing and min(passing) == searched, (target, trace, searched)
        assert all(t["passed"] == ("within the noise floor" in t["rule"] or ">= 99%" in t["rule"]) for t in trace)
    text = report["kept_float"]["int8-trt"]["text_encoder"]
    assert any(e["why"].startswith("structural: a MatMul of two activations") for e in text)  # attention's


def test_the_manifest_records_per_target_which_layers_stay_float(calibrated):
    bundle, report, _, _ = calibrated
    m = Bundle.open(bundle).manifest
    for target, policy in m.policies.items():  # every part INT8 in any candidate says which of its layers stay float
        int8_parts = {c for cand in policy.candidates for c, p in cand.precision.items() if p == "int8"}
        assert set(policy.kept_float) == int8_parts | {c for c, p in policy.precision.items() if p == "int8"}
        for comp in int8_parts:
            assert list(policy.kept_float[comp]) == report["kept_float"][target][comp]


def test_the_report_shows_the_noise_floor_and_the_deciding_rule(calibrated):
    bundle, report, _, test = calibrated
    from fusionrt.calibration.criterion import noise_band
    from fusionrt.calibration.reader import split_held_out

    selection, held = split_held_out(LabeledDataset.read(test))
    for split, data in (("selection", selection), ("report", held)):  # each split has its own floor and band
        noise = report["noise_floor"][split]
        assert noise["flips"] == max(noise["fp16_flips"], noise["bf16_features_flips"])
        assert noise["samples"] == len(data) and noise["band"] == noise_band(noise["flips"], len(data))
    assert report["held_out"] == {"count": len(selection) + len(held), "selection": len(selection),
                                  "report": len(held), "data": str(test)}
    for row in report["end_to_end"]:  # judged on both splits; the report's figures are the report split's
        assert row["n"] == len(held) and "rule" in row and "mcnemar_p" in row and "rule" in row["selection"]
        assert not row["passed"] or row["selection"]["passed"]
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


def test_cpu_target_is_u8s8_with_7_bit_weights_and_per_token_for_text(calibrated):
    """int8-cpu's integer sums are the same on every x86 CPU: 7-bit weights cannot saturate the 16-bit pair sums of
    the kernels without VNNI; the text encoder's activations have a scale per token (batch-invariant)."""
    bundle = calibrated[0]
    image = _ops(bundle / "image_encoder.int8.cpu.onnx")
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in image.initializer}
    zero_points = [inits[n.input[2]] for n in image.node if n.op_type == "QuantizeLinear"]
    assert zero_points and all(z.dtype == np.uint8 for z in zero_points)
    weights = [inits[n.input[0]] for n in image.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
               and inits[n.input[0]].dtype == np.int8]
    dense = [w for w in weights if w.shape[1] > 1]  # a GEMM's pair sums: 7 bits; a depthwise filter ([C, 1, k, k]): 8
    assert dense and max(int(np.abs(w.astype(int)).max()) for w in dense) <= 64
    assert any(int(np.abs(w.astype(int)).max()) > 64 for w in weights if w.shape[1] == 1)
    text = _ops(bundle / "text_encoder.int8.cpu.onnx")
    ops = [n.op_type for n in text.node]
    assert "MatMulIntegerToFloat" in ops and "DynamicQuantizeLinear" not in ops
    blocked = [n for n in text.node if n.op_type == "QuantizeLinear"]
    assert blocked and all(any(a.name == "block_size" for a in n.attribute) for n in blocked)  # a scale per token
    text_inits = {i.name: onnx.numpy_helper.to_array(i) for i in text.initializer}
    int8 = [text_inits[n.input[1]] for n in text.node if n.op_type == "MatMulIntegerToFloat"]
    assert max(int(np.abs(w.astype(int)).max()) for w in int8) <= 64
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
    # every configuration, less precisions that compute what another does (fp16 on ONNX Runtime's CPU is FP32, and on
    # OpenVINO without BF16 too), less the reference itself: ONNX Runtime CPU, TensorRT's Q/DQ, OpenVINO (installed)
    ov_floats = 3 if cpu_info()["bf16"] else 2
    counts = {t: sum(r["target"] == t for r in rows) for t in ("int8-cpu", "int8-trt", "int8-ov")}
    # int8-ov: where the CPU has BF16, the configurations with an INT8 part are judged again over BF16
    with_int8 = ov_floats ** 3 - (ov_floats - 1) ** 3
    assert counts == {"int8-cpu": 2 ** 3 - 1, "int8-trt": 3 ** 3,
                      "int8-ov": ov_floats ** 3 + (len(int8_floats()) - 1) * with_int8}
    assert all(0 <= r["top1_agreement"] <= 1 and 0 <= r["accuracy"] <= 1 for r in rows)


def test_runtime_loads_int8(calibrated):
    bundle, _, _, test = calibrated
    from fusionrt.calibration.reader import split_held_out

    _, report, _, _ = calibrated
    data = split_held_out(LabeledDataset.read(test))[1]  # the report split: what the end-to-end rows are measured on
    answers = {}
    for precision in ("fp32", "int8"):
        with Pipeline.load(bundle, backend="onnxruntime", precision=precision) as pipe:
            answers[precision] = pipe.logits(*pipe.prepare([s.image for s in data], [s.text for s in data]))
    assert pipe.precision == {"image_encoder": "int8", "text_encoder": "int8", "fusion_head": "int8"}
    assert not np.allclose(answers["int8"], answers["fp32"], atol=1e-5)  # the INT8 files ran, not the FP32 ones
    [row] = [r for r in report["end_to_end"] if r["target"] == "int8-cpu"
             and r["config"] == "image=int8,text=int8,head=int8"]
    agreement = float(np.mean(answers["int8"].argmax(1) == answers["fp32"].argmax(1)))
    assert agreement == pytest.approx(row["top1_agreement"]) and row["n"] == len(data)  # what calibration recorded
    m = Bundle.open(bundle).manifest
    with Pipeline.load(bundle, backend="onnxruntime", tune=False) as pipe:  # calibration's choice for ORT's CPU kernels
        assert pipe.precision == m.precision_for("int8-cpu")
    from fusionrt.runtime.tune import candidates

    allowed = [p for p, why in candidates(m, "int8-cpu") if not why]
    with Pipeline.load(bundle, backend="onnxruntime") as pipe:  # tuned: the fastest here of what calibration passed
        assert dict(pipe.precision) in allowed and pipe.tuning is not None


def test_each_backend_loads_its_targets_policy(calibrated, tmp_path):
    """ONNX Runtime on the TensorRT EP takes the int8-trt policy and its files, on the CPU the int8-cpu one: what
    Pipeline.load selects and each part's file, with nothing patched; the TensorRT EP session itself where it exists."""
    import dataclasses
    import shutil

    import onnxruntime

    from fusionrt.runtime.backends.onnxruntime import OnnxRuntimeBackend
    from fusionrt.runtime.manifest import Policy
    from fusionrt.runtime.selection import select

    bundle = Bundle.open(shutil.copytree(calibrated[0], tmp_path / "bundle"))
    cpu = {"image_encoder": "fp32", "text_encoder": "int8", "fusion_head": "int8"}
    trt = {"image_encoder": "int8", "text_encoder": "fp16", "fusion_head": "int8"}
    save_manifest(bundle, dataclasses.replace(bundle.manifest, policies={"int8-cpu": Policy(cpu, "test"),
                                                                         "int8-trt": Policy(trt, "test")}))
    bundle = Bundle.open(bundle.root)
    files = {c: bundle.manifest.components[c].files for c in trt}
    chosen = select(bundle, "onnxruntime", None, True, True, {"device": "tensorrt"})
    assert chosen.precision == trt and "calibration's choice for int8-trt" in chosen.precision_reason
    flavours = {c: OnnxRuntimeBackend.execution(p, chosen.options, files[c]).flavour for c, p in trt.items()}
    assert flavours == {"image_encoder": "int8-trt", "text_encoder": "fp16", "fusion_head": "int8-trt"}
    chosen = select(bundle, "onnxruntime", None, True, False, {})
    assert chosen.precision == cpu
    assert {c: OnnxRuntimeBackend.execution(p, chosen.options, files[c]).flavour for c, p in cpu.items()} == \
        {"image_encoder": "fp32", "text_encoder": "int8-cpu", "fusion_head": "int8-cpu"}
    with Pipeline.load(bundle.root, backend="onnxruntime", tune=False) as pipe:
        assert pipe.precision == cpu
    if "TensorrtExecutionProvider" not in onnxruntime.get_available_providers():
        with pytest.raises(BackendUnavailable, match="TensorrtExecutionProvider"):  # said, not run on the CPU
            Pipeline.load(bundle.root, backend="onnxruntime", device="tensorrt")
        return
    with Pipeline.load(bundle.root, backend="onnxruntime", device="tensorrt") as pipe:  # a GPU with the TensorRT EP
        assert pipe.precision == trt
        assert pipe.backends["image_encoder"].providers[0] == "TensorrtExecutionProvider"


def test_tensorrt_fidelity_is_measured_on_exact_qdq_arithmetic(calibrated):
    """The int8-trt figures come from its Q/DQ graph on the FP16 base as written (what TensorRT computes), not from
    this CPU's fused integer kernels; the int8-cpu figures from those kernels (what ONNX Runtime runs)."""
    from fusionrt.calibration.evaluation import REFERENCE, run_part
    from fusionrt.calibration.fidelity import cosine_stats
    from fusionrt.calibration.judge import execution_for
    from fusionrt.calibration.reader import split_held_out

    bundle_dir, report, _, test = calibrated
    bundle = Bundle.open(bundle_dir)
    m = bundle.manifest
    feeds = list(CalibrationSource(bundle, split_held_out(LabeledDataset.read(test))[1], 8))
    spec = m.components["image_encoder"]
    fp32 = run_part(spec, bundle.file(spec.files["fp32"].path), REFERENCE, feeds)
    for target, flavour in (("int8-trt", "int8-trt-fp16"), ("int8-cpu", "int8-cpu")):
        execution = execution_for(target, "int8")
        assert execution.flavour == flavour
        q = run_part(spec, bundle.file(spec.files[flavour].path), execution, feeds)
        assert report["branches"][target]["image_encoder"] == pytest.approx(cosine_stats(fp32, q), abs=1e-7)


PARTS = ("image_encoder", "text_encoder", "fusion_head")


def _judged(key, agreement_sel, agreement_rep=None, seconds=None, invariant=True):
    from fusionrt.calibration.judge import Judged

    agreement_rep = agreement_sel if agreement_rep is None else agreement_rep
    outcome = lambda a: {"top1_agreement": a, "flips": 0, "rule": f"agreement {a}"}  # noqa: E731
    return Judged(key, outcome(agreement_sel), outcome(agreement_rep), agreement_sel >= 0.99, agreement_rep >= 0.99,
                  seconds, 0.0 if invariant else 0.5, invariant)


def test_policy_falls_back_the_part_that_breaks_thresholds_on_either_split():
    judged = [_judged(("int8", "int8", "int8"), 0.90), _judged(("fp32", "int8", "int8"), 0.995),
              _judged(("int8", "fp32", "int8"), 0.995, 0.95),  # passed where it was chosen, not where it is reported
              _judged(("fp32", "fp32", "int8"), 0.995)]
    order, chosen, reason = choose_policy(judged, PARTS)
    assert chosen == ("fp32", "int8", "int8") and "image_encoder kept FP32" in reason
    assert [j.precision for j in order] == [("fp32", "int8", "int8"), ("fp32", "fp32", "int8")]
    order, chosen, reason = choose_policy([_judged(("int8", "int8", "int8"), 0.9)], PARTS)
    assert chosen == ("fp32", "fp32", "fp32") and "kept FP32" in reason and order == []


def test_policy_prefers_fp16_over_fp32_for_a_fallen_part():
    judged = [_judged(("int8", "int8", "int8"), 0.95), _judged(("fp16", "int8", "int8"), 1.0),
              _judged(("fp32", "int8", "int8"), 1.0), _judged(("fp16", "fp16", "fp16"), 1.0)]
    _, chosen, reason = choose_policy(judged, PARTS)
    assert chosen == ("fp16", "int8", "int8") and "image_encoder kept FP16" in reason


def test_policy_puts_int8_where_the_model_time_is_and_takes_the_fastest_where_timed():
    judged = [_judged(("int8", "int8", "int8"), 0.97), _judged(("fp16", "int8", "fp16"), 0.995),
              _judged(("fp16", "fp16", "int8"), 0.995), _judged(("fp16", "fp16", "fp16"), 0.995)]
    seconds = {"image_encoder": 1.9, "text_encoder": 3.0, "fusion_head": 0.1}
    _, chosen, reason = choose_policy(judged, PARTS, seconds)
    assert chosen == ("fp16", "int8", "fp16") and "the most FP32 model time in INT8 (60%; an estimate" in reason
    seconds["fusion_head"], seconds["text_encoder"] = 3.0, 0.1  # a model whose time is in the head
    assert choose_policy(judged, PARTS, seconds)[1] == ("fp16", "fp16", "int8")
    timed = [_judged(("int8", "int8", "int8"), 1.0, seconds=0.5, invariant=False),  # fastest, but batch-dependent
             _judged(("fp32", "int8", "int8"), 1.0, seconds=0.8), _judged(("int8", "fp32", "int8"), 1.0, seconds=0.7)]
    order, chosen, reason = choose_policy(timed, PARTS, {"image_encoder": 0.5, "text_encoder": 0.5, "fusion_head": 0.1})
    assert chosen == ("int8", "fp32", "int8") and "the fastest that passed, as measured: 700.0 ms" in reason
    assert order[-1].precision == ("int8", "int8", "int8")  # kept as a candidate, flagged, never the choice


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


def test_int8_judged_on_another_kind_of_cpu_is_left_out_here(calibrated, tmp_path):
    """int8-cpu's arithmetic is the same on every x86 CPU (7-bit weights): portable. OpenVINO's INT8 kernels differ
    between CPU kinds: its INT8 judged on another kind warns when loaded as calibration chose, and tuning leaves it
    out."""
    import dataclasses
    import shutil
    import warnings

    bundle = Bundle.open(shutil.copytree(calibrated[0], tmp_path / "bundle"))
    here = cpu_info()
    if here["vnni"] is None:
        pytest.skip("this OS does not say what the CPU has")
    from fusionrt.runtime.cpu import cpu_kind

    # VNNI the other way round from what OpenVINO's kernels may use here (under an ISA limit too)
    other = {**here, "isa_limit": "", "vnni": not cpu_kind().for_onednn().vnni, "label": "another CPU"}
    policies = {t: dataclasses.replace(p, measured_on=other) for t, p in bundle.manifest.policies.items()}
    int8 = {c: "int8" for c in policies["int8-ov"].precision}
    policies["int8-ov"] = dataclasses.replace(policies["int8-ov"], precision=int8)
    policies["int8-cpu"] = dataclasses.replace(policies["int8-cpu"], precision=int8)
    save_manifest(bundle, dataclasses.replace(bundle.manifest, policies=policies))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Pipeline.load(bundle.root, backend="onnxruntime", tune=False).close()  # portable: silent
    with pytest.warns(RuntimeWarning, match="INT8 judged on another kind of CPU \\(another CPU\\)"):
        Pipeline.load(bundle.root, backend="openvino", tune=False).close()
    with Pipeline.load(bundle.root, backend="openvino") as pipe:
        assert "int8" not in pipe.precision.values()
        assert all("another kind of CPU" in m.excluded for m in pipe.tuning.measured if "int8" in m.precision.values())
