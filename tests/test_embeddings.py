"""Item texts, the encoder against sentence-transformers, and the incremental embedding job."""

from __future__ import annotations

import datetime as dt
import hashlib
import json

import numpy as np
import pytest

from shoplake import storage
from shoplake.catalog import ITEM_EMBEDDINGS, ITEMS
from shoplake.encoder import ModelSpec, TextEncoder, default_model_path, pack_batches, resolve_device
from shoplake.errors import ShoplakeError
from shoplake.tokenization import Tokens
from spark_jobs.embed_items import MAX_DESCRIPTION_CHARS, run_embed, transform_item_texts

AT = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
HUGE = "word " * 200_000  # a 1 MB description
AWKWARD_TEXTS = [
    "Sony wireless headphones. brand: sony. category: electronics > audio > headphone",
    "🎁🧸 gift box for kids 🎉",
    "מכונת קפה אוטומטית עם מטחנה",  # right-to-left
    "无线蓝牙耳机 降噪",  # CJK
    "x",
    HUGE,
]


def item(item_id, title=None, description=None, category_code=None, brand=None, attributes=None, price=9.5):
    return (item_id, title, description, None, category_code, brand, price, attributes, "catalog", AT)


def write_items(spark, rows):
    storage.merge_table(spark.createDataFrame(rows, ITEMS.schema), ITEMS, run_id="test")


def test_item_text_reads_like_a_product_and_leaves_price_out(spark):
    rows = [
        item(1, "Tefal Kettle 1.7 l", "Boils  fast.\nAuto off.", "appliances.kitchen.water_heater", "tefal",
             json.dumps({"watts": 2200, "colour": "white"}), price=29.9),
        item(2, brand="shiseido", category_code="beauty.skincare"),
        item(3),
        item(4, title="Mug", attributes="not json"),
    ]  # fmt: skip
    got = {r.item_id: r for r in transform_item_texts(spark.createDataFrame(rows, ITEMS.schema)).collect()}
    expected = (
        "Tefal Kettle 1.7 l. brand: tefal. category: appliances > kitchen > water heater. Boils fast. Auto off.. "
        "colour: white, watts: 2200"
    )
    assert got[1].text == expected
    assert got[1].content_hash == hashlib.sha256(expected.encode()).hexdigest()
    assert got[2].text == "brand: shiseido. category: beauty > skincare"
    assert got[3].text == ""  # nothing known: reported by the job, not embedded
    assert got[4].text == "Mug"  # an attribute value that is not a JSON object adds nothing


def test_huge_and_unusual_descriptions_become_bounded_texts(spark):
    rows = [item(i, title=f"t{i}", description=text) for i, text in enumerate(AWKWARD_TEXTS)]
    got = {r.item_id: r.text for r in transform_item_texts(spark.createDataFrame(rows, ITEMS.schema)).collect()}
    assert len(got[5]) <= MAX_DESCRIPTION_CHARS + 10
    assert got[1] == "t1. 🎁🧸 gift box for kids 🎉"
    assert got[2].endswith("מכונת קפה אוטומטית עם מטחנה") and got[3].endswith("无线蓝牙耳机 降噪")


@pytest.mark.parametrize("linears", ["MKL", "oneDNN"])
def test_the_encoder_matches_sentence_transformers_on_cpu(linears, monkeypatch):
    """Whichever library this machine's CPU gets for the linear layers, both are held to the reference."""
    from sentence_transformers import SentenceTransformer

    from shoplake import prepacked_linear

    monkeypatch.setattr(prepacked_linear, "use_onednn", lambda model: linears == "oneDNN")
    texts = [*AWKWARD_TEXTS, "", AWKWARD_TEXTS[0]]  # an empty text and a repeat, too
    encoder = TextEncoder(device="cpu")
    assert encoder.cpu_linears == linears
    ours = encoder.encode(texts)
    reference = SentenceTransformer(str(default_model_path()), device="cpu").encode(texts)
    assert ours.shape == (len(texts), 384) and ours.dtype == np.float32
    cosine = (ours * reference).sum(axis=1) / np.linalg.norm(reference, axis=1)
    assert cosine.min() >= 0.999
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_a_prepacked_linear_computes_what_nn_linear_does():
    import torch

    from shoplake.prepacked_linear import PrepackedLinear, prepack_linears, use_onednn

    torch.manual_seed(0)
    with torch.inference_mode():
        for linear in (torch.nn.Linear(48, 80), torch.nn.Linear(48, 80, bias=False)):
            packed, with_gelu = PrepackedLinear(linear), PrepackedLinear(linear, gelu=True)
            for shape in ((1, 48), (3, 5, 48), (0, 48)):  # one token, a padded batch, nothing at all
                x, residual = torch.randn(shape), torch.randn((*shape[:-1], 80))
                torch.testing.assert_close(packed(x), linear(x), rtol=1e-5, atol=1e-5)
                torch.testing.assert_close(with_gelu(x), torch.nn.functional.gelu(linear(x)), rtol=1e-5, atol=1e-5)
                torch.testing.assert_close(packed.plus(x, residual), linear(x) + residual, rtol=1e-5, atol=1e-5)
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4))
        x = torch.randn(7, 8)
        expected = model(x)
        # oneDNN where the CPU has AVX-512 (this build of PyTorch has oneDNN); asking swaps nothing
        assert use_onednn(model) == torch.backends.cpu.get_cpu_capability().startswith("AVX512")
        assert sum(isinstance(m, torch.nn.Linear) for m in model.modules()) == 2
        assert prepack_linears(model) == 2 and not any(isinstance(m, torch.nn.Linear) for m in model.modules())
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
    assert use_onednn(torch.nn.Sequential(torch.nn.ReLU())) is False  # nothing to multiply


def test_bert_layers_get_their_gelu_and_residual_sums_fused_and_compute_the_same(tiny_bert):
    """Each BERT layer's feed-forward input takes its GELU, and both residual outputs their sums, into oneDNN's
    product; the model's output must not change (here it must be within float rounding; measured bit-identical
    on an Intel Xeon with all-MiniLM-L6-v2). A feed-forward on another activation keeps it apart."""
    import torch
    from transformers import BertModel

    from shoplake.prepacked_linear import GeluFeedForwardIn, ResidualOutput, prepack_linears

    model = BertModel.from_pretrained(tiny_bert, add_pooling_layer=False).eval()
    ids = torch.randint(1000, 2000, (3, 9))
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0
    with torch.inference_mode():
        expected = model(input_ids=ids, attention_mask=mask).last_hidden_state
        assert prepack_linears(model) == 2 * 6  # two layers of six linear layers (q, k, v, out, in, out)
        assert not any(isinstance(m, torch.nn.Linear) for m in model.modules())
        assert sum(isinstance(m, GeluFeedForwardIn) for m in model.modules()) == 2
        assert sum(isinstance(m, ResidualOutput) for m in model.modules()) == 4
        torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).last_hidden_state, expected,
                                   rtol=1e-5, atol=1e-5)  # fmt: skip
    relu = BertModel.from_pretrained(tiny_bert, add_pooling_layer=False, hidden_act="relu").eval()
    prepack_linears(relu)
    assert not any(isinstance(m, GeluFeedForwardIn) for m in relu.modules())
    assert sum(isinstance(m, ResidualOutput) for m in relu.modules()) == 4


def test_a_compiled_cpu_encoder_leaves_its_linears_to_inductor(tiny_bert):
    import torch

    encoder = TextEncoder(tiny_bert, device="cpu", compile=True)  # compiling is lazy: nothing compiled here
    assert encoder.cpu_linears == "Inductor"
    assert any(isinstance(m, torch.nn.Linear) for m in encoder.model.modules())


def test_the_default_model_is_read_from_its_sentence_transformers_config():
    spec = ModelSpec.from_path(None)
    assert (spec.name, spec.dim, spec.max_seq_length, spec.pooling, spec.normalize) == (
        "all-MiniLM-L6-v2", 384, 256, "mean", True,
    )  # fmt: skip


def test_a_folder_without_a_model_is_a_clear_error(tmp_path):
    with pytest.raises(ShoplakeError, match="not a Hugging Face model folder"):
        ModelSpec.from_path(tmp_path)


def test_asking_for_cuda_without_a_gpu_is_a_clear_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert resolve_device("auto") == "cpu"
    with pytest.raises(ShoplakeError, match="no CUDA GPU"):
        resolve_device("cuda")


def test_batches_respect_the_token_budget_and_cover_every_text_once():
    rows = [[10 * n + k for k in range(n)] for n in (5, 1, 9, 3, 3, 7, 2, 8)]  # each id names its row and place
    tokens = Tokens(np.array([len(r) for r in rows], dtype=np.int32), np.concatenate(rows).astype(np.int32))
    batches = list(pack_batches(tokens, np.arange(100, 108), max_tokens=16, max_rows=3))
    positions = np.concatenate([b.positions for b in batches])
    assert sorted(positions.tolist()) == list(range(100, 108))
    for batch in batches:
        n_rows, width = batch.input_ids.shape
        assert n_rows <= 3 and (n_rows == 1 or n_rows * width <= 16)
        for row, position in enumerate(batch.positions):
            expected = rows[position - 100]
            assert batch.input_ids[row].tolist() == expected + [0] * (width - len(expected))
            assert batch.lengths[row] == len(expected)
    # length-sorted: each batch's rows are no longer than the next batch's shortest
    widths = [b.input_ids.shape[1] for b in batches]
    assert widths == sorted(widths)
    assert [len(b.positions) for b in batches] == [3, 2, 2, 1]  # lengths 1,2,3 | 3,5 | 7,8 (2 × 8 = 16) | 9
    empty = Tokens(np.zeros(2, dtype=np.int32), np.zeros(0, dtype=np.int32))  # a tokenizer that adds no specials
    assert [b.input_ids.tolist() for b in pack_batches(empty, np.arange(2), max_tokens=16, max_rows=3)] == [[[0], [0]]]


def test_tokenizer_processes_and_small_windows_give_the_same_vectors(tiny_bert, monkeypatch):
    """The GPU path's machinery, run on the CPU: texts tokenised by a pool of processes in many chunks, packed in
    several windows, the result assembled span by span — each vector still lands on its own text."""
    from shoplake import encoder as encoder_module

    texts = [f"item {i} " + "word " * (i % 37) + AWKWARD_TEXTS[i % 5] for i in range(2_500)]
    reference = TextEncoder(tiny_bert, device="cpu", tokenizer_processes=0)
    expected = reference.encode(texts)
    monkeypatch.setattr(encoder_module, "TOKENIZE_CHUNK", 300)
    monkeypatch.setattr(encoder_module, "FIRST_PACK_WINDOW", 200)  # each span: windows of 300, 600, 100
    monkeypatch.setattr(encoder_module, "PACK_WINDOW", 700)
    monkeypatch.setattr(encoder_module, "SEGMENT_TEXTS", 1_000)
    pooled = TextEncoder(tiny_bert, device="cpu", tokenizer_processes=2)
    pooled.feeds_device = True  # the read-ahead thread, and each span assembled apart and copied back
    try:
        tokens, in_process = pooled.tokenize(texts), reference.tokenize(texts)
        assert tokens.lengths.tolist() == in_process.lengths.tolist()
        np.testing.assert_array_equal(tokens.ids, in_process.ids)
        np.testing.assert_allclose(pooled.encode(texts), expected, atol=1e-5)
        assert pooled._pool is not None  # the processes did the tokenising
    finally:
        pooled.close()


@pytest.mark.parametrize("feeds_device", [False, True])
def test_repeated_texts_are_embedded_once_and_every_row_gets_its_vector(tiny_bert, monkeypatch, feeds_device):
    """A text's vector goes to the row where the text first appears and is copied to its repeats: within a span
    of the result, from an earlier span, and into a span that brings no new text at all. Also with the GPU
    path's machinery (read-ahead thread, spans assembled apart and copied back), run on the CPU."""
    from shoplake import encoder as encoder_module

    distinct = [f"item {i} " + "word " * (i % 11) for i in range(300)]
    rng = np.random.default_rng(0)
    picks = np.concatenate([rng.integers(0, 200, 700), rng.integers(0, 300, 700)])
    picks = np.concatenate([picks, rng.choice(np.unique(picks), 600)])  # the last span: repeats only
    texts = [distinct[p] for p in picks]
    expected = TextEncoder(tiny_bert, device="cpu").encode(distinct)
    monkeypatch.setattr(encoder_module, "SEGMENT_TEXTS", 700)  # three spans of the result
    encoder = TextEncoder(tiny_bert, device="cpu")
    encoder.feeds_device = feeds_device
    np.testing.assert_allclose(encoder.encode(texts), expected[picks], atol=1e-5)
    assert len(np.unique(picks[:700])) < 200 < len(np.unique(picks[:1400]))  # the second span brings new texts
    assert encoder.tokens_seen == encoder.tokenize(list(dict.fromkeys(texts))).lengths.sum()  # each embedded once


def test_the_gpu_paths_read_ahead_thread_keeps_order_and_passes_errors_on():
    from shoplake.encoder import _prefetched

    assert list(_prefetched(iter(range(100)), depth=3)) == list(range(100))

    def failing():
        yield 1
        raise ValueError("tokenizer broke")

    with pytest.raises(ValueError, match="tokenizer broke"):
        list(_prefetched(failing()))


def test_the_gpu_paths_page_toucher_writes_one_zero_per_page_and_nothing_else():
    from shoplake.encoder import PAGE_BYTES, _touch_pages

    array = np.ones((5_000, 384), dtype=np.float32)
    _touch_pages(array).join()
    step = PAGE_BYTES // 4
    flat = array.reshape(-1)
    assert (flat[::step] == 0).all() and flat.sum() == flat.size - len(flat[::step])


def test_the_models_wait_for_batches_is_measured():
    """The wait reported per run is the time spent getting batches, not the time spent using them."""
    import time

    from shoplake.encoder import Throughput, _waited_for

    def slow_batches():
        for n in range(4):
            time.sleep(0.05)
            yield n

    throughput = Throughput(4, 4, enabled=False)
    for _ in _waited_for(slow_batches(), throughput):
        time.sleep(0.1)  # the model's work: not counted
    assert 0.2 <= throughput.waited < 0.5  # 0.6 and more had the model's 0.4 s been counted


def test_the_batch_loop_never_waits_on_the_device_and_masks_as_transformers_does(tiny_bert):
    """A read of a device value from the host (``bool(tensor)``, ``.item()``, or an op whose output size depends on
    the data, such as ``nonzero``) makes a CUDA host wait for the GPU; the loop must have none, padded batches
    included. Its ready-made mask must give exactly what the model computes from the plain 2-D mask."""
    import collections

    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    from shoplake.encoder import pool

    aten = torch.ops.aten
    host_reads = {aten._local_scalar_dense.default, aten.is_nonzero.default, aten.item.default,
                  aten.nonzero.default, aten.masked_select.default}  # fmt: skip

    class CountHostReads(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.reads: collections.Counter[str] = collections.Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in host_reads:
                self.reads[str(func)] += 1
            return func(*args, **(kwargs or {}))

    encoder = TextEncoder(tiny_bert, device="cpu", cpu_batch_size=8)
    texts = [f"item {i} " + "word " * (i % 7) for i in range(40)]
    batches = list(pack_batches(encoder.tokenize(texts), np.arange(len(texts)), max_tokens=10**6, max_rows=8))
    assert all(b.lengths.min() < b.input_ids.shape[1] for b in batches)  # every batch is padded
    with CountHostReads() as counted:
        encoder.encode(texts)
        encoder.feeds_device = True  # and the GPU path's machinery, its copies of repeated texts included
        encoder.encode(texts + texts[:5])
    assert counted.reads == {}
    with torch.inference_mode():
        for batch in batches:
            ids = torch.from_numpy(batch.input_ids).long()
            mask = (torch.arange(ids.shape[1]) < torch.from_numpy(batch.lengths)[:, None]).long()
            hidden = encoder.model(input_ids=ids, attention_mask=mask).last_hidden_state
            expected = torch.nn.functional.normalize(pool(hidden, mask, "mean"), dim=1)
            assert torch.equal(encoder._forward(batch), expected)


def test_embedding_is_incremental(spark, lake):
    write_items(spark, [
        item(1, "Lego police station", category_code="kids.toys", brand="lego"),
        item(2, "Sony headphones", category_code="electronics.audio.headphone", brand="sony"),
        item(3),  # no text at all
    ])  # fmt: skip
    first = run_embed(spark, run_id="r1", embedded_at=AT)
    assert (first.embedded, first.unchanged, first.without_text, first.dim) == (2, 0, 1, 384)
    rows = {r.item_id: r for r in storage.read_table(spark, ITEM_EMBEDDINGS).collect()}
    assert set(rows) == {1, 2}
    assert rows[1].model == "all-MiniLM-L6-v2" and len(rows[1].embedding) == 384
    assert abs(float(np.linalg.norm(rows[1].embedding)) - 1) < 1e-5

    again = run_embed(spark, run_id="r2", embedded_at=AT + dt.timedelta(days=1))
    assert (again.embedded, again.unchanged, again.version) == (0, 2, None)

    write_items(spark, [item(2, "Sony noise-cancelling headphones", category_code="electronics.audio.headphone",
                             brand="sony", price=99.0)])  # fmt: skip
    write_items(spark, [item(1, "Lego police station", category_code="kids.toys", brand="lego", price=1.0)])
    changed = run_embed(spark, run_id="r3", embedded_at=AT + dt.timedelta(days=2))
    assert (changed.embedded, changed.unchanged) == (1, 1)  # a new price alone does not re-embed item 1
    latest = {r.item_id: r.embedded_at for r in storage.read_table(spark, ITEM_EMBEDDINGS).collect()}
    assert latest == {1: dt.datetime(2026, 1, 1), 2: dt.datetime(2026, 1, 3)}


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """A small random BERT with MiniLM's tokenizer, saved as a local model folder."""
    import shutil

    import torch
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)  # fmt: skip
    BertModel(config).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(default_model_path() / name, folder / name)
    return folder


def test_executors_and_driver_give_the_same_vectors(spark, lake, tiny_bert, monkeypatch):
    from shoplake.settings import get_settings

    write_items(spark, [item(i, f"product number {i}", category_code="kids.toys") for i in range(1, 40)])
    monkeypatch.setenv("SHOPLAKE_MODEL_PATH", str(tiny_bert))
    monkeypatch.setenv("SHOPLAKE_EMBED_ON", "executors")
    get_settings.cache_clear()
    result = run_embed(spark, run_id="r", embedded_at=AT)
    assert (result.model, result.dim, result.embedded) == ("tiny-bert0", 32, 39)
    on_executors = {r.item_id: r.embedding for r in storage.read_table(spark, ITEM_EMBEDDINGS).collect()}

    texts = [f"product number {i}. category: kids > toys" for i in range(1, 40)]
    on_driver = TextEncoder(tiny_bert, device="cpu").encode(texts)
    np.testing.assert_allclose(np.array([on_executors[i] for i in range(1, 40)]), on_driver, atol=1e-5)
