"""The one place fusionrt reads environment variables."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_root", "isa_limit"]


def cache_root() -> Path:
    """fusionrt's cache folder: $XDG_CACHE_HOME/fusionrt, else ~/.cache/fusionrt (tuning results, --arch builds)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fusionrt"


def isa_limit() -> str:
    """ONEDNN_MAX_CPU_ISA (oneDNN, inside OpenVINO, uses no instruction set past it), or ''."""
    return os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip()
