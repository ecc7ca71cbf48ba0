"""fusionrt.calibration: INT8 for a bundle from real data (needs onnxruntime and onnx).

    calibrate_bundle  ranges, the two Q/DQ targets, FP16, the per-layer search, the fidelity report, the policy
    Criterion         when a quantized configuration is faithful enough (noise floor, McNemar, accuracy ratio)

Names load on first use."""

import importlib

__all__ = ["calibrate_bundle", "Criterion"]

_HOME = {"calibrate_bundle": "calibrate", "Criterion": "criterion"}


def __getattr__(name):
    if name in _HOME:
        return getattr(importlib.import_module(f"fusionrt.calibration.{_HOME[name]}"), name)
    raise AttributeError(f"module 'fusionrt.calibration' has no attribute '{name}'")
