"""Tokenization with the `tokenizers` library from the bundle's tokenizer.json (no transformers)."""

from __future__ import annotations

import itertools
import re
import threading
from collections import OrderedDict
from typing import Sequence

import numpy as np

from fusionrt.runtime.errors import BundleError, InputError

__all__ = ["TextTokenizer", "TOKEN_NAMES", "check_text", "clip_text"]

# What the tokenizer gives, under the names Hugging Face models (and so the exported text encoders) take.
TOKEN_NAMES = ("input_ids", "attention_mask")
TOKEN_MEMO = 256  # texts whose token ids are kept (LRU)
WORD_CHARS = 101  # WordPiece makes any word past 100 characters one [UNK]: no token spans more, with its separator
_WORD = re.compile(r"\S+")


class TextTokenizer:
    """Turns texts into `input_ids` and `attention_mask` (int64, padded to the longest text in the batch).

    Padding and truncation are set here explicitly: some shipped tokenizer.json files pad to a
    fixed length, which would waste the text encoder's time on padding.
    """

    def __init__(self, source, max_seq_len: int):
        """source: a tokenizer.json path, or its bytes (what `Bundle.read` checked)."""
        from tokenizers import Tokenizer

        what = "the bundle's tokenizer.json" if isinstance(source, (bytes, bytearray)) else f"tokenizer file '{source}'"
        try:
            self._tok = Tokenizer.from_str(bytes(source).decode("utf-8")) if isinstance(source, (bytes, bytearray)) \
                else Tokenizer.from_file(str(source))
        except Exception as exc:  # tokenizers raises its own Exception subclass; bad UTF-8 a UnicodeDecodeError
            raise BundleError(f"{what} could not be read ({exc}); expected a Hugging Face tokenizer.json.") from exc
        self.max_seq_len = max_seq_len
        pad_token = self._tok.padding["pad_token"] if self._tok.padding else "[PAD]"
        pad_id = self._tok.token_to_id(pad_token)
        self.pad_id = 0 if pad_id is None else pad_id
        self._tok.no_padding()
        self._tok.enable_truncation(max_length=max_seq_len)
        self._known: OrderedDict = OrderedDict()  # text -> its token ids: a camera's text is tokenized once
        self._lock = threading.Lock()

    def _ids(self, texts: list) -> list:
        """Each text's token ids (a list per text), from the memo or the tokenizer (the new ones in one call)."""
        with self._lock:
            found = {t: self._known[t] for t in texts if t in self._known}
            for t in found:
                self._known.move_to_end(t)
        new = [t for t in dict.fromkeys(texts) if t not in found]
        if new:
            for t, enc in zip(new, self._tok.encode_batch(new)):
                found[t] = enc.ids
            with self._lock:
                self._known.update((t, found[t]) for t in new)
                while len(self._known) > TOKEN_MEMO:
                    self._known.popitem(last=False)
        return [found[t] for t in texts]

    def __call__(self, texts: Sequence[str], pad_to: int | None = None, pad_multiple: int | None = None) -> dict:
        """Return {'input_ids', 'attention_mask'} as (N, L) int64; L = longest text, or `pad_to`, or the longest
        rounded up to a multiple of `pad_multiple` (at most max_seq_len): batches of similar texts then share a shape."""
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, Sequence) or isinstance(texts, (bytes, bytearray)):
            raise InputError(f"expected a list of texts (str), found {type(texts).__name__}.")
        if len(texts) == 0:
            raise InputError("expected at least one text, found an empty list.")
        for i, t in enumerate(texts):
            where = f"text {i} of the batch of {len(texts)}: " if len(texts) > 1 else ""
            check_text(t, where)
        encodings = self._ids([clip_text(t, self.max_seq_len) for t in texts])
        length = max(len(ids) for ids in encodings)
        if pad_multiple:
            length = min(-(-length // pad_multiple) * pad_multiple, max(self.max_seq_len, length))
        if pad_to is not None:
            if pad_to < length:
                raise InputError(f"pad_to={pad_to} is shorter than the longest tokenized text ({length}).")
            length = pad_to
        ids = np.full((len(encodings), length), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(encodings), length), dtype=np.int64)
        for i, row in enumerate(encodings):
            ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
        return {"input_ids": ids, "attention_mask": mask}


def clip_text(text: str, max_tokens: int) -> str:
    """What truncation to `max_tokens` tokens keeps of `text`, without tokenizing (or memoizing) a 10 MB caption
    whole: every token lies inside one whitespace-separated word, so the first max_tokens words hold them, each cut
    to max_tokens * WORD_CHARS characters, and the whitespace between them cut to WORD_CHARS (a run of it separates
    words the same). Exact for WordPiece (the BERT family) short of words that long, where the last token may differ.
    """
    limit = max_tokens * WORD_CHARS
    if len(text) <= limit:
        return text
    pieces, start = [], 0
    for word in itertools.islice(_WORD.finditer(text), max_tokens):
        pieces += [text[start:min(word.start(), start + WORD_CHARS)], text[word.start():min(word.end(), word.start() + limit)]]
        start = word.end()
    return "".join(pieces)


def check_text(text, where: str) -> None:
    if not isinstance(text, str):
        raise InputError(f"{where}expected text as str, found {type(text).__name__}.")
    if not text.strip():
        raise InputError(f"{where}expected a non-empty text, found an empty or blank string. Pass a description or label "
                         "text.")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates: bytes that were not UTF-8, decoded with surrogateescape
        raise InputError(f"{where}expected valid Unicode text, found a lone surrogate ({text[exc.start]!r}) at "
                         f"character {exc.start}: the text was made from bytes that are not UTF-8. Decode those bytes "
                         "with errors='replace' (or fix their encoding) before classifying.") from None

