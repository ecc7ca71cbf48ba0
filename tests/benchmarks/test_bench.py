import json

import pytest

import numpy as np

from fusionrt.benchmarks.harness import add_speedups, bench, prepared_inputs
from fusionrt.benchmarks.torch_runner import TorchRunner
from fusionrt.runtime.bundle import Bundle
from fusionrt.runtime.pipeline import Pipeline
from fusionrt.benchmarks.report import markdown_table
from fusionrt.benchmarks.stats import latency_stats, percentiles, speedup
from fusionrt.cli import main
from tests.hardware import needs_rtx

PNG = b"\x89PNG\r\n\x1a\n"


def test_percentiles_and_throughput():
    stats = latency_stats(list(range(1, 101)), batch=8)
    assert stats["p50_ms"] == pytest.approx(50.5)
    assert stats["p95_ms"] == pytest.approx(95.05)
    assert stats["p99_ms"] == pytest.approx(99.01)
    assert stats["throughput"] == pytest.approx(8 * 1000 / 50.5)
    assert percentiles([4.0]) == {"p50": 4.0, "p95": 4.0, "p99": 4.0}
    assert speedup(30.0, 10.0) == 3.0
    with pytest.raises(ValueError):
        latency_stats([], 1)


def _row(backend, precision, batch, branches, mean_ms, **extra):
    branch = {"p50": 1.0, "p95": 1.0, "p99": 1.0}
    return dict(backend=backend, precision=precision, batch=batch, seq=16, branches=branches, mean_ms=mean_ms,
                p50_ms=mean_ms, p95_ms=mean_ms, p99_ms=mean_ms, throughput=batch * 1e3 / mean_ms, image_ms=branch,
                text_ms=branch, head_ms=branch, prepare_ms=1.0, **extra)


def test_speedups_are_against_torch_fp32_of_the_same_batch():
    rows = add_speedups([_row("torch", "fp32", 1, "sequential", 60.0), _row("onnxruntime", "fp32", 1, "sequential", 30.0),
                         _row("onnxruntime", "int8", 1, "concurrent", 20.0), _row("torch", "fp32", 8, "sequential", 400.0),
                         _row("onnxruntime", "int8", 8, "sequential", 100.0)])
    assert [r["speedup"] for r in rows] == [1.0, 2.0, 3.0, 1.0, 4.0]
    assert {r["speedup_vs"] for r in rows} == {"torch fp32"}
    table = markdown_table(rows)
    assert "vs torch fp32" in table.splitlines()[0] and table.splitlines()[4].endswith("| 3.00x |")


def test_without_baseline_speedups_are_against_fp32_sequential():
    rows = add_speedups([_row("onnxruntime", "fp32", 1, "sequential", 30.0),
                         _row("onnxruntime", "int8", 1, "concurrent", 10.0, speed_only=True),
                         _row("onnxruntime", "int8", 2, "concurrent", 10.0)])
    assert [r["speedup"] for r in rows] == [1.0, 3.0, None]
    table = markdown_table(rows)
    assert "int8 (speed-only)" in table and "accuracy is not measured" in table and table.count("| - |") == 1


def test_bench_rows_with_pytorch_baseline(tiny_bundle, trained_checkpoint, shape_data):
    from fusionrt.data.dataset import LabeledDataset
    from fusionrt.export.model import FusionClassifier
    from ..conftest import tiny_image_encoder

    model = FusionClassifier.from_pretrained(trained_checkpoint, image_encoder=tiny_image_encoder())
    data = LabeledDataset.read(shape_data[1])
    rows = bench(tiny_bundle, [s.image for s in data], [s.text for s in data], ("onnxruntime",), ("fp32",), (1, 2),
                 duration_s=0.2, seq=12, torch_model=model)
    assert [(r["backend"], r["branches"]) for r in rows if r["batch"] == 1] == [
        ("torch", "sequential"), ("onnxruntime", "sequential"), ("onnxruntime", "concurrent")]
    for r in rows:
        assert r["throughput"] == pytest.approx(r["batch"] * 1e3 / r["mean_ms"]) and r["calls"] >= 5
        assert r["seq"] == 12 and r["prepare_ms"] > 0 and r["speedup"] > 0 and r["speed_only"] is False
        assert all(r[b]["p50"] > 0 for b in ("image_ms", "text_ms", "head_ms"))
    assert [r["speedup"] for r in rows if r["backend"] == "torch"] == [1.0, 1.0]
    # the same inputs for every row: the baseline and the bundle agree on them
    pixels, tokens, _ = prepared_inputs(Bundle.open(tiny_bundle), [s.image for s in data], [s.text for s in data], 2, 12)
    with Pipeline.load(tiny_bundle, precision="fp32") as pipe:
        np.testing.assert_allclose(pipe.logits(pixels, tokens), TorchRunner(model).logits(pixels, tokens), atol=1e-4)


@pytest.mark.parametrize("mode", ["sequential", "concurrent"])
def test_branch_timings_are_each_calls_own(mode, tiny_bundle, shape_data):
    """Every timed call's branch figures come from that call: one per call, changing from call to call, and inside
    it (sequential: image + text + head; concurrent: the slower branch + head, at most the call's own time)."""
    from fusionrt.benchmarks.harness import _Row
    from fusionrt.data.dataset import LabeledDataset

    data = LabeledDataset.read(shape_data[1])
    pixels, tokens, _ = prepared_inputs(Bundle.open(tiny_bundle), [s.image for s in data], [s.text for s in data], 2, 12)
    with Pipeline.load(tiny_bundle, precision="fp32", concurrent=mode == "concurrent") as pipe:
        row = _Row(pipe, pixels, tokens, {})
        for _ in range(2):
            row.run_round(0.15, warmup=1)
    image, text, head = (row.branch[b] for b in ("image", "text", "head"))
    assert len(image) == len(text) == len(head) == len(row.times) >= 4
    assert len(set(image)) > 1 and len(set(text)) > 1  # measured each call, not one value kept
    inside = [(i + t if mode == "sequential" else max(i, t)) + h for i, t, h in zip(image, text, head)]
    assert all(part <= call + 0.05 for part, call in zip(inside, row.times)), list(zip(inside, row.times))


def test_auto_rows_say_what_the_policy_resolved_to(calibrated):
    from fusionrt.data.dataset import LabeledDataset
    from fusionrt.runtime.precision import format_precision

    bundle, _, _, test = calibrated
    data = LabeledDataset.read(test)
    rows = bench(bundle, [s.image for s in data], [s.text for s in data], ("onnxruntime",), ("fp32", "int8", "auto"),
                 (1, 2), duration_s=0.3, rounds=3)
    manifest = Bundle.open(bundle).manifest
    allowed = {format_precision(c.precision) for c in manifest.candidates_for("int8-cpu")} | {
        format_precision({c: "fp32" for c in manifest.components})}
    auto = [r for r in rows if r["precision"].startswith("auto (")]
    assert len(auto) == 4 and all(r["precision"][6:-1] in allowed for r in auto)  # a candidate, tuned here
    assert all(r["precision_reason"].startswith("measured here") for r in auto)
    for r in rows:  # interleaved rounds: each speed-up is the median of the same-round ratios, with its spread
        assert len(r["round_ms"]) == 3 and r["speedup_min"] <= r["speedup"] <= r["speedup_max"]
        base = next(b for b in rows if (b["batch"], b["precision"], b["branches"]) == (r["batch"], "fp32",
                                                                                      "sequential"))
        ratios = sorted(b / t for b, t in zip(base["round_ms"], r["round_ms"]))
        assert r["speedup"] == pytest.approx(ratios[1]) and r["speedup_min"] == pytest.approx(ratios[0])
    assert "(" in markdown_table(rows).splitlines()[3].split("|")[-2]  # the spread is in the table


@pytest.mark.parametrize("argv, message", [
    ([], "expected a BUNDLE or --arch"),
    (["--arch", "resnet9000+bert"], "unknown: expected one of"),
    (["BUNDLE", "--backend", "onnxruntime,torch"], "needs the bundle's weights in PyTorch"),
    (["BUNDLE", "--seq", "999"], "--seq 999: expected 1.."),
])
def test_bench_bad_input(argv, message, tiny_bundle, tmp_path, capsys):
    argv = [str(tiny_bundle) if a == "BUNDLE" else a for a in argv]
    assert main(["bench", *argv, "--cache", str(tmp_path), "--duration", "0.1"]) == 2
    assert message in capsys.readouterr().err


def test_arch_is_built_once_cached_and_labelled_speed_only(tmp_path, capsys):
    argv = ["bench", "--arch", "resnet18+bert-tiny", "--cache", str(tmp_path), "--precision", "fp32,int8", "--batch", "1",
            "--seq", "16", "--duration", "0.1", "--out", str(tmp_path / "out")]
    assert main(argv) == 0
    (done,) = tmp_path.glob("resnet18+bert-tiny-*/complete.json")
    manifest = json.loads((done.parent / "bundle" / "manifest.json").read_text())
    assert manifest["calibration"]["speed_only"] is True
    data = json.loads((tmp_path / "out" / "bench.json").read_text())
    rows = data["rows"]
    assert {r["backend"] for r in rows} == {"torch", "onnxruntime"} and data["source"] == {"arch": "resnet18+bert-tiny"}
    assert {"cpu", "cores", "vnni", "gpus", "packages"} <= set(data["machine"])
    from fusionrt.runtime.cpu import cpu_kind  # and what OpenVINO's kernels may use of it (ONEDNN_MAX_CPU_ISA)
    assert data["machine"]["openvino_uses"]["vnni"] == bool(cpu_kind().for_onednn().vnni)
    assert "| torch fp32 | 1 | 16 | sequential |" in (tmp_path / "out" / "bench.md").read_text()
    assert (tmp_path / "out" / "bench.png").read_bytes().startswith(PNG)
    assert "vs torch fp32" in capsys.readouterr().out
    assert all(r["speed_only"] == (r["precision"] == "int8") for r in rows)
    stamp = done.stat().st_mtime_ns
    assert main(argv) == 0
    assert done.stat().st_mtime_ns == stamp and "building" not in capsys.readouterr().err


@needs_rtx
def test_tensorrt_rows_include_cuda_graphs_and_run_the_fused_path(built, calibrated, monkeypatch, tmp_path):
    """`fusionrt bench --backend tensorrt_rtx` on the emulated GPU (tests/runtime/trt_emulation.py): the real
    engine files, one row per mode, the fused path's own branch timings."""
    import shutil

    from fusionrt.data.dataset import LabeledDataset
    from tests.runtime.trt_emulation import emulate_tensorrt

    import dataclasses

    from fusionrt.bundling import save_manifest

    bundle = tmp_path / "bundle"
    shutil.copytree(built[0], bundle)
    gpu = emulate_tensorrt(monkeypatch, bundle)
    data = LabeledDataset.read(calibrated[3])
    images, texts = [s.image for s in data], [s.text for s in data]
    rows = bench(bundle, images, texts, backends=("tensorrt_rtx",), precisions=("fp32",), batches=(2,), duration_s=0.2)
    # engines not built stream-capturable: TensorRT-RTX runs that row without graphs, and the row says so
    assert [r["branches"] for r in rows] == ["sequential", "concurrent", "concurrent + CUDA graphs (not in effect)"]
    assert "not built stream-capturable" in rows[2]["note"]
    assert all(r["backend"] == "tensorrt_rtx" and r["throughput"] > 0 and r["image_ms"]["p50"] > 0 for r in rows)
    assert rows[0]["speedup_vs"] == "fp32 sequential" and not gpu.open  # each row closed its buffers and events
    m = Bundle.open(bundle).manifest  # as `fusionrt build --cuda-graphs` records them
    comps = {n: dataclasses.replace(c, engines=tuple(dataclasses.replace(e, capturable=True) for e in c.engines))
             for n, c in m.components.items()}
    save_manifest(Bundle.open(bundle), dataclasses.replace(m, components=comps))
    rows = bench(bundle, images, texts, backends=("tensorrt_rtx",), precisions=("fp32",), batches=(2,), duration_s=0.2)
    assert rows[2]["branches"] == "concurrent + CUDA graphs" and "note" not in rows[2]


def test_rows_at_every_batch_size_share_one_sequence_length(tiny_bundle, shape_data):
    from fusionrt.benchmarks.harness import longest_text
    from fusionrt.data.dataset import LabeledDataset

    data = LabeledDataset.read(shape_data[1])
    texts = [s.text for s in data]
    rows = bench(tiny_bundle, [s.image for s in data], texts, ("onnxruntime",), ("fp32",), (1, 4), duration_s=0.1)
    longest = longest_text(Bundle.open(tiny_bundle), texts)
    assert {r["seq"] for r in rows} == {longest} and {r["batch"] for r in rows} == {1, 4}
