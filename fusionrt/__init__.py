"""fusionrt: a two-branch image+text classifier, exported, quantized and run fast on GPU or CPU.

Importing this package loads nothing heavy; the runtime is imported on first use of its names.
"""

__version__ = "0.1.0"

__all__ = [
    "Pipeline",
    "Prediction",
    "Bundle",
    "FusionRTError",
    "BundleError",
    "InputError",
    "BackendUnavailable",
    "EngineMismatch",
    "__version__",
]


def __getattr__(name):
    if name in __all__ and name != "__version__":
        from fusionrt import runtime

        return getattr(runtime, name)
    raise AttributeError(f"module 'fusionrt' has no attribute '{name}'")
