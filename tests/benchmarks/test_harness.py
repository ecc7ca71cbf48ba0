import json

import numpy as np
import pytest

from fusionrt.benchmarks.report import machine_info, markdown_table
from fusionrt.benchmarks.stats import latency_stats, speedup
from fusionrt.cli import main


def test_percentiles_and_throughput():
    stats = latency_stats(list(range(1, 101)), batch=8)
    assert stats["p50_ms"] == pytest.approx(50.5)
    assert stats["p95_ms"] == pytest.approx(95.05)
    assert stats["p99_ms"] == pytest.approx(99.01)
    assert stats["throughput"] == pytest.approx(8 * 1000 / 50.5)
    assert speedup(30.0, 10.0) == 3.0
    with pytest.raises(ValueError):
        latency_stats([], 1)


def test_bench_command_writes_records(tiny_bundle, shape_data, tmp_path, capsys):
    assert main(["bench", str(tiny_bundle), "--data", str(shape_data[1]), "--precision", "fp32", "--batch", "1,2",
                 "--duration", "0.2", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "bench.json").read_text())
    rows = data["rows"]
    assert len(rows) == 4 and {r["branches"] for r in rows} == {"sequential", "concurrent"}
    for r in rows:
        assert r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"] and r["throughput"] > 0 and r["calls"] >= 5
        assert r["image_ms"] > 0 and r["text_ms"] > 0 and r["head_ms"] > 0 and r["prepare_ms"] > 0
    assert {"cpu", "cores", "vnni", "packages"} <= set(data["machine"])
    assert "| onnxruntime | fp32 | 2 | concurrent |" in (tmp_path / "bench.md").read_text()


def test_ratio_column_is_against_fp32_sequential():
    row = dict(backend="onnxruntime", batch=1, p50_ms=1, p95_ms=1, p99_ms=1, image_ms=1, text_ms=1, head_ms=1,
               prepare_ms=1, throughput=1)
    rows = [{**row, "precision": "fp32", "branches": "sequential", "mean_ms": 30.0},
            {**row, "precision": "int8", "branches": "concurrent", "mean_ms": 10.0}]
    table = markdown_table(rows)
    assert table.splitlines()[-1].endswith("| 3.00x |") and table.splitlines()[-2].endswith("| 1.00x |")
