"""Whatever a caller hands the runtime, it answers with a result or a FusionRTError, never another exception:
images of any dtype, shape and channel count; any str (lone surrogates, control characters, very long); manifests
with any value mutated or removed (hypothesis generates the cases)."""

import copy
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fusionrt.runtime.errors import BundleError, FusionRTError, InputError
from fusionrt.runtime.manifest import Manifest, PreprocessSpec
from fusionrt.runtime.preprocess import preprocess, preprocess_batch
from fusionrt.runtime.tokenize import TextTokenizer
from tests.conftest import minilm_dir

SPEC = PreprocessSpec(16, 16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
DTYPES = st.one_of(hnp.scalar_dtypes(), st.just(np.dtype(object)), st.just(np.dtype("U3")))
IMAGES = hnp.arrays(DTYPES, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6))
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(IMAGES)
def test_preprocessing_any_array_gives_pixels_or_an_input_error(image):
    try:
        out = preprocess(image, SPEC)
    except InputError:
        return
    assert out.shape == (3, 16, 16) and out.dtype == np.float32 and np.isfinite(out).all()
    assert image.dtype in (np.uint8, np.uint16)  # nothing else is taken as pixels


@SETTINGS
@given(st.lists(st.one_of(IMAGES, st.none(), st.integers(), st.text(max_size=5)), min_size=1, max_size=3))
def test_a_bad_image_in_a_batch_is_named_by_its_index(images):
    try:
        preprocess_batch(images, SPEC)
    except InputError as exc:
        if len(images) > 1:
            assert str(exc).startswith("image ") and " of the batch of " in str(exc)


@pytest.fixture(scope="module")
def tokenizer():
    return TextTokenizer(minilm_dir() / "tokenizer.json", max_seq_len=32)


SURROGATES = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
ANY_TEXT = st.text(alphabet=st.characters(codec=None, exclude_categories=()) | SURROGATES | st.sampled_from("\0\x1b\t\n"),
                   max_size=300)


@SETTINGS
@given(st.lists(ANY_TEXT | st.text(max_size=3).map(lambda t: t * 2000), min_size=1, max_size=4) |
       st.lists(st.one_of(ANY_TEXT, st.none(), st.integers(), st.binary(max_size=4)), min_size=1, max_size=4))
def test_tokenizing_any_text_gives_tokens_or_an_input_error(tokenizer, texts):
    try:
        tokens = tokenizer(texts)
    except InputError as exc:
        bad = [t for t in texts if not isinstance(t, str) or not t.strip() or _surrogate(t)]
        assert bad, f"refused valid texts: {exc}"
        return
    assert tokens["input_ids"].shape[0] == len(texts) and tokens["input_ids"].shape[1] <= 32


def _surrogate(text: str) -> bool:
    return any(0xD800 <= ord(c) <= 0xDFFF for c in text)


def test_a_lone_surrogate_is_refused_naming_the_text_and_the_fix(tokenizer):
    bad = b"caf\xe9 sign".decode("utf-8", "surrogateescape")  # a Latin-1 argument on a UTF-8 system
    with pytest.raises(InputError, match=r"text 1 of the batch of 2: expected valid Unicode text, found a lone "
                                         r"surrogate \('\\udce9'\) at character 3: .* errors='replace'"):
        tokenizer(["fine", bad])


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                    max_leaves=8)


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, prefix + (key,))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths(item, prefix + (index,))


@pytest.fixture(scope="module")
def manifest_dict(tiny_bundle):
    return json.loads((tiny_bundle / "manifest.json").read_text())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_mutated_manifest_loads_or_raises_a_bundle_error(manifest_dict, data):
    mutated = copy.deepcopy(manifest_dict)
    for _ in range(data.draw(st.integers(1, 3))):
        paths = [p for p in _paths(mutated) if p]
        path = data.draw(st.sampled_from(paths))
        parent = mutated
        for key in path[:-1]:
            parent = parent[key]
        if data.draw(st.booleans()):
            parent[path[-1]] = data.draw(JSON)
        elif isinstance(parent, dict):
            del parent[path[-1]]
    try:
        Manifest.from_dict(mutated)
    except BundleError:
        pass


def test_a_manifest_file_of_any_bytes_is_a_bundle_error(tmp_path):
    for content in (b"", b"\xff\xfe", b"[1, 2]", b'{"schema_version": 1}', b"null", b"{" * 5):
        (tmp_path / "manifest.json").write_bytes(content)
        with pytest.raises(FusionRTError):
            Manifest.read(tmp_path)
