"""`fusionrt triton`'s model repository: every config parses into Triton's own ModelConfig protobuf and wires the
bundle's tensors by name; the files are the bundle's at the chosen precision; the Python-backend models compute what
the embedded runtime does (with a stand-in for the backend's utilities module, which exists only inside Triton)."""

import dataclasses
import hashlib
import shutil

import cv2
import numpy as np
import pytest

from fusionrt.runtime.bundle import Bundle
from fusionrt.runtime.errors import BundleError, InputError
from fusionrt.runtime.manifest import COMPONENTS
from fusionrt.serving.repository import ENSEMBLE, IMAGE, PREPROCESS, TEXT, RepositoryOptions, write_repository
from tests.serving.fake_triton_utils import request, utils
from fusionrt.bundling import save_manifest

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="needs fusionrt[triton]")
text_format = pytest.importorskip("google.protobuf.text_format")


def parse(folder):
    return text_format.Parse((folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("platform", ["onnxruntime", "python", "openvino"])
def test_every_config_parses_and_wires_the_bundle_by_name(calibrated, tmp_path, platform):
    bundle = Bundle.open(calibrated[0])
    m = bundle.manifest
    summary = write_repository(bundle, tmp_path / "repo", RepositoryOptions(platform=platform, instances=2))
    configs = {name: parse(tmp_path / "repo" / name) for name in summary["models"]}
    assert set(configs) == {PREPROCESS, ENSEMBLE, *COMPONENTS}
    for name, config in configs.items():
        assert config.name == name and config.max_batch_size == m.profile.batch[2]
        assert (tmp_path / "repo" / name / "1").is_dir()
    for name in COMPONENTS:
        comp, config = m.components[name], configs[name]
        assert [(t.name, list(t.dims)) for t in config.input] == \
            [(t.name, [d if isinstance(d, int) else -1 for d in t.shape[1:]]) for t in comp.inputs]
        assert [t.name for t in config.output] == [t.name for t in comp.outputs]
        assert config.instance_group[0].count == 2 and config.instance_group[0].kind == config.instance_group[0].KIND_CPU
        assert list(config.dynamic_batching.preferred_batch_size)[-1] == m.profile.batch[2]
        version = tmp_path / "repo" / name / "1"
        chosen = summary["precision"][name]
        flavour = {"fp32": "fp32", "fp16": "fp32", "int8": "int8-ov" if platform == "openvino" else "int8-cpu"}[chosen]
        if flavour == "int8-ov":  # NNCF's IR: the graph and its weights, under the names Triton's OpenVINO reads
            assert sha(version / "model.xml") == comp.files[flavour].sha256
            assert sha(version / "model.bin") == comp.files[flavour].weights_sha256
            assert config.default_model_filename == "model.xml"
        else:
            assert sha(version / "model.onnx") == comp.files[flavour].sha256
    assert summary["precision"] == m.precision_for({"openvino": "int8-ov"}.get(platform, "int8-cpu"))
    # the ensemble: every step's inputs are ensemble inputs or an earlier step's outputs; the head comes last
    ensemble = configs[ENSEMBLE]
    assert ensemble.platform == "ensemble"
    assert {t.name: t.data_type for t in ensemble.input} == {IMAGE: model_config_pb2.TYPE_STRING,
                                                              TEXT: model_config_pb2.TYPE_STRING}
    available = {IMAGE, TEXT}
    for step in ensemble.ensemble_scheduling.step:
        assert set(step.input_map.values()) <= available, step.model_name
        available |= set(step.output_map.values())
    steps = [s.model_name for s in ensemble.ensemble_scheduling.step]
    assert steps[0] == PREPROCESS and steps[-1] == "fusion_head"
    assert [t.name for t in ensemble.output] == [m.components["fusion_head"].outputs[0].name]
    assert ensemble.parameters["labels"].string_value == '["' + '", "'.join(m.labels) + '"]'
    backend = {"onnxruntime": ("", "onnxruntime_onnx"), "python": ("python", ""), "openvino": ("openvino", "")}
    assert (configs["image_encoder"].backend, configs["image_encoder"].platform) == backend[platform]


def test_precision_fp32_serves_the_fp32_files_and_int8_needs_a_calibrated_bundle(calibrated, tiny_bundle, tmp_path):
    m = Bundle.open(calibrated[0]).manifest
    summary = write_repository(calibrated[0], tmp_path / "a", RepositoryOptions(precision="fp32"))
    assert summary["precision"] == {c: "fp32" for c in COMPONENTS}
    for name in COMPONENTS:
        assert sha(tmp_path / "a" / name / "1" / "model.onnx") == m.components[name].files["fp32"].sha256
    with pytest.raises(BundleError, match="fusionrt calibrate"):
        write_repository(tiny_bundle, tmp_path / "b", RepositoryOptions(precision="int8"))
    assert not (tmp_path / "b").exists()


def test_tensorrt_serves_the_bundles_tensorrt_engines_and_refuses_rtx_ones(built, tmp_path):
    with pytest.raises(BundleError, match="TensorRT engines only"):
        write_repository(built[0], tmp_path / "rtx", RepositoryOptions(platform="tensorrt"))
    # TensorRT engines need a GPU to build: relabel the RTX build's records as TensorRT's to check the file choice
    copy = tmp_path / "bundle"
    shutil.copytree(built[0], copy)
    bundle = Bundle.open(copy)
    m = bundle.manifest
    fp32 = {c: tuple(dataclasses.replace(e, product="tensorrt") for e in m.components[c].engines
                     if e.precision == "fp32") for c in COMPONENTS}
    relabelled = dataclasses.replace(m, components={c: dataclasses.replace(m.components[c], engines=fp32[c])
                                                    for c in COMPONENTS})
    bundle = save_manifest(bundle, relabelled)
    summary = write_repository(bundle, tmp_path / "repo", RepositoryOptions(platform="tensorrt"))
    for name in COMPONENTS:
        config = parse(tmp_path / "repo" / name)
        assert config.platform == "tensorrt_plan" and config.instance_group[0].kind == config.instance_group[0].KIND_GPU
        assert sha(tmp_path / "repo" / name / "1" / "model.plan") == fp32[name][0].sha256
    assert summary["max_batch"] == fp32["image_encoder"][0].profile["batch"][2]
    with pytest.raises(InputError, match="profile maximum"):
        write_repository(bundle, tmp_path / "big", RepositoryOptions(platform="tensorrt", max_batch=1000))
    with pytest.raises(InputError, match="GPU instances"):
        RepositoryOptions(platform="tensorrt", device="cpu").checked()


def test_out_folder_rules_lose_nothing(calibrated, tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="not a model repository"):
        write_repository(calibrated[0], foreign)
    assert (foreign / "notes.txt").read_text() == "keep me" and len(list(foreign.iterdir())) == 1
    repo = tmp_path / "repo"
    write_repository(calibrated[0], repo, RepositoryOptions(max_batch=4))
    with pytest.raises(InputError, match="--overwrite"):
        write_repository(calibrated[0], repo)
    write_repository(calibrated[0], repo, RepositoryOptions(max_batch=2), overwrite=True)
    assert parse(repo / ENSEMBLE).max_batch_size == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".fusionrt-tmp-")]
    for bad in (RepositoryOptions(platform="tflite"), RepositoryOptions(instances=0), RepositoryOptions(seq_bucket=0)):
        with pytest.raises(InputError):
            write_repository(calibrated[0], tmp_path / "bad", bad)


def _model(cls, repo, name):
    model = cls()
    model.initialize({"model_repository": str(repo / name), "model_version": "1"}, utils=utils)
    return model


def _png(path) -> bytes:
    return cv2.imencode(".png", cv2.imread(str(path)))[1].tobytes()


def test_preprocess_model_gives_the_embedded_runtimes_tensors_and_one_error_per_bad_request(calibrated, tmp_path):
    from fusionrt.data.dataset import LabeledDataset
    from fusionrt.runtime.pipeline import Pipeline
    from fusionrt.serving.python_models import PreprocessModel

    write_repository(calibrated[0], tmp_path / "repo", RepositoryOptions(seq_bucket=8))
    model = _model(PreprocessModel, tmp_path / "repo", PREPROCESS)
    samples = LabeledDataset.read(calibrated[3]).head(3)
    images = [_png(s.image) for s in samples]
    texts = [s.text for s in samples]
    good = request(IMAGE=np.array([[b] for b in images], dtype=object),
                   TEXT=np.array([[t.encode()] for t in texts], dtype=object))
    bad_image = request(IMAGE=np.array([[b"not an image"]], dtype=object), TEXT=np.array([[b"a red circle"]], dtype=object))
    bad_text = request(IMAGE=np.array([[images[0]]], dtype=object), TEXT=np.array([[b"\xff\xfe"]], dtype=object))
    responses = model.execute([good, bad_image, bad_text])
    assert [r.error is None for r in responses] == [True, False, False]
    assert "could not be decoded" in str(responses[1].error) and "UTF-8" in str(responses[2].error)
    with Pipeline.load(calibrated[0], backend="onnxruntime") as pipe:
        pixels, tokens = pipe.prepare([cv2.imread(str(s.image)) for s in samples], texts)
    out = responses[0].outputs
    np.testing.assert_array_equal(out[pipe.manifest.wiring.image_input], pixels)
    length = tokens["input_ids"].shape[1]
    assert out["input_ids"].shape[1] % 8 == 0 and out["input_ids"].shape[1] >= length
    for name in pipe.manifest.wiring.text_inputs:
        np.testing.assert_array_equal(out[name][:, :length], tokens[name])
    assert not out["attention_mask"][:, length:].any()


def test_the_repositorys_pixel_cap_binds_its_preprocess_model(calibrated, tmp_path):
    from fusionrt.serving.python_models import PreprocessModel

    small, large = (cv2.imencode(".png", np.zeros((h, w, 3), np.uint8))[1].tobytes() for h, w in ((10, 10), (40, 30)))
    write_repository(calibrated[0], tmp_path / "repo", RepositoryOptions(max_pixels=1000))
    model = _model(PreprocessModel, tmp_path / "repo", PREPROCESS)
    ask = [request(IMAGE=np.array([[b]], dtype=object), TEXT=np.array([[b"a red circle"]], dtype=object))
           for b in (small, large)]
    responses = model.execute(ask)
    assert responses[0].error is None and "30x40 = 1,200 pixels, more than the cap of 1,000" in str(responses[1].error)
    with pytest.raises(InputError, match="max_pixels: expected a whole number >= 1"):
        write_repository(calibrated[0], tmp_path / "other", RepositoryOptions(max_pixels=0))


def test_component_model_batches_requests_of_one_shape_and_answers_each(calibrated, tmp_path):
    from fusionrt.serving.python_models import ComponentModel

    write_repository(calibrated[0], tmp_path / "repo", RepositoryOptions(platform="python", precision="fp32"))
    model = _model(ComponentModel, tmp_path / "repo", "text_encoder")
    rng = np.random.default_rng(0)

    def tokens(batch, length):
        return {"input_ids": rng.integers(1000, 2000, (batch, length)).astype(np.int64),
                "attention_mask": np.ones((batch, length), np.int64)}

    feeds = [tokens(2, 8), tokens(1, 16), tokens(3, 8), {"input_ids": np.zeros((1, 8), np.float32),
                                                          "attention_mask": np.ones((1, 8), np.int64)}]
    calls = []
    infer = model.backend.infer
    model.backend.infer = lambda merged: calls.append(len(merged["input_ids"])) or infer(merged)
    responses = model.execute([request(**f) for f in feeds])
    assert sorted(calls) == [1, 1, 5]  # the two length-8 requests ran as one batch; the bad one on its own
    assert "dtype" in str(responses[3].error)
    for f, r in zip(feeds[:3], responses[:3]):
        assert r.error is None
        (name, value), = r.outputs.items()
        np.testing.assert_allclose(value, infer(f)[name], rtol=1e-5, atol=1e-5)


def test_cli_writes_the_repository_and_says_how_to_serve_it(calibrated, tmp_path, capsys):
    from fusionrt.cli import main

    out = tmp_path / "repo"
    assert main(["triton", str(calibrated[0]), "--out", str(out), "--platform", "python", "--instances", "2",
                 "--max-batch", "4", "--precision", "fp32"]) == 0
    said = capsys.readouterr().out
    assert "tritonserver --model-repository" in said and "max batch 4" in said
    assert parse(out / "text_encoder").instance_group[0].count == 2
    assert main(["triton", str(calibrated[0]), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_openvino_serves_nncfs_ir_that_computes_what_the_embedded_runtime_does(calibrated, tmp_path):
    """Triton's OpenVINO backend reads model.xml + model.bin: those files, compiled with the config's hints, give the
    embedded OpenVINO backend's outputs (nvidia-pytriton ships no OpenVINO backend to serve them here)."""
    ov = pytest.importorskip("openvino")
    import numpy as np

    from fusionrt.runtime.backends.openvino import OpenVINOBackend, OpenVINOOptions

    bundle = Bundle.open(calibrated[0])
    write_repository(bundle, tmp_path / "repo", RepositoryOptions(platform="openvino", precision="int8"))
    head = bundle.manifest.components["fusion_head"]
    rng = np.random.default_rng(0)
    feeds = {t.name: rng.standard_normal((3, t.shape[1])).astype(np.float32) for t in head.inputs}
    config = parse(tmp_path / "repo" / "fusion_head")
    hints = {k: v.string_value for k, v in config.parameters.items()}
    served = ov.Core().compile_model(str(tmp_path / "repo" / "fusion_head" / "1" / config.default_model_filename),
                                     "CPU", hints)
    with OpenVINOBackend.open(bundle, "fusion_head", "int8", OpenVINOOptions()) as embedded:
        want = embedded.infer(feeds)[head.outputs[0].name]
    assert config.default_model_filename == "model.xml"
    for name in COMPONENTS:  # every part's IR, both files, as hashed in the manifest
        record, version = bundle.manifest.components[name].files["int8-ov"], tmp_path / "repo" / name / "1"
        assert (sha(version / "model.xml"), sha(version / "model.bin")) == (record.sha256, record.weights_sha256)
    np.testing.assert_array_equal(served(feeds)[head.outputs[0].name], want)
