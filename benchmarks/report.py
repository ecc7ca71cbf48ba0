"""Benchmark output: machine info and a Markdown table."""

from __future__ import annotations

import os
import platform
from importlib import metadata

__all__ = ["machine_info", "markdown_table"]


def machine_info() -> dict:
    flags, model = "", platform.processor()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name") and not model:
                    model = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    flags = line
                    break
    except OSError:
        pass
    versions = {}
    for name in ("fusionrt", "onnxruntime", "onnxruntime-gpu", "numpy", "torch"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return {"cpu": model, "cores": os.cpu_count(), "vnni": "avx512_vnni" in flags or "avx_vnni" in flags,
            "amx": "amx_int8" in flags, "packages": versions}


def markdown_table(rows: list, baseline_key=("fp32", "sequential")) -> str:
    """Rows as a table; each row's speed-up is against the same batch's FP32 sequential row."""
    base = {r["batch"]: r["mean_ms"] for r in rows if (r["precision"], r["branches"]) == baseline_key}
    lines = ["| backend | precision | batch | branches | pairs/s | p50 ms | p95 ms | p99 ms | image ms | text ms | head ms "
             "| prepare ms | vs fp32 seq |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = f"{base[r['batch']] / r['mean_ms']:.2f}x" if r["batch"] in base else "-"
        lines.append(f"| {r['backend']} | {r['precision']} | {r['batch']} | {r['branches']} | {r['throughput']:.1f} | "
                     f"{r['p50_ms']:.2f} | {r['p95_ms']:.2f} | {r['p99_ms']:.2f} | {r['image_ms']:.2f} | {r['text_ms']:.2f} | "
                     f"{r['head_ms']:.2f} | {r['prepare_ms']:.2f} | {ratio} |")
    return "\n".join(lines)
