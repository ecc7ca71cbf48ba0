"""INT8 as explicit Q/DQ ONNX with ONNX Runtime's quantization tool: one calibration pass, two targets.

- `int8-trt`: symmetric int8 activations and weights (zero point 0), per-channel weights, per-tensor
  activations, float biases (QuantizeBias=False): what TensorRT 10/11 and TensorRT-RTX parse.
- `int8-cpu`: what ONNX Runtime's CPU kernels run fastest: U8S8 static Q/DQ for convolutions and the
  head; dynamic INT8 (weights only) for the BERT text encoder.
Activation ranges are collected once per component and kept in the bundle (`calibration/*.ranges.json`);
both targets are quantized from them. BERT's Softmax, LayerNorm, GELU and residual Adds stay float:
only MatMul/Gemm (and Conv) are quantized, less the layers `keep_float` names (measured on the demo's
EfficientNet-Lite0 + MiniLM, TensorRT target: image cosine vs FP32 0.81 -> 0.998, text 0.87 -> 0.997).
"""

from __future__ import annotations

import contextlib
import io
import math
import tempfile
from pathlib import Path

from fusionrt.runtime.errors import DataError
from fusionrt.runtime.optional import require
from fusionrt.runtime.progress import progress

__all__ = ["METHODS", "RECIPE", "QUANTIZED_OPS", "collect_ranges", "keep_float", "quantize_component"]

METHODS = ("minmax", "percentile", "entropy")
RECIPE = 5  # bumped whenever what is quantized changes (keys cached quantized models)
EARLY_CONV_SHARE = 0.25  # EfficientNet-Lite0: image cosine vs FP32 0.992 (none) -> 0.998 (a quarter of the dense convs)
QUANTIZED_OPS = {
    # Clip (ReLU6) and Relu too: quantized with the conv before them, ONNX Runtime's asymmetric U8 graph drops them
    # into the conv's output range (QLinearConv to QLinearConv); left out, every one cost a DequantizeLinear +
    # QuantizeLinear pair, 58 % of EfficientNet-Lite0's INT8 time, and a second rounding (image cosine 0.84 -> 0.99
    # with every conv INT8). The symmetric TensorRT graph keeps them, between Q/DQ, for TensorRT to fuse.
    "image_encoder": ["Conv", "MatMul", "Gemm", "Clip", "Relu"],
    "text_encoder": ["MatMul", "Gemm"],
    "fusion_head": ["MatMul", "Gemm"],
}


def _q():
    return require("onnxruntime.quantization", "INT8 calibration")


def preprocess_for_quantization(src: Path, dst: Path) -> Path:
    """Shape inference + basic graph optimization (folds BatchNorm into Conv). Symbolic shape inference is
    skipped: it fails on BERT graphs."""
    _q()  # clear error with the install hint when onnxruntime is missing
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
    return dst


def collect_ranges(model: Path, reader, component: str, method: str, out: Path) -> Path:
    """Run the calibrator over `reader` and write the activation ranges as JSON to `out`."""
    _q()  # clear error with the install hint when onnxruntime is missing
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator, save_tensors_data

    if method not in METHODS:
        raise DataError(f"calibration method '{method}' unknown: expected one of {METHODS}.")
    calibration_method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                          "entropy": CalibrationMethod.Entropy}[method]
    # quantize_static does not pass num_bins through; creating the calibrator here does.
    options = {"percentile": {"num_bins": 2048, "percentile": 99.999},
               "entropy": {"num_bins": 2048, "num_quantized_bins": 255}}.get(method, {})
    with tempfile.TemporaryDirectory(prefix="fusionrt-calib-") as tmp:
        calibrator = create_calibrator(
            Path(model), QUANTIZED_OPS[component], augmented_model_path=str(Path(tmp) / "augmented.onnx"),
            calibrate_method=calibration_method, extra_options=options,
        )
        # One batch per pass: ORT stacks everything it is handed at once, which fails on batches of
        # different shapes (text lengths) and holds every activation of the whole set in memory.
        # ORT's histogram calibrators print a line per batch; the progress bar already says where we are.
        with contextlib.redirect_stdout(io.StringIO()):
            for feed in progress(reader, f"activation ranges ({component})", total=len(reader)):
                calibrator.collect_data(OneBatch(feed))
                calibrator.clear_collected_data()
            data = calibrator.compute_data()
        save_tensors_data(data, out)
        del calibrator
    return out


def activation_matmuls(model: Path) -> list:
    """MatMuls whose inputs are both activations (attention's Q·Kᵀ and softmax·V): their softmax-shaped
    inputs lose most of their resolution in per-tensor int8, so they stay float; weight GEMMs are quantized."""
    import onnx

    graph = onnx.load(str(model), load_external_data=False).graph
    weights = {init.name for init in graph.initializer}
    weights |= {n.output[0] for n in graph.node if n.op_type in ("Constant", "Transpose") and
                all(i in weights for i in n.input)}
    return [n.name for n in graph.node if n.op_type == "MatMul" and not any(i in weights for i in n.input)]


def keep_float(model: Path, component: str) -> list:
    """Nodes left in float because per-tensor int8 activations cannot hold their inputs' range:
    - image: the early convs (the stem and the first quarter of the others, where activations are still close to
      raw pixels), the last conv (its output is the feature vector itself) and depthwise convs (one filter per
      channel: ranges differ by orders of magnitude between channels, one per-tensor scale crushes most);
    - text: attention's activation x activation MatMuls and the FFN (the down projection's GELU input and the
      up projection's LayerNorm input carry the outlier channels BERT models are known for); attention's
      Q/K/V/output projections are INT8;
    - head: the layer that reads the concatenated features."""
    import onnx

    graph = onnx.load(str(model), load_external_data=False).graph
    if component == "image_encoder":
        convs = [n for n in graph.node if n.op_type == "Conv"]
        depthwise = {n.name for n in convs if any(a.name == "group" and a.i > 1 for a in n.attribute)}
        dense = [n.name for n in convs if n.name not in depthwise]
        early = dense[:math.ceil(EARLY_CONV_SHARE * len(dense))]
        return sorted(depthwise | set(early) | set(dense[-1:]))
    if component == "text_encoder":
        shapes = {init.name: tuple(init.dims) for init in graph.initializer}
        ffn = [n.name for n in graph.node if n.op_type in ("MatMul", "Gemm") and any(
            len(shapes.get(i, ())) == 2 and shapes[i][0] != shapes[i][1] for i in n.input)]
        return activation_matmuls(model) + ffn
    # head: the first layer reads the concatenated image and text features, whose ranges differ by orders of
    # magnitude; one per-tensor scale over both would crush the text half. The layers after it are INT8.
    concats = {n.output[0] for n in graph.node if n.op_type == "Concat"}
    return [n.name for n in graph.node if n.op_type in ("MatMul", "Gemm") and any(i in concats for i in n.input)]


class OneBatch:
    """A CalibrationDataReader over a single feed."""

    def __init__(self, feed: dict):
        self._feeds = [feed]

    def get_next(self):
        return self._feeds.pop() if self._feeds else None


def quantize_component(model: Path, component: str, target: str, ranges: Path, out: Path,
                       excluded: list | None = None) -> Path:
    """Write the `target` ('int8-cpu' | 'int8-trt') Q/DQ model of `component` from the collected `ranges`, with the
    nodes `excluded` left float (default: the hand-written `keep_float` list, what recipe 2 used)."""
    q = _q()
    from onnxruntime.quantization.calibrate import load_tensors_data

    ops = QUANTIZED_OPS[component]
    excluded = keep_float(model, component) if excluded is None else list(excluded)
    if target == "int8-cpu" and component == "text_encoder":
        q.quantize_dynamic(str(model), str(out), op_types_to_quantize=ops, weight_type=q.QuantType.QInt8,
                           per_channel=True, nodes_to_exclude=excluded)
        return out
    method = load_tensors_data(ranges).calibration_method
    symmetric = target == "int8-trt"
    q.quantize_static(
        str(model), str(out), calibration_data_reader=None, quant_format=q.QuantFormat.QDQ,
        op_types_to_quantize=ops, per_channel=True, nodes_to_exclude=excluded,
        activation_type=q.QuantType.QInt8 if symmetric else q.QuantType.QUInt8,
        weight_type=q.QuantType.QInt8, calibrate_method=method, calibration_cache_path=str(ranges),
        extra_options={
            "ActivationSymmetric": symmetric,
            "WeightSymmetric": True,
            "QuantizeBias": not symmetric,  # TensorRT's parser rejects INT32 bias Q/DQ
            "AddQDQPairToWeight": False,
        },
    )
    return out
