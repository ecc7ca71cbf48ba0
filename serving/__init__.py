"""Serving a bundle from NVIDIA Triton Inference Server: the model repository writer (`fusionrt triton`), the Python
backend's models, a client that returns the embedded runtime's `Prediction`, and a loopback launcher for the real
server. Imports only the runtime below it; tritonclient is loaded by the client, lazily."""

from fusionrt.serving.repository import PLATFORMS, RepositoryOptions, write_repository

__all__ = ["PLATFORMS", "RepositoryOptions", "write_repository"]
