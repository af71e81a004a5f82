"""The pack step: flat eos-separated token shards, offsets and counts that decode back to the text."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_tokenizer import TRICKY, corpus_docs, fake_prepare

from llmflow.config import PackConfig, TokenizerConfig
from llmflow.step import run_step
from model import tokenizer as tk
from tasks.pack import pack_step, token_dtype
from tasks.tokenizer import tokenizer_step

TRAIN = corpus_docs(200) + [t for t in TRICKY if t]
VALIDATION = corpus_docs(30, seed=5)


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    """prepare (fake) -> tokenizer -> pack with two workers and small batches."""
    from llmflow.store import ArtifactStore

    store = ArtifactStore(tmp_path_factory.mktemp("home"))
    data = fake_prepare(store, TRAIN + ["", "   "], VALIDATION)
    tok = run_step(
        "tokenizer", 1, tokenizer_step, TokenizerConfig(vocab_size=400), {"data": data}, store=store
    )
    cfg = PackConfig(workers=2, batch_docs=16)
    ref = run_step("pack", 1, pack_step, cfg, {"data": data, "tokenizer": tok}, store=store)
    return ref, store.local_path(ref), store.local_path(tok), store, data, tok


def _documents(path, split, dtype):
    tokens = np.fromfile(path / f"{split}.bin", dtype=dtype)
    starts = np.load(path / f"{split}.idx.npy")
    ends = np.append(starts[1:], len(tokens))
    return tokens, starts, [tokens[a:b] for a, b in zip(starts, ends, strict=True)]


def test_token_dtype_choice():
    assert token_dtype(400) == np.uint16
    assert token_dtype(65_535) == np.uint16
    assert token_dtype(65_536) == np.uint32
    assert token_dtype(262_144) == np.uint32
    with pytest.raises(ValueError, match="positive"):
        token_dtype(0)


def test_shards_decode_back_to_the_documents(packed):
    ref, path, tok_path, *_ = packed
    sp = tk.load(tok_path)
    meta = json.loads((path / "meta.json").read_text())
    assert meta["dtype"] == "uint16" and meta["vocab_size"] == 400
    assert (meta["bos_id"], meta["eos_id"], meta["pad_id"]) == (1, 2, 3)
    # empty and whitespace-only documents: "" is dropped, "   " is a real (if short) document
    expected = {"train": [t for t in TRAIN + ["", "   "] if t], "validation": VALIDATION}
    for split, texts in expected.items():
        tokens, starts, docs = _documents(path, split, np.uint16)
        assert starts.dtype == np.int64 and starts[0] == 0
        assert len(docs) == len(texts) == meta[split]["documents"]
        for doc, text in zip(docs, texts, strict=True):  # eos closes every document, and only there
            assert doc[-1] == sp.eos_id() and sp.eos_id() not in doc[:-1].tolist()
            assert sp.decode(doc[:-1].tolist()) == text
            assert doc[:-1].tolist() == sp.encode(text)
        assert meta[split]["tokens"] == len(tokens) == sum(len(sp.encode(t)) + 1 for t in texts)
        assert meta[split]["bytes"] == sum(len(t.encode("utf-8")) for t in texts)
        assert tokens.max() < 400 and sp.bos_id() not in tokens.tolist()
    for k in ("tokens", "bytes", "documents"):
        assert ref.stats[f"train_{k}"] == meta["train"][k]
        assert ref.stats[f"validation_{k}"] == meta["validation"][k]
    assert ref.stats["dtype"] == "uint16" and ref.stats["vocab_size"] == 400


def test_worker_count_does_not_change_the_shards(packed):
    ref, path, _, store, data, tok = packed
    assert ref.stats["workers"] == 2  # the fixture really used the process pool
    one = run_step(
        "pack",
        1,
        pack_step,
        PackConfig(workers=1, batch_docs=1000),
        {"data": data, "tokenizer": tok},
        store=store,
    )
    other = store.local_path(one)
    for split in ("train", "validation"):
        assert (other / f"{split}.bin").read_bytes() == (path / f"{split}.bin").read_bytes()
        assert np.array_equal(np.load(other / f"{split}.idx.npy"), np.load(path / f"{split}.idx.npy"))


def test_encode_documents_uint32(packed):
    sp = tk.load(packed[2])
    tokens, lengths, nbytes = tk.encode_documents(sp, ["ab c", "é"], np.uint32)
    assert tokens.dtype == np.uint32
    assert tokens.tolist() == sp.encode("ab c") + [2] + sp.encode("é") + [2]
    assert lengths.tolist() == [len(sp.encode("ab c")) + 1, len(sp.encode("é")) + 1]
    assert nbytes == 4 + 2


def test_tiny_corpus_is_recorded_not_fatal(packed):
    store, tok = packed[3], packed[5]
    data = fake_prepare(store, ["just a few words"], [])
    ref = run_step("pack", 1, pack_step, PackConfig(workers=1), {"data": data, "tokenizer": tok}, store=store)
    assert ref.stats["validation_tokens"] == 0 and ref.stats["train_documents"] == 1
    assert any("validation split has only 0 tokens" in w for w in ref.stats["warnings"])
    assert any("train split" in w for w in ref.stats["warnings"])
    path = store.local_path(ref)
    assert (path / "validation.bin").stat().st_size == 0
    assert json.loads((path / "meta.json").read_text())["warnings"] == ref.stats["warnings"]


def test_missing_text_column_is_a_clear_error(packed):
    import pyarrow as pa
    import pyarrow.parquet as pq

    def fn(ctx):
        (ctx.out / "train").mkdir()
        pq.write_table(pa.table({"id": ["a"], "body": ["x"]}), ctx.out / "train" / "part-00000.parquet")
        return {}

    store = packed[3]
    data = run_step("prepare", "bad", fn, {"bad": 1}, store=store)
    with pytest.raises(ValueError, match="no 'text' column"):
        run_step(
            "pack", 1, pack_step, PackConfig(workers=1), {"data": data, "tokenizer": packed[5]}, store=store
        )
