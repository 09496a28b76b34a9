"""Item embeddings: shoplake's ``TextEncoder`` against sentence-transformers' ``encode`` on the same texts, same run.

Texts are made by the embedding job's own ``transform_item_texts``: from a generated catalogue (titles and
descriptions, every text distinct — the hard case) and from the REES46 sample's event-derived items (brand and
category only, many texts repeat — the real case). The baseline is sentence-transformers' default call,
``encode(texts)`` (batch 32, fp32); shoplake runs eager and, on large CPU runs, ``torch.compile``d (compile time
reported on its own row; on a GPU the encoder stays eager). Every case must agree with the baseline: cosine
≥ 0.999 per item on CPU, ≥ 0.99 in bf16 on a GPU, or the run fails.

On CPU the catalogue's texts are cut into four slices (``--rounds``), and each slice goes through the baseline,
eager and compiled in turn before the next: this VM's speed drifts by ±15 % during a run, and interleaved rounds
let the drift weigh on every side alike (each round's ratios are printed, their sums make the table).

Each shoplake case also reports how long its model loop waited for batches (on a GPU, the time when tokenisation or
packing, the read-ahead thread, and not the model was the bottleneck) and how long it took after that loop to copy
repeats and, on a GPU, the vectors back (which includes the batches still queued there). On CUDA it also reports
tokenisation alone, the model alone (on the same batches, packed beforehand: the bound end to end approaches; with
the count of synchronising CUDA calls in its loop, which should be 0), tokens/s and the share of the measured bf16
matmul ceiling that the model's FLOPs reach. The main row's encoder has its tokenizer processes running already (the
tokenisation row started them); ``--sweep`` adds rows of fresh encoders, whose processes start inside the timing, at
a few batch budgets and process counts (``SWEEP``). Ratios are speeds (items/s ÷ the baseline's), so the slow
baseline may run on a prefix of the texts (``--baseline-items``); the agreement check then covers that prefix.

Run: ``python -m bench.embeddings --items 8000`` (CPU). A GPU machine needs no Spark or model package: here,
``--items 1000000 --save-texts DIR --save-model FOLDER`` writes the texts and a copy of the model with its weights
stored as fp16 (half the bytes, for a transfer limit; the baseline still runs them in fp32); there,
``--texts DIR --model FOLDER --device cuda --baseline-items 100000 --sweep``.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bench.common import Measurement, measure, report

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "rees46" / "2019-Oct-first-3h.csv"


def catalogue_texts(items: int) -> list[str]:
    """Texts of a generated catalogue, as the embedding job builds them."""
    import datetime as dt

    from shoplake.generate import generate_shop
    from shoplake.spark import get_spark
    from spark_jobs.embed_items import transform_item_texts
    from spark_jobs.items import read_catalog, transform_catalog

    spark = get_spark("bench-embeddings")
    with tempfile.TemporaryDirectory() as tmp:
        shop = generate_shop(Path(tmp), events=1_000, days=1, items=items, seed=7)
        typed = transform_catalog(read_catalog(spark, str(shop.catalog_file)), dt.datetime.now(dt.UTC))
        rows = transform_item_texts(typed).orderBy("item_id").select("text").toArrow()
    return [t for t in rows.column("text").to_pylist() if t]


def rees46_texts() -> list[str]:
    """Texts of the REES46 sample's items (derived from events: brand and category path)."""
    import datetime as dt

    from pyspark.sql import functions as F

    from shoplake.spark import get_spark
    from spark_jobs.columns import blank_to_null
    from spark_jobs.embed_items import transform_item_texts
    from spark_jobs.items import transform_items_from_events

    spark = get_spark("bench-embeddings")
    raw = spark.read.option("header", True).csv(str(SAMPLE))
    events = raw.select(
        F.col("product_id").try_cast("long").alias("product_id"),
        F.col("category_id").try_cast("long").alias("category_id"),
        blank_to_null("category_code").alias("category_code"),
        blank_to_null("brand").alias("brand"),
        F.col("price").try_cast("double").alias("price"),
        F.to_timestamp(F.substring("event_time", 1, 19)).alias("event_time"),
    ).filter(F.col("product_id").isNotNull())
    items = transform_items_from_events(events, dt.datetime.now(dt.UTC))
    rows = transform_item_texts(items).orderBy("item_id").select("text").toArrow()
    return [t for t in rows.column("text").to_pylist() if t]


def save_half_precision_model(folder: Path) -> None:
    """A copy of the bundled model folder whose weights are stored as fp16 (loaded in any precision)."""
    import shutil

    from safetensors.torch import load_file, save_file

    from shoplake.encoder import default_model_path

    source = default_model_path()
    shutil.copytree(source, folder, dirs_exist_ok=True, ignore=shutil.ignore_patterns("model.safetensors"))
    weights = load_file(source / "model.safetensors")
    half = {name: w.half() if w.is_floating_point() else w for name, w in weights.items()}
    save_file(half, folder / "model.safetensors", metadata={"format": "pt"})


def min_cosine(ours: np.ndarray, reference: np.ndarray) -> float:
    reference = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    return float((ours * reference).sum(axis=1).min())


def matmul_ceiling_tflops() -> float:
    import torch

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    began, runs = time.perf_counter(), 20
    for _ in range(runs):
        a @ b
    torch.cuda.synchronize()
    return 2 * 8192**3 * runs / (time.perf_counter() - began) / 1e12


def model_flops(encoder, texts: list[str]) -> float:
    """Forward FLOPs: 2 · (non-embedding parameters) per token plus attention's 4 · layers · hidden · length²."""
    config = encoder.model.config
    params = sum(p.numel() for name, p in encoder.model.named_parameters() if "embeddings" not in name)
    lengths = encoder.tokenize(list(dict.fromkeys(texts))).lengths.astype(np.float64)
    return float(2 * params * lengths.sum() + 4 * config.num_hidden_layers * config.hidden_size * (lengths**2).sum())


def model_alone(case: str, encoder, texts: list[str]) -> tuple[Measurement, int]:
    """The encoder's model loop on batches tokenised and packed beforehand (held in memory): the bound that end to
    end approaches when tokenisation and packing keep up. Rows count every text, as end to end's do.

    Also returns how many synchronising calls CUDA's own check (``torch.cuda.set_sync_debug_mode``) saw in the
    loop: the CPU test counts host reads op by op, this counts them on the GPU itself; it should be 0."""
    import warnings

    import torch

    from shoplake.encoder import Throughput

    distinct = list(dict.fromkeys(texts))
    batches = list(encoder._batches(distinct, np.arange(len(distinct))))  # the very batches ``encode`` would make
    out = torch.empty((len(distinct), encoder.dim), device=encoder.device)
    cuda = encoder.device == "cuda"
    syncs: list[warnings.WarningMessage] = []

    def forward_all() -> None:  # ``encode``'s own loop, minus the read-ahead
        with torch.inference_mode(), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")  # every synchronising call, not only the first
            if cuda:
                torch.cuda.set_sync_debug_mode("warn")
            try:
                encoder._embed_batches(iter(batches), out, Throughput(len(texts), len(distinct), enabled=False))
            finally:
                if cuda:
                    torch.cuda.set_sync_debug_mode("default")
                    torch.cuda.synchronize()
        syncs.extend(w for w in caught if "synchroniz" in str(w.message))

    return measure(case, "shoplake", len(texts), forward_all, repeat=1), len(syncs)


WARMUP_TEXTS = 256  # embedded before timing: too few for the tokenizer processes, which start in the timed call
# (batch token budget, tokenizer processes; None: the encoder's default) for ``--sweep``
SWEEP = ((131_072, None), (131_072, 6), (131_072, 10), (65_536, None), (262_144, None))


def fresh_encoders(name: str, texts: list[str], model: Path, device: str) -> list[Measurement]:
    """End to end with a new encoder per ``SWEEP`` setting: its tokenizer processes start and their word caches
    fill inside the timing, as in one ``shoplake embed`` run (the main row's encoder has tokenised these texts
    once already). The bench runs it on a GPU only, where these settings matter; each row is against the same
    run's baseline."""
    import functools

    import torch

    from shoplake.encoder import TextEncoder

    rows = []
    for batch_tokens, processes in SWEEP:
        encoder = TextEncoder(model, device=device, batch_tokens=batch_tokens, tokenizer_processes=processes)
        encoder.encode(texts[:WARMUP_TEXTS])
        processes = encoder.tokenizer_processes
        case = f"{name}: shoplake fresh encoder, {batch_tokens:,}-token batches, {processes} processes"
        rows.append(measure(case, "shoplake", len(texts), functools.partial(encoder.encode, texts), repeat=1))
        print(f"{case}: waited {encoder.last_wait_seconds:.2f} s of its {rows[-1].seconds:.2f} s for batches, "
              f"{encoder.last_finish_seconds:.2f} s finishing")  # fmt: skip
        encoder.close()
        del encoder
        if device == "cuda":
            torch.cuda.empty_cache()
    return rows


def summed(parts: list[Measurement]) -> Measurement:
    """One side's row over several rounds: seconds and rows added up, the highest peak memory."""
    return Measurement(parts[0].case, parts[0].role, sum(p.seconds for p in parts), sum(p.rows for p in parts),
                       max(p.peak_python_rss_mb for p in parts))  # fmt: skip


def measure_encode(
    case: str, role: str, texts: list[str], encode: Callable[[list[str]], np.ndarray], vectors: list[np.ndarray]
) -> Measurement:
    """One timed call of ``encode(texts)``; its vectors are appended to ``vectors``."""
    return measure(case, role, len(texts), lambda: vectors.append(encode(texts)), repeat=1)


def run_case(
    name: str,
    texts: list[str],
    device: str,
    model: Path,
    *,
    compile_large: bool,
    baseline_items: int | None,
    rounds: int = 1,
    sweep: bool = False,
) -> list[Measurement]:
    """Every side on the same texts. With ``rounds`` > 1 the texts are cut into that many slices and each slice
    goes through every side in turn (baseline, eager, compiled) before the next: a VM that slows down or speeds up
    during the run then weighs on all sides alike. Each side's row adds up its rounds."""
    import torch
    from sentence_transformers import SentenceTransformer

    from shoplake.encoder import TextEncoder

    tolerance = 0.999 if device == "cpu" else 0.99
    warmup = texts[:WARMUP_TEXTS]
    baseline_texts = texts[:baseline_items] if baseline_items else texts
    # fp32, as sentence-transformers' default is, whatever precision the folder's weights are stored in
    baseline_model = SentenceTransformer(str(model), device=device, model_kwargs={"dtype": torch.float32})
    baseline_model.encode(warmup)
    eager = TextEncoder(model, device=device)
    eager.encode(warmup)
    tokenisation = model_only = compilation = None
    if device == "cuda":
        tokenisation = measure(f"{name}: shoplake tokenisation alone", "shoplake", len(texts),
                               lambda: eager.tokenize(texts), repeat=1)  # fmt: skip
        model_only, model_syncs = model_alone(f"{name}: shoplake model alone (batches packed beforehand)", eager,
                                              texts)  # fmt: skip
    encoders = {"eager": eager}
    if compile_large:
        compiled = encoders["compiled"] = TextEncoder(model, device=device, compile=True)
        compilation = measure(f"{name}: shoplake compile (one-off)", "shoplake", len(warmup),
                              lambda: compiled.encode(warmup), repeat=1)  # fmt: skip
    eager.tokens_seen = 0
    sides: dict[str, Callable[[list[str]], np.ndarray]] = {
        "baseline": lambda chunk: np.asarray(baseline_model.encode(chunk)),
        **{path: encoder.encode for path, encoder in encoders.items()},
    }
    cases = {"baseline": f"{name}: sentence-transformers encode (baseline)"} | {
        path: f"{name}: shoplake {path}" for path in encoders
    }
    parts: dict[str, list[Measurement]] = {side: [] for side in sides}
    vectors: dict[str, list[np.ndarray]] = {side: [] for side in sides}
    waited, finishing = dict.fromkeys(encoders, 0.0), dict.fromkeys(encoders, 0.0)
    for r in range(rounds):
        for side, encode in sides.items():
            side_texts = baseline_texts if side == "baseline" else texts
            chunk = side_texts[r * len(side_texts) // rounds : (r + 1) * len(side_texts) // rounds]
            role = "baseline" if side == "baseline" else "shoplake"
            parts[side].append(measure_encode(cases[side], role, chunk, encode, vectors[side]))
            if side in encoders:
                waited[side] += encoders[side].last_wait_seconds
                finishing[side] += encoders[side].last_finish_seconds
    if rounds > 1:
        for path in encoders:
            speeds = [
                p.rows_per_second / b.rows_per_second for p, b in zip(parts[path], parts["baseline"], strict=True)
            ]
            print(f"{name}: {path} speed ÷ baseline per round: " + ", ".join(f"{s:.2f}" for s in speeds))
    rows = {side: summed(measured) for side, measured in parts.items()}
    reference = np.concatenate(vectors["baseline"])
    for path in encoders:
        cosine = min_cosine(np.concatenate(vectors[path])[: len(baseline_texts)], reference)
        print(f"{name}: min cosine to sentence-transformers over {len(baseline_texts):,} texts, {path}: {cosine:.6f}")
        if cosine < tolerance:
            raise SystemExit(f"{name} {path}: cosine {cosine:.6f} below {tolerance}: results do not count")
    waiting = "the read-ahead thread was behind" if device == "cuda" else "tokenising and packing in-process"
    if device == "cpu":
        print(f"{name}: linear layers: " + ", ".join(f"{path} on {e.cpu_linears}" for path, e in encoders.items()))
    for path in encoders:
        print(f"{name}: shoplake {path} waited {waited[path]:.2f} s of its {rows[path].seconds:.2f} s for batches "
              f"({waiting}), {finishing[path]:.2f} s finishing (repeats copied, vectors copied back)")  # fmt: skip
    if device == "cuda":
        flops = model_flops(eager, texts)
        ceiling = matmul_ceiling_tflops()
        seconds = rows["eager"].seconds
        print(f"{name}: {eager.tokens_seen / seconds:,.0f} tokens/s; model {flops / seconds / 1e12:.1f} "
              f"TFLOP/s = {flops / seconds / 1e12 / ceiling:.1%} of the measured bf16 matmul ceiling "
              f"({ceiling:.0f} TFLOP/s)")  # fmt: skip
        print(f"{name}: shoplake eager end to end ran at {model_only.seconds / seconds:.0%} of its model alone's "
              f"speed; synchronising CUDA calls in the model's loop: {model_syncs}")  # fmt: skip
    for encoder in encoders.values():
        encoder.close()
    table = [rows["baseline"], tokenisation, model_only, rows["eager"], compilation, rows.get("compiled")]
    if sweep and device == "cuda":
        table += fresh_encoders(name, texts, model, device)
    return [row for row in table if row is not None]


def load_texts(args: argparse.Namespace) -> dict[str, list[str]]:
    """The two cases' texts: built with Spark (``catalogue_texts``, ``rees46_texts``) or read from ``--texts``."""
    if args.texts:
        return {name: pq.read_table(args.texts / f"{name}.parquet").column("text").to_pylist()
                for name in ("catalogue", "rees46")}  # fmt: skip
    return {"catalogue": catalogue_texts(args.items), "rees46": rees46_texts()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=8_000, help="generated catalogue items to embed")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--model", type=Path, help="encoder folder (default: the bundled all-MiniLM-L6-v2)")
    parser.add_argument("--baseline-items", type=int, help="run the baseline on the first N texts only")
    parser.add_argument("--rounds", type=int, help="slices of the catalogue texts, each run by every side in "
                        "turn (default: 4 on CPU, 1 on a GPU)")  # fmt: skip
    parser.add_argument("--sweep", action="store_true", help="on a GPU, also time the catalogue end to end with "
                        "a fresh encoder per setting in SWEEP (batch token budget, tokenizer processes)")  # fmt: skip
    parser.add_argument("--texts", type=Path, help="read the texts --save-texts wrote instead of building them")
    parser.add_argument("--save-texts", type=Path, help="write the texts (Parquet) to this folder and stop")
    parser.add_argument("--save-model", type=Path, help="with --save-texts: also write the model, fp16-stored")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    texts = load_texts(args)
    if args.save_texts:
        args.save_texts.mkdir(parents=True, exist_ok=True)
        for name, rows in texts.items():
            pq.write_table(pa.table({"text": rows}), args.save_texts / f"{name}.parquet", compression="zstd",
                           compression_level=19)  # fmt: skip
        print(f"texts written to {args.save_texts}: " + ", ".join(f"{k} {len(v):,}" for k, v in texts.items()))
        if args.save_model:
            save_half_precision_model(args.save_model)
            print(f"model written to {args.save_model}")
        return
    from shoplake.encoder import default_model_path, resolve_device

    device = resolve_device(args.device)
    model = args.model or default_model_path()
    # Rounds on CPU, where the VM's speed drifts during a run; a GPU run stays one call (its tokenizer processes,
    # read-ahead and packing windows are what is measured). REES46 is one round: its repeats are de-duplicated.
    rounds = args.rounds or (4 if device == "cpu" else 1)
    # compiling pays only on CPU (the encoder runs eager on a GPU), and only for the large case
    for name, compile_large in (("catalogue", args.compile and device == "cpu"), ("rees46", False)):
        measurements = run_case(name, texts[name], device, model, compile_large=compile_large,
                                baseline_items=args.baseline_items if name == "catalogue" else None,
                                rounds=rounds if name == "catalogue" else 1,
                                sweep=args.sweep and name == "catalogue")  # fmt: skip
        report(f"embeddings_{name}", measurements, reference=measurements[0].case, by_rate=True,
               context={"texts": len(texts[name]), "distinct": len(set(texts[name])), "device": device,
                        "model": str(model)})  # fmt: skip


if __name__ == "__main__":
    main()
