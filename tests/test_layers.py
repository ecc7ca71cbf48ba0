"""The layer rules (tests/layers.py) hold for the package, and the checker catches each kind of break."""

import pytest

from tests.layers import package_sources, violations


def test_the_package_keeps_its_layers():
    sources = package_sources()
    assert {"fusionrt.runtime.pipeline", "fusionrt.data.dataset", "fusionrt.export.train", "fusionrt.cli",
            "fusionrt.runtime.backends.tensorrt", "fusionrt.benchmarks.harness"} <= set(sources)
    assert violations(sources) == []


def _with(module: str, line: str, at_top: bool = True) -> dict:
    sources = package_sources()
    assert module in sources
    if at_top:
        sources[module] = f"{line}\n{sources[module]}"
    else:
        sources[module] += f"\n\ndef _added():\n    {line}\n"
    return sources


@pytest.mark.parametrize("module, line, expected", [
    ("fusionrt.export.train", "from fusionrt.calibration.reader import CalibrationSource",
     "fusionrt.export.train:1: imports fusionrt.calibration.reader, from a sibling layer"),
    ("fusionrt.runtime.pipeline", "from fusionrt.benchmarks.stats import speedup",
     "fusionrt.runtime.pipeline:1: imports fusionrt.benchmarks.stats, from a layer above it"),
    ("fusionrt.data.dataset", "from fusionrt import commands",
     "fusionrt.data.dataset:1: imports fusionrt.commands, from a layer above it"),
])
def test_an_import_the_wrong_way_is_caught(module, line, expected):
    found = violations(_with(module, line))
    assert any(v.startswith(expected) for v in found), found


def test_a_cycle_broken_only_by_a_lazy_import_is_caught():
    found = violations(_with("fusionrt.runtime.prediction", "from fusionrt.runtime.pipeline import Pipeline",
                             at_top=False))
    assert any(v.startswith("import cycle:") and "fusionrt.runtime.pipeline" in v and "fusionrt.runtime.prediction" in v
               for v in found), found


@pytest.mark.parametrize("heavy", ["torch", "transformers", "onnx", "matplotlib"])
def test_a_heavy_import_reachable_from_the_runtime_is_caught(heavy):
    found = violations(_with("fusionrt.runtime.preprocess", f"import {heavy}"))
    assert f"fusionrt.runtime.pipeline: importing it imports '{heavy}'" in "\n".join(found), found


def test_the_same_import_inside_a_function_is_lazy_and_allowed_there():
    assert violations(_with("fusionrt.export.onnx_export", "import torch", at_top=False)) == []


def test_an_engine_package_outside_its_backend_is_caught():
    found = violations(_with("fusionrt.runtime.pipeline", 'require("onnxruntime")', at_top=False))
    assert any("fusionrt.runtime.pipeline" in v and "engine package 'onnxruntime' outside its backend" in v
               for v in found), found
