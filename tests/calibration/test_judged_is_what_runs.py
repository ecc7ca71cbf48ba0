"""What calibration judged is what runs: every candidate it recorded for a target that runs here gives, loaded in a
Pipeline on that target's backend, exactly the agreement with FP32 the manifest says, on the report split (the same
files, kernels and hints, from the one resolver). No tolerance between implementations is assumed."""

import numpy as np
import pytest

from fusionrt.calibration.reader import CalibrationSource, split_held_out
from fusionrt.data.dataset import LabeledDataset
from fusionrt.runtime.bundle import Bundle
from fusionrt.runtime.pipeline import Pipeline


def _predictions(bundle, backend, precision, feeds) -> np.ndarray:
    with Pipeline.load(bundle.root, backend=backend, precision=precision, concurrent=False) as pipe:
        return np.concatenate([pipe.logits(f[pipe.manifest.wiring.image_input], f) for f in feeds]).argmax(1)


@pytest.mark.parametrize("target, backend", [("int8-cpu", "onnxruntime"), ("int8-ov", "openvino")])
def test_every_recorded_candidate_agrees_with_fp32_as_recorded(calibrated, target, backend):
    bundle = Bundle.open(calibrated[0])
    report_split = split_held_out(LabeledDataset.read(calibrated[3]))[1]
    feeds = list(CalibrationSource(bundle, report_split, 8))
    fp32 = _predictions(bundle, "onnxruntime", "fp32", feeds)  # the reference calibration judges against
    candidates = bundle.manifest.candidates_for(target)
    assert candidates
    for candidate in candidates:
        got = _predictions(bundle, backend, dict(candidate.precision), feeds)
        assert candidate.samples == len(got)
        assert int((got != fp32).sum()) == candidate.flips, dict(candidate.precision)
        assert candidate.agreement == pytest.approx(float((got == fp32).mean()))
