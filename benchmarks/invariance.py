"""Batch invariance of a bundle, end to end: for each backend and precision, the largest |logit| difference between a
row classified alone, in a batch of mixed texts, and with more padding (`python -m fusionrt.benchmarks.invariance
BUNDLE --data DATA`; `make demo` runs it on the demo bundle). The test suite runs the same check on its tiny bundle."""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from fusionrt.runtime.backends import backend_class
from fusionrt.runtime.invariance import PADDINGS
from fusionrt.runtime.pipeline import Pipeline
from fusionrt.runtime.precision import format_precision

__all__ = ["TOLERANCE", "pipeline_deviation", "calibration_found", "check", "failed", "main"]

TOLERANCE = 1e-4  # on logits of the demo's size (~10); scaled with the logits' magnitude above that
LONG = " seen at night on a wet road beside a row of parked cars"


def pipeline_deviation(pipe: Pipeline, images, texts) -> dict:
    """{"batch", "padding", "tolerance"}: the largest |logit| differences of the rows in one batch (the first text made
    the longest, so the others are padded) and in that batch with each of PADDINGS more tokens, against each row
    alone; the tolerance they must meet."""
    texts = [texts[0] + LONG, *texts[1:]]
    pixels, tokens = pipe.prepare(images, texts)
    batched = pipe.logits(pixels, tokens)
    alone = np.concatenate([pipe.logits(*pipe.prepare([i], [t])) for i, t in zip(images, texts)])
    padding = 0.0
    for extra in PADDINGS:
        length = min(tokens["input_ids"].shape[1] + extra, pipe.tokenizer.max_seq_len)
        padded = pipe.logits(pixels, pipe.tokenizer(texts, pad_to=length))
        padding = max(padding, float(np.abs(padded - alone).max()))
    return {"batch": float(np.abs(batched - alone).max()), "padding": padding,
            "tolerance": TOLERANCE * max(1.0, float(np.abs(alone).max()) / 10)}


def calibration_found(pipe: Pipeline) -> bool | None:
    """Whether calibration measured this pipeline's configuration batch-invariant on its target (None: not judged,
    as FP32 and ONNX Runtime's FP16, which is its FP32)."""
    policy = pipe.manifest.policies.get(backend_class(pipe.backend_name).target(pipe.options))
    known = next((c for c in policy.candidates if dict(c.precision) == pipe.precision), None) if policy else None
    return None if known is None else known.batch_invariant


def check(bundle, images, texts, backends=("onnxruntime", "openvino"), precisions=("fp32", "fp16", "int8")) -> list:
    """One row per backend and precision; `expected`: False where calibration already measured the configuration
    batch-dependent (OpenVINO's BF16 text on an AMX Xeon: its answers move with the padding), which no policy and no
    `auto` then runs; such a row is reported, not failed."""
    rows = []
    for backend in backends:
        for precision in precisions:
            with Pipeline.load(bundle, backend=backend, precision=precision) as pipe:
                found = pipeline_deviation(pipe, images, texts)
                rows.append({"backend": backend, "precision": format_precision(pipe.precision), **found,
                             "invariant": max(found["batch"], found["padding"]) <= found["tolerance"],
                             "expected": calibration_found(pipe) is not False})
    return rows


def failed(rows: list) -> list:
    """The rows that are batch-dependent where nothing measured so: a defect (the rest are known, and never run by a
    policy or `auto`)."""
    return [r for r in rows if not r["invariant"] and r["expected"]]


def main(argv=None) -> int:
    from fusionrt.data.dataset import LabeledDataset
    from fusionrt.runtime.cpu import cpu_kind

    parser = argparse.ArgumentParser(prog="python -m fusionrt.benchmarks.invariance", description=__doc__)
    parser.add_argument("bundle")
    parser.add_argument("--data", required=True, help="labelled CSV/JSONL: its first --rows samples are classified")
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    samples = LabeledDataset.read(args.data).head(args.rows)
    rows = check(args.bundle, [s.image for s in samples], [s.text for s in samples])
    if args.json:
        print(json.dumps({"cpu": cpu_kind().to_dict(), "rows": rows}, indent=2))
    else:
        print(f"{cpu_kind().label}; {len(samples)} rows, alone vs one batch vs "
              f"{', '.join(map(str, PADDINGS))} more padding tokens")
        print("| backend | precision | max abs logit diff, batch | with padding | tolerance | invariant |")
        print("|---|---|---|---|---|---|")
        for r in rows:
            verdict = "yes" if r["invariant"] else "NO" if r["expected"] else \
                "no, as calibration measured: no policy or auto runs it"
            print(f"| {r['backend']} | {r['precision']} | {r['batch']:.2e} | {r['padding']:.2e} | {r['tolerance']:.0e} "
                  f"| {verdict} |")
    return 1 if failed(rows) else 0


if __name__ == "__main__":
    sys.exit(main())
