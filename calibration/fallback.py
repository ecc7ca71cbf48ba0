"""Per-layer fallback: find a small set of layers to keep out of INT8, automatically.

1. Rank: quantize everything that can be (`structural` aside), run the Q/DQ model on calibration data, and measure
   each layer's *local* error: its output in the Q/DQ graph (after the output's own Q/DQ, where the quantizer put
   one) against the same layer computed in FP32 on the same (unquantized) inputs, relative per output channel and
   averaged over the channels (a per-tensor scale that one large channel sets crushes the small ones: a relative
   error over the whole tensor would hide that). That isolates the error a layer adds, by its inputs', weights' and
   output's int8, from the error it inherits.
2. Search: keep the k most sensitive layers float, for the smallest k whose component passes the fidelity
   criterion on held-out data: k = 0, then doubling, then bisection (in the spirit of NNCF's accuracy-control
   quantization and Polygraphy's precision debugging), with a bounded number of re-checks."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from fusionrt.runtime.optional import require

__all__ = ["QUANTIZABLE", "quantizable_nodes", "structural_float", "rank_layers", "search_fallback", "Fallback"]

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


def rank_layers(fp32_model: Path, qdq_model: Path, feeds: list, candidates: list) -> list:
    """[(node, local relative error)], most sensitive first, for the `candidates` quantized in `qdq_model`."""
    onnx = require("onnx", "per-layer fallback")
    ort = require("onnxruntime", "per-layer fallback")
    from onnx import TensorProto, helper

    fp32 = onnx.load(str(fp32_model))
    qdq = onnx.load(str(qdq_model))
    inits = {i.name: i for i in fp32.graph.initializer}
    weights = _weights(fp32.graph)
    producers = {o: n for n in fp32.graph.node for o in n.output}
    nodes = {n.name: n for n in fp32.graph.node}
    q_names = {n.name for n in qdq.graph.node}
    chosen = [nodes[c] for c in candidates if c in nodes and c in q_names]
    seen_as = {node.name: _after_qdq(qdq.graph, node.output[0]) for node in chosen}  # what its consumers read
    wanted = []
    for node in chosen:
        wanted += [i for i in node.input if i and i not in inits] + [seen_as[node.name]]
    existing = {o.name for o in qdq.graph.output} | {i.name for i in qdq.graph.input}
    for name in dict.fromkeys(wanted):
        if name not in existing:
            qdq.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the Q/DQ as written
    session = ort.InferenceSession(qdq.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    graph_inputs = {i.name for i in session.get_inputs()}
    runs = []
    for feed in feeds:
        values = dict(zip(names, session.run(names, {k: v for k, v in feed.items() if k in graph_inputs})))
        values.update({k: v for k, v in feed.items() if k in graph_inputs})
        runs.append(values)
    ranked = []
    for node in chosen:
        activations = [i for i in node.input if i and i not in inits]
        extra = [producers[i] for i in activations if i in weights and i in producers]  # weights made by a node
        single = helper.make_model(
            helper.make_graph([*extra, node], "layer", [helper.make_tensor_value_info(a, TensorProto.FLOAT, None)
                                                         for a in activations if a not in weights],
                              [helper.make_tensor_value_info(node.output[0], TensorProto.FLOAT, None)],
                              initializer=[inits[i] for n in (*extra, node) for i in n.input if i in inits]),
            opset_imports=fp32.opset_import, ir_version=fp32.ir_version)
        layer = ort.InferenceSession(single.SerializeToString(), providers=["CPUExecutionProvider"])
        axis = 1 if node.op_type == "Conv" else -1  # the output channels
        error, norm = 0.0, 0.0
        for values in runs:
            ref = layer.run(None, {a: values[a] for a in activations if a not in weights})[0].astype(np.float64)
            got = values[seen_as[node.name]].astype(np.float64)
            error, norm = error + _per_channel_sq(got - ref, axis), norm + _per_channel_sq(ref, axis)
        ranked.append((node.name, _mean_relative(error, norm)))
    return sorted(ranked, key=lambda item: -item[1])


def _per_channel_sq(x: np.ndarray, axis: int) -> np.ndarray:
    x = np.moveaxis(x, axis, 0)
    return (x.reshape(x.shape[0], -1) ** 2).sum(axis=1)


def _mean_relative(error: np.ndarray, norm: np.ndarray) -> float:
    """The mean relative error over the channels that carry signal (dead channels, all zero, are left out)."""
    live = norm > 1e-12 * max(float(norm.max(initial=0.0)), 1e-30)
    return float(np.sqrt(error[live] / norm[live]).mean()) if live.any() else 0.0


def _after_qdq(graph, tensor: str) -> str:
    """`tensor` as its consumers read it: the output of the QuantizeLinear -> DequantizeLinear pair on it, if any."""
    q = next((n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] == tensor), None)
    dq = q and next((n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] == q.output[0]), None)
    return dq.output[0] if dq else tensor


@dataclass
class Fallback:
    kept: list  # the ranked layers kept float (most sensitive first)
    passed: bool  # the component passed the criterion with them (False: the search ran out of re-checks)
    trace: list = field(default_factory=list)  # (k, passed, rule) per re-check, in order


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
