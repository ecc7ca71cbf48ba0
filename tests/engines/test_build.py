"""`fusionrt build`: TensorRT engines built here on the CPU with TensorRT-RTX (its builder needs no GPU)."""

import shutil

import pytest

from fusionrt.cli import main
from fusionrt.runtime.bundle import Bundle
from fusionrt.runtime.optional import is_available
from tests.conftest import RTX_CC as CC
from tests.hardware import gpu_count, needs_rtx


@needs_rtx
def test_engines_for_every_component_and_precision_are_recorded(built):
    bundle, results = built
    m = Bundle.open(bundle).manifest
    for precision, per_component in results.items():
        assert [r.component for r in per_component] == ["image_encoder", "text_encoder", "fusion_head"]
        for r in per_component:
            assert not r.skipped and r.record.precision == precision and r.record.product == "tensorrt_rtx"
            assert r.record.path.startswith(f"engines/tensorrt_rtx-{r.record.version}-sm89/")
            assert (bundle / r.record.path).stat().st_size > 0 and r.record in m.components[r.component].engines
            assert r.record.compute_capability == CC and r.record.profile == m.profile.to_dict()
            # a profile per context that may run at once (a pipeline and a clone), and whether built capturable
            assert r.record.contexts == 2 and r.record.capturable is False
    assert Bundle.open(bundle).verify()  # every engine's sha256 is in the manifest


@needs_rtx
def test_int8_network_holds_qdq_layers_and_its_engine_is_smaller(built):
    bundle, results = built
    for r in results["int8"]:
        assert r.layers.get("QUANTIZE", 0) > 0 and r.layers.get("DEQUANTIZE", 0) > 0, r.component
    for r in results["fp32"]:
        assert "QUANTIZE" not in r.layers
    size = {p: {r.component: (bundle / r.record.path).stat().st_size for r in rs} for p, rs in results.items()}
    assert size["int8"]["fusion_head"] < 0.5 * size["fp32"]["fusion_head"]  # all its weights are int8
    assert sum(size["int8"].values()) < sum(size["fp32"].values())
    assert sum(size["fp16"].values()) < 0.7 * sum(size["fp32"].values())


@needs_rtx
def test_int8_on_a_strongly_typed_builder_runs_its_float_in_fp16(built):
    """TensorRT-RTX builds the FP16-base Q/DQ graph: every float compute layer gives FP16 but those the FP16 model
    keeps in FP32 too (LayerNorm, Softmax, reductions); the FP32-base graph would give FP32 throughout."""
    bundle, results = built
    int8, fp16 = ({r.component: r for r in results[p]} for p in ("int8", "fp16"))
    m = Bundle.open(bundle).manifest
    for name, r in int8.items():
        source = next(e for e in m.components[name].engines if e.precision == "int8")
        assert r.record.sha256 == source.sha256 and "int8-trt-fp16" in m.components[name].files
        assert r.float_compute.get("FP16", 0) > 0
        assert r.float_compute.get("FP32", 0) == fp16[name].float_compute.get("FP32", 0), name
    assert "FP32" not in int8["image_encoder"].float_compute and "FP32" not in int8["fusion_head"].float_compute
    assert {r.component: r.float_compute for r in results["fp32"]} == \
        {r.component: {"FP32": sum(r.float_compute.values())} for r in results["fp32"]}


@needs_rtx
def test_fp16_engine_is_built_from_the_fp16_onnx_on_strongly_typed_products(built):
    _, results = built
    # the FP16 ONNX keeps LayerNorm/Softmax in float32 through casts; the fp32 one has none
    assert results["fp16"][1].layers.get("CAST", 0) > results["fp32"][1].layers.get("CAST", 0)


@needs_rtx
def test_unchanged_build_is_skipped_and_a_new_profile_rebuilds(built, capsys, tmp_path):
    bundle, results = tmp_path / "bundle", built[1]
    shutil.copytree(built[0], bundle)  # a copy: the rebuild below must not change the shared engines
    stamps = {r.record.path: (bundle / r.record.path).stat().st_mtime_ns for r in results["int8"]}
    assert main(["build", str(bundle), "--target", "tensorrt-rtx", "--compute-capability", CC, "--precision", "int8"]) == 0
    assert capsys.readouterr().out.count("unchanged, skipped") == 3
    assert {p: (bundle / p).stat().st_mtime_ns for p in stamps} == stamps
    assert main(["build", str(bundle), "--target", "tensorrt-rtx", "--compute-capability", CC, "--precision", "int8",
                 "--batch", "1:2:4"]) == 0
    out = capsys.readouterr().out
    assert out.count("built in") == 3 and "Q/DQ layers" in out
    record = next(e for e in Bundle.open(bundle).manifest.components["fusion_head"].engines if e.precision == "int8")
    assert record.profile["batch"] == [1, 2, 4]


@needs_rtx
@pytest.mark.parametrize("argv, message", [
    (["--target", "tensorrt-rtx"], "pass --compute-capability"),
    (["--target", "tensorrt-rtx", "--compute-capability", "9.0"], "cannot target compute capability 9.0"),
    (["--target", "tensorrt-rtx", "--compute-capability", CC, "--batch", "4:2:1"], "expected MIN:OPT:MAX"),
    (["--target", "tensorrt-rtx", "--compute-capability", CC, "--seq", "1:16:128"],
     "seq max 128 is longer than the tokenizer's max_seq_len 32: expected MAX <= 32. Pass --seq 1:16:32"),
])
def test_build_errors_are_clear(calibrated, argv, message, capsys):
    if gpu_count():
        pytest.skip("with a GPU these builds target it")
    with pytest.raises(SystemExit) if "--batch" in argv else _no_raise():
        assert main(["build", str(calibrated[0]), *argv]) == 2
    assert message in capsys.readouterr().err


class _no_raise:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_build_needs_the_int8_models_from_calibrate(tiny_bundle, capsys):
    if not is_available("tensorrt_rtx"):
        pytest.skip("tensorrt-rtx-cu13 is not installed")
    assert main(["build", str(tiny_bundle), "--target", "tensorrt-rtx", "--compute-capability", CC, "--precision", "int8"]) == 2
    assert "run `fusionrt calibrate` first" in capsys.readouterr().err
