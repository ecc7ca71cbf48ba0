"""Calibration data: a re-iterable source with `__len__`, always in the same order, through the runtime's
own preprocessing and tokenizer, plus the adapter ONNX Runtime's calibrators read from."""

from __future__ import annotations

from typing import Iterator

import numpy as np

from fusionrt.data.dataset import LabeledDataset
from fusionrt.runtime.bundle import Bundle
from fusionrt.runtime.errors import DataError
from fusionrt.runtime.preprocess import preprocess_batch
from fusionrt.runtime.tokenize import TextTokenizer

__all__ = ["MIN_SAMPLES", "MIN_HELD_OUT", "select_calibration", "split_held_out", "CalibrationSource", "OrtReader"]

MIN_SAMPLES = 16  # calibration samples
MIN_HELD_OUT = 10  # fidelity samples in each of the two held-out splits


def select_calibration(data: LabeledDataset, count: int) -> tuple:
    """Split `data` into (calibration, rest): `count` samples evenly strided over the file (files are often
    sorted by class), the rest kept for a held-out check. Deterministic."""
    if len(data) < MIN_SAMPLES:
        raise DataError(
            f"{data.source}: calibration needs at least {MIN_SAMPLES} real samples, found {len(data)}. "
            "Use a larger labelled set (calibration never runs on random data)."
        )
    count = max(MIN_SAMPLES, min(count, len(data)))
    picked = sorted(set(np.linspace(0, len(data) - 1, count).round().astype(int).tolist()))
    chosen = set(picked)
    calib = LabeledDataset(tuple(data[i] for i in picked), data.source)
    rest = LabeledDataset(tuple(s for i, s in enumerate(data) if i not in chosen), data.source)
    return calib, rest


def split_held_out(data: LabeledDataset) -> tuple:
    """(selection, report): the held-out samples of each label dealt alternately to the two, in file order. The
    per-layer search and the policy's choice read the first, the reported fidelity the second, so the figures a user
    reads were not the ones the choice was tuned on. Deterministic."""
    if len(data) < 2 * MIN_HELD_OUT:
        raise DataError(f"the held-out split has {len(data)} samples, expected at least {2 * MIN_HELD_OUT}: half choose "
                        "the policy, half report its fidelity. Pass --eval-data with a larger labelled split that "
                        "calibration does not use, or a larger --data.")
    seen: dict = {}
    halves = ([], [])
    for sample in data:
        halves[seen.get(sample.label, 0) % 2].append(sample)
        seen[sample.label] = seen.get(sample.label, 0) + 1
    return tuple(LabeledDataset(tuple(h), data.source) for h in halves)


class CalibrationSource:
    """Yields branch inputs (name -> array) batch by batch; iterate it as often as you like."""

    def __init__(self, bundle: Bundle, data: LabeledDataset, batch_size: int = 8):
        if len(data) == 0:
            raise DataError("calibration data is empty: expected labelled samples (image,text,label).")
        m = bundle.manifest
        self.bundle, self.data, self.batch_size = bundle, data, batch_size
        self.tokenizer = TextTokenizer(bundle.file(m.tokenizer.file), m.tokenizer.max_seq_len)

    def __len__(self) -> int:
        return -(-len(self.data) // self.batch_size)

    def __iter__(self) -> Iterator[dict]:
        for images, texts, _ in self.data.batches(self.batch_size):
            yield {self.bundle.manifest.wiring.image_input: preprocess_batch(images, self.bundle.manifest.preprocess),
                   **self.tokenizer(texts)}


class OrtReader:
    """ONNX Runtime's CalibrationDataReader protocol (`get_next`), with `__len__` and `rewind`.

    `feeds` is a list of dicts already computed for one component (cached, so every pass sees the same data)."""

    def __init__(self, feeds: list):
        self.feeds = feeds
        self._it = iter(self.feeds)

    def get_next(self):
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self.feeds)

    def __len__(self) -> int:
        return len(self.feeds)

    def __iter__(self):
        return iter(self.feeds)
