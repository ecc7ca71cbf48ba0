"""Draw a prediction on a frame: label and score, fps and latency, dropped frames."""

from __future__ import annotations

import numpy as np

__all__ = ["annotate"]


def annotate(frame: np.ndarray, result) -> np.ndarray:
    """A copy of `frame` (BGR) with `result` (a FramePrediction) drawn in its top-left corner."""
    import cv2

    out = frame.copy()
    p = result.prediction
    lines = [f"{p.label} {p.score:.2f}",
             f"{result.fps:.1f} fps  {result.latency_ms:.0f} ms  dropped {result.dropped}"]
    scale = max(0.4, min(out.shape[:2]) / 600)
    thickness = max(1, round(scale * 2))
    y = 0
    for line in lines:
        (w, h), base = cv2.getTextSize(line, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
        cv2.rectangle(out, (0, y), (w + 12, y + h + base + 10), (0, 0, 0), -1)
        cv2.putText(out, line, (6, y + h + 5), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness, cv2.LINE_AA)
        y += h + base + 10
    return out
