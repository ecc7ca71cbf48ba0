"""The per-layer search finds a planted sensitive spot in a tiny model and leaves the rest INT8."""

import numpy as np
import pytest

from fusionrt.calibration.fallback import quantizable_nodes, rank_layers, search_fallback, structural_float
from fusionrt.calibration.quantize import collect_ranges, quantize_component

WIDTH, LAYERS, PLANTED = 16, 6, 3


def _chain(path, seed=0):
    """Six MatMul+ReLU layers; layer 2 writes one channel 300x larger than the rest, so that tensor cannot share one
    int8 scale (per tensor) across its channels: layer 2's output and layer 3's input are the planted sensitive
    spot (the quantizer puts Q/DQ on both). Layer 3 scales that channel back down."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits, prev = [], [], "x"
    for i in range(LAYERS):
        w = (rng.standard_normal((WIDTH, WIDTH)) / np.sqrt(WIDTH)).astype(np.float32)
        if i == PLANTED - 1:
            w[:, 0] = np.abs(w[:, 0]) * 300
        if i == PLANTED:
            w[0, :] /= 300
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes += [helper.make_node("MatMul", [prev, f"w{i}"], [f"h{i}"], name=f"layer{i}"),
                  helper.make_node("Relu", [f"h{i}"], [f"a{i}"], name=f"relu{i}")]
        prev = f"a{i}"
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", WIDTH])],
                              [helper.make_tensor_value_info(prev, TensorProto.FLOAT, ["batch", WIDTH])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _run(path, x):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_the_search_finds_the_planted_layer_and_leaves_the_rest_int8(tmp_path):
    from fusionrt.calibration.reader import OrtReader

    model = _chain(tmp_path / "chain.onnx")
    rng = np.random.default_rng(1)
    feeds = [{"x": np.abs(rng.standard_normal((8, WIDTH))).astype(np.float32)} for _ in range(6)]
    ranges = collect_ranges(model, OrtReader(feeds), "fusion_head", "minmax", tmp_path / "ranges.json")
    assert structural_float(model) == {}  # every MatMul here has a weight
    candidates = quantizable_nodes(model)

    def alone(node):
        others = [n for n in candidates if n != node]
        return quantize_component(model, "fusion_head", "int8-trt", ranges, tmp_path / "one.onnx", excluded=others)

    ranked = rank_layers(model, alone, feeds[:2], candidates)
    planted = {f"layer{PLANTED - 1}", f"layer{PLANTED}"}
    assert {name for name, _ in ranked[:2]} == planted and ranked[1][1] > 10 * ranked[2][1]  # each alone in INT8

    held_out = np.abs(rng.standard_normal((64, WIDTH))).astype(np.float32)
    reference = _run(model, held_out)
    checks = []

    def passes(kept):
        quantize_component(model, "fusion_head", "int8-trt", ranges, tmp_path / "trial.onnx", excluded=kept)
        out = _run(tmp_path / "trial.onnx", held_out)
        error = float(np.linalg.norm(out - reference) / np.linalg.norm(reference))
        checks.append((list(kept), error))
        return error <= 0.1, f"relative error {error:.4f}"

    search = search_fallback([name for name, _ in ranked], passes)
    assert search.passed and set(search.kept) == planted  # the two layers around the outlier float, four INT8
    assert checks[0][1] > 0.5 and checks[-1][1] <= 0.1  # everything INT8 failed; with the planted layers float it held
    assert [k for k, _, _ in search.trace] == [0, 1, 2]


@pytest.mark.parametrize("failing_until, expected_checks", [(0, [0]), (3, [0, 1, 2, 4, 3]), (5, [0, 1, 2, 4, 8, 6, 5])])
def test_doubling_then_bisection_finds_the_smallest_k(failing_until, expected_checks):
    seen = []

    def passes(kept):
        seen.append(len(kept))
        return len(kept) >= failing_until, "synthetic"

    search = search_fallback([f"n{i}" for i in range(10)], passes)
    assert len(search.kept) == failing_until and seen == expected_checks and search.passed
