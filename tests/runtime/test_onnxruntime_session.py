"""How the ONNX Runtime backend sets up its sessions: thread spinning follows how the branches run, a layer a Q/DQ
graph keeps float stays float, and CPU-only sessions keep BERT's residual Add and LayerNorm apart (ONNX Runtime's
fused CPU kernel is the slower one)."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from fusionrt.runtime.backends.onnxruntime import (CPU_SLOW_FUSIONS, DISABLED_OPTIMIZERS, OnnxRuntimeBackend,
                                                   OnnxRuntimeOptions)
from fusionrt.runtime.bundle import Bundle
from fusionrt.runtime.manifest import TensorSpec
from fusionrt.runtime.pipeline import Pipeline

SPINNING = "session.intra_op.allow_spinning"
STOP = "session.force_spinning_stop"


def _config(backend, key):
    return backend.session.get_session_options().get_session_config_entry(key)


@pytest.mark.parametrize("concurrent, spins", [(False, "1"), (True, "0")])
def test_spinning_follows_how_the_branches_run(tiny_bundle, concurrent, spins):
    with Pipeline.load(tiny_bundle, backend="onnxruntime", precision="fp32", concurrent=concurrent) as pipe:
        assert pipe.options.spinning is (not concurrent)
        for backend in pipe.backends.values():
            assert _config(backend, SPINNING) == spins
            if spins == "1":  # a session still spinning after its call would take the next session's cores
                assert _config(backend, STOP) == "1"


def test_an_explicit_spinning_wins(tiny_bundle):
    with Pipeline.load(tiny_bundle, backend="onnxruntime", precision="fp32", concurrent=False, spinning=False) as pipe:
        assert all(_config(b, SPINNING) == "0" for b in pipe.backends.values())
    assert OnnxRuntimeOptions(spinning=True).for_branches(True).spinning is True
    assert OnnxRuntimeOptions().for_branches(True).spinning is False


def _text_encoder(bundle_dir) -> tuple:
    bundle = Bundle.open(bundle_dir)
    comp = bundle.manifest.components["text_encoder"]
    return str(bundle.file(comp.files["fp32"].path)), comp


def _optimized_ops(monkeypatch, tmp_path, make_backend) -> set:
    """The op types of the graph ONNX Runtime optimized for the session `make_backend()` creates."""
    real = ort.InferenceSession
    path = tmp_path / "optimized.onnx"

    def saving(source, sess_options=None, **kwargs):
        sess_options.optimized_model_filepath = str(path)
        return real(source, sess_options=sess_options, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", saving)
    make_backend()
    monkeypatch.setattr(ort, "InferenceSession", real)
    return {n.op_type for n in onnx.load(str(path)).graph.node}


def _residual_layernorm(path) -> tuple:
    """BERT's residual block end: LayerNorm(x + skip), as the exporter writes it."""
    from onnx import TensorProto, helper, numpy_helper

    shape = [1, 8, 16]
    nodes = [helper.make_node("Add", ["x", "skip"], ["sum"]),
             helper.make_node("LayerNormalization", ["sum", "gamma", "beta"], ["y"], axis=-1, epsilon=1e-12)]
    weights = [numpy_helper.from_array(np.full(16, v, np.float32), n) for n, v in (("gamma", 1.0), ("beta", 0.0))]
    graph = helper.make_graph(nodes, "residual", [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape)
                                                  for n in ("x", "skip")],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)], weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return (TensorSpec("x", "float32", tuple(shape)), TensorSpec("skip", "float32", tuple(shape))), \
        (TensorSpec("y", "float32", tuple(shape)),)


def test_cpu_sessions_keep_the_residual_add_and_layernorm_apart(monkeypatch, tmp_path):
    model = tmp_path / "residual.onnx"
    inputs, outputs = _residual_layernorm(model)
    # what ONNX Runtime does by default: the slow fused kernel (else this test proves nothing on this version)
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "default.onnx")
    ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    default = {n.op_type for n in onnx.load(str(tmp_path / "default.onnx")).graph.node}
    if "SkipLayerNormalization" not in default:
        pytest.skip(f"ONNX Runtime {ort.__version__} does not fuse SkipLayerNormalization")
    ours = _optimized_ops(monkeypatch, tmp_path, lambda: OnnxRuntimeBackend(
        str(model), inputs, outputs, providers=["CPUExecutionProvider"]))
    assert "SkipLayerNormalization" not in ours and "LayerNormalization" in ours
    x = np.random.default_rng(0).standard_normal((2, 1, 8, 16)).astype(np.float32)
    got = OnnxRuntimeBackend(str(model), inputs, outputs, providers=["CPUExecutionProvider"]).infer(
        {"x": x[0], "skip": x[1]})["y"]
    total = x[0] + x[1]
    expected = (total - total.mean(-1, keepdims=True)) / np.sqrt(total.var(-1, keepdims=True) + 1e-12)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_gpu_provider_sessions_keep_the_cpu_slow_fusions(tmp_path, monkeypatch):
    """Asked for CUDA (here falling back to the CPU), the residual Add + LayerNorm fuse, as they should on a GPU; on
    the CPU alone they stay apart (the test above): the choice follows the providers asked for."""
    model = tmp_path / "residual.onnx"
    inputs, outputs = _residual_layernorm(model)
    ops = _optimized_ops(monkeypatch, tmp_path, lambda: OnnxRuntimeBackend(
        str(model), inputs, outputs, providers=["CUDAExecutionProvider", "CPUExecutionProvider"], allow_fallback=True))
    assert "SkipLayerNormalization" in ops and "LayerNormalization" not in ops


def _float_conv_between_qdq(path) -> tuple:
    """DequantizeLinear -> a float Conv whose output channels differ 1000x in size -> Q/DQ: a layer calibration kept
    float, as a Q/DQ graph holds it."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    channels = 8
    gains = np.logspace(-3, 0, channels).astype(np.float32)  # per-tensor int8 over these crushes the small ones
    shape, weight = [1, channels, 6, 6], rng.standard_normal((channels, channels, 1, 1)) * gains[:, None, None, None]
    layer = helper.make_node("Conv", ["xf", "w"], ["y"], name="kept_float")
    scale = lambda n, v: numpy_helper.from_array(np.array(v, np.float32), n)  # noqa: E731
    zero = lambda n: numpy_helper.from_array(np.array(0, np.int8), n)  # noqa: E731
    nodes = [helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xf"]), layer,
             helper.make_node("QuantizeLinear", ["y", "sy", "zy"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "sy", "zy"], ["out"])]
    inits = [numpy_helper.from_array(weight.astype(np.float32), "w"), scale("sx", 0.02), zero("zx"),
             scale("sy", 0.01), zero("zy")]
    graph = helper.make_graph(nodes, "kept", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return (TensorSpec("x", "float32", tuple(shape)),), (TensorSpec("out", "float32", ()),), shape


def test_a_layer_kept_float_between_qdq_stays_float(tmp_path):
    model = tmp_path / "kept.onnx"
    inputs, outputs, shape = _float_conv_between_qdq(model)
    x = np.random.default_rng(1).uniform(-2, 2, shape).astype(np.float32)
    exact = OnnxRuntimeBackend(str(model), inputs, outputs, optimize=False).infer({"x": x})["out"]
    ours = OnnxRuntimeBackend(str(model), inputs, outputs).infer({"x": x})["out"]
    # ONNX Runtime's default quantizes the float weights per tensor (else this test proves nothing on this version)
    default = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    if np.abs(default - exact).max() <= 0.01 + 1e-6:
        pytest.skip(f"ONNX Runtime {ort.__version__} leaves the float Conv float by itself")
    np.testing.assert_allclose(ours, exact, atol=0.01 + 1e-6)  # at most one output step apart
