"""Handing frames from a reader thread to the consumer under a policy, never through an unbounded queue:
- "latest": one slot; a new frame replaces a waiting one, which is dropped and counted (live cameras);
- "all": a bounded queue; the reader waits when it is full, so every frame is classified (video files)."""

from __future__ import annotations

import threading
from collections import deque
from typing import Callable

__all__ = ["POLICIES", "READER_JOIN_S", "Mailbox", "rate"]

POLICIES = ("latest", "all")
READER_JOIN_S = 1.0  # how long closing a stream waits for a reader blocked in its source


def rate(times) -> float:
    """Events per second over `times` (perf_counter stamps, oldest first); 0 until two are apart."""
    span = times[-1] - times[0] if len(times) > 1 else 0.0
    return (len(times) - 1) / span if span > 0 else 0.0


class Mailbox:
    """Hands frames from a reader thread to the consumer under a policy. `on_put` (optional) is called after each
    put and at close: a batcher over many mailboxes waits on one condition instead of polling each."""

    def __init__(self, policy: str, size: int, stop: threading.Event, on_put: Callable[[], None] | None = None):
        self.capacity = 1 if policy == "latest" else size
        self.policy, self.stop = policy, stop
        self.items: deque = deque()
        self.dropped = 0
        self.closed = False
        self.error: BaseException | None = None
        self.cond = threading.Condition()
        self._on_put = on_put or (lambda: None)

    def put(self, item) -> None:
        with self.cond:
            if self.policy == "latest":
                while len(self.items) >= self.capacity:
                    self.items.popleft()
                    self.dropped += 1
            else:
                while len(self.items) >= self.capacity and not self.stop.is_set():
                    self.cond.wait(0.1)
            self.items.append(item)
            self.cond.notify_all()
        self._on_put()

    def take(self):
        """The next item without waiting, or None when there is none now."""
        with self.cond:
            if not self.items:
                return None
            item = self.items.popleft()
            self.cond.notify_all()
            return item

    @property
    def finished(self) -> bool:
        """Closed and emptied: the reader will put nothing more."""
        with self.cond:
            return self.closed and not self.items

    def get(self):
        """The next item, or None at the end of the source (or on stop)."""
        with self.cond:
            while not self.items and not self.closed and not self.stop.is_set():
                self.cond.wait(0.1)
            if self.error is not None:
                raise self.error
            if self.stop.is_set() or not self.items:
                return None
            item = self.items.popleft()
            self.cond.notify_all()
            return item

    def close(self, error: BaseException | None = None) -> None:
        with self.cond:
            self.closed, self.error = True, error
            self.cond.notify_all()
        self._on_put()
