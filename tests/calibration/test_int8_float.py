"""The float under int8-ov's INT8 parts: judged under FP32 and, where the CPU has BF16, under BF16 too; BF16 kept only
where its choice passes and runs clearly faster, else FP32, with the reason; and what the policy says is what the
runtime, the tuner and the Triton writer run."""

import dataclasses
import json
import shutil

import pytest

from fusionrt.calibration.int8_float import int8_floats, pick_int8_float
from fusionrt.calibration.judge import Judged
from fusionrt.runtime import cpu
from fusionrt.runtime.bundle import Bundle
from fusionrt.runtime.cpu import CpuKind, cpu_kind

XEON_BF16 = CpuKind("GenuineIntel", "Xeon", 2, True, True, True, True, False)


def _judged(precision, ms, passed=True, flips=0):
    outcome = {"top1_agreement": 1.0 - flips / 100, "flips": flips, "n": 100,
               "rule": f"{flips} flips" + (" > the noise band" if not passed else "")}
    return Judged(tuple(precision.split(",")), dict(outcome), dict(outcome), True, passed, ms / 1e3, 0.0, True)


INT8 = "int8,int8,fp32"


def test_without_bf16_only_fp32_is_judged_and_the_policy_says_why(monkeypatch):
    monkeypatch.setattr(cpu, "cpu_kind", lambda: dataclasses.replace(XEON_BF16, bf16=False))
    assert int8_floats() == ("fp32",)
    float_, why = pick_int8_float({"fp32": _judged(INT8, 10)}, {"fp32": [_judged(INT8, 10)]})
    assert float_ == "fp32" and "no BF16 kernels" in why


@pytest.mark.parametrize("limit, floats", [("", ("fp32", "bf16")), ("AVX512_CORE_VNNI", ("fp32",))])
def test_bf16_is_judged_where_openvinos_kernels_may_use_it(monkeypatch, limit, floats):
    monkeypatch.setattr(cpu, "cpu_kind", lambda: dataclasses.replace(XEON_BF16, isa_limit=limit))
    assert int8_floats() == floats


def test_bf16_is_kept_where_its_choice_passes_and_is_clearly_faster():
    fp32, bf16 = _judged(INT8, 10), _judged(INT8, 8)
    float_, why = pick_int8_float({"fp32": fp32, "bf16": bf16}, {"fp32": [fp32], "bf16": [bf16]})
    assert float_ == "bf16" and "8.0 ms" in why and "10.0 ms" in why
    within_noise = _judged(INT8, 9.7)
    assert pick_int8_float({"fp32": fp32, "bf16": within_noise}, {"fp32": [fp32], "bf16": [within_noise]})[0] == "fp32"


def test_where_bf16_flips_samples_the_policy_says_so_and_keeps_fp32():
    fp32 = _judged(INT8, 10)
    flipped = _judged(INT8, 8, passed=False, flips=7)  # the same configuration, BF16 under its INT8 parts
    fallback = _judged("int8,fp32,fp32", 12)  # what BF16 passes with: slower
    float_, why = pick_int8_float({"fp32": fp32, "bf16": fallback}, {"fp32": [fp32], "bf16": [flipped, fallback]})
    assert float_ == "fp32"
    assert "image=int8,text=int8,head=fp32 flipped 7 of 100 report samples" in why and "keep FP32" in why
    float_, why = pick_int8_float({"fp32": fp32, "bf16": None}, {"fp32": [fp32], "bf16": [flipped]})
    assert float_ == "fp32" and "flipped 7" in why


def test_a_bf16_choice_without_int8_does_not_decide_the_float_under_int8():
    fp32 = _judged("fp32,fp32,fp32", 10)
    half = _judged("fp16,fp16,fp16", 6)
    float_, why = pick_int8_float({"fp32": fp32, "bf16": half}, {"fp32": [fp32, half], "bf16": [half]})
    assert float_ == "fp32" and "no configuration with an INT8 part" in why


def _tiny_calibrated(calibrated, tmp_path, **kwargs):
    from fusionrt.calibration.calibrate import calibrate_bundle

    bundle = tmp_path / "bundle"
    shutil.copytree(calibrated[0], bundle)
    return bundle, calibrate_bundle(bundle, calibrated[2], calibrated[3], method="minmax", samples=16, **kwargs)


def test_calibration_records_the_float_it_judged(calibrated):
    pytest.importorskip("openvino", reason="the int8-ov policy is judged on OpenVINO (fusionrt[openvino])")
    policy = Bundle.open(calibrated[0]).manifest.policies["int8-ov"]
    assert policy.int8_float in int8_floats() and "under the INT8 parts" in policy.reason
    assert calibrated[1]["policy"]["int8-ov"]["int8_float"] == policy.int8_float
    floats = {row.get("int8_float") for row in calibrated[1]["end_to_end"] if row["target"] == "int8-ov"}
    assert floats == set(int8_floats())


def test_both_floats_are_judged_and_recorded_on_a_bf16_cpu(calibrated, tmp_path, monkeypatch):
    """Where this CPU has no BF16, OpenVINO is told it has (and runs FP32 for the BF16 asked, which its float check
    would refuse): the two-float path of calibration then runs end to end, on numbers alike under both floats."""
    pytest.importorskip("openvino", reason="the int8-ov policy is judged on OpenVINO (fusionrt[openvino])")
    pytest.importorskip("nncf", reason="NNCF (fusionrt[openvino]) writes the int8-ov flavour")
    emulated = not cpu_kind().for_onednn().bf16
    if emulated:
        import fusionrt.runtime.backends.openvino as openvino_backend

        monkeypatch.setattr(cpu, "cpu_kind", lambda: dataclasses.replace(cpu_kind(), bf16=True, isa_limit=""))
        monkeypatch.setattr(openvino_backend, "_check_float", lambda *a: None)
    bundle, report = _tiny_calibrated(calibrated, tmp_path, precision="int8", openvino_linear="conv")
    rows = {(r["config"], r.get("int8_float")): r for r in report["end_to_end"] if r["target"] == "int8-ov"}
    assert {f for _, f in rows} == {"fp32", "bf16"}
    # every configuration with an INT8 part twice, the rest (the same computation under both floats) once
    assert {c for c, f in rows if f == "bf16"} == {c for c, f in rows if f == "fp32" and "int8" in c} != set()
    assert {c for c, f in rows if f == "fp32"} - {c for c, f in rows if f == "bf16"} != set()
    if emulated:  # the same computation under both names: the same answers
        for (config, float_), row in rows.items():
            assert row["flips"] == rows[(config, "fp32")]["flips"], config
    policy = Bundle.open(bundle).manifest.policies["int8-ov"]
    assert policy.int8_float in ("fp32", "bf16") and report["policy"]["int8-ov"]["int8_float"] == policy.int8_float
    assert ("BF16 under the INT8 parts" if policy.int8_float == "bf16" else "FP32 under the INT8 parts") in policy.reason
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["policies"]["int8-ov"]["int8_float"] == policy.int8_float
