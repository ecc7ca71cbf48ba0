"""Classification metrics in numpy: accuracy, macro recall, macro F1."""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["classification_metrics"]


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> dict:
    """Return {'accuracy', 'macro_recall', 'macro_f1', 'count'}; macro means average over classes present in y_true."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape or y_true.size == 0:
        raise ValueError(f"expected two equal, non-empty label arrays, found {y_true.shape} and {y_pred.shape}")
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (y_true, y_pred), 1)
    tp = np.diag(confusion).astype(np.float64)
    support = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    present = support > 0
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {
        "accuracy": float(tp.sum() / y_true.size),
        "macro_recall": float(recall[present].mean()),
        "macro_f1": float(f1[present].mean()),
        "count": int(y_true.size),
    }
