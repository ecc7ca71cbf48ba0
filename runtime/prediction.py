"""What a classification returns: `Prediction` (label, index, score, probabilities), from the head's logits."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

__all__ = ["Prediction", "softmax", "predictions"]


@dataclass(frozen=True)
class Prediction:
    label: str
    index: int
    score: float
    probs: np.ndarray = field(repr=False)

    def to_dict(self, labels: Sequence[str]) -> dict:
        return {"label": self.label, "index": self.index, "score": self.score,
                "probs": {name: float(p) for name, p in zip(labels, self.probs)}}


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def predictions(labels: Sequence[str], logits: np.ndarray) -> list:
    """One Prediction per row of (N, classes) logits."""
    out = []
    for row in softmax(logits.astype(np.float32)):
        index = int(row.argmax())
        out.append(Prediction(labels[index], index, float(row[index]), row))
    return out
