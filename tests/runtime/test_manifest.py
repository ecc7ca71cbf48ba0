import json

import pytest

from fusionrt.runtime.bundle import Bundle
from fusionrt.runtime.errors import BundleError
from fusionrt.runtime.manifest import Manifest


def test_manifest_round_trip(tiny_bundle):
    manifest = Manifest.read(tiny_bundle)
    again = Manifest.from_dict(json.loads(json.dumps(manifest.to_dict())))
    assert again == manifest
    assert set(manifest.files()) == {"tokenizer.json", "image_encoder.onnx", "text_encoder.onnx", "fusion_head.onnx"}


def test_manifest_records_what_issue_asks(tiny_bundle):
    data = json.loads((tiny_bundle / "manifest.json").read_text())
    assert data["labels"] == ["blue", "green", "red"]
    assert data["preprocess"]["height"] == 32
    assert data["tokenizer"]["file"] == "tokenizer.json"
    text = data["components"]["text_encoder"]
    assert text["inputs"][0] == {"name": "input_ids", "dtype": "int64", "shape": ["batch", "sequence"]}
    assert data["profile"] == {"batch": [1, 8, 32], "seq": [1, 32, 32]}  # text up to the tiny max_seq_len
    assert data["parity"]["max_abs_logit_diff"] <= 1e-4
    assert {"torch", "onnx", "onnxruntime", "fusionrt"} <= set(data["producer"])
    assert all(len(sha) == 64 for sha in data["files"].values())


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.pop("labels"), "expected key 'labels'"),
        (lambda d: d.update(schema_version=99), "schema_version 1 expected, found 99"),
        (lambda d: d["components"].pop("fusion_head"), "components ['fusion_head'] missing"),
        (lambda d: d["components"]["image_encoder"]["inputs"][0].update(dtype="float99"), "dtype must be one of"),
        (lambda d: d.update(profile={"batch": [8, 1, 32], "seq": [1, 1, 1]}), "profile.batch must be"),
        (lambda d: d.update(precision={"image_encoder": "int4"}), "precision entry image_encoder=int4"),
        (lambda d: d.update(policies={"int8-gpu": {"precision": {}}}), "policies entry 'int8-gpu' invalid"),
        (lambda d: d.update(policies={"int8-trt": {"precision": {"head": "int8"}}}),
         "policies.int8-trt.precision entry head=int8"),
    ],
)
def test_bad_manifest_is_refused_with_reason(tiny_bundle, tmp_path, edit, message):
    data = json.loads((tiny_bundle / "manifest.json").read_text())
    edit(data)
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Manifest.read(tmp_path)


def test_not_json_and_missing_manifest(tmp_path):
    with pytest.raises(BundleError, match="no manifest.json"):
        Bundle.open(tmp_path)
    (tmp_path / "manifest.json").write_text("{ not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        Bundle.open(tmp_path)
    with pytest.raises(BundleError, match="does not exist"):
        Bundle.open(tmp_path / "nope")


def test_changed_file_fails_sha_check(tiny_bundle, tmp_path):
    import shutil

    copy = tmp_path / "b"
    shutil.copytree(tiny_bundle, copy)
    (copy / "fusion_head.onnx").write_bytes(b"garbage")
    with pytest.raises(BundleError, match="does not match the sha256"):
        Bundle.open(copy).verify()
    (copy / "fusion_head.onnx").unlink()
    with pytest.raises(BundleError, match="is missing"):
        Bundle.open(copy).verify()


def test_policy_per_target_round_trips_and_is_never_borrowed(tiny_bundle):
    import dataclasses

    from fusionrt.runtime.manifest import Candidate, Policy

    manifest = Manifest.read(tiny_bundle)
    fp32 = {c: "fp32" for c in manifest.components}
    assert manifest.precision_for("int8-trt") == fp32  # not calibrated: FP32, the reference
    trt = {"image_encoder": "int8", "text_encoder": "fp16", "fusion_head": "int8"}
    kept = {"image_encoder": ({"node": "/stem/Conv", "why": "per-layer search: sensitivity rank 1"},)}
    candidate = Candidate(trt, 0.995, 1, 191, True, 1e-6, 12.5)
    edited = dataclasses.replace(manifest, policies={"int8-trt": Policy(trt, "measured", kept, (candidate,))})
    again = Manifest.from_dict(json.loads(json.dumps(edited.to_dict())))
    assert again == edited and again.candidates_for("int8-trt") == (candidate,)
    assert again.precision_for("int8-trt") == trt and again.reason_for("int8-trt") == "measured"
    # OpenVINO's kernels never borrow TensorRT's judgement (it was judged in FP16, on other arithmetic)
    assert again.precision_for("int8-ov") == fp32 and "no calibrated policy" in again.reason_for("int8-ov")
    assert again.precision_for("int8-cpu") == fp32 and again.candidates_for("int8-cpu") == ()
    broken = edited.to_dict()
    broken["policies"]["int8-trt"]["kept_float"] = {"image_encoder": ["/stem/Conv"]}
    with pytest.raises(BundleError, match=r"kept_float must map components to lists of \{node, why\}"):
        Manifest.from_dict(broken)
    broken = edited.to_dict()
    broken["policies"]["int8-trt"]["candidates"][0]["batch_invariant"] = "yes"
    with pytest.raises(BundleError, match=r"candidates.batch_invariant to be bool"):
        Manifest.from_dict(broken)


def test_the_float_under_int8_ov_parts_round_trips_and_a_bad_one_is_refused(tiny_bundle):
    import dataclasses

    from fusionrt.runtime.manifest import Policy

    manifest = Manifest.read(tiny_bundle)
    int8 = {c: "int8" for c in manifest.components}
    edited = dataclasses.replace(manifest, policies={"int8-ov": Policy(int8, "judged", int8_float="fp32")})
    again = Manifest.from_dict(json.loads(json.dumps(edited.to_dict())))
    assert again == edited and again.int8_float_for("int8-ov") == "fp32"
    assert again.int8_float_for("int8-cpu") is None  # no policy: the resolver's default
    older = edited.to_dict()
    del older["policies"]["int8-ov"]["int8_float"]  # calibrated before the float was judged apart
    assert Manifest.from_dict(older).int8_float_for("int8-ov") is None
    older["policies"]["int8-ov"]["int8_float"] = "f32"
    with pytest.raises(BundleError, match=r"int8_float expected 'fp32' or 'bf16', found 'f32'"):
        Manifest.from_dict(older)


def test_a_policy_written_before_portability_holds_for_its_kind_of_cpu(tiny_bundle):
    """Bundles calibrated with 8-bit int8-cpu weights (whose sums saturate without VNNI) record the CPU that judged
    them; read back, their CPU policies say they are not portable."""
    data = json.loads((tiny_bundle / "manifest.json").read_text())
    data["calibration"] = {"cpu": "Some Xeon", "cpu_vnni": True}
    data["policies"] = {t: {"precision": {"image_encoder": "int8", "text_encoder": "int8", "fusion_head": "int8"},
                            "reason": "old"} for t in ("int8-cpu", "int8-trt")}
    manifest = Manifest.from_dict(data)
    assert not manifest.policies["int8-cpu"].portable and manifest.policies["int8-trt"].portable
    assert manifest.policies["int8-cpu"].measured_on == {"label": "Some Xeon", "vnni": True}
