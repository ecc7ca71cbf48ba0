"""FP16 models: the fallback precision for a part whose INT8 breaks the fidelity thresholds.

TensorRT 11 and TensorRT-RTX build strongly typed networks: FP16 is what the ONNX says, not a builder flag.
So the FP16 file keeps float32 inputs/outputs and keeps LayerNorm, Softmax and the reductions in float32
(the overflow traps); everything else is float16. ONNX Runtime's own converter does the rewrite."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fusionrt.runtime.optional import require

__all__ = ["FP32_OPS", "QDQ_FP16_OPSET", "write_fp16", "write_int8_fp16"]

FP32_OPS = ["LayerNormalization", "SkipLayerNormalization", "Softmax", "ReduceMean", "ReduceSum", "Pow", "Sqrt"]
QDQ_FP16_OPSET = 19  # QuantizeLinear/DequantizeLinear take float16 scales from opset 19 on


def write_fp16(src: Path, dst: Path) -> Path:
    onnx = require("onnx", "FP16 conversion")
    float16 = require("onnxruntime.transformers.float16", "FP16 conversion")
    model = onnx.load(str(src))
    blocked = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(FP32_OPS))
    half = float16.convert_float_to_float16(model, keep_io_types=True, op_block_list=blocked)
    onnx.save(half, str(dst))
    return Path(dst)


def write_int8_fp16(src: Path, dst: Path) -> Path:
    """The int8-trt Q/DQ model on an FP16 base: what TensorRT computes under INT8 (10.x with the FP16 flag beside
    INT8; 11.x and TensorRT-RTX, strongly typed, build from this file), so what int8-trt is judged on. Everything
    that is not INT8 is FP16 but LayerNorm, Softmax and the reductions (FP32_OPS): the layers the per-layer search
    keeps out of INT8 land on FP16, the fastest faithful float there.

    The Q/DQ scales become float16, so DequantizeLinear yields FP16 straight into the INT8 layers (opset 19). Weight
    scales too small for float16 are rounded to it, and the INT8 weights are requantized on the rounded scales, so
    each weight still dequantizes to within half a step of its value."""
    onnx = require("onnx", "FP16 conversion")
    float16 = require("onnxruntime.transformers.float16", "FP16 conversion")
    numpy_helper = onnx.numpy_helper
    model = onnx.load(str(src))
    fp32_scales = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    blocked = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(FP32_OPS))
    half = float16.convert_float_to_float16(model, keep_io_types=True, op_block_list=blocked)
    for opset in half.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version < QDQ_FP16_OPSET:
            opset.version = QDQ_FP16_OPSET  # 18 -> 19 adds types to the ops the exported models use, changes none
    inits = {i.name: i for i in half.graph.initializer}
    for node in half.graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in inits or node.input[1] not in fp32_scales:
            continue
        q = numpy_helper.to_array(inits[node.input[0]])
        old = fp32_scales[node.input[1]].astype(np.float64)
        new = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1) % q.ndim
        shape = [1] * q.ndim
        if old.ndim:
            shape[axis] = -1
        requantized = np.clip(np.rint(q * (old / new).reshape(shape)), -127, 127).astype(q.dtype)
        inits[node.input[0]].CopyFrom(numpy_helper.from_array(requantized, node.input[0]))
    _topological(half.graph)
    onnx.checker.check_model(half)
    onnx.save(half, str(dst))
    return Path(dst)


def _topological(graph) -> None:
    """Nodes in dependency order (the converter appends the Casts it adds; parsers read nodes in order)."""
    known = {t.name for t in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(i in known for i in n.input)]
        if not ready:
            raise ValueError(f"FP16 conversion: {len(pending)} nodes have inputs nothing produces")
        for n in ready:
            known.update(n.output)
        ordered.extend(ready)
        pending = [n for n in pending if n not in ready]
    del graph.node[:]
    graph.node.extend(ordered)
