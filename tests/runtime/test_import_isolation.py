"""The runtime really imports without the export stack: every module of `fusionrt.runtime`, imported in a fresh
interpreter, loads neither torch nor transformers nor onnx (tests/test_layers.py checks the same on the source)."""

import subprocess
import sys

HEAVY = ("torch", "transformers", "onnx", "timm", "torchvision", "onnxscript", "safetensors", "onnxruntime",
         "tensorrt", "tensorrt_rtx", "openvino", "nncf", "matplotlib")


def test_every_runtime_module_imports_without_torch_or_transformers():
    code = (
        "import importlib, pkgutil, sys, fusionrt.runtime as rt, fusionrt.cli;"
        "names = [m.name for m in pkgutil.walk_packages(rt.__path__, 'fusionrt.runtime.')];"
        "[importlib.import_module(n) for n in names];"
        "fusionrt = sys.modules['fusionrt']; fusionrt.Pipeline;"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules];"
        "print(len(names), ','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    count, _, heavy = out.stdout.strip().partition(" ")
    assert int(count) >= 20, f"only {count} runtime modules found"
    assert heavy == "", f"the runtime pulled in {heavy}"


def test_importing_fusionrt_loads_nothing_heavy():
    code = "import sys, fusionrt; print('fusionrt.runtime.pipeline' in sys.modules, 'onnxruntime' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
