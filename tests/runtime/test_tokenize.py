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


LONG_TEXTS = {  # each past what 128 tokens can use, and each a way to be long
    "2 MB of words": None,  # filled from tests.bad_inputs.huge_text
    "one 1 MB word": "x" * 1_000_000,
    "words, then a long one": "word " * 10 + "y" * 20_000,
    "punctuation inside one word": "a," * 100_000,
    "a long whitespace run first": "  " * 100_000 + "hi there",
    "mixed whitespace runs": "\n\t " * 50_000 + "ok " * 200,
    "accents and CJK": "naïve café 東京タワー déjà vu " * 5_000,
}


@pytest.mark.parametrize("name", LONG_TEXTS)
def test_a_huge_text_gives_the_ids_of_the_whole_without_tokenizing_it_whole(name, monkeypatch):
    from tests.bad_inputs import huge_text

    text = LONG_TEXTS[name] or huge_text(2)
    tok = TextTokenizer(minilm_dir() / "tokenizer.json", max_seq_len=128)
    whole = tok._tok.encode(text).ids  # the reference: the library truncating the whole text
    seen = []
    encode_batch = tok._tok.encode_batch
    monkeypatch.setattr(tok, "_tok", type("Spy", (), {"encode_batch": lambda self, t: seen.extend(t) or encode_batch(t)})())
    assert tok([text])["input_ids"][0].tolist() == whole
    assert max(len(t) for t in seen) <= 128 * 128 * 101 and sum(map(len, seen)) < len(text)
