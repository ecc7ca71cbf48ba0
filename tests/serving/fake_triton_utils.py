"""A stand-in for `triton_python_backend_utils` (which exists only inside Triton's Python backend stub), with the
names fusionrt's Python-backend models use: requests carry named numpy inputs, responses keep tensors or an error."""

from types import SimpleNamespace

import numpy as np

__all__ = ["utils", "request"]


class Tensor:
    def __init__(self, name: str, array: np.ndarray):
        self._name, self._array = name, array

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array


class InferenceResponse:
    def __init__(self, output_tensors, error=None):
        self.outputs = {t.name(): t.as_numpy() for t in output_tensors}
        self.error = error


class TritonError(Exception):
    pass


def request(**inputs) -> SimpleNamespace:
    return SimpleNamespace(inputs={k: Tensor(k, np.asarray(v)) for k, v in inputs.items()})


utils = SimpleNamespace(Tensor=Tensor, InferenceResponse=InferenceResponse, TritonError=TritonError,
                        get_input_tensor_by_name=lambda req, name: req.inputs.get(name))
