"""Batch invariance: a row's answer alone, in a batch and with more padding must be the same, within round-off.

A prediction that changes with its batch companions changes one camera's answer with what the other cameras see
(Triton's dynamic batching, `stream_many`). Calibration measures it for every precision it judges, the loading
machine's tuning again for what it measures, and neither lets `auto` pick a batch-dependent precision."""

from __future__ import annotations

from typing import Callable, Mapping

import numpy as np

__all__ = ["BATCH_TOLERANCE", "EXTRA_PADDING", "PADDINGS", "row_alone", "with_padding", "batch_deviation", "relative_deviation", "invariant"]

# A part is batch-invariant when the largest difference between a row alone and in a batch is at most this share of
# its outputs' largest magnitude: FP32 round-off between kernel blockings is ~1e-7 of it; dynamic per-tensor INT8
# moved the demo's text features by 2e-1.
BATCH_TOLERANCE = 1e-4
EXTRA_PADDING = 16  # tokens of padding added to a batch beyond its longest text
# and each of these: kernels that block the sequence (OpenVINO's BF16 on an AMX Xeon) round differently at some
# lengths only, which one padding can miss (the demo's INT8-weights MiniLM over BF16: calibration's +16 probe found it
# invariant, the loading machine's tuning, with other texts, did not)
PADDINGS = (1, 2, 3, 5, 7, EXTRA_PADDING)


def row_alone(feeds: Mapping[str, np.ndarray], i: int) -> dict:
    """Row i alone, without the padding its batch gave it (texts: cut to its own length)."""
    row = {k: v[i:i + 1] for k, v in feeds.items()}
    if "attention_mask" in row:
        length = max(1, int(row["attention_mask"].sum()))
        row = {k: v[:, :length] if v.ndim == 2 else v for k, v in row.items()}
    return row


def with_padding(feeds: Mapping[str, np.ndarray], extra: int, limit: int | None) -> dict | None:
    """The batch with `extra` more padding tokens (mask 0, pad id 0), at most `limit` long; None for non-text feeds."""
    if "attention_mask" not in feeds:
        return None
    length = feeds["attention_mask"].shape[1]
    extra = min(extra, (limit or length + extra) - length)
    if extra <= 0:
        return None
    return {k: np.pad(v, ((0, 0), (0, extra))) if v.ndim == 2 else v for k, v in feeds.items()}


def batch_deviation(run: Callable[[dict], np.ndarray], feeds: Mapping[str, np.ndarray],
                    max_seq_len: int | None = None) -> float:
    """The largest |output| difference between each row of `feeds` run alone, the batch as given, and (text) the
    batch with each of PADDINGS more padding tokens. `run(feeds) -> (N, ...) array`."""
    batch = np.asarray(run(dict(feeds)), dtype=np.float64)
    alone = np.concatenate([np.asarray(run(row_alone(feeds, i)), dtype=np.float64) for i in range(len(batch))])
    deviation = float(np.abs(batch - alone).max())
    for extra in PADDINGS:
        padded = with_padding(feeds, extra, max_seq_len)
        if padded is not None:
            deviation = max(deviation, float(np.abs(np.asarray(run(padded), dtype=np.float64) - alone).max()))
    return deviation


def relative_deviation(run: Callable[[dict], np.ndarray], feeds: Mapping[str, np.ndarray],
                       max_seq_len: int | None = None) -> float:
    """`batch_deviation` as a share of the outputs' largest magnitude."""
    scale = float(np.abs(np.asarray(run(dict(feeds)))).max())
    return batch_deviation(run, feeds, max_seq_len) / max(scale, 1e-30)


def invariant(relative: float) -> bool:
    return relative <= BATCH_TOLERANCE
