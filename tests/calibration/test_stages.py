"""Calibration's stages alone, each on inputs built in the test: the held-out split, the noise floor, per-token INT8,
bias correction."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from fusionrt.calibration.bias_correction import conv_input_means, corrected
from fusionrt.calibration.per_token import WEIGHT_MAX, write_per_token_int8
from fusionrt.calibration.reader import split_held_out
from fusionrt.data.dataset import LabeledDataset, Sample
from fusionrt.runtime.errors import DataError


def test_the_held_out_split_deals_each_label_alternately_and_refuses_too_few(tmp_path):
    samples = tuple(Sample(tmp_path / f"{i}.png", f"text {i}", "ab"[i % 3 == 0]) for i in range(30))
    selection, report = split_held_out(LabeledDataset(samples, "held-out.csv"))
    assert len(selection) + len(report) == 30 and not set(selection) & set(report)
    for label in "ab":  # each label in both, as even as its count allows
        counts = [sum(s.label == label for s in half) for half in (selection, report)]
        assert abs(counts[0] - counts[1]) <= 1
    assert split_held_out(LabeledDataset(samples, "held-out.csv"))[0] == selection  # deterministic
    with pytest.raises(DataError, match="expected at least 20"):
        split_held_out(LabeledDataset(samples[:19], "x"))


def _matmul_model(path, w):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "tokens", w.shape[0]])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "tokens", w.shape[1]])
    node = helper.make_node("MatMul", ["x", "w"], ["y"], name="proj")
    model = helper.make_model(helper.make_graph([node], "g", [x], [y], [numpy_helper.from_array(w, "w")]),
                              opset_imports=[helper.make_opsetid("", 18)])
    onnx.save(model, str(path))
    return path


def test_per_token_int8_gives_each_token_its_own_scale_and_7_bit_weights(tmp_path):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 16)).astype(np.float32)
    out = write_per_token_int8(_matmul_model(tmp_path / "f.onnx", w), tmp_path / "q.onnx")
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = rng.standard_normal((3, 5, 64)).astype(np.float32)
    x[1, 2] *= 1000  # an outlier token: with one scale per tensor it would crush the others
    got = session.run(None, {"x": x})[0]
    scale = np.abs(x).max(-1, keepdims=True) / 127  # numpy reference of the same arithmetic
    xq = np.clip(np.rint(x / scale), -128, 127)
    ws = np.abs(w).max(0) / WEIGHT_MAX
    wq = np.clip(np.rint(w / ws), -WEIGHT_MAX, WEIGHT_MAX)
    np.testing.assert_allclose(got, (xq @ wq) * ws * scale, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[0], x[0] @ w, rtol=0.05, atol=0.05 * np.abs(x[0] @ w).max())  # others unhurt
    alone = session.run(None, {"x": x[2:3, :3]})[0]
    assert np.array_equal(alone, got[2:3, :3])  # a token's answer does not depend on its batch or its padding
    weights = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(out)).graph.initializer}
    assert max(int(np.abs(v.astype(int)).max()) for v in weights.values() if v.dtype == np.int8) <= WEIGHT_MAX


def test_bias_correction_takes_back_the_mean_error_of_quantized_weights(tmp_path):
    rng = np.random.default_rng(1)
    w = (rng.standard_normal((8, 4, 3, 3)) * 0.3).astype(np.float32)
    b = np.zeros(8, np.float32)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, 6, 6])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8, 6, 6])
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", pads=[1, 1, 1, 1])
    model = helper.make_model(helper.make_graph([node], "g", [x], [y], [numpy_helper.from_array(w, "w"),
                                                                       numpy_helper.from_array(b, "b")]),
                              opset_imports=[helper.make_opsetid("", 18)])
    onnx.save(model, str(tmp_path / "c.onnx"))
    feeds = [{"x": (rng.standard_normal((4, 4, 6, 6)) + 2.0).astype(np.float32)} for _ in range(3)]  # mean ~2
    means = conv_input_means(tmp_path / "c.onnx", feeds)
    assert np.allclose(means["conv"], np.mean([f["x"].mean(axis=(0, 2, 3)) for f in feeds], axis=0))
    fixed = corrected(tmp_path / "c.onnx", tmp_path / "fixed.onnx", means, lambda node, weight: 2)  # 2 levels: coarse
    new_b = numpy_helper.to_array(next(i for i in onnx.load(str(fixed)).graph.initializer if i.name == "b"))
    scale = np.abs(w).reshape(8, -1).max(1) / 2
    wq = np.clip(np.rint(w / scale[:, None, None, None]), -2, 2) * scale[:, None, None, None]
    expected = -((wq - w).sum(axis=(2, 3)) * means["conv"][None, :]).sum(1)
    np.testing.assert_allclose(new_b, expected, rtol=1e-5, atol=1e-6)
    untouched = corrected(tmp_path / "c.onnx", tmp_path / "kept.onnx", means, lambda node, weight: 2, ["conv"])
    assert not numpy_helper.to_array(next(i for i in onnx.load(str(untouched)).graph.initializer if i.name == "b")).any()
