"""Every backend's options are typed and checked at load: a misspelt or ill-typed option is refused with the list of
valid ones (before any engine, GPU or session is touched), never silently ignored."""

import dataclasses
import re

import pytest

from fusionrt.runtime.backends import BACKENDS, backend_class
from fusionrt.runtime.errors import InputError
from fusionrt.runtime.pipeline import Pipeline

MISSPELT = {"onnxruntime": ("thread", "threads"), "tensorrt": ("cuda_graph", "cuda_graphs"),
            "tensorrt_rtx": ("cuda_graph", "cuda_graphs"), "openvino": ("precision_hints", "precision_hint")}


def test_every_registered_backend_is_named_and_typed():
    assert set(MISSPELT) == set(BACKENDS)  # a new backend gets its row here
    for name in BACKENDS:
        cls = backend_class(name)
        assert cls.name == name and dataclasses.is_dataclass(cls.Options)
        with pytest.raises(dataclasses.FrozenInstanceError):
            cls.Options().verify = False


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_a_misspelt_option_is_refused_with_the_valid_ones(tiny_bundle, backend):
    typo, meant = MISSPELT[backend]
    with pytest.raises(InputError) as caught:
        Pipeline.load(tiny_bundle, backend=backend, **{typo: True})
    message = str(caught.value)
    assert f"backend '{backend}': unknown option ['{typo}']" in message
    for field in dataclasses.fields(backend_class(backend).Options):
        assert re.search(rf"\b{field.name}: ", message), (field.name, message)
    assert f"did you mean '{meant}' for '{typo}'?" in message


@pytest.mark.parametrize("backend, option", [("onnxruntime", {"threads": "2"}), ("onnxruntime", {"device": "gpu"}),
                                             ("onnxruntime", {"verify": 1}), ("tensorrt", {"cuda_graphs": "yes"}),
                                             ("tensorrt_rtx", {"stream": 1.5}), ("openvino", {"device": "cpu"}),
                                             ("openvino", {"precision_hint": "fp16"})])
def test_an_ill_typed_option_is_refused(tiny_bundle, backend, option):
    (name, value), = option.items()
    with pytest.raises(InputError, match=rf"option {name}={value!r} has the wrong type: expected .* found "
                                         rf"{type(value).__name__}\. Valid options: verify: bool = True"):
        Pipeline.load(tiny_bundle, backend=backend, **option)


def test_auto_says_which_backend_refused_the_option(tiny_bundle):
    from fusionrt.runtime.backends import resolve_backend

    chosen = resolve_backend("auto")
    with pytest.raises(InputError, match=rf"backend '{chosen}' \(what backend='auto' chose here\): unknown option"):
        Pipeline.load(tiny_bundle, backend="auto", no_such_option=1)


def test_options_are_parsed_into_the_backends_dataclass():
    from fusionrt.runtime.backends.onnxruntime import OnnxRuntimeOptions

    options = OnnxRuntimeOptions.parse("'onnxruntime'", {"providers": ["CPUExecutionProvider"], "threads": 2})
    assert options == OnnxRuntimeOptions(providers=("CPUExecutionProvider",), threads=2)
