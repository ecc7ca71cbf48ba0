"""Labelled image+text data sets (CSV or JSONL with columns image,text,label), read without torch.

A `LabeledDataset` is re-iterable, has `__len__`, and always yields samples in file order, so
training, calibration and fidelity see the same data the same way every time.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from fusionrt.runtime.errors import DataError

__all__ = ["Sample", "LabeledDataset"]

COLUMNS = ("image", "text", "label")


@dataclass(frozen=True)
class Sample:
    image: Path
    text: str
    label: str


@dataclass(frozen=True)
class LabeledDataset:
    samples: tuple
    source: str = ""

    @classmethod
    def read(cls, path) -> "LabeledDataset":
        path = Path(path)
        if not path.is_file():
            raise DataError(f"data set '{path}' not found: expected a .csv or .jsonl file with columns {COLUMNS}.")
        rows = _read_rows(path)
        samples, missing = [], []
        for line, row in rows:
            absent = [c for c in COLUMNS if not str(row.get(c) or "").strip()]
            if absent:
                raise DataError(f"{path}:{line}: expected non-empty {list(COLUMNS)}, found {absent} empty or missing. Fill them in or drop the row.")
            image = (path.parent / str(row["image"])).resolve()
            if not image.is_file():
                missing.append(f"{line}: {row['image']}")
            samples.append(Sample(image, str(row["text"]), str(row["label"])))
        if missing:
            raise DataError(
                f"{path}: {len(missing)} image files not found (paths are relative to the data file), e.g. line {missing[0]}. "
                "Fix the paths or the working copy of the images."
            )
        if not samples:
            raise DataError(f"{path}: no samples found; expected rows with columns {COLUMNS}.")
        return cls(tuple(samples), str(path))

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self) -> Iterator[Sample]:
        return iter(self.samples)

    def __getitem__(self, index):
        return self.samples[index]

    @property
    def labels(self) -> tuple:
        """The distinct labels, sorted: the class order of a model trained on this set."""
        return tuple(sorted({s.label for s in self.samples}))

    def label_indices(self, labels: Sequence[str]) -> list:
        index = {name: i for i, name in enumerate(labels)}
        unknown = sorted({s.label for s in self.samples} - set(index))
        if unknown:
            raise DataError(f"{self.source}: labels {unknown[:5]} are not among the model's labels {list(labels)[:10]}.")
        return [index[s.label] for s in self.samples]

    def head(self, count: int) -> "LabeledDataset":
        return LabeledDataset(self.samples[:count], self.source)

    def batches(self, size: int) -> Iterator[tuple]:
        """Yield (images, texts, labels) lists of at most `size` samples, in order."""
        for start in range(0, len(self.samples), size):
            chunk = self.samples[start : start + size]
            yield [s.image for s in chunk], [s.text for s in chunk], [s.label for s in chunk]


def _read_rows(path: Path) -> list:
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            with open(path, newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh)
                missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
                if missing:
                    raise DataError(f"{path}: expected a header with columns {list(COLUMNS)}, found {reader.fieldnames}.")
                return [(i + 2, row) for i, row in enumerate(reader)]
        if suffix in (".jsonl", ".ndjson"):
            rows = []
            for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
                if line.strip():
                    try:
                        rows.append((i + 1, json.loads(line)))
                    except json.JSONDecodeError as exc:
                        raise DataError(f"{path}:{i + 1}: not a JSON object ({exc}).") from exc
            return rows
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc}).") from exc
    raise DataError(f"data set '{path}': expected a .csv or .jsonl file, found '{suffix or 'no suffix'}'.")
