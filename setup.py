from setuptools import setup

PACKAGES = {
    "fusionrt": "fusionrt",
    "fusionrt.runtime": "runtime",
    "fusionrt.runtime.backends": "runtime/backends",
    "fusionrt.data": "data",
    "fusionrt.bundling": "bundling",
    "fusionrt.engines": "engines",
    "fusionrt.export": "export",
    "fusionrt.calibration": "calibration",
    "fusionrt.serving": "serving",
    "fusionrt.monitor": "monitor",
    "fusionrt.benchmarks": "benchmarks",
}

EXPORT = [
    "torch>=2.4",
    "torchvision>=0.19",
    "timm>=1.0",
    "transformers>=4.40",
    "onnx>=1.16",
    "onnxscript>=0.2",
    "safetensors>=0.4",
]

setup(
    name="fusionrt",
    version="0.1.0",
    description="Export, quantize (INT8 Q/DQ), build TensorRT engines for and run a two-branch image+text classifier",
    python_requires=">=3.10",
    packages=list(PACKAGES),
    package_dir=PACKAGES,
    install_requires=["numpy>=1.24", "opencv-python-headless>=4.8", "tokenizers>=0.15", "packaging>=23"],
    extras_require={
        "cpu": ["onnxruntime>=1.18"],
        "gpu": ["onnxruntime-gpu>=1.18"],
        "openvino": ["openvino>=2025.0", "nncf>=2.14"],  # nncf: calibration of the int8-ov flavour
        "tensorrt": ["tensorrt>=10", "cuda-bindings>=12.6"],
        "rtx": ["tensorrt-rtx-cu13>=1.0", "cuda-bindings>=12.6"],
        "triton": ["tritonclient[grpc,http]>=2.50"],
        "site": ["prometheus_client>=0.20", "aiohttp>=3.9", "paho-mqtt>=2.0"],
        "export": EXPORT,
        "bench": ["matplotlib>=3.7", "tqdm>=4.60", "scikit-image>=0.22"],
        "dev": ["pytest>=7", "tqdm>=4.60", "matplotlib>=3.7"],
    },
    entry_points={"console_scripts": ["fusionrt=fusionrt.cli:main"]},
)
