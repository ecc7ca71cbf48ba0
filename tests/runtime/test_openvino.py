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
        assert pipe.backend_name == "openvino" and pipe.options.precision_hint == "f32"
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
    with Pipeline.load(tiny_bundle, backend="openvino", precision_hint="bf16", threads=1) as pipe:
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

    with Pipeline.load(bundle, backend="openvino") as pipe:
        assert pipe.precision == Bundle.open(bundle).manifest.precision_for("int8-trt")
    with Pipeline.load(bundle, backend="openvino", precision="int8") as pipe:
        got = pipe.logits(*pipe.prepare(images, texts))
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.9
    np.testing.assert_allclose(got, want, atol=0.05 * float(np.abs(want).max()))


def test_a_device_this_machine_lacks_is_refused(tiny_bundle):
    with pytest.raises(BackendUnavailable, match=r"OpenVINO device 'NPU' not found: this machine has \['CPU'"):
        Pipeline.load(tiny_bundle, backend="openvino", device="NPU")
