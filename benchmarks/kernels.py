"""Which CPU kernels OpenVINO runs a bundle's parts with on this machine (`python -m fusionrt.benchmarks.kernels BUNDLE
[--precision int8]`): each part's layers counted by OpenVINO's own kernel names (PERF_COUNT's exec_type, e.g.
`brgemm_avx512_amx_I8`, `jit_avx512_core_vnni_1x1_I8`, `jit_avx2_1x1_I8`). The ISA in those names is what ran, so
this is how a bench under `ONEDNN_MAX_CPU_ISA` shows the limit took effect, and which INT8 kernels a CPU kind gets."""

from __future__ import annotations

import argparse
import collections
import json
import sys

import numpy as np

from fusionrt.runtime.backends.openvino import OpenVINOBackend, OpenVINOOptions, compile_model
from fusionrt.runtime.bundle import Bundle
from fusionrt.runtime.cpu import cpu_kind
from fusionrt.runtime.manifest import COMPONENTS
from fusionrt.runtime.optional import require

__all__ = ["kernels", "is_math", "isas", "main"]

_MATH = ("Convolution", "FullyConnected", "MatMul", "ScaledDotProductAttention")
_ISAS = ("amx", "avx512", "avx2", "sse42", "ref", "gemm_mlas", "acl")  # the ISA words oneDNN and OpenVINO name kernels by


def _feeds(component, batch: int, seq: int) -> dict:
    """Inputs of the spec's shape (named axes: batch, else seq): integers 1 (a valid token id, an attended
    position), floats random. The kernels, not the answers, are read."""
    rng = np.random.default_rng(0)
    feeds = {}
    for spec in component.inputs:
        shape = [d if isinstance(d, int) else batch if "batch" in d else seq for d in spec.shape]
        feeds[spec.name] = (np.ones(shape, spec.dtype) if spec.dtype.startswith("int")
                            else rng.standard_normal(shape).astype(spec.dtype))
    return feeds


def kernels(bundle: Bundle, precision: str = "int8", batch: int = 1, seq: int = 128) -> dict:
    """{component: {"file", "hint", "layers": {layer type: {kernel name: count}}}} for the bundle's parts at
    `precision` on OpenVINO's CPU plugin, as the backend resolves them (the policy's float under INT8)."""
    ov = require("openvino", "the kernel listing")
    options, out, core = OpenVINOOptions(), {}, ov.Core()
    core.set_property("CPU", {"PERF_COUNT": True})  # one Core profiles every part
    for name in COMPONENTS:
        execution = OpenVINOBackend.execution_in(bundle, name, precision, options)
        record = bundle.manifest.components[name].files[execution.flavour]
        hint = execution.hints["INFERENCE_PRECISION_HINT"]
        path = bundle.file(record.path, record.sha256)
        if record.weights:  # an IR: read from its .xml, with its checked .bin beside it
            bundle.file(record.weights, record.weights_sha256)
        compiled = compile_model(path, "CPU", hint, core=core)
        request = compiled.create_infer_request()
        request.infer(_feeds(bundle.manifest.components[name], batch, seq))
        layers = collections.defaultdict(collections.Counter)
        for info in request.profiling_info:
            if info.status.name == "EXECUTED":
                layers[info.node_type][info.exec_type] += 1
        out[name] = {"file": record.path, "hint": hint,
                     "layers": {t: dict(c.most_common()) for t, c in sorted(layers.items())}}
    return out


def is_math(layer: str) -> bool:
    """The layers that hold a model's arithmetic (and its INT8): convolutions, fully connected (compressed: INT8
    weights), MatMul, attention. oneDNN's ISA limit holds for these; OpenVINO 2026.4.1's MVN and Reduce kernels
    ignore it (docs/precision.md)."""
    return any(word in layer for word in _MATH)


def isas(listing: dict, math_only: bool = False) -> dict:
    """{ISA word: layers that ran a kernel named by it}, over every part (math_only: the `is_math` layers): the ISAs
    that ran."""
    seen = collections.Counter()
    for part in listing.values():
        for layer, counts in part["layers"].items():
            if math_only and not is_math(layer):
                continue
            for kernel, n in counts.items():
                word = next((w for w in _ISAS if w in kernel.lower()), "other")
                seen[word] += n
    return dict(seen.most_common())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fusionrt.benchmarks.kernels", description=__doc__)
    parser.add_argument("bundle")
    parser.add_argument("--precision", default="int8", choices=("fp32", "fp16", "int8"))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--json", action="store_true", help="the whole listing as JSON")
    args = parser.parse_args(argv)
    listing = kernels(Bundle.open(args.bundle), args.precision, args.batch, args.seq)
    if args.json:
        print(json.dumps({"cpu": cpu_kind().to_dict(), "isas": isas(listing), "math_isas": isas(listing, True),
                          "parts": listing}, indent=2))
        return 0
    print(f"{cpu_kind().label}: OpenVINO's kernels at {args.precision}, batch {args.batch}, seq {args.seq}")
    for name, part in listing.items():
        print(f"{name} ({part['file']}, float {part['hint']}):")
        for layer, counts in part["layers"].items():
            if is_math(layer):
                print(f"  {layer}: " + ", ".join(f"{k} x{n}" for k, n in counts.items()))
    print("ISAs of the math layers: " + ", ".join(f"{k} {n}" for k, n in isas(listing, True).items())
          + "; of all layers: " + ", ".join(f"{k} {n}" for k, n in isas(listing).items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
