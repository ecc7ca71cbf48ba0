"""A progress bar on stderr for long steps (tqdm when installed; otherwise the plain iterable)."""

from __future__ import annotations

import sys

__all__ = ["progress"]


def progress(iterable, desc: str, total: int | None = None):
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, desc=desc, total=total, file=sys.stderr, leave=False, dynamic_ncols=True, mininterval=1.0)
