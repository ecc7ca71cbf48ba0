import json

import numpy as np
import onnx
import pytest
import torch

from fusionrt.data.dataset import LabeledDataset
from fusionrt.export.bundle_writer import export_bundle
from fusionrt.export.model import FusionClassifier
from fusionrt.export.train import TrainSettings, evaluate_torch, train_head
from fusionrt.runtime.errors import BundleError, CheckpointError
from fusionrt.data.evaluate import evaluate_pipeline
from fusionrt.runtime.pipeline import Pipeline

from ..conftest import tiny_image_encoder, tiny_model


def test_checkpoint_round_trip_gives_same_logits(trained_checkpoint):
    model = FusionClassifier.from_pretrained(trained_checkpoint, image_encoder=tiny_image_encoder())
    again = FusionClassifier.from_pretrained(trained_checkpoint, image_encoder=tiny_image_encoder())
    pixels, ids = torch.randn(2, 3, 32, 32), torch.randint(1000, 2000, (2, 7))
    with torch.no_grad():
        assert torch.equal(model(pixels, ids, torch.ones_like(ids)), again(pixels, ids, torch.ones_like(ids)))
    assert not any(p.suffix in (".pt", ".pth", ".bin") for p in trained_checkpoint.rglob("*"))  # no pickle


def test_bad_checkpoints_are_refused(tmp_path, trained_checkpoint):
    with pytest.raises(CheckpointError, match="lacks fusion_config.json"):
        FusionClassifier.from_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match=r"has a 'custom' image encoder .* image_encoder=\.\.\.\), or train with "
                                              r"--image-backbone module:PATH.py:NAME"):
        FusionClassifier.from_pretrained(trained_checkpoint)
    wrong = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    with pytest.raises(CheckpointError, match="do not match the config"):
        FusionClassifier.from_pretrained(trained_checkpoint, image_encoder=wrong)


@pytest.mark.parametrize("name, dim", [("resnet18", 512), ("resnet50", 2048), ("timm:tf_efficientnet_lite0", 1280)])
def test_image_backbones_by_name(name, dim):
    from fusionrt.export.encoders import build_image_encoder

    net, got = build_image_encoder(name)
    assert got == dim
    with torch.no_grad():
        assert net.eval()(torch.zeros(1, 3, 64, 64)).shape == (1, dim)


def test_training_is_seeded_and_learns(shape_data):
    train, test = (LabeledDataset.read(p) for p in shape_data)
    settings = TrainSettings(epochs=30, batch_size=16, lr=3e-3, seed=3)
    a, b = tiny_model(seed=1), tiny_model(seed=1)
    assert train_head(a, train, settings) == train_head(b, train, settings)
    for x, y in zip(a.head.parameters(), b.head.parameters()):
        assert torch.equal(x, y)
    assert evaluate_torch(a, test)["accuracy"] >= 0.75  # colour is easy to see: chance is 1/3


def test_built_models_are_seeded():
    """torch seeds itself at random in each process: the head's initial weights must come from the seed, or two
    `fusionrt train` runs on the same data give different checkpoints."""
    from fusionrt.export.factory import build_model

    torch.manual_seed(123)
    a = build_model(["a", "b"], "minilm", "resnet18", head_hidden=(16,), image_size=(32, 32), seed=1)
    torch.manual_seed(456)
    b = build_model(["a", "b"], "minilm", "resnet18", head_hidden=(16,), image_size=(32, 32), seed=1)
    c = build_model(["a", "b"], "minilm", "resnet18", head_hidden=(16,), image_size=(32, 32), seed=2)
    for x, y, z in zip(a.head.parameters(), b.head.parameters(), c.head.parameters()):
        assert torch.equal(x, y) and (x.ndim == 1 or not torch.equal(x, z))
    assert all(torch.equal(x, y) for x, y in zip(a.image_encoder.parameters(), b.image_encoder.parameters()))


def test_bundle_matches_pytorch(tiny_bundle, trained_checkpoint, shape_data):
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    assert manifest["parity"]["max_abs_logit_diff"] <= 1e-4
    test = LabeledDataset.read(shape_data[1])
    model = FusionClassifier.from_pretrained(trained_checkpoint, image_encoder=tiny_image_encoder())
    theirs = evaluate_torch(model, test)
    with Pipeline.load(tiny_bundle, backend="onnxruntime") as pipe:
        ours = evaluate_pipeline(pipe, test, batch_size=5)  # uneven batches exercise the dynamic axis
        pred = pipe.classify(test[0].image, test[0].text)
    assert ours["predictions"] == theirs["predictions"]
    assert ours["accuracy"] == theirs["accuracy"]
    assert pred.label in manifest["labels"] and 0 < pred.score <= 1 and np.isclose(pred.probs.sum(), 1, atol=1e-5)


def test_export_refuses_to_clobber(tiny_bundle, trained_checkpoint, shape_data, tmp_path):
    model = FusionClassifier.from_pretrained(trained_checkpoint, image_encoder=tiny_image_encoder())
    with pytest.raises(BundleError, match="already holds a bundle"):
        export_bundle(model, tiny_bundle, ["a", "b"], ["x", "y"])
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(BundleError, match="does not read as a bundle"):
        export_bundle(model, tmp_path, ["a", "b"], ["x", "y"])
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_profile_defaults_to_the_tokenizer_limit_and_longer_is_refused(tiny_bundle, trained_checkpoint, tmp_path):
    from fusionrt.runtime.bundle import Bundle
    from fusionrt.runtime.manifest import Profile

    assert Bundle.open(tiny_bundle).manifest.profile.seq == (1, 32, 32)  # the tiny model's max_seq_len is 32
    model = FusionClassifier.from_pretrained(trained_checkpoint, image_encoder=tiny_image_encoder())
    with pytest.raises(BundleError, match=r"seq max 128 .* max_seq_len 32: expected MAX <= 32. Pass --seq 1:32:32"):
        export_bundle(model, tmp_path / "b", ["a", "b"], ["x", "y"], Profile((1, 8, 32), (1, 64, 128)))
    assert not (tmp_path / "b").exists()  # refused before anything was written


def test_dynamo_exporter_also_passes_parity(trained_checkpoint, shape_data, tmp_path):
    model = FusionClassifier.from_pretrained(trained_checkpoint, image_encoder=tiny_image_encoder())
    data = LabeledDataset.read(shape_data[1]).head(3)
    attention = model.text_encoder.model.config._attn_implementation
    bundle = export_bundle(model, tmp_path / "b", [s.image for s in data], [s.text for s in data], dynamo=True)
    assert bundle.manifest.parity["max_abs_logit_diff"] <= 1e-4
    assert bundle.manifest.producer["exporter"] == "dynamo"
    # attention exported as written (MatMul, Softmax, MatMul), not SDPA's NaN-guarded form; the model keeps its own
    text = onnx.load(str(bundle.file(bundle.manifest.components["text_encoder"].files["fp32"].path)))
    ops = {n.op_type for n in text.graph.node}
    assert attention == "sdpa" and "IsNaN" not in ops and "Softmax" in ops
    assert model.text_encoder.model.config._attn_implementation == attention


def test_an_older_pytorchs_state_dict_without_num_batches_tracked_loads_and_a_real_gap_is_named(tmp_path):
    """Many published checkpoints predate BatchNorm's num_batches_tracked: PyTorch's load_state_dict accepts them
    (it fills the counter), and so does --image-weights; a key the model really needs is refused by name."""
    import torch

    from fusionrt.export.encoders import load_image_weights
    from fusionrt.runtime.errors import CheckpointError

    def encoder():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU())

    source = encoder()
    source[1].running_mean.fill_(0.5)
    old = {k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(old, tmp_path / "old.pth")
    target = encoder()
    load_image_weights(target, tmp_path / "old.pth")
    assert torch.equal(target[1].running_mean, source[1].running_mean)
    torch.save({k: v for k, v in old.items() if k != "0.weight"}, tmp_path / "gap.pth")
    with pytest.raises(CheckpointError, match=r"lack 1 keys of the model \(first: \['0.weight'\]\)"):
        load_image_weights(encoder(), tmp_path / "gap.pth")
    torch.save({**old, "0.weight": torch.zeros(5, 3, 3, 3)}, tmp_path / "shape.pth")
    with pytest.raises(CheckpointError, match=r"do not fit the model \(.*size mismatch for 0.weight"):
        load_image_weights(encoder(), tmp_path / "shape.pth")
