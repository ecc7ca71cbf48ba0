"""A user's own image encoder, named on the command line: `module:PATH.py:NAME` (a file) or
`module:package.module:NAME` (an importable module). NAME is an nn.Module class (built with no arguments) or a
factory function returning one. Loading it runs that code: only name modules you trust.

The checkpoint records the reference and the file's sha256; a later load refuses a changed file unless asked,
because weights trained for one module rarely fit another."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path

from fusionrt.runtime.errors import CheckpointError
from fusionrt.runtime.optional import require

__all__ = ["PREFIX", "is_reference", "load_user_encoder", "source_sha256"]

PREFIX = "module:"


def is_reference(backbone: str) -> bool:
    return str(backbone).startswith(PREFIX)


def _parse(reference: str) -> tuple:
    body = reference[len(PREFIX):]
    source, sep, name = body.rpartition(":")
    if not sep or not source or not name.isidentifier():
        raise CheckpointError(f"image backbone '{reference}': expected module:PATH.py:NAME or module:package.module:NAME "
                              "(NAME an nn.Module class or a function returning one).")
    return source, name


def _import(source: str, reference: str):
    if source.endswith(".py"):
        path = Path(source).expanduser().resolve()
        if not path.is_file():
            raise CheckpointError(f"image backbone '{reference}': no such file {path}. Check the path (relative paths are "
                                  "from the current directory).")
        spec = importlib.util.spec_from_file_location(f"fusionrt_user_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}",
                                                      path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses and pickling-free torch code look modules up by name
        loader = spec.loader.exec_module
    else:
        module, loader = None, None
    try:
        if loader is not None:
            loader(module)
            return module, path
        module = importlib.import_module(source)
        return module, Path(module.__file__) if getattr(module, "__file__", None) else None
    except Exception as exc:  # the user's code: any error it raises is theirs to see
        raise CheckpointError(f"image backbone '{reference}': importing it failed ({type(exc).__name__}: {exc}). Fix the "
                              "module, or check the reference.") from exc


def source_sha256(reference: str) -> str:
    """The sha256 of the file the reference loads ('' when it has none)."""
    module, path = _import(_parse(reference)[0], reference)
    return hashlib.sha256(path.read_bytes()).hexdigest() if path else ""


def load_user_encoder(reference: str, expected_sha256: str = "", allow_changed: bool = False) -> tuple:
    """(an nn.Module instance, the sha256 of its file). Refuses a file whose sha256 is not `expected_sha256` (when
    given) unless `allow_changed`."""
    torch = require("torch", "your own image encoder")
    source, name = _parse(reference)
    module, path = _import(source, reference)
    sha = hashlib.sha256(path.read_bytes()).hexdigest() if path else ""
    if expected_sha256 and sha != expected_sha256 and not allow_changed:
        raise CheckpointError(f"image backbone '{reference}': {path} changed since the checkpoint was trained (sha256 "
                              f"{sha[:12]}, expected {expected_sha256[:12]}): expected the same file. Restore it, or pass "
                              "--allow-changed-module to load it anyway (its weights must still fit).")
    target = getattr(module, name, None)
    if target is None:
        raise CheckpointError(f"image backbone '{reference}': {source} has no '{name}'. Expected an nn.Module class or a "
                              "function returning one.")
    try:
        encoder = target() if callable(target) else target
    except Exception as exc:
        raise CheckpointError(f"image backbone '{reference}': calling {name}() failed ({type(exc).__name__}: {exc}): "
                              "expected a class or factory that takes no arguments.") from exc
    if not isinstance(encoder, torch.nn.Module):
        raise CheckpointError(f"image backbone '{reference}': {name}() gave a {type(encoder).__name__}, expected a "
                              "torch.nn.Module mapping (N, 3, H, W) images to (N, D) features.")
    return encoder, sha
