"""An exclusive lock on a cache folder under `cache_root()`, for writers that are not ours (ONNX Runtime's TensorRT
EP writes its engine cache while a session is created): two processes building the same engine take turns."""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from pathlib import Path

from fusionrt.runtime.errors import BackendUnavailable

__all__ = ["cache_lock"]

LOCK_WAIT_S = 600.0  # an engine build can take minutes


@contextmanager
def cache_lock(folder: Path, what: str, timeout_s: float = LOCK_WAIT_S):
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise BackendUnavailable(f"{what}: the cache '{folder}' stayed locked by another process for "
                                             f"{timeout_s:.0f} s; expected it to finish building. Wait for it, or "
                                             "remove the folder if no fusionrt process runs.") from None
                time.sleep(0.2)
        yield folder
    finally:
        os.close(fd)  # closing releases the lock
