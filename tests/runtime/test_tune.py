"""Tuning on the loading machine: the fastest faithful configuration of the candidates calibration kept (and FP32),
measured here, batch invariance checked here, cached per bundle and machine; an explicit precision always wins."""

import dataclasses
import json
import shutil

import pytest

from fusionrt.runtime.backends.onnxruntime import OnnxRuntimeOptions
from fusionrt.runtime.bundle import Bundle
from fusionrt.runtime.pipeline import Pipeline
from fusionrt.runtime import tune as tuning

ORT = [("onnxruntime", OnnxRuntimeOptions().for_branches(True))]


def _fake_parts(times: dict, dependent=()):
    """A _measure that says each part at each precision takes times[precision] ms (batch 1) and 4x that (batch 8)."""
    calls = []

    def measure(bundle, jobs):
        found = []
        for kind, options, parts in jobs:
            calls.append(list(parts))
            out = {}
            for component, precision in parts:
                key = tuning._part_key(kind, options, bundle, component, precision)
                ms = times[precision] * (10 if component != "fusion_head" else 1)
                out[key] = {"ms": {1: ms, 8: 4 * ms}, "invariant": (component, precision) not in dependent,
                            "deviation": 0.0}
            found.append(out)
        return found

    return measure, calls


def test_the_fastest_allowed_candidate_wins_and_fp32_is_always_one(calibrated, monkeypatch):
    bundle = Bundle.open(calibrated[0])
    measure, _ = _fake_parts({"fp32": 3.0, "fp16": 3.0, "int8": 1.0}, dependent={("text_encoder", "int8")})
    monkeypatch.setattr(tuning, "_measure", measure)
    choice = tuning.tune(bundle, ORT, force=True)
    configs = [dict(m.precision) for m in choice.measured]
    assert {c: "fp32" for c in bundle.manifest.components} in configs  # the reference is always a candidate
    allowed = [m for m in choice.measured if not m.excluded]
    assert all("int8" != m.precision["text_encoder"] for m in allowed)  # batch-dependent here: left out
    assert choice.precision == dict(allowed[0].precision) and allowed[0].score == min(m.score for m in allowed)
    assert any(m.excluded == "batch-dependent on this machine" for m in choice.measured)
    assert "measured here, the fastest of" in choice.why


def test_measured_once_then_cached_by_content_and_machine(calibrated, tmp_path, monkeypatch):
    copy = Bundle.open(shutil.copytree(calibrated[0], tmp_path / "copy"))
    first = tuning.tune(copy, ORT, force=True)  # real measurements, on this machine
    assert not first.cached and first.seconds > 0 and all(m.ms[1] > 0 and m.ms[8] > 0 for m in first.measured)
    assert all(m.invariant for m in first.measured)  # every int8-cpu candidate is batch-invariant here too

    def no_measuring(*args):
        raise AssertionError("measured again")

    monkeypatch.setattr(tuning, "_measure", no_measuring)
    again = tuning.tune(Bundle.open(calibrated[0]), ORT)  # another folder, the same files: the same entry
    assert again.cached and again.precision == first.precision and again.seconds == 0
    with Pipeline.load(copy.root, backend="onnxruntime") as pipe:
        assert pipe.precision == first.precision and pipe.tuning.cached
        assert pipe.precision_reason == first.why
    with Pipeline.load(copy.root, backend="onnxruntime", precision="fp32") as pipe:  # asked: never overridden
        assert set(pipe.precision.values()) == {"fp32"} and pipe.tuning is None and pipe.precision_reason == "asked for"


def test_another_bundle_or_a_damaged_cache_is_measured_again(calibrated, tmp_path, monkeypatch):
    bundle = Bundle.open(shutil.copytree(calibrated[0], tmp_path / "b"))
    tuning.tune(bundle, ORT)
    path = tuning._cache_file(bundle)
    path.write_text("{not json")
    measure, calls = _fake_parts({"fp32": 2.0, "fp16": 2.0, "int8": 1.0})
    monkeypatch.setattr(tuning, "_measure", measure)
    assert not tuning.tune(bundle, ORT).cached and calls
    json.loads(path.read_text())  # rewritten whole
    changed = dataclasses.replace(bundle.manifest, profile=dataclasses.replace(bundle.manifest.profile,
                                                                                batch=(1, 4, 16)))
    assert tuning._cache_file(Bundle(bundle.root, changed)) != path


def test_tune_command_prints_what_it_measured_and_chose(calibrated, capsys):
    from fusionrt.cli import main

    assert main(["tune", str(calibrated[0]), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["cpu"]["label"] and {m["backend"] for m in out["measured"]} == {"onnxruntime", "openvino"}
    best = next(m for m in out["measured"] if "excluded" not in m)
    assert (out["backend"], out["precision"]) == (best["backend"], best["precision"])
    assert main(["tune", str(calibrated[0])]) == 0
    text = capsys.readouterr().out
    assert "| backend | precision | batch 1 ms | batch 8 ms |" in text and "from the cache" in text


@pytest.mark.parametrize("option", [{"device": "tensorrt"}])
def test_gpu_devices_take_calibrations_choice(calibrated, option):
    from fusionrt.runtime.selection import select

    chosen = select(Bundle.open(calibrated[0]), "onnxruntime", None, True, True, {**option, "allow_fallback": True})
    assert chosen.tuning is None and chosen.precision_reason.startswith("calibration's choice for int8-trt")


def test_every_backends_parts_are_timed_in_turns_so_a_slow_moment_hits_none_alone(calibrated, monkeypatch):
    """A shared machine slows down for a while: timed one backend after the other, that backend looked slow (the
    demo once tuned to OpenVINO, 1.3x slower there than ONNX Runtime in the bench). Timed in rounds, in turns, each
    part's median shrugs off a slow round."""
    pytest.importorskip("openvino", reason="two CPU backends to time in turns")
    from fusionrt.runtime.backends.openvino import OpenVINOOptions

    bundle = Bundle.open(calibrated[0])
    timed = []

    def fake_time(run, feeds):
        timed.append((run.args[0].name, id(run)))
        return 100.0 if len(timed) <= 5 else 1.0  # the machine is busy for the first five timings

    monkeypatch.setattr(tuning, "median_ms", fake_time)
    both = ORT + [("openvino", OpenVINOOptions().for_branches(True))]
    choice = tuning.tune(bundle, both, force=True)
    assert all(m.ms == {1: 3.0, 8: 3.0} for m in choice.measured)  # three parts, 1 ms each: no slow round counted
    per_round = len(timed) // tuning.ROUNDS
    assert len(timed) == per_round * tuning.ROUNDS
    for r in range(tuning.ROUNDS):  # every round times every backend
        assert {name for name, _ in timed[r * per_round:(r + 1) * per_round]} == {"onnxruntime", "openvino"}
    assert len({timed[r * per_round][1] for r in range(tuning.ROUNDS)}) == tuning.ROUNDS  # each starts elsewhere
