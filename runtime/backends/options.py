"""Typed, frozen options per backend, validated when a pipeline loads: a misspelt or ill-typed option is an
InputError that lists the valid ones, never silently ignored."""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Union

import numpy as np

from fusionrt.runtime.errors import InputError

__all__ = ["BackendOptions"]


@dataclass(frozen=True)
class BackendOptions:
    """What every backend takes. A backend's own options subclass this (frozen, with defaults)."""

    verify: bool = True  # check each model file's sha256 against the manifest before loading it

    @classmethod
    def parse(cls, backend: str, given: Mapping[str, Any]) -> "BackendOptions":
        """`given` (keyword arguments of Pipeline.load) as this backend's options; raises InputError naming the
        valid options when one is unknown or of the wrong type. `backend` names the backend in the message."""
        hints = typing.get_type_hints(cls)
        valid = {f.name: hints[f.name] for f in dataclasses.fields(cls)}
        unknown = sorted(set(given) - set(valid))
        if unknown:
            close = {name: difflib.get_close_matches(name, valid, n=1) for name in unknown}
            guesses = "; ".join(f"did you mean '{m[0]}' for '{n}'?" for n, m in close.items() if m)
            raise InputError(f"backend {backend}: unknown option{'s' * (len(unknown) > 1)} {unknown}. Expected some "
                             f"of: {cls.describe()}." + (f" {guesses}" if guesses else ""))
        values = {}
        for name, value in given.items():
            if not _matches(value, valid[name]):
                raise InputError(f"backend {backend}: option {name}={value!r:.60} has the wrong type: expected "
                                 f"{_describe(valid[name])}, found {type(value).__name__}. Valid options: "
                                 f"{cls.describe()}.")
            values[name] = tuple(value) if isinstance(value, list) else value
        return cls(**values)

    def for_branches(self, concurrent: bool) -> "BackendOptions":
        """These options for a pipeline whose branches run at once (`concurrent`) or one after the other: a backend
        whose best setting depends on it resolves its automatic options here (ONNX Runtime's thread spinning)."""
        return self

    @classmethod
    def describe(cls) -> str:
        """'name: type = default, ...' for every option."""
        hints = typing.get_type_hints(cls)
        return ", ".join(f"{f.name}: {_describe(hints[f.name])} = {f.default!r}" for f in dataclasses.fields(cls))


def _matches(value, hint) -> bool:
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(hint))
    if origin is Literal:
        return value in typing.get_args(hint)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, (bool, np.bool_))
    if hint is int:
        return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    if hint is float:
        return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if origin is tuple or hint is tuple:
        return isinstance(value, (tuple, list))
    return isinstance(value, origin or hint)


def _describe(hint) -> str:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return " | ".join(_describe(arg) for arg in typing.get_args(hint))
    if origin is Literal:
        return " | ".join(repr(arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return "None"
    if origin is tuple:
        return "a list or tuple"
    return getattr(hint, "__name__", str(hint))
