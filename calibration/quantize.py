"""INT8 with ONNX Runtime's quantization tool: one calibration pass, two targets.

- `int8-trt`: symmetric int8 activations and weights (zero point 0), per-channel weights, per-tensor
  activations, float biases (QuantizeBias=False): what TensorRT 10/11 and TensorRT-RTX parse.
- `int8-cpu`: what ONNX Runtime's CPU kernels run fast and the same on every x86 CPU: U8S8 static Q/DQ for the
  convolutions and the head, per-token INT8 for the BERT text encoder (`per_token.py`: batch-invariant), with 7-bit
  weights wherever the kernel is a GEMM. Without VNNI those GEMMs sum pairs of u8 x s8 products in 16 bits, which
  saturates with 8-bit weights: on an AVX2 EPYC, the demo's image encoder all in INT8 gave features of cosine 0.675
  vs FP32 on the fused kernels against 0.919 for the same Q/DQ graph as written; with 7-bit weights both read 0.877.
  Depthwise convolutions keep 8-bit weights: their kernel multiplies without pair sums (exact with 8 bits, measured).
Activation ranges are collected once per component and kept in the bundle (`calibration/*.ranges.json`).
BERT's Softmax, LayerNorm, GELU and residual Adds stay float: only MatMul/Gemm (and Conv) are quantized, less the
layers the per-layer search keeps float.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path

from fusionrt.runtime.errors import DataError
from fusionrt.runtime.manifest import FUSION_HEAD, IMAGE_ENCODER, TEXT_ENCODER
from fusionrt.runtime.optional import require
from fusionrt.runtime.progress import progress

__all__ = ["METHODS", "RECIPE", "QUANTIZED_OPS", "collect_ranges", "quantize_component"]

METHODS = ("minmax", "percentile", "entropy")
RECIPE = 7  # bumped whenever what is quantized changes (keys cached quantized models)
QUANTIZED_OPS = {
    # Clip (ReLU6) and Relu too: ONNX Runtime's U8 graph folds them into the conv's output range; left out, each costs
    # a DequantizeLinear + QuantizeLinear pair and a second rounding. TensorRT fuses them between its Q/DQ itself.
    IMAGE_ENCODER: ["Conv", "MatMul", "Gemm", "Clip", "Relu"],
    TEXT_ENCODER: ["MatMul", "Gemm"],
    FUSION_HEAD: ["MatMul", "Gemm"],
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


class OneBatch:
    """A CalibrationDataReader over a single feed."""

    def __init__(self, feed: dict):
        self._feeds = [feed]

    def get_next(self):
        return self._feeds.pop() if self._feeds else None


def quantize_component(model: Path, component: str, target: str, ranges: Path, out: Path, excluded,
                       input_means: dict | None = None) -> Path:
    """Write the `target` ('int8-cpu' | 'int8-trt') INT8 model of `component` from the collected `ranges`, with the
    nodes `excluded` left float. input_means (`bias_correction.conv_input_means`): correct the quantized convs'
    biases for their weights' error."""
    q = _q()
    from onnxruntime.quantization.calibrate import load_tensors_data

    ops = QUANTIZED_OPS[component]
    excluded = list(excluded)
    if target == "int8-cpu" and component == TEXT_ENCODER:
        from fusionrt.calibration.per_token import write_per_token_int8

        return write_per_token_int8(model, out, excluded)
    method = load_tensors_data(ranges).calibration_method
    symmetric = target == "int8-trt"
    depthwise = set(_depthwise_weights(model))
    overrides = {} if symmetric else {w: [{"reduce_range": False, "axis": 0}] for w in depthwise}
    with tempfile.TemporaryDirectory(prefix="fusionrt-bias-") as tmp:
        if input_means:
            from fusionrt.calibration.bias_correction import corrected

            levels = lambda node, w: 127 if symmetric or node.input[1] in depthwise else 64  # noqa: E731 - as stored
            model = corrected(model, Path(tmp) / "corrected.onnx", input_means, levels, excluded)
        _quantize_static(q, model, out, ops, excluded, symmetric, method, ranges, overrides)
    return out


def _quantize_static(q, model: Path, out: Path, ops: list, excluded: list, symmetric: bool, method, ranges: Path,
                     overrides: dict) -> None:
    q.quantize_static(
        str(model), str(out), calibration_data_reader=None, quant_format=q.QuantFormat.QDQ,
        op_types_to_quantize=ops, per_channel=True, nodes_to_exclude=excluded,
        activation_type=q.QuantType.QInt8 if symmetric else q.QuantType.QUInt8,
        weight_type=q.QuantType.QInt8, calibrate_method=method, calibration_cache_path=str(ranges),
        reduce_range=not symmetric,  # int8-cpu: 7-bit weights, exact on every x86 CPU (see the module's note)
        extra_options={
            "ActivationSymmetric": symmetric,
            "WeightSymmetric": True,
            "QuantizeBias": not symmetric,  # TensorRT's parser rejects INT32 bias Q/DQ
            "AddQDQPairToWeight": False,
            **({"TensorQuantOverrides": overrides} if overrides else {}),
        },
    )


def _depthwise_weights(model: Path) -> list:
    """The weights of the depthwise convolutions (one filter per channel): their kernel cannot saturate, so they keep
    all 8 bits."""
    onnx = require("onnx", "INT8 calibration")
    graph = onnx.load(str(model), load_external_data=False).graph
    weights = {i.name: i for i in graph.initializer}
    out = []
    for node in graph.node:
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        weight = weights.get(node.input[1]) if node.op_type == "Conv" and len(node.input) > 1 else None
        if weight is not None and group > 1 and weight.dims[1] == 1:
            out.append(weight.name)
    return out
