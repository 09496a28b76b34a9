"""Item embeddings: shoplake's ``TextEncoder`` against sentence-transformers' ``encode`` on the same texts, same run.

Texts are made by the embedding job's own ``transform_item_texts``: from a generated catalogue (titles and
descriptions, every text distinct — the hard case) and from the REES46 sample's event-derived items (brand and
category only, many texts repeat — the real case). The baseline is sentence-transformers' default call,
``encode(texts)`` (batch 32, fp32); shoplake runs eager and, on large runs, ``torch.compile``d (compile time
reported on its own row and included in that case's total). Every case must agree with the baseline: cosine
≥ 0.999 per item on CPU, ≥ 0.99 in bf16 on a GPU, or the run fails.

On CUDA it also reports tokens/s and the share of the measured bf16 matmul ceiling that the model's FLOPs reach.
Run: ``python -m bench.embeddings --items 8000`` (CPU) or ``--items 1000000`` on a GPU machine.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

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
    lengths = np.array([len(ids) for ids in encoder.tokenize(list(dict.fromkeys(texts)))], dtype=np.float64)
    return float(2 * params * lengths.sum() + 4 * config.num_hidden_layers * config.hidden_size * (lengths**2).sum())


def run_case(name: str, texts: list[str], device: str, compile_large: bool) -> list[Measurement]:
    from sentence_transformers import SentenceTransformer

    from shoplake.encoder import TextEncoder, default_model_path

    tolerance = 0.999 if device == "cpu" else 0.99
    warmup = texts[:256]
    baseline_model = SentenceTransformer(str(default_model_path()), device=device)
    baseline_model.encode(warmup)
    reference: list[np.ndarray] = []
    results = [
        measure(f"{name}: sentence-transformers encode (baseline)", "baseline", len(texts),
                lambda: reference.append(baseline_model.encode(texts)), repeat=1)
    ]  # fmt: skip
    eager = TextEncoder(device=device)
    eager.encode(warmup)
    eager.tokens_seen = 0
    out: list[np.ndarray] = []
    results.append(
        measure(f"{name}: shoplake eager", "shoplake", len(texts), lambda: out.append(eager.encode(texts)), repeat=1)
    )
    cosines = {"eager": min_cosine(out[-1], reference[0])}
    if compile_large:
        compiled = TextEncoder(device=device, compile=True)
        results.append(measure(f"{name}: shoplake compile (one-off)", "shoplake", len(warmup),
                               lambda: compiled.encode(warmup), repeat=1))  # fmt: skip
        results.append(measure(f"{name}: shoplake compiled", "shoplake", len(texts),
                               lambda: out.append(compiled.encode(texts)), repeat=1))  # fmt: skip
        cosines["compiled"] = min_cosine(out[-1], reference[0])
    for path, cosine in cosines.items():
        print(f"{name}: min cosine to sentence-transformers, {path}: {cosine:.6f}")
        if cosine < tolerance:
            raise SystemExit(f"{name} {path}: cosine {cosine:.6f} below {tolerance}: results do not count")
    if device == "cuda":
        eager_seconds = next(m.seconds for m in results if m.case.endswith("eager"))
        flops = model_flops(eager, texts)
        ceiling = matmul_ceiling_tflops()
        print(f"{name}: {eager.tokens_seen / eager_seconds:,.0f} tokens/s; model {flops / eager_seconds / 1e12:.1f} "
              f"TFLOP/s = {flops / eager_seconds / 1e12 / ceiling:.1%} of the measured bf16 matmul ceiling "
              f"({ceiling:.0f} TFLOP/s)")  # fmt: skip
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=8_000, help="generated catalogue items to embed")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from shoplake.encoder import resolve_device

    device = resolve_device(args.device)
    for name, texts, compile_large in (
        ("catalogue", catalogue_texts(args.items), args.compile),
        ("rees46", rees46_texts(), False),  # a few thousand items: compiling would not pay back
    ):
        measurements = run_case(name, texts, device, compile_large)
        distinct = len(set(texts))
        report(f"embeddings_{name}", measurements, reference=measurements[0].case,
               context={"texts": len(texts), "distinct": distinct, "device": device})  # fmt: skip


if __name__ == "__main__":
    main()
