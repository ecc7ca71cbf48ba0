"""The text encoder's INT8 for ONNX Runtime's CPU kernels: each token's activations quantized with a scale of its own.

ONNX Runtime's dynamic INT8 (`quantize_dynamic`) computes one activation scale over the whole input tensor: over a
padded batch, so one row's answer changed with its batch companions and its padding (the demo's MiniLM: features 20 %
apart). Static ranges are batch-invariant but per-tensor, and BERT's outlier tokens crush them (MiniLM features'
cosine vs FP32 0.91). A scale per token is both: batch- and padding-invariant by construction (a token's INT8 depends on
that token alone), and closer to FP32 than either (cosine 0.995).

Each quantized MatMul `x @ W` (W a float weight) becomes
    scale = max(|x|, axis=-1) / 127                             (per token; ReduceMax)
    xq    = QuantizeLinear(x, scale, 128, block over the last axis)   (u8, zero point 128: symmetric)
    y     = MatMulIntegerToFloat(xq, Wq, 1, w_scale, 128) * scale     (per-channel weights, int32 sums, exact)
with 7-bit weights (|Wq| <= 64), so u8 x s8 pair sums stay inside 16 bits: ONNX Runtime's AVX2 and AVX-512 kernels
without VNNI sum pairs in 16 bits and saturate with 8-bit weights (measured on an AVX2 EPYC: a sum off by 2.5e6), so
with 7 bits every x86 CPU computes the same integers as the one that calibrated.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fusionrt.runtime.optional import require

__all__ = ["WEIGHT_MAX", "write_per_token_int8"]

WEIGHT_MAX = 64  # 7-bit weights: 2 x 255 x 64 < 2^15, no 16-bit pair sum can saturate
BLOCKED_QUANTIZE_OPSET = 21  # QuantizeLinear with block_size (a scale per token) from opset 21 on
_PREFIX = "fusionrt_per_token"


def write_per_token_int8(model: Path, out: Path, excluded=()) -> Path:
    """Rewrite every MatMul of `model` with a 2-D float weight, but the `excluded` nodes, as per-token INT8; write
    `out`. Inputs shared by several MatMuls (attention's Q, K and V projections) are quantized once."""
    onnx = require("onnx", "INT8 calibration")
    helper, numpy_helper = onnx.helper, onnx.numpy_helper
    proto = onnx.load(str(model))
    graph = proto.graph
    for opset in proto.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = max(opset.version, BLOCKED_QUANTIZE_OPSET)
    if not any(o.domain == "com.microsoft" for o in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    proto.ir_version = max(proto.ir_version, 10)
    weights = {i.name: i for i in graph.initializer}
    constants = [numpy_helper.from_array(a, f"{_PREFIX}/{n}") for n, a in (
        ("last_axis", np.array([-1], np.int64)), ("tiny", np.array(1e-30, np.float32)),
        ("int8_max", np.array(127.0, np.float32)), ("one", np.array(1.0, np.float32)),
        ("zero_point", np.array(128, np.uint8)), ("zero_point_block", np.array([128], np.uint8)))]
    c = {name: f"{_PREFIX}/{name}" for name in ("last_axis", "tiny", "int8_max", "one", "zero_point", "zero_point_block")}
    nodes, quantized = [], {}
    excluded = set(excluded)
    for node in graph.node:
        weight = weights.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        if weight is None or len(weight.dims) != 2 or node.name in excluded:
            nodes.append(node)
            continue
        x = node.input[0]
        if x not in quantized:
            p = f"{_PREFIX}/x{len(quantized)}/"
            nodes += [helper.make_node("Abs", [x], [p + "abs"]),
                      helper.make_node("ReduceMax", [p + "abs", c["last_axis"]], [p + "max"], keepdims=1),
                      helper.make_node("Max", [p + "max", c["tiny"]], [p + "max_or_tiny"]),  # an all-zero token
                      helper.make_node("Div", [p + "max_or_tiny", c["int8_max"]], [p + "scale"]),
                      helper.make_node("Shape", [p + "scale"], [p + "scale_shape"]),
                      helper.make_node("Expand", [c["zero_point_block"], p + "scale_shape"], [p + "zero_points"]),
                      helper.make_node("QuantizeLinear", [x, p + "scale", p + "zero_points"], [p + "q"], axis=-1,
                                       block_size=int(weight.dims[0]))]
            quantized[x] = (p + "q", p + "scale")
        xq, x_scale = quantized[x]
        w = numpy_helper.to_array(weight).astype(np.float64)
        w_scale = np.maximum(np.abs(w).max(axis=0), 1e-30) / WEIGHT_MAX  # per output channel, symmetric
        wq = np.clip(np.rint(w / w_scale), -WEIGHT_MAX, WEIGHT_MAX).astype(np.int8)
        wq_name, ws_name = f"{_PREFIX}/{node.name}/weight", f"{_PREFIX}/{node.name}/weight_scale"
        constants += [numpy_helper.from_array(wq, wq_name), numpy_helper.from_array(w_scale.astype(np.float32), ws_name)]
        scaled = f"{_PREFIX}/{node.name}/by_weight_scale"
        nodes += [helper.make_node("MatMulIntegerToFloat", [xq, wq_name, c["one"], ws_name, c["zero_point"]], [scaled],
                                   name=f"{node.name}_per_token_int8", domain="com.microsoft"),
                  helper.make_node("Mul", [scaled, x_scale], list(node.output), name=f"{node.name}_token_scale")]
    del graph.node[:]
    graph.node.extend(nodes)
    used = {i for n in graph.node for i in n.input}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept + constants)
    onnx.save(proto, str(out))
    return Path(out)
