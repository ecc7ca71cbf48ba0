import json
import subprocess
import sys

import pytest

from fusionrt.cli import main


def test_classify_json(tiny_bundle, shape_data, capsys):
    from fusionrt.data.dataset import LabeledDataset

    sample = LabeledDataset.read(shape_data[1])[0]
    assert main(["classify", str(tiny_bundle), "--image", str(sample.image), "--text", sample.text, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["label"] in ("red", "green", "blue") and set(out["probs"]) == {"red", "green", "blue"}


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
