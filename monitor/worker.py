"""A daemon thread fed by a bounded queue: the frame loop hands slow work (a clip cut, a file write) off and never
waits for it; a full queue drops the job and counts it, so a stuck disk cannot stall the cameras."""

from __future__ import annotations

import queue
import threading
from typing import Callable

__all__ = ["Worker"]

_STOP = object()


class Worker:
    def __init__(self, name: str, handle: Callable, size: int = 256, on_error: Callable | None = None):
        self.dropped = 0  # jobs refused because the queue was full
        self.failed = 0  # jobs whose handler raised
        self.last_error: str | None = None
        self._handle, self._on_error = handle, on_error
        self._queue: queue.Queue = queue.Queue(maxsize=size)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, job) -> bool:
        try:
            self._queue.put_nowait(job)
            return True
        except queue.Full:
            self.dropped += 1
            return False

    def _run(self) -> None:
        while (job := self._queue.get()) is not _STOP:
            try:
                self._handle(job)
            except Exception as exc:  # noqa: BLE001 - one failed job (a full disk, a bad clip) must not end the rest
                self.failed += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                if self._on_error is not None:
                    self._on_error(self.last_error)
            finally:
                self._queue.task_done()

    def drain(self, timeout_s: float = 30.0) -> bool:
        """Wait until every submitted job is done (tests, and close): False if that took longer than `timeout_s`."""
        done = threading.Event()
        threading.Thread(target=lambda: (self._queue.join(), done.set()), daemon=True).start()
        return done.wait(timeout_s)

    def close(self, timeout_s: float = 30.0) -> None:
        """Finish the queued jobs (at most `timeout_s`), then stop the thread."""
        self.drain(timeout_s)
        try:
            self._queue.put(_STOP, timeout=1.0)
        except queue.Full:
            return
        self._thread.join(timeout=1.0)
