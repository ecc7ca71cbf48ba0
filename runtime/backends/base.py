"""The one Backend base class (Polygraphy's runners are the model).

A backend is a class registered under its `name` (see `fusionrt.runtime.backends.BACKENDS`) and imported only when
chosen. It declares its typed, frozen `Options`; `open` gives one bundle component ready to run, with its input and
output specs from the manifest. The public `infer` does the shared checks (names, dtypes, ranks, fixed dimensions)
and then calls the backend's `_infer` hook, so a backend stays small. How a pipeline runs its three components is
the backend's `executor` (`fusionrt.runtime.execution.Executor`): the generic BranchExecutor, unless the backend has
a better way (OpenVINO's asynchronous requests; TensorRT's CUDA streams and device-side head).
"""

from __future__ import annotations

from typing import ClassVar, Mapping

import numpy as np

from fusionrt.runtime.backends.options import BackendOptions
from fusionrt.runtime.errors import BackendUnavailable, InputError
from fusionrt.runtime.execution import BranchExecutor
from fusionrt.runtime.manifest import TensorSpec
from fusionrt.runtime.optional import is_available
from fusionrt.runtime.resolve import Execution, resolve

__all__ = ["Backend", "BackendOptions", "check_spec"]


def check_spec(spec: TensorSpec, dtype, shape) -> None:
    """The shared checks on an input's dtype and shape alone (for device arrays, which have no numpy data)."""
    _check_tensor(spec, np.lib.stride_tricks.as_strided(np.zeros(1, dtype), shape=tuple(shape),
                                                        strides=(0,) * len(shape)))


class Backend:
    """One model (ONNX file or engine) ready to run. Use as a context manager or call `close()`."""

    name: ClassVar[str] = "base"
    Options: ClassVar[type] = BackendOptions
    package: ClassVar[str | None] = None  # the Python package it runs on (usable when it imports)

    def __init__(self, inputs: tuple, outputs: tuple):
        self.input_specs: tuple = tuple(inputs)
        self.output_specs: tuple = tuple(outputs)
        self._closed = False

    # -- what a backend class provides ----------------------------------------------------------------
    @classmethod
    def usable(cls) -> bool:
        """True when this backend can run here (its package imports, its device exists); never raises."""
        return cls.package is None or is_available(cls.package)

    @classmethod
    def device_of(cls, options: BackendOptions) -> str | None:
        """The device these options run on, as `fusionrt.runtime.resolve` names it (None: the backend's default)."""
        return None

    @classmethod
    def execution(cls, precision: str, options: BackendOptions, available=None, int8_float=None) -> Execution:
        """What a part at `precision` runs with these options: the file, the arithmetic and the policy target, from the
        one resolver. `available`: the part's file flavours; int8_float: the float under INT8 parts the policy
        names (`Manifest.int8_float_for`)."""
        return resolve(cls.name, precision, cls.device_of(options), available=available, int8_float=int8_float)

    @classmethod
    def execution_in(cls, bundle, component: str, precision: str, options: BackendOptions) -> Execution:
        """What `component` of `bundle` at `precision` runs with these options: its files, and its policy's float
        under INT8 parts (what calibration judged)."""
        m = bundle.manifest
        return cls.execution(precision, options, m.components[component].files,
                             m.int8_float_for(cls.target(options)))

    @classmethod
    def target(cls, options: BackendOptions) -> str:
        """Whose calibrated policy applies to this backend with these options: 'int8-cpu', 'int8-trt' or 'int8-ov'."""
        return cls.execution("int8", options).target

    @classmethod
    def open(cls, bundle, component: str, precision: str, options: BackendOptions) -> "Backend":
        """One bundle component at `precision` ('fp32' | 'fp16' | 'int8'), ready to run: the file the resolver names,
        read once and checked against its sha256, then `load`ed."""
        comp = bundle.manifest.components[component]
        execution = cls.execution_in(bundle, component, precision, options)
        if execution.flavour not in comp.files:
            raise BackendUnavailable(
                f"{component}: {cls.name} runs {precision} from the bundle's {execution.flavour} model, which it lacks "
                f"(has {sorted(comp.files)}). Run `fusionrt calibrate BUNDLE --data DATA` for int8, or load with "
                "precision='fp32'.")
        record = comp.files[execution.flavour]
        model = bundle.read(record.path, record.sha256, verify=options.verify)
        if record.weights:  # an OpenVINO IR: its graph and its weights
            model = (model, bundle.read(record.weights, record.weights_sha256, verify=options.verify))
        return cls.load(model, comp, execution, options, bundle)

    @classmethod
    def load(cls, model, component, execution: Execution, options: BackendOptions, bundle=None) -> "Backend":
        """A model (its bytes or path; an OpenVINO IR's (graph, weights) bytes) of `component` (a manifest Component)
        run as `execution` says: what `open` does once the file is read, and what calibration runs the files it judges
        with."""
        raise NotImplementedError(f"backend '{cls.name}' loads engines, not model files")

    @classmethod
    def executor(cls, backends: Mapping[str, "Backend"], wiring, options: BackendOptions, concurrent: bool):
        """The Executor that runs the three opened components of this class as one pipeline call."""
        return BranchExecutor(backends, wiring, concurrent)

    def clone(self) -> "Backend":
        """Another handle on this loaded model, for another thread or pipeline: it shares what is read-only and
        thread-safe (an ONNX Runtime session, a TensorRT engine) and owns the rest (TensorRT: its execution context,
        buffers and stream). Closing one leaves the others open."""
        raise NotImplementedError(f"backend '{self.name}' cannot be cloned")

    # -- running ----------------------------------------------------------------------------------------
    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict:
        """Run the model on `feeds` (name -> array). Returns name -> array; the caller owns the arrays."""
        if self._closed:
            raise InputError(f"{self.name} backend is closed: expected an open backend. Load the pipeline again.")
        self.check(feeds)
        return self._infer(feeds)

    def check(self, feeds: Mapping[str, np.ndarray]) -> None:
        """The shared input checks `infer` runs (a fused executor runs them too): InputError when `feeds` are not
        this model's inputs by name, dtype, rank and fixed sizes."""
        expected = {s.name for s in self.input_specs}
        if not isinstance(feeds, Mapping) or set(feeds) != expected:
            found = sorted(feeds) if isinstance(feeds, Mapping) else type(feeds).__name__
            raise InputError(f"expected inputs {sorted(expected)}, found {found}.")
        for spec in self.input_specs:
            _check_tensor(spec, feeds[spec.name])

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict:
        raise NotImplementedError

    def close(self) -> None:
        self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _check_tensor(spec: TensorSpec, array) -> None:
    if hasattr(array, "__cuda_array_interface__") and not isinstance(array, np.ndarray):
        raise InputError(f"input '{spec.name}': a device array reached a backend that takes host arrays: expected a "
                         "numpy array here. Device arrays go to backend='tensorrt' (or 'tensorrt_rtx').")
    if not isinstance(array, np.ndarray):
        raise InputError(f"input '{spec.name}': expected a numpy array, found {type(array).__name__}.")
    if array.dtype != np.dtype(spec.dtype):
        raise InputError(f"input '{spec.name}': expected dtype {spec.dtype}, found {array.dtype}.")
    if array.ndim != len(spec.shape):
        raise InputError(f"input '{spec.name}': expected shape {list(spec.shape)}, found {list(array.shape)}.")
    for axis, (want, got) in enumerate(zip(spec.shape, array.shape)):
        if isinstance(want, int) and want != got:
            raise InputError(f"input '{spec.name}': expected size {want} on axis {axis}, found {got} (shape {list(array.shape)}).")
