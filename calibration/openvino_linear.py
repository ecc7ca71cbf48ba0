"""A transformer's linear layers as 1x1 convolutions, for OpenVINO's INT8 kernels on a CPU without VNNI.

OpenVINO runs an INT8 FullyConnected through oneDNN's INT8 GEMM. Without VNNI (AVX2 only, AVX-512 without VNNI) that
GEMM is no faster than its FP32 one: BERT-base INT8 at 142.7 ms against 138.2 ms FP32, measured here (AMD EPYC Zen 3,
AVX2). Its INT8 1x1 convolution kernel is fast on the same CPU (jit_avx2_1x1_I8): the same model with every
weighted MatMul rewritten as a 1x1 Convolution ran INT8 at 92.2 ms. With VNNI, NNCF's MatMul form is kept: OpenVINO's
INT8 FullyConnected is fast there (FACTS.md: BERT-base 41.9 ms against 121.2 ms f32 on AVX-512 VNNI). The rewrite
computes the same products and sums (FP32 outputs agree to about 1e-6, summation order aside); NNCF then quantizes the
convolutions with per-channel weights, as it does the MatMuls. `int8_linear_form` (the runtime's) picks the form."""

from __future__ import annotations

import numpy as np

from fusionrt.runtime.backends.openvino import LINEAR_FORMS, int8_linear_form

__all__ = ["LINEAR_FORMS", "linear_as_conv", "int8_linear_form"]


def _const(values, dtype=np.int64):
    from openvino import opset13 as ops

    return ops.constant(np.asarray(values, dtype))


# elementwise ops whose order with a transpose does not matter (a GELU between a transformer's two FFN layers)
_ELEMENTWISE = {"Add", "Subtract", "Multiply", "Divide", "Power", "Erf", "Tanh", "Sigmoid", "Relu", "Gelu", "Sqrt",
                "Swish", "HSwish", "Clamp"}


def linear_as_conv(model, keep=()) -> int:
    """Rewrite, in place, each MatMul of a [batch, sequence, K] activation by a constant [K, N] weight (and the bias
    Add right after it) as Transpose -> 1x1 Convolution (+ bias) -> Transpose back. The Convolution takes the MatMul's
    name, so the per-layer search's kept-float names (NNCF's ignored scope) still find it. Layers that read one input
    share its transpose; an elementwise run from one layer to the next (the FFN's GELU) runs in the convolutions'
    layout, so no transpose sits between them. The MatMuls named in `keep` (those kept float: FP32 runs fastest as a
    MatMul) stay as they are. Returns how many were rewritten."""
    from openvino import opset13 as ops

    ordered = model.get_ordered_ops()
    order = {op.get_friendly_name(): i for i, op in enumerate(ordered)}
    images, layouts = {}, {}  # input -> its [B, K, S, 1] image; a transpose back's name -> (it, the image it undid)
    count = 0
    for op in ordered:
        if op.get_type_name() != "MatMul" or op.get_friendly_name() in keep:
            continue
        x, w = op.input_value(0), op.input_value(1)
        rank = x.get_partial_shape().rank
        attrs = op.get_attributes()
        if (w.get_node().get_type_name() != "Constant" or not rank.is_static or rank.get_length() != 3
                or attrs["transpose_a"] or len(w.get_shape()) != 2):
            continue
        weight = w.get_node().get_data()
        kernel = weight if attrs["transpose_b"] else weight.T  # [N, K]
        image = _in_conv_layout(x, op, layouts, order)
        if image is None:
            key = (x.get_node().get_friendly_name(), x.get_index())
            if key not in images:  # [B, S, K] -> [B, K, S, 1]: channels K, the sequence as the image's height
                images[key] = ops.unsqueeze(ops.transpose(x, _const([0, 2, 1])), _const([3])).output(0)
            image = images[key]
        y = ops.convolution(image, ops.constant(np.ascontiguousarray(kernel[:, :, None, None], np.float32)),
                            [1, 1], [0, 0], [0, 0], [1, 1])
        y.set_friendly_name(op.get_friendly_name())
        last = op
        bias = _bias_after(op, kernel.shape[0])
        if bias is not None:  # the bias joins the convolution (OpenVINO fuses it there), before the transpose back
            last, values = bias
            y = ops.add(y, ops.constant(values.reshape(1, -1, 1, 1).astype(np.float32)))
            y.set_friendly_name(last.get_friendly_name())
        back = ops.transpose(ops.squeeze(y, _const([3])), _const([0, 2, 1]))
        back.set_friendly_name(f"{op.get_friendly_name()}/to_sequence")
        layouts[back.get_friendly_name()] = back.output(0), y.output(0)
        last.output(0).replace(back.output(0))
        count += 1
    model.validate_nodes_and_infer_types()
    return count


def _in_conv_layout(x, matmul, layouts: dict, order: dict):
    """x in the convolutions' [B, K, S, 1] layout where x is an elementwise run (scalar constants only) from one
    rewritten layer's output, read by nothing but `matmul`: the run is rewired to read the layer's image (its
    transpose back then has no reader), and its end is returned. Else None."""
    region, sources, stack = {}, set(), [x.get_node()]
    while stack:
        node = stack.pop()
        name = node.get_friendly_name()
        if name in region:
            continue
        if node.get_type_name() not in _ELEMENTWISE:
            return None
        region[name] = node
        for value in node.input_values():
            source = value.get_node()
            if source.get_friendly_name() in layouts:
                sources.add(source.get_friendly_name())
            elif source.get_type_name() == "Constant":
                if source.get_data().size != 1:
                    return None  # a per-channel constant would need the other layout
            else:
                stack.append(source)
    if len(sources) != 1:
        return None
    readers = {i.get_node().get_friendly_name() for node in region.values() for i in node.output(0).get_target_inputs()}
    back = next(iter(sources))
    if not readers <= set(region) | {matmul.get_friendly_name()}:
        return None
    if not {i.get_node().get_friendly_name() for i in layouts[back][0].get_target_inputs()} <= set(region):
        return None
    for node in sorted(region.values(), key=lambda n: order.get(n.get_friendly_name(), 0)):
        for i, value in enumerate(node.input_values()):
            if value.get_node().get_friendly_name() == back:
                node.input(i).replace_source_output(layouts[back][1])
        node.validate_and_infer_types()
    return x.get_node().output(0)


def _bias_after(op, channels: int):
    """(the Add, its [channels] constant) where the MatMul's only consumer adds a per-channel constant, else None."""
    consumers = [i.get_node() for i in op.output(0).get_target_inputs()]
    if len(consumers) != 1 or consumers[0].get_type_name() != "Add":
        return None
    add = consumers[0]
    others = [v.get_node() for v in add.input_values() if v.get_node() is not op]
    if len(others) != 1 or others[0].get_type_name() != "Constant" or others[0].get_data().size != channels:
        return None
    return add, others[0].get_data()
