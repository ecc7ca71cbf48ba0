import numpy as np
import pytest

from fusionrt.runtime.errors import BackendUnavailable, InputError
from fusionrt.runtime.pipeline import Pipeline, softmax
from fusionrt.runtime.precision import parse_precision


def test_concurrent_and_sequential_agree(tiny_bundle, shape_data):
    from fusionrt.calibration.dataset import LabeledDataset

    data = LabeledDataset.read(shape_data[1])
    images, texts = [s.image for s in data], [s.text for s in data]
    with Pipeline.load(tiny_bundle, backend="onnxruntime") as conc, \
            Pipeline.load(tiny_bundle, backend="onnxruntime", concurrent=False) as seq:
        a = conc.logits(*conc.prepare(images, texts))
        b = seq.logits(*seq.prepare(images, texts))
        assert conc.timings.branches_ms > 0 and conc.timings.head_ms > 0
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


def test_accepts_bgr_arrays_and_paths(tiny_bundle, shape_data):
    import cv2
    from fusionrt.calibration.dataset import LabeledDataset

    sample = LabeledDataset.read(shape_data[1])[0]
    with Pipeline.load(tiny_bundle) as pipe:
        from_path = pipe.classify(sample.image, sample.text)
        from_array = pipe.classify(cv2.imread(str(sample.image)), sample.text)
    assert from_path.label == from_array.label
    np.testing.assert_allclose(from_path.probs, from_array.probs, atol=1e-6)


def test_bad_inputs(tiny_bundle):
    with Pipeline.load(tiny_bundle) as pipe:
        with pytest.raises(InputError, match="as many texts as images"):
            pipe.classify_batch([np.zeros((8, 8, 3), np.uint8)], ["a", "b"])
        with pytest.raises(InputError, match="non-empty text"):
            pipe.classify(np.zeros((8, 8, 3), np.uint8), "")
        with pytest.raises(InputError, match="expected dtype float32"):
            pipe.backends["fusion_head"].infer({"image_features": np.zeros((1, 16), np.float64),
                                                "text_features": np.zeros((1, 32), np.float32)})


def test_missing_int8_files_explain_how_to_get_them(tiny_bundle):
    with pytest.raises(BackendUnavailable, match="fusionrt calibrate"):
        Pipeline.load(tiny_bundle, precision="int8")


def test_unknown_backend_and_precision():
    with pytest.raises(BackendUnavailable, match="unknown backend 'nope'"):
        Pipeline.load("/nonexistent", backend="nope") if False else __import__(
            "fusionrt.runtime.backends", fromlist=["x"]).backend_module("nope")
    with pytest.raises(InputError, match="unknown part 'audio'"):
        parse_precision("audio=int8")
    assert parse_precision("image=int8,head=fp16") == {
        "image_encoder": "int8", "text_encoder": "fp32", "fusion_head": "fp16"}


def test_softmax_is_stable():
    p = softmax(np.array([[1000.0, 0.0], [0.0, 0.0]]))
    np.testing.assert_allclose(p, [[1, 0], [0.5, 0.5]])
