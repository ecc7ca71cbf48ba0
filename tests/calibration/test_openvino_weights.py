"""The int8-ov text encoder's third form: INT8 weights with float math (NNCF's weight compression), written when asked
or where `auto` times it faster than INT8 math on the calibration texts; the same answers on every CPU kind (OpenVINO's
on-the-fly activation quantization off in the IR), judged like every form."""

import shutil

import numpy as np
import pytest

from fusionrt.calibration.openvino_target import pick_form
from fusionrt.data.dataset import LabeledDataset
from fusionrt.runtime.backends.openvino import LINEAR_FORMS, int8_linear_form, int8_source
from fusionrt.runtime.bundle import Bundle
from fusionrt.runtime.cpu import cpu_kind
from fusionrt.runtime.pipeline import Pipeline

ov = pytest.importorskip("openvino", reason="the int8-ov flavour is OpenVINO IR (fusionrt[openvino])")
pytest.importorskip("nncf", reason="NNCF (fusionrt[openvino]) writes the int8-ov flavour")


def test_weights_win_only_when_clearly_faster():
    assert pick_form({"conv": 1.0, "weights": 0.90}) == "weights"
    assert pick_form({"conv": 1.0, "weights": 0.97}) == "conv"  # within 5 %: INT8 math, which saves more elsewhere
    assert pick_form({"matmul": 2.0, "conv": 1.0, "weights": 0.97}) == "conv"
    assert pick_form({"matmul": 1.0}) == "matmul"


def _calibrate(calibrated, tmp_path, linear):
    from fusionrt.calibration.calibrate import calibrate_bundle

    bundle = tmp_path / "bundle"
    shutil.copytree(calibrated[0], bundle)
    report = calibrate_bundle(bundle, calibrated[2], calibrated[3], method="minmax", samples=16,
                              openvino_linear=linear)
    return Bundle.open(bundle), report


def _text_ir(bundle):
    record = bundle.manifest.components["text_encoder"].files["int8-ov"]
    return ov.Core().read_model(bundle.read(record.path, record.sha256),
                                bundle.read(record.weights, record.weights_sha256))


def _is_weights_form(model) -> bool:
    """INT8 weights decompressed to float, no FakeQuantize: float math."""
    kinds = {op.get_type_name() for op in model.get_ops()}
    int8_constants = [op for op in model.get_ops() if op.get_type_name() == "Constant"
                      and op.get_element_type().get_type_name() in ("u8", "i8")]
    return "FakeQuantize" not in kinds and len(int8_constants) > 0


def test_the_weights_form_is_float_math_on_int8_weights_the_same_on_every_cpu(calibrated, tmp_path):
    bundle, report = _calibrate(calibrated, tmp_path, "weights")
    m = bundle.manifest
    assert m.calibration["openvino_linear"] == "weights" and m.calibration["openvino_linear_ms"] == {}
    model = _text_ir(bundle)
    assert _is_weights_form(model)
    # OpenVINO's dynamic activation quantization (on CPUs with fast INT8 math) would change the answers judged here
    assert model.get_rt_info(["runtime_options", "DYNAMIC_QUANTIZATION_GROUP_SIZE"]).astype(str) == "0"
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    assert compiled.get_property("DYNAMIC_QUANTIZATION_GROUP_SIZE") == 0
    text_kept = report["kept_float"]["int8-ov"]["text_encoder"]
    assert text_kept == []  # nothing to keep float: the search ran over the image encoder and head only
    assert "weights INT8 with float math" in report["measured_on"]["int8-ov"]
    assert "weights INT8 with float math" in int8_source(m)[1]
    assert "this CPU runs" not in int8_source(m)[1]  # a measured choice, not one read off the CPU kind
    assert "int8-ov" in m.policies
    held_out = LabeledDataset.read(calibrated[3])
    images, texts = [s.image for s in held_out], [s.text for s in held_out]
    with Pipeline.load(bundle.root, backend="openvino", precision="fp32") as ref, \
            Pipeline.load(bundle.root, backend="openvino", precision="image=fp32,text=int8,head=fp32") as int8:
        tokens = ref.prepare(images, texts)
        want, got = ref.backends["text_encoder"].infer(tokens[1]), int8.backends["text_encoder"].infer(tokens[1])
    (name,) = want
    cosine = (want[name] * got[name]).sum(1) / np.linalg.norm(want[name], axis=1) / np.linalg.norm(got[name], axis=1)
    assert cosine.min() > 0.99  # weights alone in INT8: close to FP32


def test_auto_takes_the_form_it_timed_faster_and_says_so(calibrated, tmp_path):
    bundle, report = _calibrate(calibrated, tmp_path, "auto")
    c = bundle.manifest.calibration
    math_form = int8_linear_form(cpu_kind())
    timed = c["openvino_linear_ms"]
    assert c["openvino_linear"] in LINEAR_FORMS and c["openvino_linear"] in (math_form, "weights")
    if timed:  # the weights passed the criterion, so both were timed here
        assert set(timed) == {math_form, "weights"} and all(ms > 0 for ms in timed.values())
        assert c["openvino_linear"] == pick_form(timed)
    else:
        assert c["openvino_linear"] == math_form
    assert _is_weights_form(_text_ir(bundle)) == (c["openvino_linear"] == "weights")
    last = report["fallback_search"]["int8-ov"][-1]  # the search's trace ends with the weights text judged
    assert "INT8 weights with float math" in last["rule"] and last["passed"] == bool(timed)
    assert ("; taken: " in last["rule"]) == (c["openvino_linear"] == "weights")
    searched_elsewhere = [e for part, kept in report["kept_float"]["int8-ov"].items() if part != "text_encoder"
                          for e in kept if e["why"].startswith("per-layer search")]
    assert last["kept"] == len(searched_elsewhere)  # the image encoder's and head's, as searched
    if c["openvino_linear"] == "weights":
        assert f"weights {timed['weights']:.2f} ms" in int8_source(bundle.manifest)[1]
