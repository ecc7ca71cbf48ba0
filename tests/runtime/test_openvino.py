"""The OpenVINO backend on the same bundle: FP32 logits as ONNX Runtime's, both branches at once through an
asynchronous infer request, the text cache and streaming unchanged; its precisions are judged on its own kernels
(tests/calibration/test_judged_is_what_runs.py) and never borrowed."""

import numpy as np
import pytest

from fusionrt.data.dataset import LabeledDataset
from fusionrt.runtime.cpu import cpu_kind
from fusionrt.runtime.errors import BackendUnavailable
from fusionrt.runtime.pipeline import Pipeline
from fusionrt.bundling import save_manifest


def _data(path):
    data = LabeledDataset.read(path)
    return [s.image for s in data], [s.text for s in data]


@pytest.mark.parametrize("concurrent", [True, False])
def test_fp32_matches_onnxruntime(tiny_bundle, shape_data, concurrent):
    images, texts = _data(shape_data[1])
    with Pipeline.load(tiny_bundle, backend="onnxruntime") as ref:
        want = ref.logits(*ref.prepare(images, texts))
    with Pipeline.load(tiny_bundle, backend="openvino", concurrent=concurrent) as pipe:
        assert pipe.backend_name == "openvino" and pipe.options.precision_hint is None  # fp32 parts: f32 forced
        assert type(pipe._executor).__name__ == ("OpenVINOExecutor" if concurrent else "BranchExecutor")
        got = pipe.logits(*pipe.prepare(images, texts))
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
        assert pipe.timings.image_ms > 0 and pipe.timings.text_ms > 0 and pipe.timings.head_ms > 0
        first = pipe.infer(*pipe.prepare(images[:3], texts[:3]))  # the text cache: a miss, then a hit
        again = pipe.infer(*pipe.prepare(images[:3], texts[:3]))
        assert not first.text_cached and again.text_cached and again.timings.text_ms == 0
        np.testing.assert_allclose(again.logits, want[:3], rtol=1e-4, atol=1e-4)


def test_streaming_and_bf16_run_on_openvino(tiny_bundle):
    frames = [np.full((32, 32, 3), v, np.uint8) for v in (30, 90, 150, 210)]
    with Pipeline.load(tiny_bundle, backend="openvino", precision="fp16", threads=1) as pipe:  # BF16 on this CPU
        results = list(pipe.stream(frames, "a red circle", policy="all"))
        assert [r.index for r in results] == [0, 1, 2, 3] and results[-1].text_cached
        assert all(np.isfinite(r.prediction.probs).all() for r in results)


def test_a_bundle_calibrated_without_openvino_runs_fp32_there_and_says_why(calibrated, tmp_path):
    """OpenVINO never borrows int8-trt's judgement (made in FP16, on TensorRT's arithmetic): without an int8-ov
    policy its precision is FP32, and the reason says so."""
    import dataclasses
    import shutil

    from fusionrt.runtime.bundle import Bundle

    bundle = Bundle.open(shutil.copytree(calibrated[0], tmp_path / "bundle"))
    policies = {t: p for t, p in bundle.manifest.policies.items() if t != "int8-ov"}
    save_manifest(bundle, dataclasses.replace(bundle.manifest, policies=policies))
    with Pipeline.load(bundle.root, backend="openvino", tune=False) as pipe:
        assert set(pipe.precision.values()) == {"fp32"} and "no calibrated policy" in pipe.precision_reason


def test_a_bundle_without_nncfs_flavour_runs_the_qdq_files_and_info_says_why(calibrated, tmp_path, monkeypatch,
                                                                              capsys):
    """A bundle calibrated where nncf was not installed has no int8-ov files: OpenVINO's int8 runs the int8-trt Q/DQ
    ONNX (what such a calibration judged), and `fusionrt info` says so and how to get the faster flavour."""
    import dataclasses
    import json
    import shutil

    from fusionrt.cli import main
    from fusionrt.runtime.backends.openvino import OpenVINOBackend
    from fusionrt.runtime.bundle import Bundle

    bundle = Bundle.open(shutil.copytree(calibrated[0], tmp_path / "bundle"))
    m = bundle.manifest
    components = {c: dataclasses.replace(comp, files={k: v for k, v in comp.files.items() if k != "int8-ov"})
                  for c, comp in m.components.items()}
    save_manifest(bundle, dataclasses.replace(m, components=components))
    ran, load = [], OpenVINOBackend.load.__func__
    monkeypatch.setattr(OpenVINOBackend, "load", classmethod(
        lambda cls, model, comp, execution, *a, **k: ran.append(execution.flavour) or load(cls, model, comp, execution,
                                                                                           *a, **k)))
    with Pipeline.load(bundle.root, backend="openvino", precision="int8", tune=False) as pipe:
        assert np.isfinite(pipe.classify(np.zeros((32, 32, 3), np.uint8), "a red circle").probs).all()
    assert ran == ["int8-trt"] * 3
    assert main(["info", str(bundle.root), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)["openvino_int8"]
    assert info["flavour"] == "int8-trt" and "no int8-ov flavour" in info["why"] and "fusionrt[openvino]" in info["why"]
    assert main(["info", str(calibrated[0]), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)["openvino_int8"]
    assert shown["flavour"] == "int8-ov"
    from fusionrt.runtime.resolve import resolve  # and the float OpenVINO runs under it here

    assert shown["cpu_float"] == resolve("openvino", "fp16", "CPU").float_precision == (
        "bf16" if cpu_kind().for_onednn().bf16 else "fp32")
    policy = Bundle.open(calibrated[0]).manifest.policies["int8-ov"]  # under INT8: the float its policy judged
    assert shown["int8_float"] == ("bf16" if policy.int8_float == "bf16" and shown["cpu_float"] == "bf16" else "fp32")


@pytest.mark.parametrize("concurrent", [True, False])
def test_concurrent_branches_are_not_pinned_to_the_same_cores(tiny_bundle, concurrent):
    from fusionrt.runtime.backends.openvino import OpenVINOOptions

    assert OpenVINOOptions(pinning=True).for_branches(True).pinning is True  # the user's choice stands
    with Pipeline.load(tiny_bundle, backend="openvino", concurrent=concurrent) as pipe:
        assert pipe.options.pinning is (False if concurrent else None)
        pinned = {c: b.compiled.get_property("ENABLE_CPU_PINNING") for c, b in pipe.backends.items()}
        if concurrent:  # what OpenVINO was told, not only what the options say
            assert not any(pinned.values()), pinned
    with Pipeline.load(tiny_bundle, backend="openvino", concurrent=concurrent, pinning=True) as pipe:
        assert all(b.compiled.get_property("ENABLE_CPU_PINNING") for b in pipe.backends.values())


@pytest.mark.parametrize("concurrent", [True, False])
def test_shared_inputs_and_outputs_leave_the_callers_arrays_alone(tiny_bundle, shape_data, concurrent):
    """The backend lends OpenVINO the caller's arrays and reads its results in place: a result must survive the next
    call, an input must not change, and a strided or read-only input gives the same answer as a contiguous one."""
    images, texts = _data(shape_data[1])
    with Pipeline.load(tiny_bundle, backend="openvino", concurrent=concurrent) as pipe:
        pixels, tokens = pipe.prepare(images[:4], texts[:4])
        kept = pixels.copy()
        first = pipe.logits(pixels, tokens)
        first_copy = first.copy()
        other = pipe.logits(pixels[::-1].copy(), {k: v[::-1].copy() for k, v in tokens.items()})
        assert not np.array_equal(other, first_copy)  # the second call computed something else ...
        np.testing.assert_array_equal(first, first_copy)  # ... and left the first call's logits as they were
        np.testing.assert_array_equal(pixels, kept)
        wide = np.zeros(pixels.shape[:-1] + (2 * pixels.shape[-1],), pixels.dtype)
        wide[..., ::2] = pixels
        strided, frozen = wide[..., ::2], pixels.copy()
        frozen.flags.writeable = False
        np.testing.assert_array_equal(pipe.logits(strided, tokens), first)
        np.testing.assert_array_equal(pipe.logits(frozen, tokens), first)


def _takes(bundle, hint: str) -> str:
    """The float OpenVINO's CPU plugin takes for `hint` here (it takes one it cannot run as f32)."""
    from fusionrt.runtime.backends.openvino import compile_model
    from fusionrt.runtime.bundle import Bundle

    opened = Bundle.open(bundle)
    head = opened.file(opened.manifest.components["fusion_head"].files["fp32"].path)
    return compile_model(head, "CPU", hint).get_property("INFERENCE_PRECISION_HINT").get_type_name()


def test_the_resolvers_cpu_float_is_the_one_openvino_runs(tiny_bundle):
    """The resolver names OpenVINO's 16-bit float from the CPU's flags (under ONEDNN_MAX_CPU_ISA): OpenVINO itself must
    run that float, or what calibration judged as 'bf16' would be FP32 here (and unjudged BF16 elsewhere)."""
    from fusionrt.runtime.resolve import resolve

    hint = resolve("openvino", "fp16", "CPU").hints["INFERENCE_PRECISION_HINT"]
    assert _takes(tiny_bundle, hint) == hint
    with Pipeline.load(tiny_bundle, backend="openvino", precision="fp16", tune=False) as pipe:
        assert {b.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
                for b in pipe.backends.values()} == {hint}


@pytest.mark.parametrize("hint", ["bf16", "f16"])
def test_a_float_openvino_would_swap_for_fp32_is_refused(tiny_bundle, hint):
    """OpenVINO runs a float the CPU lacks as FP32 without a word: asked for one, the backend refuses and says what
    to ask for; where the CPU has it, that float is what runs."""
    if _takes(tiny_bundle, hint) != hint:
        with pytest.raises(BackendUnavailable, match=f"OpenVINO would run .* in f32, not the {hint} asked: this CPU "
                                                     r".* precision_hint='f32'"):
            Pipeline.load(tiny_bundle, backend="openvino", precision_hint=hint, tune=False)
    else:
        with Pipeline.load(tiny_bundle, backend="openvino", precision_hint=hint, tune=False) as pipe:
            assert {b.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
                    for b in pipe.backends.values()} == {hint}


def test_openvino_honours_the_onednn_isa_limit_the_cpu_kind_models(tiny_bundle):
    """CpuKind.for_onednn assumes OpenVINO's math kernels obey ONEDNN_MAX_CPU_ISA (read once, at first use: a fresh
    process): under SSE41 no convolution may run AVX2 or AVX-512, and the kind says the same. (OpenVINO 2026.4's
    Reduce and MVN kernels still report AVX2 under SSE41: not the INT8 or float math the limit is for.)"""
    import os
    import subprocess
    import sys

    from fusionrt.runtime.bundle import Bundle

    opened = Bundle.open(tiny_bundle)
    image = opened.file(opened.manifest.components["image_encoder"].files["fp32"].path)
    code = ("import sys, numpy as np, openvino as ov; from fusionrt.runtime.cpu import cpu_kind; core = ov.Core();"
            "m = core.read_model(sys.argv[1]); c = core.compile_model(m, 'CPU', {'INFERENCE_PRECISION_HINT': 'f32'});"
            "shape = [1 if d.is_dynamic else d.get_length() for d in m.input(0).get_partial_shape()];"
            "c.create_infer_request().infer({0: np.zeros(shape, np.float32)});"  # dynamic shapes: kernels picked now
            "info = [op.get_rt_info() for op in c.get_runtime_model().get_ops()];"
            "kinds = {i['primitiveType'].astype(str) for i in info if i['layerType'].astype(str) == 'Convolution'};"
            "print(cpu_kind().for_onednn().avx2, ' '.join(sorted(kinds)))")

    def kernels(limit):
        env = {k: v for k, v in os.environ.items() if k != "ONEDNN_MAX_CPU_ISA"}
        env.update({"ONEDNN_MAX_CPU_ISA": limit} if limit else {})
        out = subprocess.run([sys.executable, "-c", code, str(image)], env=env, capture_output=True, text=True,
                             check=True).stdout.split()
        return out[0] == "True", out[1:]

    avx2, free = kernels("")
    limited_avx2, limited = kernels("SSE41")
    assert limited and not limited_avx2 and not any("avx2" in k or "avx512" in k for k in limited), limited
    if avx2:  # the limit took effect: the same convolutions ran AVX2 (or AVX-512) kernels without it
        assert any("avx2" in k or "avx512" in k for k in free), free


def test_a_device_this_machine_lacks_is_refused(tiny_bundle):
    with pytest.raises(BackendUnavailable, match=r"OpenVINO device 'NPU' not found: this machine has \['CPU'"):
        Pipeline.load(tiny_bundle, backend="openvino", device="NPU")


def test_auto_measures_the_installed_cpu_backends_and_says_what_it_measured(calibrated, capsys):
    import json

    from fusionrt.cli import main

    bundle, _, _, test = calibrated
    with Pipeline.load(bundle) as pipe:
        measured = pipe.tuning.measured
        assert {m.backend for m in measured} == {"openvino", "onnxruntime"}
        allowed = [m for m in measured if not m.excluded]
        fastest = min(allowed, key=lambda m: m.score)
        assert (pipe.backend_name, pipe.precision) == (fastest.backend, dict(fastest.precision))
        assert pipe.backend_reason.startswith("auto: measured here") and "tensorrt cannot run here" in pipe.backend_reason
    assert main(["classify", str(bundle), "--image", str(LabeledDataset.read(test)[0].image), "--text", "a red circle",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["backend"] == fastest.backend and out["tuning"]["cached"]  # measured once, then from the cache
    assert {m["backend"] for m in out["tuning"]["measured"]} == {"openvino", "onnxruntime"}


def test_a_missing_openvino_names_the_extra_to_install(tiny_bundle, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_openvino(name, *args, **kwargs):
        if name == "openvino" or name.startswith("openvino."):
            raise ImportError("No module named 'openvino'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_openvino)
    monkeypatch.delitem(__import__("sys").modules, "openvino", raising=False)
    with pytest.raises(BackendUnavailable, match=r"pip install 'fusionrt\[openvino\]'"):
        Pipeline.load(tiny_bundle, backend="openvino")
