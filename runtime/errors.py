"""One error hierarchy. Every message says what was expected, what was found, and how to fix it."""

__all__ = [
    "FusionRTError",
    "BundleError",
    "CheckpointError",
    "DataError",
    "InputError",
    "BackendUnavailable",
    "EngineMismatch",
    "ParityError",
]


class FusionRTError(Exception):
    """Base of every error fusionrt raises on purpose; the CLI prints these as one line."""


class BundleError(FusionRTError):
    """A bundle directory or its manifest is missing, malformed or inconsistent."""


class CheckpointError(FusionRTError):
    """A training checkpoint is missing files or does not match its config."""


class DataError(FusionRTError):
    """A labelled data set (CSV/JSONL) cannot be read or is unfit for the job."""


class InputError(FusionRTError):
    """An image, text or tensor handed to the runtime is not what it expects."""


class BackendUnavailable(FusionRTError):
    """A backend or optional package cannot be used here (not installed, no GPU, provider did not load)."""


class EngineMismatch(FusionRTError):
    """A serialized engine was built for another product, version or GPU than the one running."""


class ParityError(FusionRTError):
    """An exported or quantized model disagrees with its reference beyond tolerance."""
