"""The one resolver: which file, float and hints each backend runs for a precision, and whose policy applies. The
backends, calibration, `fusionrt build` and `fusionrt triton` all read it, so they cannot disagree."""

import pytest

from fusionrt.runtime.errors import BackendUnavailable, InputError
from fusionrt.runtime.resolve import resolve, target_of


def test_onnxruntime_cpu_runs_fp16_as_its_fp32_file_and_int8_as_the_cpu_flavour():
    fp32, fp16, int8 = (resolve("onnxruntime", p, "cpu") for p in ("fp32", "fp16", "int8"))
    assert fp16.key == fp32.key and fp16.flavour == "fp32"  # no FP16 math on x86: the same computation
    assert (int8.target, int8.flavour, int8.float_precision) == ("int8-cpu", "int8-cpu", "fp32")


def test_the_tensorrt_provider_runs_int8_with_fp16_as_int8_trt_is_judged():
    int8 = resolve("onnxruntime", "int8", "tensorrt")
    assert int8.target == "int8-trt" and int8.flavour == "int8-trt" and int8.float_precision == "fp16"
    assert int8.hints == {"trt_fp16_enable": True, "trt_int8_enable": True}
    assert resolve("onnxruntime", "fp32", "tensorrt").hints == {"trt_fp16_enable": False, "trt_int8_enable": False}
    cuda = resolve("onnxruntime", "int8", "cuda")  # the judged graph itself: Q/DQ on its FP16 base
    assert (cuda.target, cuda.flavour, cuda.float_precision) == ("int8-trt", "int8-trt-fp16", "fp16")
    assert resolve("onnxruntime", "int8", "cuda", available=("fp32", "int8-trt")).flavour == "int8-trt"


@pytest.mark.parametrize("bf16, half", [(True, "bf16"), (False, "fp32")])
def test_openvino_uses_the_cpus_16_bit_float_and_never_another_targets_policy(bf16, half):
    fp32, fp16, int8 = (resolve("openvino", p, "CPU", bf16=bf16) for p in ("fp32", "fp16", "int8"))
    assert fp32.hints == {"INFERENCE_PRECISION_HINT": "f32"} and fp32.float_precision == "fp32"
    assert fp16.flavour == "fp32" and fp16.float_precision == half
    assert int8.target == "int8-ov" and int8.flavour == "int8-ov" and int8.float_precision == half  # NNCF's IR
    no_ir = resolve("openvino", "int8", "CPU", bf16=bf16, available=("fp32", "int8-trt"))
    assert (no_ir.target, no_ir.flavour) == ("int8-ov", "int8-trt")  # a bundle calibrated without nncf: the Q/DQ
    assert fp16.hints == int8.hints == {"INFERENCE_PRECISION_HINT": {"bf16": "bf16", "fp32": "f32"}[half]}
    assert resolve("openvino", "fp16", "GPU").hints == {"INFERENCE_PRECISION_HINT": "f16"}


def test_tensorrt_strongly_typed_builds_from_the_fp16_base_and_10x_sets_flags():
    strong = resolve("tensorrt", "int8", strongly_typed=True)
    assert (strong.flavour, strong.float_precision, strong.hints["builder_flags"]) == ("int8-trt-fp16", "fp16", ())
    weak = resolve("tensorrt", "int8", strongly_typed=False)
    assert (weak.flavour, weak.hints["builder_flags"]) == ("int8-trt", ("INT8", "FP16"))
    assert resolve("tensorrt", "fp16", strongly_typed=False).flavour == "fp32"
    assert resolve("tensorrt_rtx", "fp16").flavour == "fp16"


def test_targets_and_refusals():
    assert [target_of(b, d) for b, d in (("onnxruntime", "cpu"), ("onnxruntime", "tensorrt"), ("openvino", None),
                                         ("tensorrt", None))] == ["int8-cpu", "int8-trt", "int8-ov", "int8-trt"]
    with pytest.raises(InputError, match="precision: expected one of"):
        resolve("onnxruntime", "int4")
    with pytest.raises(BackendUnavailable, match="device 'npu' unknown"):
        resolve("onnxruntime", "fp32", "npu")


def test_every_consumer_reads_the_resolver(calibrated, tmp_path):
    """The backends open, `fusionrt triton` copies and the TensorRT builder builds from what the resolver names."""
    from fusionrt.runtime.backends.onnxruntime import OnnxRuntimeBackend, OnnxRuntimeOptions
    from fusionrt.runtime.backends.openvino import OpenVINOBackend, OpenVINOOptions
    from fusionrt.runtime.backends.trt_compat import TrtApi
    from fusionrt.runtime.bundle import Bundle
    from fusionrt.serving.repository import RepositoryOptions, write_repository

    files = Bundle.open(calibrated[0]).manifest.components["image_encoder"].files
    assert OnnxRuntimeBackend.execution("int8", OnnxRuntimeOptions(), files) == resolve("onnxruntime", "int8", "cpu")
    assert OpenVINOBackend.execution("fp16", OpenVINOOptions(), files) == resolve("openvino", "fp16", "CPU")
    summary = write_repository(calibrated[0], tmp_path / "repo", RepositoryOptions(platform="openvino",
                                                                                 precision="fp16"))
    config = (tmp_path / "repo" / "image_encoder" / "config.pbtxt").read_text()
    hint = resolve("openvino", "fp16", "CPU").hints["INFERENCE_PRECISION_HINT"]
    assert f'string_value: "{hint}"' in config and summary["precision"]["image_encoder"] == "fp16"
    from packaging.version import Version

    v10 = TrtApi("tensorrt", object(), Version("10.9"))
    assert v10.onnx_flavour("int8", files) == resolve("tensorrt", "int8", strongly_typed=False).flavour


def test_an_int8_ov_policy_keeps_fp32_under_its_int8_parts_where_it_says_so():
    kept = resolve("openvino", "int8", "CPU", bf16=True, int8_float="fp32")
    assert kept.float_precision == "fp32" and kept.hints == {"INFERENCE_PRECISION_HINT": "f32"}
    assert kept.key != resolve("openvino", "int8", "CPU", bf16=True).key  # judged apart from BF16 under INT8
    assert resolve("openvino", "int8", "CPU", bf16=True, int8_float="bf16").float_precision == "bf16"
    assert resolve("openvino", "int8", "CPU", bf16=False, int8_float="bf16").float_precision == "fp32"  # no BF16 here
    assert resolve("openvino", "fp16", "CPU", bf16=True, int8_float="fp32").float_precision == "bf16"  # fp16 is fp16
    assert resolve("openvino", "int8", "GPU", int8_float="fp32").float_precision == "fp16"  # a CPU policy's float
    with pytest.raises(InputError, match="int8_float: expected None or one of"):
        resolve("openvino", "int8", "CPU", int8_float="f32")


@pytest.mark.parametrize("int8_float, hint", [("fp32", "f32"), ("bf16", "bf16"), ("", "bf16")])
def test_every_consumer_runs_the_float_under_int8_the_policy_names(calibrated, tmp_path, monkeypatch, int8_float,
                                                                    hint):
    """On a CPU with BF16: the embedded OpenVINO backend, the tuner's part keys and `fusionrt triton` all run the
    float under INT8 parts that the int8-ov policy was judged with (a policy from before it was recorded: BF16)."""
    import json
    import shutil

    from fusionrt.runtime import cpu
    from fusionrt.runtime.backends.openvino import OpenVINOBackend, OpenVINOOptions
    from fusionrt.runtime.bundle import Bundle
    from fusionrt.runtime.tune import _part_key
    from fusionrt.serving.repository import RepositoryOptions, write_repository

    monkeypatch.setattr(cpu, "cpu_kind", lambda: cpu.CpuKind("GenuineIntel", "Xeon", 2, True, True, True, True, True))
    folder = tmp_path / "bundle"
    shutil.copytree(calibrated[0], folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["policies"]["int8-ov"].pop("int8_float", None)
    if int8_float:
        manifest["policies"]["int8-ov"]["int8_float"] = int8_float
    (folder / "manifest.json").write_text(json.dumps(manifest))
    bundle = Bundle.open(folder)
    assert bundle.manifest.int8_float_for("int8-ov") == (int8_float or None)
    execution = OpenVINOBackend.execution_in(bundle, "text_encoder", "int8", OpenVINOOptions())
    assert execution.hints == {"INFERENCE_PRECISION_HINT": hint}
    assert f"'{hint}'" in _part_key(OpenVINOBackend, OpenVINOOptions(), bundle, "text_encoder", "int8")
    write_repository(bundle, tmp_path / "repo", RepositoryOptions(platform="openvino", precision="int8"))
    config = (tmp_path / "repo" / "text_encoder" / "config.pbtxt").read_text()
    assert f'string_value: "{hint}"' in config
    fp16 = OpenVINOBackend.execution_in(bundle, "text_encoder", "fp16", OpenVINOOptions())
    assert fp16.hints == {"INFERENCE_PRECISION_HINT": "bf16"}  # the policy's float is the one under INT8 only
