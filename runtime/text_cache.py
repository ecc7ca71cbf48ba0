"""Text-feature cache: in a camera app the text (an operator's note, a scene description) changes rarely,
so the text branch runs only when it does. LRU, keyed by each row's token ids (padding excluded). Safe to share
between threads: every lookup and store holds one lock."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Mapping

import numpy as np

__all__ = ["TextFeatureCache"]


class TextFeatureCache:
    def __init__(self, size: int = 64):
        if size < 1:
            raise ValueError(f"text cache size must be >= 1, found {size} (pass text_cache=0 to Pipeline.load to turn it off)")
        self.size = size
        self.hits = self.misses = 0
        self._entries: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def keys(tokens: Mapping[str, np.ndarray]) -> list:
        ids, mask = tokens["input_ids"], tokens["attention_mask"].astype(bool)
        return [ids[i, mask[i]].tobytes() for i in range(len(ids))]

    def lookup(self, keys: list) -> np.ndarray | None:
        """The features of every key stacked, or None when any is missing (the batch then runs the branch)."""
        with self._lock:  # the check and the reads at once: no eviction between them
            rows = [self._entries.get(k) for k in keys]
            if any(row is None for row in rows):
                self.misses += len(keys)
                return None
            self.hits += len(keys)
            for k in keys:
                self._entries.move_to_end(k)
        return np.stack(rows)

    def store(self, keys: list, features: np.ndarray) -> None:
        rows = [np.array(row, copy=True) for row in features]
        with self._lock:
            for k, row in zip(keys, rows):
                self._entries[k] = row
                self._entries.move_to_end(k)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def __contains__(self, key) -> bool:
        with self._lock:
            return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.hits = self.misses = 0
