import subprocess
import sys


def test_runtime_imports_without_torch_or_transformers():
    code = (
        "import sys, fusionrt, fusionrt.runtime, fusionrt.runtime.backends.onnxruntime, fusionrt.cli;"
        "fusionrt.Pipeline;"
        "heavy = [m for m in ('torch', 'transformers', 'onnx', 'timm', 'torchvision') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"runtime pulled in {out.stdout.strip()}"


def test_importing_fusionrt_loads_nothing_heavy():
    code = "import sys, fusionrt; print('fusionrt.runtime.pipeline' in sys.modules, 'onnxruntime' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
