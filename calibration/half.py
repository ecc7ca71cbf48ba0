"""FP16 models: the fallback precision for a part whose INT8 breaks the fidelity thresholds.

TensorRT 11 and TensorRT-RTX build strongly typed networks: FP16 is what the ONNX says, not a builder flag.
So the FP16 file keeps float32 inputs/outputs and keeps LayerNorm, Softmax and the reductions in float32
(the overflow traps); everything else is float16. ONNX Runtime's own converter does the rewrite."""

from __future__ import annotations

from pathlib import Path

from fusionrt.runtime.optional import require

__all__ = ["FP32_OPS", "write_fp16"]

FP32_OPS = ["LayerNormalization", "SkipLayerNormalization", "Softmax", "ReduceMean", "ReduceSum", "Pow", "Sqrt"]


def write_fp16(src: Path, dst: Path) -> Path:
    onnx = require("onnx", "FP16 conversion")
    float16 = require("onnxruntime.transformers.float16", "FP16 conversion")
    model = onnx.load(str(src))
    blocked = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(FP32_OPS))
    half = float16.convert_float_to_float16(model, keep_io_types=True, op_block_list=blocked)
    onnx.save(half, str(dst))
    return Path(dst)
