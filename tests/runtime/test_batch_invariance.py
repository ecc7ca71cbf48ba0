"""One answer per input: for every backend and precision a calibrated bundle offers on the CPU, a row's logits alone,
in a batch of mixed texts and with more padding agree within FP32 round-off (issue: INT8 answers changed with their
batch companions, the text encoder's dynamic activation scale spanning the padded batch). `make demo` runs the same
check on the demo bundle (fusionrt.benchmarks.invariance)."""

import pytest

from fusionrt.benchmarks.invariance import calibration_found, failed, pipeline_deviation
from fusionrt.data.dataset import LabeledDataset
from fusionrt.runtime.bundle import Bundle
from fusionrt.runtime.pipeline import Pipeline

CPU_PRECISIONS = [("onnxruntime", p) for p in ("fp32", "fp16", "int8")] + [("openvino", p) for p in ("fp32", "fp16",
                                                                                                      "int8")]


@pytest.mark.parametrize("backend, precision", CPU_PRECISIONS)
def test_a_rows_logits_do_not_depend_on_its_batch_or_padding(calibrated, backend, precision):
    bundle, _, _, test = calibrated
    samples = LabeledDataset.read(test).head(8)
    with Pipeline.load(bundle, backend=backend, precision=precision) as pipe:
        tokens = pipe.tokenizer([s.text + " seen at night on a wet road" * (i == 0) for i, s in enumerate(samples)])
        assert tokens["attention_mask"].sum(1).min() < tokens["input_ids"].shape[1]  # the rows do get padding
        found = pipeline_deviation(pipe, [s.image for s in samples], [s.text for s in samples])
        measured = calibration_found(pipe)
    if measured is False:  # e.g. OpenVINO's BF16 on AMX: calibration measured so, and no policy or `auto` runs it
        pytest.skip(f"calibration measured {pipe.precision} on {backend} batch-dependent on this CPU ({found})")
    assert found["batch"] <= found["tolerance"] and found["padding"] <= found["tolerance"], found


def test_only_a_batch_dependence_calibration_did_not_measure_fails_the_check(calibrated):
    with Pipeline.load(calibrated[0], backend="onnxruntime", precision="fp32") as pipe:
        assert calibration_found(pipe) is None  # FP32 is the reference: never judged
    policy = Bundle.open(calibrated[0]).manifest.policies["int8-cpu"]
    with Pipeline.load(calibrated[0], backend="onnxruntime", precision=dict(policy.precision)) as pipe:
        assert calibration_found(pipe) is policy.candidates[0].batch_invariant  # the int8-cpu policy's own choice
    rows = [{"invariant": True, "expected": True}, {"invariant": False, "expected": False},
            {"invariant": False, "expected": True}]
    assert failed(rows) == [rows[2]]


def test_dynamic_per_tensor_int8_is_what_this_guards_against(calibrated, tmp_path):
    """The check can fail: ONNX Runtime's dynamic INT8 of the same text encoder (one activation scale over the whole
    padded batch) moves a row's features with its batch companions; the bundle's per-token INT8 does not."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from fusionrt.runtime.backends.onnxruntime import OnnxRuntimeBackend
    from fusionrt.runtime.bundle import Bundle
    from fusionrt.runtime.invariance import invariant, relative_deviation

    bundle = Bundle.open(calibrated[0])
    spec = bundle.manifest.components["text_encoder"]
    dynamic = tmp_path / "dynamic.onnx"
    quantize_dynamic(str(bundle.file(spec.files["fp32"].path)), str(dynamic), weight_type=QuantType.QInt8,
                     op_types_to_quantize=["MatMul"])
    samples = LabeledDataset.read(calibrated[3]).head(8)
    with Pipeline.load(bundle.root, backend="onnxruntime", precision="int8", tune=False) as pipe:
        tokens = pipe.tokenizer([s.text + " and more" * (i % 4) for i, s in enumerate(samples)])
        text = pipe.backends["text_encoder"]
        name, limit = spec.outputs[0].name, bundle.manifest.tokenizer.max_seq_len
        assert invariant(relative_deviation(lambda f: text.infer(f)[name], tokens, limit))
    with OnnxRuntimeBackend(dynamic, spec.inputs, spec.outputs) as backend:
        assert not invariant(relative_deviation(lambda f: backend.infer(f)[name], tokens, limit))
