"""The word-cache shortcut must give exactly the ids of the model's own Rust tokenizer, or step aside."""

from __future__ import annotations

import json
import random
import string

import numpy as np
import pytest

from shoplake.encoder import default_model_path
from shoplake.tokenization import TextTokenizer, Tokens, WordCache, load_tokenizer

MAX_LENGTH = 256
PRINTABLE_ASCII = string.ascii_letters + string.digits + string.punctuation + " " * 12


@pytest.fixture(scope="module")
def tokenizer() -> TextTokenizer:
    return TextTokenizer(default_model_path(), MAX_LENGTH)


def rust_tokens(tokenizer: TextTokenizer, texts: list[str]) -> Tokens:
    return Tokens.from_rows([encoding.ids for encoding in tokenizer.rust.encode_batch_fast(texts)])


def assert_same_tokens(ours: Tokens, theirs: Tokens) -> None:
    assert ours.lengths.tolist() == theirs.lengths.tolist()
    np.testing.assert_array_equal(ours.ids, theirs.ids)


def test_word_cache_ids_equal_the_rust_tokenizers_on_product_texts_and_fuzz(tokenizer):
    rng = random.Random(7)
    products = [
        "Tefal Kettle 1.7 l. brand: tefal. category: appliances > kitchen > water heater. Boils fast. colour: white",
        "Samsung Galaxy A50 (SM-A505F/DS), 64GB; 4,000mAh -- \"dual SIM\" @ $199.99 #1 [new] {sale} ~50% off!",
        "brand: l'oreal. category: beauty > skincare_face", "x" * 150 + " long-word", "", "   ", "a  b",
    ]  # fmt: skip
    fuzz = ["".join(rng.choice(PRINTABLE_ASCII) for _ in range(rng.randint(0, 400))) for _ in range(3_000)]
    truncated = ["word " * 400, "ab, " * 300 + "tail"]  # longer than 256 tokens: cut as the Rust tokenizer cuts
    texts = products + fuzz + truncated
    assert all(tokenizer.word_cache.ids(text) is not None for text in texts)  # every one takes the shortcut
    assert_same_tokens(tokenizer.tokenize(texts), rust_tokens(tokenizer, texts))
    assert tokenizer.tokenize(truncated).lengths.tolist() == [MAX_LENGTH, MAX_LENGTH]


def test_texts_the_shortcut_cannot_reproduce_go_to_the_rust_tokenizer(tokenizer):
    texts = [
        "无线蓝牙耳机 降噪", "מכונת קפה", "🎁 gift box", "Crème brûlée set", "naïve",  # non-ASCII
        "tab\there", "line\nbreak", "bell\x07inside",  # whitespace and control characters BERT cleans
        "a [SEP] b", "[MASK] of zorro", "[cls] lower case",  # literal special tokens
    ]  # fmt: skip
    assert [tokenizer.word_cache.ids(text) for text in texts] == [None] * len(texts)
    mixed = [t for pair in zip(texts, [f"plain text {i}" for i in range(len(texts))], strict=True) for t in pair]
    assert_same_tokens(tokenizer.tokenize(mixed), rust_tokens(tokenizer, mixed))


def test_a_tokenizer_other_than_uncased_bert_gets_no_shortcut(tmp_path):
    config = json.loads((default_model_path() / "tokenizer.json").read_text())
    config["normalizer"]["lowercase"] = False  # a cased model: the regex would split differently
    (tmp_path / "tokenizer.json").write_text(json.dumps(config))
    cased = TextTokenizer(tmp_path, MAX_LENGTH)
    assert cased.word_cache is None
    texts = ["Tefal Kettle", "SONY headphones, 2 pcs"]
    assert_same_tokens(cased.tokenize(texts), rust_tokens(cased, texts))
    assert WordCache.for_tokenizer(load_tokenizer(default_model_path(), MAX_LENGTH), MAX_LENGTH) is not None
