"""Parse a precision request: one value for all parts, or per part ('image=int8,text=int8,head=fp32')."""

from __future__ import annotations

from typing import Mapping

from fusionrt.runtime.errors import InputError
from fusionrt.runtime.manifest import COMPONENTS, FUSION_HEAD, IMAGE_ENCODER, TEXT_ENCODER

__all__ = ["PRECISIONS", "parse_precision", "format_precision"]

PRECISIONS = ("fp32", "fp16", "int8")
_SHORT = {"image": IMAGE_ENCODER, "text": TEXT_ENCODER, "head": FUSION_HEAD}


def parse_precision(value, default: Mapping[str, str] | None = None) -> dict:
    """None -> `default` (the manifest's choice); 'int8' -> all parts; 'image=int8,...' or a mapping -> per part."""
    base = dict(default) if default else {c: "fp32" for c in COMPONENTS}
    if value is None or value == "auto" and default is not None:
        return base
    if not isinstance(value, (str, Mapping)):
        raise InputError(f"precision: expected None, 'fp32' | 'fp16' | 'int8', 'image=int8,...' or a mapping, found "
                         f"{value!r:.40}.")
    if isinstance(value, str) and "=" not in value:
        _check(value, "precision")
        return {c: value for c in COMPONENTS}
    if isinstance(value, str):
        pairs = []
        for item in value.split(","):
            key, sep, prec = item.partition("=")
            if not sep:
                raise InputError(f"precision '{value}': expected PART=PRECISION pairs like 'image=int8,text=int8,head=fp32'.")
            pairs.append((key.strip(), prec.strip()))
        value = dict(pairs)
    out = dict(base)
    for key, prec in dict(value).items():
        comp = _SHORT.get(key, key)
        if comp not in COMPONENTS:
            raise InputError(f"precision: unknown part '{key}'; expected image, text or head.")
        _check(prec, f"precision for {key}")
        out[comp] = prec
    return out


def format_precision(precision: Mapping[str, str]) -> str:
    short = {v: k for k, v in _SHORT.items()}
    return ",".join(f"{short[c]}={precision[c]}" for c in COMPONENTS)


def _check(prec: str, what: str) -> None:
    if prec not in PRECISIONS:
        raise InputError(f"{what}: expected one of {PRECISIONS}, found '{prec}'.")
