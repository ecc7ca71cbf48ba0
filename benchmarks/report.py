"""Benchmark output: machine info, the Markdown table and the plot."""

from __future__ import annotations

import shutil
import subprocess

from fusionrt.runtime.optional import installed_versions, require

__all__ = ["machine_info", "markdown_table", "plot_rows"]

PACKAGES = ("fusionrt", "onnxruntime", "onnxruntime-gpu", "numpy", "torch", "tensorrt", "tensorrt_rtx", "cuda-bindings",
            "openvino", "nncf")


def _gpus() -> list:
    """GPU name and driver from nvidia-smi, when there is one."""
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [dict(zip(("name", "driver", "memory"), (f.strip() for f in line.split(",")))) for line in out.splitlines() if line]


def machine_info() -> dict:
    """The machine a benchmark ran on: the CPU kind (vendor, model, cores, AVX2/AVX-512, VNNI, BF16, AMX, an ISA
    limit), GPUs and package versions. Every figure is only as good as this says."""
    from fusionrt.runtime.cpu import cpu_kind

    kind = cpu_kind()
    onednn = kind.for_onednn()  # what OpenVINO's kernels may use, under ONEDNN_MAX_CPU_ISA
    return {"cpu": kind.label, "cpu_kind": kind.to_dict(), "cores": kind.cores, "vnni": bool(kind.vnni),
            "amx": bool(kind.amx), "bf16": bool(kind.bf16),
            "openvino_uses": {n: bool(getattr(onednn, n)) for n in ("avx512", "vnni", "bf16", "amx")},
            "gpus": _gpus(), "packages": installed_versions(PACKAGES)}


def _label(r: dict) -> str:
    return f"{r['backend']} {r['precision']}{' (speed-only)' if r.get('speed_only') else ''}"


def markdown_table(rows: list) -> str:
    """Rows as a table; the last column is each row's speed-up against the baseline named in the header."""
    vs = rows[0]["speedup_vs"] if rows else "baseline"
    lines = [f"| backend / precision | batch | seq | branches | pairs/s | p50 ms | p95 ms | p99 ms | image p50 | text p50 "
             f"| head p50 | prepare ms | vs {vs} |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = "-"
        if r.get("speedup"):
            ratio = f"{r['speedup']:.2f}x"
            if r.get("speedup_min") is not None and len(r.get("round_ms") or []) > 1:
                ratio += f" ({r['speedup_min']:.2f}-{r['speedup_max']:.2f})"
        lines.append(f"| {_label(r)} | {r['batch']} | {r['seq']} | {r['branches']} | {r['throughput']:.1f} | "
                     f"{r['p50_ms']:.2f} | {r['p95_ms']:.2f} | {r['p99_ms']:.2f} | {r['image_ms']['p50']:.2f} | "
                     f"{r['text_ms']['p50']:.2f} | {r['head_ms']['p50']:.2f} | {r['prepare_ms']:.2f} | {ratio} |")
    if any(len(r.get("round_ms") or []) > 1 for r in rows):
        rounds = max(len(r.get("round_ms") or []) for r in rows)
        lines += ["", f"Speed-ups: the median of {rounds} interleaved rounds' ratios (min-max across the rounds)."]
    if any(r.get("speed_only") for r in rows):
        lines += ["", "speed-only: INT8 calibrated on synthetic data (reference architecture); its accuracy is not measured."]
    return "\n".join(lines)


def plot_rows(rows: list, path) -> None:
    """bench.png: p50 latency and throughput against batch, one line per backend / precision / branches."""
    matplotlib = require("matplotlib", "bench.png")
    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    series = {}
    for r in rows:
        series.setdefault(f"{_label(r)}, {r['branches']}", []).append(r)
    fig, (lat, thr) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, points in series.items():
        points = sorted(points, key=lambda r: r["batch"])
        batches = [r["batch"] for r in points]
        lat.plot(batches, [r["p50_ms"] for r in points], marker="o", label=name)
        thr.plot(batches, [r["throughput"] for r in points], marker="o", label=name)
    batches = sorted({r["batch"] for r in rows})
    for ax, title, unit in ((lat, "latency (p50)", "ms per batch"), (thr, "throughput", "pairs/s")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.set_xlabel("batch")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(alpha=0.3)
    thr.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(str(path), dpi=110)
    plt.close(fig)
