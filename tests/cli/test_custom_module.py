"""Your own image encoder from the command line alone: a module in a .py file goes train -> export -> calibrate ->
classify; the checkpoint pins the file (a changed one is refused unless asked); bad references fail up front;
examples/custom_encoder.py runs the same with the Python API."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fusionrt.cli import main
from tests.conftest import minilm_dir, write_shape_dataset

ROOT = Path(__file__).resolve().parents[2]
MODULE = '''
import torch


class TinyEncoder(torch.nn.Module):
    """(N, 3, 32, 32) BGR images -> (N, 16) features."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, stride=2, padding=1), torch.nn.ReLU(),
                                       torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())

    def forward(self, x):
        return self.net(x)


def make_encoder():
    return TinyEncoder()
'''


@pytest.fixture(scope="module")
def user_setup(tmp_path_factory):
    import transformers

    folder = tmp_path_factory.mktemp("custom")
    text = folder / "tiny_bert"
    transformers.BertModel(transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2,
                                                   num_attention_heads=2, intermediate_size=64,
                                                   max_position_embeddings=64)).save_pretrained(text)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (minilm_dir() / name).exists():
            shutil.copy(minilm_dir() / name, text / name)
    (folder / "my_encoder.py").write_text(MODULE)
    train, test = write_shape_dataset(folder / "data", per_class=28, seed=3)
    return folder, text, train, test


def _train(folder, text, train, reference, out, *extra):
    return main(["train", "--data", str(train), "--out", str(out), "--text-model", str(text), "--image-backbone",
                 reference, "--image-size", "32", "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25", "--bgr",
                 "--head", "32", "--epochs", "15", "--batch-size", "16", "--lr", "0.003", "--max-seq-len", "32", *extra])


def test_a_user_module_goes_train_export_calibrate_classify_through_the_cli(user_setup, capsys):
    folder, text, train, test = user_setup
    reference = f"module:{folder / 'my_encoder.py'}:TinyEncoder"
    ckpt, bundle = folder / "ckpt", folder / "bundle"
    assert _train(folder, text, train, reference, ckpt) == 0
    config = json.loads((ckpt / "fusion_config.json").read_text())
    assert config["image_backbone"] == reference and len(config["image_module_sha256"]) == 64
    assert config["image_dim"] == 16 and config["channel_order"] == "bgr"
    assert main(["export", str(ckpt), "--out", str(bundle), "--data", str(test), "--exporter", "torchscript"]) == 0
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["preprocess"] == {"height": 32, "width": 32, "mean": [0.5] * 3, "std": [0.25] * 3,
                                      "interpolation": "linear", "channel_order": "bgr"}
    assert main(["calibrate", str(bundle), "--data", str(train), "--eval-data", str(test), "--method", "minmax",
                 "--samples", "16"]) == 0
    capsys.readouterr()
    image = next((folder / "data" / "img").glob("red_*.png"))
    assert main(["classify", str(bundle), "--image", str(image), "--text", "a red circle", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["label"] == "red" and set(out["precision"].values()) <= {"int8", "fp16", "fp32"}
    report = folder / "evaluate.json"
    assert main(["evaluate", str(bundle), "--data", str(test), "--checkpoint", str(ckpt), "--backend", "onnxruntime",
                 "--report", str(report)]) == 0
    results = json.loads(report.read_text())["results"]
    torch_row, bundle_row = results["PyTorch (fp32)"], results["bundle (onnxruntime, fp32)"]
    assert torch_row["accuracy"] >= 0.7  # it learned the colours (chance: 1/3)
    assert bundle_row["agreement"] == 1.0 and bundle_row["accuracy"] == torch_row["accuracy"]
    table = capsys.readouterr().out
    assert "| PyTorch (fp32) |" in table and "| bundle (onnxruntime, fp32) |" in table and "100.00 %" in table


def test_a_changed_module_file_is_refused_unless_asked(user_setup, capsys):
    folder, text, train, test = user_setup
    module = folder / "pinned.py"
    module.write_text(MODULE)
    ckpt = folder / "ckpt_pinned"
    assert _train(folder, text, train, f"module:{module}:make_encoder", ckpt, "--epochs", "1") == 0
    module.write_text(MODULE + "\n# edited after training\n")
    out = folder / "bundle_pinned"
    assert main(["export", str(ckpt), "--out", str(out), "--data", str(test), "--exporter", "torchscript"]) == 2
    err = capsys.readouterr().err
    assert "changed since the checkpoint was trained" in err and "--allow-changed-module" in err and not out.exists()
    assert main(["export", str(ckpt), "--out", str(out), "--data", str(test), "--exporter", "torchscript",
                 "--allow-changed-module"]) == 0


@pytest.mark.parametrize("reference, message", [
    ("module:{folder}/none.py:TinyEncoder", "no such file"),
    ("module:{folder}/my_encoder.py:Missing", "has no 'Missing'"),
    ("module:no_such_package_xyz:Encoder", "importing it failed (ModuleNotFoundError"),
    ("module:{folder}/my_encoder.py", "expected module:PATH.py:NAME"),
    ("custom", "From the command line, name it: --image-backbone module:PATH.py:NAME"),
])
def test_a_bad_reference_fails_before_any_work(user_setup, capsys, reference, message):
    folder, text, train, _ = user_setup
    out = folder / "never"
    assert _train(folder, text, train, reference.format(folder=folder), out) == 2
    err = capsys.readouterr().err
    assert message in err and "features" not in err and not out.exists()


def test_an_image_size_the_encoder_cannot_take_is_refused_up_front(user_setup, capsys):
    folder, text, train, _ = user_setup
    (folder / "fixed.py").write_text("import torch\n\n\nclass Fixed(torch.nn.Module):\n    def __init__(self):\n"
                                     "        super().__init__()\n        self.fc = torch.nn.Linear(3 * 32 * 32, 8)\n\n"
                                     "    def forward(self, x):\n        return self.fc(x.flatten(1))\n")
    assert _train(folder, text, train, f"module:{folder / 'fixed.py'}:Fixed", folder / "n2", "--image-size", "48") == 2
    assert "failed on a (1, 3, 48, 48) input" in capsys.readouterr().err


def test_image_weights_in_a_training_checkpoint_or_from_data_parallel_load(user_setup, tmp_path):
    import torch

    from fusionrt.export.encoders import load_image_weights
    from fusionrt.export.user_module import load_user_encoder

    folder = user_setup[0]
    source, _ = load_user_encoder(f"module:{folder / 'my_encoder.py'}:TinyEncoder")
    wrapped = {"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}, "epoch": 3}
    torch.save(wrapped, tmp_path / "w.pth")
    target, _ = load_user_encoder(f"module:{folder / 'my_encoder.py'}:TinyEncoder")
    load_image_weights(target, tmp_path / "w.pth")
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values()))


def test_the_custom_encoder_example_runs(user_setup, tmp_path):
    folder, text, train, test = user_setup
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "custom_encoder.py"), "--data", str(train),
                             "--eval-data", str(test), "--out", str(tmp_path / "out"), "--text-model", str(text),
                             "--epochs", "3"], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "right on the held-out split" in result.stdout
    assert (tmp_path / "out" / "bundle" / "manifest.json").is_file()
