"""Per-layer fallback: find a small set of layers to keep out of INT8, automatically.

1. Rank: quantize each layer that can be (`structural` aside) alone, the rest float, and measure what it does to the
   component's outputs on calibration data against FP32 (relative L2 error): the error that layer's INT8 (its
   inputs', weights' and output's) causes downstream, without the others'.
2. Search: keep the k most sensitive layers float, for the smallest k whose component passes the fidelity
   criterion on held-out data: k = 0, then doubling, then bisection (in the spirit of NNCF's accuracy-control
   quantization and Polygraphy's precision debugging), with a bounded number of re-checks."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from fusionrt.runtime.optional import require

__all__ = ["QUANTIZABLE", "quantizable_nodes", "structural_float", "rank_layers", "search_fallback", "Fallback",
           "searched_why"]

QUANTIZABLE = ("Conv", "MatMul", "Gemm")


def _graph(model: Path):
    return require("onnx", "per-layer fallback").load(str(model), load_external_data=False).graph


def _weights(graph) -> set:
    """Initializers, and tensors computed from initializers alone (Constant, Transpose of a weight)."""
    names = {init.name for init in graph.initializer}
    for node in graph.node:
        if node.op_type in ("Constant", "Transpose", "Cast", "Identity") and all(i in names for i in node.input):
            names.update(node.output)
    return names


def quantizable_nodes(model: Path) -> list:
    """Names of the nodes INT8 can take (Conv, MatMul, Gemm), in graph order."""
    return [n.name for n in _graph(model).node if n.op_type in QUANTIZABLE]


def structural_float(model: Path) -> dict:
    """Layers kept float by construction, not by measurement, with why: MatMuls of two activations (attention's
    Q·Kᵀ and softmax·V) have no weight to quantize per channel, and per-tensor int8 of a softmax loses most of its
    resolution."""
    graph = _graph(model)
    weights = _weights(graph)
    return {n.name: "structural: a MatMul of two activations (attention), no weight to quantize per channel"
            for n in graph.node if n.op_type == "MatMul" and not any(i in weights for i in n.input)}


def rank_layers(fp32_model: Path, quantized_alone: Callable[[str], Path], feeds: list, candidates: list,
                readout: Callable | None = None) -> list:
    """[(node, output error)], most sensitive first: each of the `candidates` quantized alone (`quantized_alone(node)`:
    the Q/DQ model with that layer in INT8 and the others float), run as written on `feeds`, its outputs against
    FP32's as a relative L2 error. End to end, not each layer's local error: a layer's own error says little of what
    it does downstream. On the demo's EfficientNet-Lite0 the local error ranked first the last conv, whose INT8 moves
    the features' cosine vs FP32 by 4e-5, and third the first depthwise conv, which alone moves it by 7e-3.
    readout(i, outputs) -> array: what the error is measured on for feed i (the classifier's logits, where the part
    is an encoder: a feature error the head ignores flips nothing); default, the part's own outputs."""
    ort = require("onnxruntime", "per-layer fallback")

    def outputs(model: Path) -> list:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the Q/DQ as written
        session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        names = {i.name for i in session.get_inputs()}
        runs = [session.run(None, {k: v for k, v in feed.items() if k in names}) for feed in feeds]
        if readout is not None:
            runs = [[readout(i, out)] for i, out in enumerate(runs)]
        return [np.concatenate([np.asarray(o, dtype=np.float64).ravel() for o in out]) for out in runs]

    reference = outputs(fp32_model)
    norm = max(sum(float((r ** 2).sum()) for r in reference), 1e-30)
    ranked = []
    for node in candidates:
        got = outputs(quantized_alone(node))
        ranked.append((node, float(np.sqrt(sum(float(((g - r) ** 2).sum()) for g, r in zip(got, reference)) / norm))))
    return sorted(ranked, key=lambda item: -item[1])


@dataclass
class Fallback:
    kept: list  # the ranked layers kept float (most sensitive first)
    passed: bool  # the component passed the criterion with them (False: the search ran out of re-checks)
    trace: list = field(default_factory=list)  # (k, passed, rule) per re-check, in order


def searched_why(rank: int, total: int, error: float, where: str = "") -> str:
    """Why the search kept a layer float, in words (the report's kept_float): its 1-based sensitivity rank."""
    return (f"per-layer search{where}: sensitivity rank {rank} of the model's {total} layers (alone in INT8, logit "
            f"error {error:.3g})")


def search_fallback(ranked: list, passes: Callable[[list], tuple], max_checks: int = 10) -> Fallback:
    """The smallest k whose `passes(ranked[:k])` -> (ok, rule) holds: k = 0, then doubling, then bisection. k =
    len(ranked) (every layer float) is taken to pass without a check: it is the FP32 model."""
    trace, results = [], {}

    def check(k):
        if k >= len(ranked):
            return True
        if k not in results:
            ok, rule = passes(list(ranked[:k]))
            results[k] = ok
            trace.append((k, ok, rule))
        return results[k]

    if check(0):
        return Fallback([], True, trace)
    low, high = 0, 1
    while high < len(ranked) and len(trace) < max_checks and not check(high):
        low, high = high, min(2 * high, len(ranked))
    if high < len(ranked) and not results.get(high, False):  # ran out of checks before a k passed
        return Fallback(list(ranked[:len(ranked)]), False, trace)
    while high - low > 1 and len(trace) < max_checks:
        mid = (low + high) // 2
        low, high = (low, mid) if check(mid) else (mid, high)
    return Fallback(list(ranked[:high]), True, trace)
