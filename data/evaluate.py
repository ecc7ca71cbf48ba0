"""Run a pipeline over a labelled data set and score it."""

from __future__ import annotations

import numpy as np

from fusionrt.data.metrics import classification_metrics
from fusionrt.runtime.progress import progress

__all__ = ["evaluate_pipeline", "pipeline_logits"]


def pipeline_logits(pipe, data, batch_size: int = 32, desc: str = "bundle eval") -> np.ndarray:
    """(N, classes) logits for every sample of `data`, in order."""
    out = []
    for images, texts, _ in progress(data.batches(batch_size), desc, total=-(-len(data) // batch_size)):
        out.append(pipe.logits(*pipe.prepare(images, texts)))
    return np.concatenate(out)


def evaluate_pipeline(pipe, data, batch_size: int = 32) -> dict:
    """Metrics (accuracy, macro recall, macro F1, count) plus 'predictions', the predicted indices."""
    predicted = pipeline_logits(pipe, data, batch_size).argmax(-1).tolist()
    metrics = classification_metrics(data.label_indices(pipe.labels), predicted, len(pipe.labels))
    return {**metrics, "predictions": predicted}
