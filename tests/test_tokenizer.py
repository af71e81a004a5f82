"""The tokenizer step: lossless SentencePiece, the same ids through AutoTokenizer, clear errors."""

from __future__ import annotations

import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llmflow.config import TokenizerConfig
from llmflow.step import run_step
from model import tokenizer as tk
from model.chat import CHAT_TEMPLATE, ROLE_TOKENS

WORDS = [
    "the",
    "function",
    "returns",
    "a",
    "list",
    "of",
    "values",
    "from",
    "the",
    "given",
    "path",
    "and",
    "raises",
    "an",
    "error",
    "when",
    "file",
    "is",
    "missing",
    "compute",
    "sum",
    "of",
    "two",
    "numbers",
    "open",
    "for",
    "reading",
    "write",
    "text",
    "to",
    "stream",
    "parse",
    "string",
    "into",
    "integer",
    "sort",
    "items",
    "by",
    "key",
    "return",
    "length",
    "sequence",
    "split",
    "line",
    "on",
    "whitespace",
    "join",
    "parts",
    "with",
    "comma",
    "convert",
    "value",
    "float",
    "check",
    "whether",
    "object",
    "callable",
    "make",
    "new",
    "directory",
    "read",
    "all",
    "lines",
    "café",
    "naïve",
    "über",
    "straße",
    "résumé",
]

TRICKY = [
    "def f(x):\n    if x:\n\t\treturn  x\n\n\n    # two  spaces\n",
    "   leading, trailing and    runs of spaces   ",
    "tabs\there\t\tand\r\nwindows newlines\n",
    "non-ASCII: naïve café 日本語 Ελληνικά — emoji 🙂🚀 and digits 3.14159",
    "<|system|>\nBe brief.<|end|>\n<|user|>\nhi there<|end|>\n<|assistant|>\n",
    "literal <s> and </s> and <pad> <unk> in text\n",
    "",
    "\n",
    " ",
]


def corpus_docs(n: int, seed: int = 0) -> list[str]:
    """Deterministic documents mixing prose, indented Python code and non-ASCII words."""
    rnd = random.Random(seed)
    docs = []
    for i in range(n):
        prose = " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(8, 30)))
        name = rnd.choice(WORDS)
        code = (
            f"def {name}_{i % 7}(x, y={i}):\n"
            f'    """{prose[:60]}"""\n'
            f"    for k in range({rnd.randint(1, 99)}):\n"
            f"        x = x + {rnd.randint(0, 9999)}  # <b>{rnd.choice(WORDS)}</b>\n"
            f"        if x < y or y >= {i}: x = -x / 2\n"
            f"    return x\n"
        )
        docs.append(f"{prose.capitalize()}.\n\n{code}" if i % 2 else f"{code}\n{prose}")
    return docs


def write_prepare(out, train: list[str], validation: list[str], shards: int = 2) -> None:
    """The layout of a `prepare` artifact: `<split>/part-NNNNN.parquet` with id and text."""
    for split, docs in (("train", train), ("validation", validation)):
        (out / split).mkdir()
        step = max(1, -(-len(docs) // shards))
        for j, start in enumerate(range(0, max(len(docs), 1), step)):
            part = docs[start : start + step]
            table = pa.table({"id": [f"{split}-{start + k}" for k in range(len(part))], "text": part})
            pq.write_table(table, out / split / f"part-{j:05d}.parquet", row_group_size=25)


def fake_prepare(store, train: list[str], validation: list[str]):
    """A real `prepare` artifact in `store`, written by a stand-in step function."""

    def fn(ctx):
        write_prepare(ctx.out, train, validation)
        return {"train_docs": len(train), "validation_docs": len(validation)}

    return run_step("prepare", "fake", fn, {"docs": len(train), "n": len(validation)}, store=store)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One BPE tokenizer trained through the step, shared by the tests below."""
    from llmflow.store import ArtifactStore
    from tasks.tokenizer import tokenizer_step

    store = ArtifactStore(tmp_path_factory.mktemp("home"))
    data = fake_prepare(store, corpus_docs(300), corpus_docs(40, seed=1) + TRICKY)
    ref = run_step(
        "tokenizer", 1, tokenizer_step, TokenizerConfig(vocab_size=400), {"data": data}, store=store
    )
    return ref, store.local_path(ref)


def test_step_writes_model_vocab_and_hf_files(trained):
    ref, path = trained
    for name in ("spm.model", "spm.vocab", "tokenizer.json", "tokenizer_config.json", "manifest.json"):
        assert (path / name).exists(), name
    assert ref.stats["vocab_size"] == 400
    # bytes per token on validation, consistent with the counts it is made of
    s = ref.stats
    assert s["validation_tokens"] > 0 and 1.0 < s["bytes_per_token"] < 8.0
    assert s["bytes_per_token"] == pytest.approx(s["validation_bytes"] / s["validation_tokens"], abs=1e-3)
    assert s["train_lines_seen"] > 0 and s["checked_docs"] > 0 and s["hf_mismatches"] == 0
    assert len((path / "spm.vocab").read_text(encoding="utf-8").splitlines()) == 400


def test_special_ids_and_atomic_role_tokens(trained):
    sp = tk.load(trained[1])
    assert [sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id()] == [0, 1, 2, 3]
    assert [sp.id_to_piece(i) for i in range(4)] == ["<unk>", "<s>", "</s>", "<pad>"]
    for tok in ROLE_TOKENS + ["\n"]:
        assert len(sp.encode(tok)) == 1, tok
        assert len(sp.encode(f"x {tok} y")) >= 3
        assert sp.piece_to_id(tok) in sp.encode(f"abc{tok}def")


@pytest.mark.parametrize("text", TRICKY)
def test_lossless_round_trip(trained, text):
    sp = tk.load(trained[1])
    assert sp.decode(sp.encode(text)) == text


def test_whitespace_is_kept_not_collapsed(trained):
    sp = tk.load(trained[1])
    ids = sp.encode("a    b\n\n  c")
    pieces = [sp.id_to_piece(i) for i in ids]
    assert pieces.count("\n") == 2
    assert "".join(pieces).count("▁") == 6  # four spaces, then two
    # characters never seen in training go to UTF-8 bytes, not <unk>
    assert sp.unk_id() not in sp.encode("🦜 ∮ 𝔘")


def test_autotokenizer_gives_the_same_ids(trained):
    from transformers import AutoTokenizer

    path = trained[1]
    sp = tk.load(path)
    hf = AutoTokenizer.from_pretrained(path)  # no remote code
    assert hf.is_fast
    assert (hf.unk_token_id, hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (0, 1, 2, 3)
    assert len(hf) == sp.get_piece_size() == 400
    for text in TRICKY + corpus_docs(30, seed=7):
        ids = hf(text)["input_ids"]  # no bos/eos added, like SentencePiece
        assert ids == sp.encode(text), text
        assert hf.decode(ids) == text
    assert tk.mismatches(sp, hf, TRICKY) == []
    assert [hf.convert_tokens_to_ids(t) for t in ROLE_TOKENS] == [sp.piece_to_id(t) for t in ROLE_TOKENS]
    # bos/eos/pad never come from text (as in SentencePiece); skip_special_tokens drops the ids
    assert hf("</s>")["input_ids"] == sp.encode("</s>") != [hf.eos_token_id]
    ids = hf("<|assistant|>\nok<|end|>")["input_ids"] + [hf.eos_token_id]
    assert hf.decode(ids, skip_special_tokens=True) == "<|assistant|>\nok<|end|>"


def test_chat_template_is_exported(trained):
    from transformers import AutoTokenizer

    path = trained[1]
    hf = AutoTokenizer.from_pretrained(path)
    assert hf.chat_template == CHAT_TEMPLATE
    text = hf.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text == "<|user|>\nhi<|end|>\n<|assistant|>\n"
    ids = hf(text)["input_ids"]
    assert ids[0] == tk.load(path).piece_to_id("<|user|>")


def test_unigram_option_trains_and_matches(tmp_path):
    from transformers import AutoTokenizer

    sp = tk.train(tk.document_lines(corpus_docs(300)), tmp_path, model_type="unigram", vocab_size=350)
    assert sp.get_piece_size() == 350
    tk.export_hf(tmp_path / tk.MODEL_FILE, tmp_path)
    hf = AutoTokenizer.from_pretrained(tmp_path)
    for text in TRICKY:
        assert sp.decode(sp.encode(text)) == text
        assert hf(text)["input_ids"] == sp.encode(text), text
        assert hf.decode(sp.encode(text)) == text
    cfg = json.loads((tmp_path / "tokenizer.json").read_text())
    assert cfg["model"]["type"] == "Unigram"


def test_vocab_larger_than_data_is_a_clear_error(tmp_path):
    with pytest.raises(tk.VocabTooLargeError, match=r"tokenizer.vocab_size=5000 .*at most \d+"):
        tk.train(tk.document_lines(corpus_docs(20)), tmp_path, vocab_size=5000)


def test_missing_train_split_is_a_clear_error(store):
    from tasks.tokenizer import tokenizer_step

    data = run_step("prepare", "empty", lambda ctx: {}, {"empty": True}, store=store)
    with pytest.raises(FileNotFoundError, match="train/part-"):
        run_step("tokenizer", 1, tokenizer_step, TokenizerConfig(vocab_size=400), {"data": data}, store=store)


def test_sampling_bounds_the_training_lines(tmp_path, store):
    from tasks.tokenizer import tokenizer_step

    data = fake_prepare(store, corpus_docs(300), corpus_docs(10, seed=3))
    cfg = TokenizerConfig(vocab_size=380, max_sentences=1000)
    ref = run_step("tokenizer", 1, tokenizer_step, cfg, {"data": data}, store=store)
    assert ref.stats["train_lines_seen"] > 2000
    assert ref.stats["train_lines_sampled"] == 1000
    assert ref.stats["vocab_size"] == 380


def test_vocab_too_small_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"tokenizer.vocab_size=100 is smaller than the \d+ pieces"):
        tk.train(tk.document_lines(corpus_docs(20)), tmp_path, vocab_size=100)


def test_the_same_input_trains_byte_identical_files_with_any_thread_count(tmp_path):
    """Sampling on (more lines than max_sentences), each build in its own home: same bytes."""
    from llmflow.store import MANIFEST, ArtifactStore
    from tasks.tokenizer import tokenizer_step

    builds = []
    for i, threads in enumerate([1, 1, 3]):
        store = ArtifactStore(tmp_path / f"home{i}")
        data = fake_prepare(store, corpus_docs(300), corpus_docs(10, seed=3))
        cfg = TokenizerConfig(vocab_size=380, max_sentences=1000, threads=threads)
        ref = run_step("tokenizer", 1, tokenizer_step, cfg, {"data": data}, store=store)
        assert ref.stats["train_lines_seen"] > 2 * cfg.max_sentences
        out = store.local_path(ref)
        builds.append({p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.name != MANIFEST})
    assert {"spm.model", "spm.vocab", "tokenizer.json"} <= {str(p) for p in builds[0]}
    assert builds[0] == builds[1] == builds[2]


def test_sampling_is_seeded_and_uniform_in_size():
    lines = [f"line {i}" for i in range(5000)]
    a = tk.sample_lines(iter(lines), 100, seed=7)
    assert a == tk.sample_lines(iter(lines), 100, seed=7) != tk.sample_lines(iter(lines), 100, seed=8)
    assert len(a) == len(set(a)) == 100 and set(a) <= set(lines)
    assert tk.sample_lines(iter(lines[:50]), 100, seed=7) == lines[:50]
