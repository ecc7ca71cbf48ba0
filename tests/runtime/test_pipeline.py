import numpy as np
import pytest

from fusionrt.runtime.errors import BackendUnavailable, InputError
from fusionrt.runtime.pipeline import Pipeline, softmax
from fusionrt.runtime.precision import parse_precision
from fusionrt.bundling import save_manifest


def test_concurrent_and_sequential_agree(tiny_bundle, shape_data):
    from fusionrt.data.dataset import LabeledDataset

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
    from fusionrt.data.dataset import LabeledDataset

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


def test_unknown_backend_and_precision(tiny_bundle):
    with pytest.raises(BackendUnavailable, match=r"unknown backend 'nope': expected one of \['onnxruntime', "
                                                 r"'openvino', 'tensorrt', 'tensorrt_rtx'\] or 'auto'"):
        Pipeline.load(tiny_bundle, backend="nope")
    with pytest.raises(InputError, match="unknown part 'audio'"):
        parse_precision("audio=int8")
    assert parse_precision("image=int8,head=fp16") == {
        "image_encoder": "int8", "text_encoder": "fp32", "fusion_head": "fp16"}


def test_softmax_is_stable():
    p = softmax(np.array([[1000.0, 0.0], [0.0, 0.0]]))
    np.testing.assert_allclose(p, [[1, 0], [0.5, 0.5]])


def _renamed_bundle(bundle, folder, names: dict):
    """A copy of `bundle` whose ONNX tensors (and manifest specs) carry other names: nothing may still say
    'pixel_values' or 'image_features' for the pipeline to find by a name written in code."""
    import dataclasses
    import shutil

    import onnx

    from fusionrt.runtime.bundle import Bundle
    from fusionrt.runtime.manifest import ModelFile, sha256_of

    shutil.copytree(bundle, folder)
    opened = Bundle.open(folder)
    components = {}
    for name, comp in opened.manifest.components.items():
        model = onnx.load(str(folder / comp.files["fp32"].path))
        graph = model.graph
        for value in (*graph.input, *graph.output):
            value.name = names.get(value.name, value.name)
        for node in graph.node:
            node.input[:] = [names.get(n, n) for n in node.input]
            node.output[:] = [names.get(n, n) for n in node.output]
        onnx.save(model, str(folder / comp.files["fp32"].path))
        rename = lambda specs: tuple(dataclasses.replace(t, name=names.get(t.name, t.name)) for t in specs)
        components[name] = dataclasses.replace(
            comp, inputs=rename(comp.inputs), outputs=rename(comp.outputs),
            files={"fp32": ModelFile(comp.files["fp32"].path, sha256_of(folder / comp.files["fp32"].path))})
    save_manifest(opened, dataclasses.replace(opened.manifest, components=components))
    return folder


def test_tensors_are_addressed_by_the_manifests_names(tiny_bundle, shape_data, tmp_path):
    from fusionrt.data.dataset import LabeledDataset

    data = LabeledDataset.read(shape_data[1])
    images, texts = [s.image for s in data], [s.text for s in data]
    names = {"pixel_values": "frame", "image_features": "img_vec", "text_features": "txt_vec", "logits": "scores"}
    renamed = _renamed_bundle(tiny_bundle, tmp_path / "renamed", names)
    with Pipeline.load(tiny_bundle, backend="onnxruntime") as original, \
            Pipeline.load(renamed, backend="onnxruntime") as other:
        assert [s.name for s in other.backends["fusion_head"].input_specs] == ["img_vec", "txt_vec"]
        want = original.logits(*original.prepare(images, texts))
        np.testing.assert_array_equal(other.logits(*other.prepare(images, texts)), want)
        np.testing.assert_array_equal(other.cached_logits(*other.prepare(images, texts)), want)
        assert [p.label for p in other.classify_batch(images, texts)] == [p.label for p in original.classify_batch(
            images, texts)]


def test_components_that_do_not_connect_by_name_are_refused_at_load(tiny_bundle, tmp_path):
    import dataclasses
    import shutil

    from fusionrt.runtime.bundle import Bundle
    from fusionrt.runtime.errors import BundleError

    shutil.copytree(tiny_bundle, tmp_path / "b")
    opened = Bundle.open(tmp_path / "b")
    head = opened.manifest.components["fusion_head"]
    wrong = dataclasses.replace(head, inputs=(dataclasses.replace(head.inputs[0], name="image_embeds"), head.inputs[1]))
    save_manifest(opened, dataclasses.replace(opened.manifest, components={**opened.manifest.components, "fusion_head": wrong}))
    with pytest.raises(BundleError, match=r"fusion head's inputs \['image_embeds', 'text_features'\] must be named "
                                          r"after the encoders' distinct outputs \('image_features', 'text_features'\)"):
        Pipeline.load(tmp_path / "b", backend="onnxruntime")


def test_a_closed_pipeline_says_so(tiny_bundle, shape_data):
    from fusionrt.data.dataset import LabeledDataset

    sample = LabeledDataset.read(shape_data[1])[0]
    with Pipeline.load(tiny_bundle, backend="onnxruntime") as pipe:
        pixels, tokens = pipe.prepare([sample.image], [sample.text])
    assert pipe.closed
    for call in (lambda: pipe.infer(pixels, tokens), lambda: pipe.classify(sample.image, sample.text),
                 lambda: pipe.clone(), lambda: pipe.stream_many({"a": [pixels]}, "x")):
        with pytest.raises(InputError, match="this Pipeline is closed"):
            call()
    pipe.close()  # twice is fine


def test_bombs_huge_texts_and_dead_sources_through_the_python_api(tiny_bundle, shape_data, tmp_path):
    """What the CLI and Triton refuse or survive, the Python API does too: a batch with a bomb names it, the pipeline
    goes on; a 10 MB caption answers as its first words; a dead URL is dropped after max_reconnects."""
    import socket

    from fusionrt.data.dataset import LabeledDataset
    from tests.bad_inputs import huge_text, png_bomb

    sample = LabeledDataset.read(shape_data[1])[0]
    bomb = png_bomb(10_000, 10_000)
    with Pipeline.load(tiny_bundle, backend="onnxruntime", max_pixels=50_000_000) as pipe:
        with pytest.raises(InputError, match=r"image 1 of the batch of 2: .*more than the cap of 50,000,000"):
            pipe.classify_batch([sample.image, bomb], ["a", "b"])
        with pipe.clone() as twin:
            assert twin.max_pixels == 50_000_000
        text = huge_text(10)
        words = " ".join(text.split(None, 300)[:300])
        np.testing.assert_array_equal(pipe.classify(sample.image, text).probs, pipe.classify(sample.image, words).probs)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            url = f"rtsp://127.0.0.1:{s.getsockname()[1]}/cam"
        with pipe.stream_many([url], "x", backoff_s=(0.05, 0.1), max_reconnects=2) as streams:
            assert list(streams) == []
        events = [e["event"] for e in streams.summary()[url]["events"]]
        assert len(events) == 3 and events[-1].endswith("removed after 2 reconnects in a row")
