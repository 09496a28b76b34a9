"""Tokenising item texts fast enough to keep a GPU busy: the model's own Rust tokenizer, plus an exact shortcut for
BERT-style (uncased WordPiece) tokenizers such as all-MiniLM-L6-v2's.

On an H200 the model embeds ~150,000 items/s, while the Rust tokenizer manages ~55,000 items/s on 16 cores (it
normalises, splits and WordPiece-encodes every word of every text, and builds a Python object per text). Product
texts repeat their words endlessly, so ``WordCache`` pre-tokenises printable-ASCII texts the way BERT does —
lowercase, split on spaces, each punctuation character a token of its own — and runs the model's WordPiece once
per distinct word. The ids are the Rust tokenizer's exactly (identical on the GPU benchmark's 1,005,657 texts;
the tests compare them on product texts and fuzzed ASCII); any other text (non-ASCII, control characters, a
literal special token such as ``[SEP]``) goes through the Rust tokenizer whole.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from shoplake.errors import ShoplakeError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

MAX_CACHED_WORDS = 2_000_000  # then the cache starts again: memory stays bounded on endless vocabularies


def load_tokenizer(folder: Path, max_length: int) -> Tokenizer:
    """The model's fast (Rust) tokenizer: truncated to the model's length, unpadded (batches are padded later)."""
    from tokenizers import Tokenizer

    tokenizer_file = folder / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise ShoplakeError(f"{folder}: no tokenizer.json (a fast tokenizer is required)")
    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length)
    return tokenizer


@dataclass(frozen=True)
class Tokens:
    """The token ids of consecutive texts, concatenated, with each text's length: cheap to pickle, sort and pack."""

    lengths: np.ndarray  # (texts,) int32
    ids: np.ndarray  # (lengths.sum(),) int32

    @classmethod
    def from_rows(cls, rows: Sequence[Sequence[int]]) -> Tokens:
        lengths = np.fromiter(map(len, rows), dtype=np.int32, count=len(rows))
        ids = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int32, count=int(lengths.sum()))
        return cls(lengths, ids)

    @classmethod
    def concat(cls, parts: Sequence[Tokens]) -> Tokens:
        if len(parts) == 1:
            return parts[0]
        return cls(np.concatenate([p.lengths for p in parts]), np.concatenate([p.ids for p in parts]))

    def __len__(self) -> int:
        return len(self.lengths)


class TextTokenizer:
    """Texts → ``Tokens`` with the model's tokenizer, through ``WordCache`` wherever that is exact."""

    def __init__(self, folder: Path, max_length: int) -> None:
        self.rust = load_tokenizer(folder, max_length)
        self.word_cache = WordCache.for_tokenizer(self.rust, max_length)

    def tokenize(self, texts: Sequence[str]) -> Tokens:
        if self.word_cache is None:
            return Tokens.from_rows([e.ids for e in self.rust.encode_batch_fast(list(texts))])
        rows: list[Any] = [self.word_cache.ids(text) for text in texts]
        rest = [i for i, row in enumerate(rows) if row is None]
        if rest:
            for i, encoding in zip(rest, self.rust.encode_batch_fast([texts[i] for i in rest]), strict=True):
                rows[i] = encoding.ids
        return Tokens.from_rows(rows)


class WordCache:
    """BERT's uncased pipeline for printable-ASCII text, with each distinct word's WordPiece ids remembered.

    For such text BERT's normaliser only lowercases (nothing to clean, no accents, no CJK), and its pre-tokeniser
    splits on spaces and isolates every ASCII punctuation character — which ``WORDS`` does in one regex pass."""

    WORDS = re.compile(r"[a-z0-9]+|[^a-z0-9 ]")

    def __init__(self, tokenizer: Tokenizer, max_length: int, prefix: list[int], suffix: list[int]) -> None:
        self.wordpiece = tokenizer.model
        self.prefix, self.suffix = prefix, suffix
        self.room = max(max_length - len(prefix) - len(suffix), 0)  # the pieces truncation keeps
        # lower-cased once: in lower-cased ASCII text they are found whether written [SEP] or [sep]
        self.special = [token.content.lower() for token in tokenizer.get_added_tokens_decoder().values()]
        self.cache: dict[str, list[int]] = {}

    @classmethod
    def for_tokenizer(cls, tokenizer: Tokenizer, max_length: int) -> WordCache | None:
        """A cache for ``tokenizer`` when it is exactly the pipeline this reproduces, else None."""
        config = json.loads(tokenizer.to_str())
        normalizer, post = config.get("normalizer") or {}, config.get("post_processor") or {}
        truncation = config.get("truncation") or {}
        if not (
            normalizer.get("type") == "BertNormalizer"
            and normalizer.get("lowercase") is True
            and normalizer.get("clean_text") is True
            and (config.get("pre_tokenizer") or {}).get("type") == "BertPreTokenizer"
            and config["model"].get("type") == "WordPiece"
            and truncation.get("direction", "Right") == "Right"
            and post.get("type") == "TemplateProcessing"
        ):
            return None
        single = post["single"]
        shape = ["SpecialToken" if "SpecialToken" in part else "Sequence" for part in single]
        if shape != ["SpecialToken", "Sequence", "SpecialToken"]:
            return None
        prefix, suffix = (post["special_tokens"][single[i]["SpecialToken"]["id"]]["ids"] for i in (0, 2))
        return cls(tokenizer, max_length, list(prefix), list(suffix))

    def ids(self, text: str) -> list[int] | None:
        """The text's token ids, or None when the text is not one this reproduces exactly."""
        if not (text.isascii() and text.isprintable()):
            return None
        lowered = text.lower()
        if any(token in lowered for token in self.special):
            return None
        cache, pieces = self.cache, []
        for word in self.WORDS.findall(lowered):
            ids = cache.get(word)
            if ids is None:
                if len(cache) >= MAX_CACHED_WORDS:
                    cache.clear()
                ids = cache[word] = [token.id for token in self.wordpiece.tokenize(word)]
            pieces += ids
        return self.prefix + pieces[: self.room] + self.suffix


_worker: TextTokenizer | None = None


def start_worker(folder: str, max_length: int) -> None:
    """A tokenizer process's initialiser: one ``TextTokenizer`` per process, its word cache kept between tasks."""
    global _worker
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one process per core already
    _worker = TextTokenizer(Path(folder), max_length)


def tokenize_in_worker(texts: list[str]) -> Tokens:
    assert _worker is not None, "start_worker was not run in this process"
    return _worker.tokenize(texts)
