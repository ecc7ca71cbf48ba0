"""Containment, integrity and no data loss: a bundle loads only files inside it that match their sha256; writers
replace only bundles, commit atomically under a lock, and a writer killed at any point leaves the old bundle or the
new one, valid."""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest

from fusionrt.runtime.bundle import Bundle
from fusionrt.bundling.staging import LOCK_NAME, TEMP_PREFIX, WriteLock
from fusionrt.runtime.errors import BundleError
from fusionrt.runtime.manifest import ModelFile
from tests.conftest import RTX_CC
from tests.hardware import needs_rtx
from tests.layers import ROOT
from fusionrt.bundling import update_bundle


def _copy(bundle, folder):
    shutil.copytree(bundle, folder)
    return Bundle.open(folder)


def _point_image_encoder_at(bundle: Bundle, path: str) -> None:
    manifest = json.loads((bundle.root / "manifest.json").read_text())
    manifest["components"]["image_encoder"]["files"]["fp32"]["path"] = path
    (bundle.root / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("entry", ["../outside.onnx", "/etc/passwd", "sub/../../outside.onnx", "C:\\\\x.onnx"])
def test_a_manifest_path_that_leaves_the_bundle_is_refused_at_load(tiny_bundle, tmp_path, entry):
    bundle = _copy(tiny_bundle, tmp_path / "b")
    _point_image_encoder_at(bundle, entry)
    with pytest.raises(BundleError, match=r"manifest entry '.*' in .* is not a path inside the bundle"):
        Bundle.open(bundle.root)


def test_a_symlink_out_of_the_bundle_is_refused_and_info_says_so(tiny_bundle, tmp_path, capsys):
    from fusionrt.cli import main

    bundle = _copy(tiny_bundle, tmp_path / "b")
    outside = tmp_path / "elsewhere.onnx"
    shutil.copy(bundle.root / "image_encoder.onnx", outside)
    (bundle.root / "image_encoder.onnx").unlink()
    (bundle.root / "image_encoder.onnx").symlink_to(outside)
    with pytest.raises(BundleError, match=r"'image_encoder.onnx' .* resolves to .*elsewhere.onnx', outside the bundle"):
        Bundle.open(bundle.root)
    assert main(["info", str(bundle.root)]) == 2
    assert "outside the bundle" in capsys.readouterr().err
    (bundle.root / "image_encoder.onnx").unlink()  # a symlink that stays inside is fine
    shutil.copy(outside, bundle.root / "real.onnx")
    (bundle.root / "image_encoder.onnx").symlink_to("real.onnx")
    assert Bundle.open(bundle.root).verify()["image_encoder.onnx"] == "ok"


def test_engines_get_the_bytes_that_were_hashed(tiny_bundle, tmp_path, monkeypatch):
    import onnxruntime

    from fusionrt.runtime.pipeline import Pipeline

    sources, real = [], onnxruntime.InferenceSession

    def session(source, **kwargs):
        sources.append(source)
        return real(source, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", session)
    with Pipeline.load(tiny_bundle, backend="onnxruntime", tune=False):
        pass
    assert len(sources) == 3 and all(isinstance(s, bytes) for s in sources)  # never a path read a second time
    bundle = _copy(tiny_bundle, tmp_path / "b")
    with open(bundle.root / "fusion_head.onnx", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(BundleError, match="'fusion_head.onnx' does not match the sha256"):
        Pipeline.load(bundle.root, backend="onnxruntime")


def test_every_input_a_command_reads_is_verified(calibrated, tmp_path):
    from fusionrt.benchmarks.harness import prepared_inputs

    bundle = _copy(calibrated[0], tmp_path / "b")
    (bundle.root / "tokenizer.json").write_text((bundle.root / "tokenizer.json").read_text() + " ")
    with pytest.raises(BundleError, match="'tokenizer.json' does not match the sha256"):
        prepared_inputs(bundle, [], ["a text"], 1)
    from fusionrt.calibration.calibrate import calibrate_bundle

    with pytest.raises(BundleError, match="'tokenizer.json' does not match the sha256"):
        calibrate_bundle(bundle.root, calibrated[2], calibrated[3], method="minmax", samples=16)


# -- export --overwrite ---------------------------------------------------------------------------------------
def _export(checkpoint, shape_data, out, overwrite=True):
    from fusionrt.data.dataset import LabeledDataset
    from fusionrt.export.bundle_writer import export_bundle
    from fusionrt.export.model import FusionClassifier
    from tests.conftest import tiny_image_encoder

    model = FusionClassifier.from_pretrained(checkpoint, image_encoder=tiny_image_encoder())
    data = LabeledDataset.read(shape_data[1]).head(2)
    return export_bundle(model, out, [s.image for s in data], [s.text for s in data], dynamo=False, overwrite=overwrite)


def test_overwrite_replaces_only_a_bundle(trained_checkpoint, shape_data, tmp_path, tiny_bundle):
    webapp = tmp_path / "site"
    webapp.mkdir()
    (webapp / "manifest.json").write_text('{"name": "my web app", "icons": []}')
    (webapp / "index.html").write_text("<html></html>")
    with pytest.raises(BundleError, match="does not read as a bundle .* nothing was changed"):
        _export(trained_checkpoint, shape_data, webapp)
    assert sorted(p.name for p in webapp.iterdir()) == ["index.html", "manifest.json"]  # nothing lost

    old = _copy(tiny_bundle, tmp_path / "bundle")
    (old.root / "calibration").mkdir()
    (old.root / "calibration" / "old.ranges.json").write_text("{}")
    with pytest.raises(BundleError, match="already holds a bundle.*--overwrite"):
        _export(trained_checkpoint, shape_data, old.root, overwrite=False)
    new = _export(trained_checkpoint, shape_data, old.root)
    assert new.verify() and not (old.root / "calibration").exists()  # replaced whole, not merged
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(TEMP_PREFIX)]


# -- killed writers -------------------------------------------------------------------------------------------
KILLER = """
import os, signal, sys
import fusionrt.bundling.staging as update
point = sys.argv[1]
update._step = lambda name: name == point and os.kill(os.getpid(), signal.SIGKILL)
exec(sys.argv[2])
"""


def _killed_at(point: str, code: str) -> None:
    result = subprocess.run([sys.executable, "-c", KILLER, point, textwrap.dedent(code)], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == -signal.SIGKILL, (point, result.returncode, result.stderr[-2000:])


def _state(folder) -> dict:
    bundle = Bundle.open(folder)
    assert all(v == "ok" for v in bundle.verify().values())  # every file it names is there and matches
    return bundle.manifest.to_dict()


@needs_rtx
def test_a_build_killed_at_any_point_leaves_the_old_bundle_or_the_new_one(built, tmp_path):
    bundle = _copy(built[0], tmp_path / "b")
    old = _state(bundle.root)
    code = f"""
        from fusionrt.engines.build import build_engines
        build_engines({str(bundle.root)!r}, "tensorrt_rtx", "fp32", compute_capability={RTX_CC!r}, force=True)
    """
    for point in ("staged", "renamed"):
        _killed_at(point, code)
        assert _state(bundle.root) == old, point
    _killed_at("committed", code)  # the new manifest is in: the new bundle, its replaced engines not yet deleted
    new = _state(bundle.root)
    assert new != old
    engines = {e["precision"]: e["path"] for e in new["components"]["image_encoder"]["engines"]}
    assert engines["fp32"].endswith(".2.plan") and (bundle.root / engines["fp32"]).is_file()
    exec(textwrap.dedent(code))  # a later writer cleans up after the killed ones
    assert not list(bundle.root.rglob(f"{TEMP_PREFIX}*"))
    final = _state(bundle.root)
    assert len(final["components"]["image_encoder"]["engines"]) == len(old["components"]["image_encoder"]["engines"])
    assert not (bundle.root / engines["fp32"]).exists()  # the engine it replaced is deleted once nothing names it


def test_a_calibration_killed_before_its_commit_leaves_the_old_bundle(calibrated, tmp_path):
    bundle = _copy(calibrated[0], tmp_path / "b")
    old = _state(bundle.root)
    _killed_at("renamed", f"""
        from fusionrt.calibration.calibrate import calibrate_bundle
        calibrate_bundle({str(bundle.root)!r}, {str(calibrated[2])!r}, {str(calibrated[3])!r}, method="minmax",
                         samples=16)
    """)
    assert _state(bundle.root) == old


def test_an_export_killed_at_the_swap_leaves_the_old_bundle_or_the_new_one(trained_checkpoint, shape_data, tmp_path,
                                                                          tiny_bundle):
    target = _copy(tiny_bundle, tmp_path / "b").root
    (target / "marker.txt").write_text("the old bundle")
    old = _state(target)
    code = f"""
        from tests.bundling.test_bundle_safety import _export
        from pathlib import Path
        _export(Path({str(trained_checkpoint)!r}), [Path(p) for p in {[str(p) for p in shape_data]!r}],
                Path({str(target)!r}))
    """
    _killed_at("staged", code)
    assert _state(target) == old and (target / "marker.txt").exists()
    _killed_at("replaced", code)
    assert _state(target)["parity"]["samples"] == 2 and not (target / "marker.txt").exists()


# -- the write lock -------------------------------------------------------------------------------------------
def test_a_second_writer_waits_then_fails_saying_who_holds_the_lock(tiny_bundle, tmp_path):
    bundle = _copy(tiny_bundle, tmp_path / "b")
    with WriteLock(bundle.root, "calibrate"):
        with pytest.raises(BundleError, match=rf"being written by another fusionrt command \(pid {os.getpid()}, "
                                              r"fusionrt calibrate, since .*\); waited 0 s"):
            with update_bundle(bundle, "build", timeout_s=0.3):
                pass
    assert (bundle.root / LOCK_NAME).exists()
    with update_bundle(bundle, "build", timeout_s=0.3) as update:  # free again
        staged = update.stage("image_encoder.onnx")  # named by the manifest: gets a fresh name
        assert staged.name == "image_encoder.2.onnx" and staged.path.name.startswith(TEMP_PREFIX)
        staged.path.write_bytes((bundle.root / "image_encoder.onnx").read_bytes())
        comp = update.manifest.components["image_encoder"]
        files = {**comp.files, "fp32": dataclasses.replace(comp.files["fp32"], path=staged.name)}
        update.commit(update.manifest.with_component(dataclasses.replace(comp, files=files)))
    assert not (bundle.root / "image_encoder.onnx").exists() and _state(bundle.root)
    assert isinstance(Bundle.open(bundle.root).manifest.components["image_encoder"].files["fp32"], ModelFile)


def test_two_exports_to_one_new_folder_the_second_finds_the_first_and_says_so(tiny_bundle, tmp_path, monkeypatch):
    """Both saw a new folder; the first rename lands. The second's rename then fails (the folder is no longer empty):
    it judges what is there under the lock, as if it had been there at its start: refused without --overwrite
    (the first bundle intact), replaced with it. Was a raw OSError."""
    from fusionrt.export import bundle_writer

    out = tmp_path / "new"

    def staged(name):
        folder = tmp_path / f"{TEMP_PREFIX}{name}"
        shutil.copytree(tiny_bundle, folder)
        return folder

    bundle_writer._replace(staged("first"), out, overwrite=False)
    first = (out / "manifest.json").read_bytes()
    monkeypatch.setattr(bundle_writer, "_fresh", lambda folder: True)  # what the second saw before the first landed
    second = staged("second")
    (second / "labels-note.txt").write_text("the second export")
    with pytest.raises(BundleError, match="already holds a bundle: expected an empty or new folder. Pass --overwrite"):
        bundle_writer._replace(second, out, overwrite=False)
    assert (out / "manifest.json").read_bytes() == first and not (out / "labels-note.txt").exists()
    bundle_writer._replace(second, out, overwrite=True)
    assert (out / "labels-note.txt").read_text() == "the second export"
    Bundle.open(out)


def test_an_ir_and_its_weights_are_staged_under_one_fresh_stem(calibrated, tmp_path):
    """OpenVINO finds an IR's .bin by the .xml's stem: when the current manifest names either, both get the same
    fresh stem, and the old pair stays whole until the commit."""
    bundle = Bundle.open(shutil.copytree(calibrated[0], tmp_path / "b"))
    record = bundle.manifest.components["text_encoder"].files["int8-ov"]
    stem = record.path[:-len(".xml")]
    with update_bundle(bundle, "test") as update:
        xml, weights = update.stage(record.path, "bin")
        assert (xml.name, weights.name) == (f"{stem}.2.xml", f"{stem}.2.bin")
        assert xml.path.name[:-len(".xml")] == weights.path.name[:-len(".bin")]
        fresh, fresh_bin = update.stage("new.int8.ov.xml", "bin")
        assert (fresh.name, fresh_bin.name) == ("new.int8.ov.xml", "new.int8.ov.bin")
        assert update.stage("image_encoder.onnx").name == "image_encoder.2.onnx"  # one name: as before
