import json
import subprocess
import sys

import pytest

from fusionrt.cli import main


def test_classify_json(tiny_bundle, shape_data, capsys):
    from fusionrt.data.dataset import LabeledDataset

    from fusionrt.runtime.pipeline import Pipeline

    sample = LabeledDataset.read(shape_data[1])[0]
    assert main(["classify", str(tiny_bundle), "--image", str(sample.image), "--text", sample.text, "--json",
                 "--backend", "onnxruntime", "--precision", "fp32"]) == 0
    out = json.loads(capsys.readouterr().out)
    with Pipeline.load(tiny_bundle, backend="onnxruntime", precision="fp32") as pipe:
        want = pipe.classify(sample.image, sample.text)
    assert out["label"] == want.label  # the CLI answers what the Python API does, for the same pair
    assert out["probs"] == pytest.approx(dict(zip(pipe.labels, want.probs.tolist())), abs=1e-6)


@pytest.mark.parametrize("args, message", [
    (["--image", "/no/such.png", "--text", "x"], "image file '/no/such.png' not found"),
    (["--image", "{bundle}/manifest.json", "--text", "x"], "could not be decoded"),
    (["--image", "{image}", "--text", "  "], "non-empty text"),
])
def test_errors_are_one_clear_line(tiny_bundle, shape_data, capsys, args, message):
    from fusionrt.data.dataset import LabeledDataset

    image = LabeledDataset.read(shape_data[1])[0].image
    args = [a.format(bundle=tiny_bundle, image=image) for a in args]
    assert main(["classify", str(tiny_bundle), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "Traceback" not in err and len(err.splitlines()) == 1


def test_a_decompression_bomb_and_a_huge_caption_through_classify(tiny_bundle, shape_data, tmp_path, capsys):
    """A 100 MP PNG of ~100 KB is refused from its header in one line (it took 10 s and 2.7 GB before); --max-pixels
    lets it through. A 10 MB caption answers as its first words do, without tokenizing it whole."""
    from fusionrt.data.dataset import LabeledDataset
    from tests.bad_inputs import huge_text, png_bomb

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_bomb(10_000, 10_000))
    assert main(["classify", str(tiny_bundle), "--image", str(bomb), "--text", "x", "--backend", "onnxruntime"]) == 2
    err = capsys.readouterr().err.strip()
    assert "10000x10000 = 100,000,000 pixels, more than the cap of 64,000,000" in err and len(err.splitlines()) == 1
    assert main(["classify", str(tiny_bundle), "--image", str(bomb), "--text", "x", "--backend", "onnxruntime",
                 "--max-pixels", "100000000", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["label"] in ("red", "green", "blue")
    sample, text = LabeledDataset.read(shape_data[1])[0], huge_text(10)
    answers = []
    for caption in (text, " ".join(text.split(None, 300)[:300])):  # the whole, and more words than 128 tokens use
        assert main(["classify", str(tiny_bundle), "--image", str(sample.image), "--text", caption, "--json",
                     "--backend", "onnxruntime"]) == 0
        answers.append(json.loads(capsys.readouterr().out)["probs"])
    assert answers[0] == answers[1]


def test_missing_bundle_and_info(tiny_bundle, tmp_path, capsys):
    assert main(["info", str(tmp_path)]) == 2
    assert "no manifest.json" in capsys.readouterr().err
    assert main(["info", str(tiny_bundle), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["files_checked"] == 4 and info["parity_max_abs_logit_diff"] <= 1e-4


def test_python_dash_m_is_the_same_cli():
    out = subprocess.run([sys.executable, "-m", "fusionrt", "--help"], capture_output=True, text=True, check=True)
    for command in ("train", "export", "classify", "info"):
        assert command in out.stdout


def test_a_text_argument_that_is_not_utf8_is_replaced_and_said(tiny_bundle, shape_data, capsys):
    """Bytes that are not UTF-8 on the command line reach Python as lone surrogates (PEP 383)."""
    from fusionrt.data.dataset import LabeledDataset

    image = LabeledDataset.read(shape_data[1])[0].image
    text = b"a red caf\xe9 sign".decode("utf-8", "surrogateescape")
    assert main(["classify", str(tiny_bundle), "--image", str(image), "--text", text, "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["label"] in ("red", "green", "blue")
    assert "--text was not valid UTF-8; its undecodable bytes were replaced with U+FFFD: 'a red caf\ufffd sign'" in \
        captured.err


def test_evaluate_shows_the_bundle_fp32_and_its_policy_side_by_side_with_agreement(calibrated, capsys):
    bundle, _, _, test = calibrated
    assert main(["evaluate", str(bundle), "--data", str(test), "--backend", "onnxruntime"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| bundle")]
    assert len(rows) == 2 and "fp32" in rows[0] and "agreement with bundle (onnxruntime, fp32)" in out
    assert rows[0].split("|")[5].strip() == "100.00 %"  # FP32 against itself


def test_evaluate_fails_on_a_bad_checkpoint_before_evaluating(calibrated, tmp_path, capsys):
    bundle, _, _, test = calibrated
    assert main(["evaluate", str(bundle), "--data", str(test), "--checkpoint", str(tmp_path / "none")]) == 2
    captured = capsys.readouterr()
    assert "fusionrt evaluate: error:" in captured.err and "| bundle" not in captured.out


def test_output_piped_to_a_reader_that_stops_ends_quietly(tiny_bundle):
    """`fusionrt info BUNDLE | head -1`: the reader closes the pipe before fusionrt writes."""
    process = subprocess.Popen([sys.executable, "-m", "fusionrt", "info", str(tiny_bundle)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    process.stdout.close()  # like head after its line: every later write gets EPIPE
    err = process.stderr.read().decode()
    assert process.wait(timeout=120) == 0 and "Traceback" not in err and "BrokenPipe" not in err


def test_pooler_pooling_without_a_pooler_is_refused_before_any_work(shape_data, tmp_path, capsys):
    """A DistilBERT-style text model has no pooler: --pooling pooler fails up front, not halfway through."""
    import shutil

    import transformers

    from tests.conftest import minilm_dir

    folder = tmp_path / "distil"
    transformers.DistilBertModel(transformers.DistilBertConfig(vocab_size=30522, dim=32, n_layers=1, n_heads=2,
                                                               hidden_dim=64)).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (minilm_dir() / name).exists():
            shutil.copy(minilm_dir() / name, folder / name)
    args = ["train", "--data", str(shape_data[0]), "--out", str(tmp_path / "ckpt"), "--text-model", str(folder),
            "--pooling", "pooler", "--image-backbone", "resnet18", "--epochs", "1"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "needs a pooler layer, and this DistilBertModel has none" in err and "--pooling mean" in err
    assert "features" not in err and not (tmp_path / "ckpt").exists()
