"""The int8-ov flavour: NNCF's INT8 of every part as OpenVINO IR, judged on OpenVINO's kernels like every target,
and what a bundle without it does on OpenVINO."""

import json

import pytest

from fusionrt.runtime.bundle import Bundle
from fusionrt.runtime.manifest import COMPONENTS

pytest.importorskip("nncf", reason="NNCF (fusionrt[openvino]) writes the int8-ov flavour")


def test_calibrate_writes_nncf_ir_hashed_and_contained(calibrated):
    bundle = Bundle.open(calibrated[0])
    for comp in COMPONENTS:
        record = bundle.manifest.components[comp].files["int8-ov"]
        assert record.path.endswith(".xml") and record.weights == record.path[:-4] + ".bin"
        assert bundle.manifest.files()[record.weights] == record.weights_sha256
        assert b"FakeQuantize" in bundle.read(record.path, record.sha256)  # NNCF's INT8, not a float copy
    assert bundle.verify()[record.weights] == "ok"


def test_the_openvino_policy_is_judged_on_nncfs_files_and_batch_invariant(calibrated):
    bundle, report = Bundle.open(calibrated[0]), calibrated[1]
    assert "NNCF" in report["measured_on"]["int8-ov"]
    rows = [r for r in report["end_to_end"] if r["target"] == "int8-ov"]
    every_int8 = next(r for r in rows if r["config"] == "image=int8,text=int8,head=int8")
    assert every_int8["batch_invariant"] and every_int8["n"] > 0
    assert every_int8["passed"] and every_int8["selection"]["passed"]  # within the criterion on both splits
    ov, trt = report["branches"]["int8-ov"], report["branches"]["int8-trt"]
    for encoder in ("image_encoder", "text_encoder"):  # close to FP32, and not the Q/DQ files OpenVINO ran before
        assert 0.95 < ov[encoder]["min"] < 1.0 and ov[encoder] != trt[encoder]
    policy = bundle.manifest.policies["int8-ov"]
    assert policy.candidates and all(c.batch_invariant for c in policy.candidates)
    assert "int8-ov" in report["fallback_search"]  # the per-layer search ran on OpenVINO too


def test_a_changed_weights_file_is_refused(calibrated, tmp_path):
    import shutil

    from fusionrt.runtime.errors import BundleError
    from fusionrt.runtime.pipeline import Pipeline

    copy = tmp_path / "b"
    shutil.copytree(calibrated[0], copy)
    record = Bundle.open(copy).manifest.components["fusion_head"].files["int8-ov"]
    path = copy / record.weights
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="does not match the sha256"):
        Pipeline.load(copy, backend="openvino", precision="int8", tune=False)
