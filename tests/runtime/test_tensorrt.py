"""TensorRT engines: built here on the CPU with TensorRT-RTX (its builder needs no GPU); running them needs one."""

import dataclasses
import shutil
from types import SimpleNamespace
from pathlib import Path

import numpy as np
import pytest
from packaging.version import Version

from fusionrt.runtime.backends.tensorrt import check_engine
from fusionrt.runtime.backends.trt_compat import TrtApi
from fusionrt.runtime.bundle import Bundle
from fusionrt.runtime.environment import cache_root
from fusionrt.runtime.errors import BackendUnavailable, EngineMismatch
from fusionrt.runtime.manifest import EngineRecord
from fusionrt.runtime.optional import is_available
from fusionrt.runtime.pipeline import Pipeline
from tests.hardware import gpu_count, needs_rtx


def _fake_api(product: str, version: str) -> TrtApi:
    flags = SimpleNamespace(FP16="FP16", INT8="INT8")
    return TrtApi(product, SimpleNamespace(BuilderFlag=flags), Version(version))


def test_version_differences_live_in_one_place():
    v10, v11, rtx = _fake_api("tensorrt", "10.13.3"), _fake_api("tensorrt", "11.1.0"), _fake_api("tensorrt_rtx", "1.7.1")
    assert [a.onnx_flavour("fp16") for a in (v10, v11, rtx)] == ["fp32", "fp16", "fp16"]
    assert {a.onnx_flavour("int8") for a in (v10, v11, rtx)} == {"int8-trt"}
    # strongly typed builders take the FP16-base Q/DQ graph where the bundle has it (10.x: the FP16 flag does that)
    both = ("int8-trt", "int8-trt-fp16")
    assert [a.onnx_flavour("int8", both) for a in (v10, v11, rtx)] == ["int8-trt", "int8-trt-fp16", "int8-trt-fp16"]
    assert [a.has_timing_cache for a in (v10, v11, rtx)] == [True, True, False]
    assert [a.builds_without_gpu for a in (v10, v11, rtx)] == [False, False, True]
    assert _fake_api("tensorrt", "10.9").version < _fake_api("tensorrt", "10.13").version  # not string order
    config = SimpleNamespace(flags=[], set_flag=lambda f: config.flags.append(f))
    v10.set_precision(config, "fp16")
    v10.set_precision(config, "int8")
    v11.set_precision(config, "fp16")
    # builder flags on 10.x only (INT8 with FP16 beside it: what the Q/DQ graph keeps float runs in FP16, not FP32);
    # 11.x reads the types from the ONNX
    assert config.flags == ["FP16", "INT8", "FP16"]


def test_engine_checked_against_library_and_gpu_before_deserializing():
    record = EngineRecord("engines/x/image_encoder.int8.plan", "0" * 64, "tensorrt", "10.13.3", "nvidia-h200-sm90", "9.0",
                          "int8", {"batch": [1, 8, 32], "seq": [1, 64, 128]}, "k")
    check_engine(record, _fake_api("tensorrt", "10.13.3"), "9.0", "NVIDIA H200")  # a match: no error
    with pytest.raises(EngineMismatch, match=r"version 10.13.3 \(running 11.1.0\).*fusionrt build BUNDLE --target tensorrt"):
        check_engine(record, _fake_api("tensorrt", "11.1.0"), "9.0", "NVIDIA H200")
    with pytest.raises(EngineMismatch, match=r"compute capability 9.0 \(this GPU, Jetson Orin, is 8.7\)"):
        check_engine(record, _fake_api("tensorrt", "10.13.3"), "8.7", "Jetson Orin")
    other = dataclasses.replace(record, product="tensorrt_rtx", version="1.7.1")
    with pytest.raises(EngineMismatch, match="product tensorrt_rtx"):
        check_engine(other, _fake_api("tensorrt", "10.13.3"), "9.0", "NVIDIA H200")


@pytest.mark.skipif(gpu_count() > 0, reason="checks the no-GPU message")
@needs_rtx
def test_running_engines_without_a_gpu_says_so(built):
    with pytest.raises(BackendUnavailable, match="no CUDA GPU found"):
        Pipeline.load(built[0], backend="tensorrt_rtx", precision="fp32")


@pytest.mark.skipif(gpu_count() == 0, reason="needs an NVIDIA GPU with TensorRT or TensorRT-RTX (none here)")
def test_engines_match_onnxruntime_on_a_gpu(calibrated, tmp_path):
    from fusionrt.engines.build import build_engines

    product = "tensorrt" if is_available("tensorrt") else "tensorrt_rtx"
    bundle = tmp_path / "bundle"
    shutil.copytree(calibrated[0], bundle)
    try:
        build_engines(bundle, product, "fp32")
    except BackendUnavailable as exc:  # e.g. TensorRT-RTX has no target for this GPU (sm90)
        pytest.skip(str(exc))
    from fusionrt.data.dataset import LabeledDataset

    data = LabeledDataset.read(calibrated[3])
    images, texts = [s.image for s in data], [s.text for s in data]
    with Pipeline.load(bundle, backend="onnxruntime", precision="fp32") as ref:
        expected = ref.logits(*ref.prepare(images, texts))
    for graphs in (False, True):
        with Pipeline.load(bundle, backend=product, precision="fp32", cuda_graphs=graphs) as pipe:
            pixels, tokens = pipe.prepare(images, texts)
            for _ in range(3):  # plain, capture, replay
                np.testing.assert_allclose(pipe.logits(pixels, tokens), expected, atol=1e-3)
            assert pipe.timings.image_ms > 0 and pipe.timings.text_ms > 0


def test_onnxruntime_gpu_provider_that_did_not_load_is_an_error(tiny_bundle):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers() and gpu_count():
        pytest.skip("CUDA loads here")
    with pytest.raises(BackendUnavailable, match=r"CUDAExecutionProvider.*did not load.*allow_fallback"):
        Pipeline.load(tiny_bundle, backend="onnxruntime", device="cuda")
    with Pipeline.load(tiny_bundle, backend="onnxruntime", device="cuda", allow_fallback=True) as pipe:
        assert pipe.backends["image_encoder"].providers == ["CPUExecutionProvider"]
        assert pipe.classify(np.zeros((32, 32, 3), np.uint8), "a red circle").label


def test_onnxruntime_tensorrt_ep_gets_the_manifest_profile_and_int8_for_qdq(tiny_bundle, tmp_path):
    from fusionrt.runtime.backends.onnxruntime import gpu_providers
    from fusionrt.runtime.resolve import resolve

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    opened = Bundle.open(bundle)
    model = (bundle / opened.manifest.components["text_encoder"].files["fp32"].path).read_bytes()
    (name, options), *rest = gpu_providers(resolve("onnxruntime", "int8", "tensorrt"), opened, "text_encoder", model)
    assert name == "TensorrtExecutionProvider" and rest == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    # the INT8 flag for the Q/DQ graph, and the FP16 flag for what it keeps float: what int8-trt is judged on
    assert options["trt_int8_enable"] and options["trt_fp16_enable"]
    # engines cached outside the bundle, per model content: a bundle never ships an engine ONNX Runtime would load
    cache = Path(options["trt_engine_cache_path"])
    assert cache.is_relative_to(cache_root() / "onnxruntime-tensorrt-ep") and not cache.is_relative_to(bundle)
    changed = gpu_providers(resolve("onnxruntime", "int8", "tensorrt"), opened, "text_encoder", model + b" ")
    assert changed[0][1]["trt_engine_cache_path"] != str(cache)
    # the tiny bundle's profile: batch 1:8:32, text 1:32:32 tokens (its max_seq_len)
    assert options["trt_profile_min_shapes"] == "input_ids:1x1,attention_mask:1x1"
    assert options["trt_profile_opt_shapes"] == "input_ids:8x32,attention_mask:8x32"
    assert options["trt_profile_max_shapes"] == "input_ids:32x32,attention_mask:32x32"
    (_, image), *_ = gpu_providers(resolve("onnxruntime", "fp16", "tensorrt"), opened, "image_encoder")
    assert image["trt_fp16_enable"] and not image["trt_int8_enable"]
    assert image["trt_profile_max_shapes"] == "pixel_values:32x3x32x32"
