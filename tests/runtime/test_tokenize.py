import numpy as np
import pytest

from fusionrt.runtime.errors import InputError
from fusionrt.runtime.tokenize import TextTokenizer

from ..conftest import minilm_dir

TEXTS = ["grinning face (grinning)", "A Flag of Egypt!", "naïve café — déjà vu", "x " * 300]


def test_same_ids_as_the_hugging_face_tokenizer():
    import transformers

    ours = TextTokenizer(minilm_dir() / "tokenizer.json", max_seq_len=128)(TEXTS)
    hf = transformers.AutoTokenizer.from_pretrained(str(minilm_dir()), local_files_only=True)
    theirs = hf(TEXTS, padding="longest", truncation=True, max_length=128, return_tensors="np")
    np.testing.assert_array_equal(ours["input_ids"], theirs["input_ids"])
    np.testing.assert_array_equal(ours["attention_mask"], theirs["attention_mask"])
    assert ours["input_ids"].shape == (4, 128) and ours["input_ids"].dtype == np.int64


def test_pads_to_longest_not_fixed_length():
    tok = TextTokenizer(minilm_dir() / "tokenizer.json", max_seq_len=128)
    out = tok(["short", "a little longer text"])
    assert out["input_ids"].shape[1] < 16
    assert tok(["short"], pad_to=20)["input_ids"].shape == (1, 20)


def test_pad_multiple_rounds_up_within_max_seq_len():
    tok = TextTokenizer(minilm_dir() / "tokenizer.json", max_seq_len=40)
    plain = tok(["a little longer text"])
    padded = tok(["a little longer text"], pad_multiple=16)
    length = plain["input_ids"].shape[1]
    assert padded["input_ids"].shape[1] == 16 and length < 16
    np.testing.assert_array_equal(padded["input_ids"][:, :length], plain["input_ids"])
    assert not padded["attention_mask"][:, length:].any()
    assert tok(["x " * 300], pad_multiple=16)["input_ids"].shape[1] == 40  # never past max_seq_len


def test_empty_text_refused():
    tok = TextTokenizer(minilm_dir() / "tokenizer.json", max_seq_len=128)
    with pytest.raises(InputError, match="non-empty text"):
        tok(["ok", "  "])
