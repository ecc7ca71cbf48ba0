"""fusionrt.runtime: load a bundle and classify image+text pairs. Imports neither torch nor transformers."""

from fusionrt.runtime.bundle import Bundle
from fusionrt.runtime.errors import (
    BackendUnavailable,
    BundleError,
    EngineMismatch,
    FusionRTError,
    InputError,
)
from fusionrt.runtime.manifest import Manifest
from fusionrt.runtime.pipeline import Pipeline, Prediction

__all__ = [
    "Bundle",
    "Manifest",
    "Pipeline",
    "Prediction",
    "FusionRTError",
    "BundleError",
    "InputError",
    "BackendUnavailable",
    "EngineMismatch",
]
