"""The OpenVINO backend on the same bundle: FP32 logits as ONNX Runtime's, both branches at once through an
asynchronous infer request, the text cache and streaming unchanged, INT8 from the bundle's Q/DQ flavour."""

import numpy as np
import pytest

from fusionrt.data.dataset import LabeledDataset
from fusionrt.runtime.errors import BackendUnavailable
from fusionrt.runtime.pipeline import Pipeline


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


def test_int8_runs_the_symmetric_qdq_flavour_under_its_policy(calibrated):
    bundle, _, _, test = calibrated
    images, texts = _data(test)
    with Pipeline.load(bundle, backend="onnxruntime", optimize=False, precision="int8", device="tensorrt",
                       allow_fallback=True) as ref:
        want = ref.logits(*ref.prepare(images, texts))  # the int8-trt Q/DQ as written, on ONNX Runtime
    from fusionrt.runtime.bundle import Bundle

    manifest = Bundle.open(bundle).manifest
    assert "int8-ov" in manifest.policies  # measured on OpenVINO's own kernels at calibration
    with Pipeline.load(bundle, backend="openvino") as pipe:
        assert pipe.precision == manifest.precision_for("int8-ov")
    with Pipeline.load(bundle, backend="openvino", precision="int8") as pipe:
        got = pipe.logits(*pipe.prepare(images, texts))
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.9
    np.testing.assert_allclose(got, want, atol=0.05 * float(np.abs(want).max()))


def test_a_device_this_machine_lacks_is_refused(tiny_bundle):
    with pytest.raises(BackendUnavailable, match=r"OpenVINO device 'NPU' not found: this machine has \['CPU'"):
        Pipeline.load(tiny_bundle, backend="openvino", device="NPU")


def test_auto_prefers_openvino_on_a_cpu_and_says_why(tiny_bundle, capsys):
    import json

    from fusionrt.cli import main
    from fusionrt.runtime.backends import choose_backend

    name, why = choose_backend("auto")
    assert name == "openvino" and "tensorrt cannot run here" in why  # no GPU here; openvino installed
    with Pipeline.load(tiny_bundle) as pipe:
        assert pipe.backend_name == "openvino" and pipe.backend_reason.startswith("auto: the first usable of")
    assert main(["classify", str(tiny_bundle), "--image", str(_data_image(tiny_bundle)), "--text", "a red circle",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["backend"] == "openvino" and "tensorrt_rtx" in out["backend_reason"]


def _data_image(tmp_bundle):
    import cv2

    path = tmp_bundle.parent / "frame.png"
    cv2.imwrite(str(path), np.full((32, 32, 3), 90, np.uint8))
    return path


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
