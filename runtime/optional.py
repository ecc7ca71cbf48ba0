"""The one place optional packages are imported: lazily, with the pip extra to install on failure."""

import importlib
from importlib import metadata

from fusionrt.runtime.errors import BackendUnavailable

__all__ = ["require", "is_available", "installed_versions"]

# module name -> (pip extra or package that provides it)
_INSTALL_HINTS = {
    "onnxruntime": "pip install 'fusionrt[cpu]'  (or 'fusionrt[gpu]' for onnxruntime-gpu; never both)",
    "onnxruntime.quantization": "pip install 'fusionrt[cpu]'",
    "onnxruntime.transformers.float16": "pip install 'fusionrt[cpu]'",
    "openvino": "pip install 'fusionrt[openvino]'  (OpenVINO: Intel/AMD CPUs, Intel GPUs and NPUs)",
    "nncf": "pip install 'fusionrt[openvino]'  (NNCF: OpenVINO's INT8 calibration, the int8-ov flavour)",
    "tensorrt": "pip install 'fusionrt[tensorrt]'  (NVIDIA TensorRT 10/11; needs an NVIDIA GPU to run engines)",
    "tensorrt_rtx": "pip install 'fusionrt[rtx]'  (TensorRT for RTX)",
    "cuda.bindings": "pip install 'fusionrt[tensorrt]'  (cuda-bindings)",
    "cuda.bindings.runtime": "pip install 'fusionrt[tensorrt]'  (cuda-bindings)",
    "torch": "pip install 'fusionrt[export]'",
    "torchvision": "pip install 'fusionrt[export]'",
    "timm": "pip install 'fusionrt[export]'",
    "transformers": "pip install 'fusionrt[export]'",
    "onnx": "pip install 'fusionrt[export]'",
    "safetensors": "pip install 'fusionrt[export]'",
    "matplotlib": "pip install 'fusionrt[bench]'",
    "tqdm": "pip install 'fusionrt[dev]'",
    "tritonclient.http": "pip install 'fusionrt[triton]'  (tritonclient, for fusionrt.client)",
    "tritonclient.grpc": "pip install 'fusionrt[triton]'  (tritonclient, for fusionrt.client)",
    "tritonclient.utils": "pip install 'fusionrt[triton]'  (tritonclient, for fusionrt.client)",
    "prometheus_client": "pip install 'fusionrt[site]'  (metrics, health and the live view of `camera --serve`)",
    "prometheus_client.core": "pip install 'fusionrt[site]'",
    "aiohttp.web": "pip install 'fusionrt[site]'  (the HTTP server of `camera --serve`)",
    "paho.mqtt.client": "pip install 'fusionrt[site]'  (MQTT events of `camera --mqtt`)",
}


def require(module: str, purpose: str = ""):
    """Import `module` or raise BackendUnavailable naming what to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        hint = _INSTALL_HINTS.get(module, f"pip install {module.split('.')[0]}")
        why = f" for {purpose}" if purpose else ""
        raise BackendUnavailable(
            f"Python package '{module}' is needed{why} but could not be imported ({exc}). Install it: {hint}"
        ) from exc


def is_available(module: str) -> bool:
    """True when `module` imports; never raises."""
    try:
        importlib.import_module(module)
        return True
    except ImportError:
        return False


def installed_versions(distributions) -> dict:
    """Distribution name -> installed version, for those of `distributions` that are installed."""
    out = {}
    for name in distributions:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out
