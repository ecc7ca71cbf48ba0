"""Protobuf text format (what Triton's config.pbtxt is) from plain Python values, without protobuf installed.

dict -> message, list -> repeated field (a list of dicts is written `name [ {...}, {...} ]`, Triton's own style),
str -> quoted string, `Enum('TYPE_FP32')` -> a bare enum value, bool/int/float as they are. Keys keep their order."""

from __future__ import annotations

import json

__all__ = ["Enum", "dumps"]


class Enum(str):
    """An enum value: written bare (`kind: KIND_CPU`), not quoted."""


def dumps(message: dict) -> str:
    return "".join(_fields(message, 0))


def _fields(message: dict, depth: int):
    pad = "  " * depth
    for key, value in message.items():
        if value is None:
            continue
        if isinstance(value, list):
            if value and isinstance(value[0], dict):
                yield f"{pad}{key} [\n"
                for i, item in enumerate(value):
                    yield f"{pad}  {{\n"
                    yield from _fields(item, depth + 2)
                    yield f"{pad}  }}{',' if i < len(value) - 1 else ''}\n"
                yield f"{pad}]\n"
            else:
                yield f"{pad}{key}: [ {', '.join(_scalar(v) for v in value)} ]\n"
        elif isinstance(value, dict):
            yield f"{pad}{key} {{\n"
            yield from _fields(value, depth + 1)
            yield f"{pad}}}\n"
        else:
            yield f"{pad}{key}: {_scalar(value)}\n"


def _scalar(value) -> str:
    if isinstance(value, Enum):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string literal (UTF-8 kept) is a protobuf text string
    raise TypeError(f"config.pbtxt: cannot write {type(value).__name__} {value!r:.40}")
