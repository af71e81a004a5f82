"""Exact + MinHash dedup: datasketch-compatible signatures, clusters with duplicate_of,
true-Jaccard verification, and the persisted index used by incremental runs."""

from __future__ import annotations

import random

import numpy as np
import pytest
from datasketch import MinHash, MinHashLSH

from tasks.decontaminate import Decontaminator
from tasks.dedup import Deduper, exact_hash
from tasks.dedup_index import MultiIndex
from tasks.minhash import Signer, jaccard, lsh_params, shingles
from tasks.ngrams import ngram_hashes, token_hashes, tokens

VOCAB = [f"w{i}" for i in range(500)]


def doc(seed: int, n: int = 200) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(VOCAB) for _ in range(n))


def edit(text: str, k: int, seed: int = 0) -> str:
    words = text.split()
    rng = random.Random(seed)
    for i in rng.sample(range(len(words)), k):
        words[i] = "zz"
    return " ".join(words)


def test_signature_equals_datasketch_update_batch():
    sh = shingles(doc(1), 5)
    ours = Signer(64, seed=3)(sh)
    ref = MinHash(num_perm=64, seed=3, hashfunc=lambda x: x)
    ref.update_batch([int(x) for x in sh])
    assert np.array_equal(ours, ref.hashvalues)


def test_hashes_are_stable_and_normalized():
    assert exact_hash("Hello   World\n") == exact_hash("hello world")
    assert token_hashes(["abc"])[0] == 891568578  # crc32: stable across processes
    assert tokens("Don't PANIC, it's 42!") == ["don", "t", "panic", "it", "s", "42"]
    assert len(ngram_hashes(token_hashes(tokens("a b c")), 5)) == 1  # short text: itself
    assert ngram_hashes(np.empty(0, np.uint64), 5).size == 0


def test_clusters_keep_first_and_name_duplicate_of():
    d = Deduper(num_perm=112, threshold=0.8)
    base = doc(1)
    texts = {
        "a": base,
        "b": doc(2),
        "a-exact": base.upper(),
        "a-near": edit(base, 4),
        "a-far": edit(base, 60),
    }
    flagged = {}
    for k, t in texts.items():
        sh = shingles(t, 5)
        m = d.check(k, exact_hash(t), d.signer(sh), sh)
        if m:
            flagged[k] = (m.duplicate_of, m.kind)
    assert flagged == {"a-exact": ("a", "exact"), "a-near": ("a", "near")}
    assert jaccard(shingles(texts["a-far"], 5), shingles(base, 5)) < 0.8


def test_verification_recall_and_precision_on_known_edits():
    """Variants with a known number of edits; truth = true word-5-gram Jaccard >= 0.8."""
    bases = {f"b{i}": doc(100 + i) for i in range(40)}
    variants = {
        f"b{i}-v{k}": (f"b{i}", edit(bases[f"b{i}"], k, seed=k)) for i in range(40) for k in (1, 3, 6, 12)
    }
    sh = {k: shingles(t, 5) for k, t in {**bases, **{k: v[1] for k, v in variants.items()}}.items()}
    for verify in (True, False):
        d = Deduper(num_perm=128, threshold=0.8, verify_jaccard=verify)
        flagged = {}
        for k in list(bases) + list(variants):
            m = d.check(k, k, d.signer(sh[k]), sh[k])
            if m:
                flagged[k] = m.duplicate_of
        truth = {k for k, (b, _) in variants.items() if jaccard(sh[k], sh[b]) >= 0.8}
        precision = sum(jaccard(sh[k], sh[v]) >= 0.8 for k, v in flagged.items()) / max(len(flagged), 1)
        recall = len(truth & set(flagged)) / len(truth)
        if verify:  # candidates at 0.6, confirmed by true Jaccard
            assert recall >= 0.95 and precision == 1.0, (recall, precision)
        else:  # LSH at 0.8 + MinHash estimate only: cheaper, noisier around the threshold
            assert precision >= 0.8 and recall >= 0.6, (recall, precision)


def test_index_persists_and_reloads(tmp_path):
    d = Deduper(num_perm=64)
    for i in range(5):
        t = doc(i)
        d.check(f"d{i}", exact_hash(t), d.signer(shingles(t, 5)), shingles(t, 5))
    d.save(tmp_path / "index.parquet")
    e = Deduper(num_perm=64)
    assert e.load(tmp_path / "index.parquet") == 5
    t = edit(doc(3), 2)
    m = e.check("new", exact_hash(t), e.signer(shingles(t, 5)), shingles(t, 5))
    assert m is not None and m.duplicate_of == "d3"  # verified by MinHash estimate (no cached shingles)
    with pytest.raises(ValueError, match="num_perm"):
        Deduper(num_perm=32).load(tmp_path / "index.parquet")


def test_decontamination_ngrams():
    item = "the secret test answer is forty two and nobody should train on this sentence at all"
    dec = Decontaminator.from_texts(
        [item, "short item", "an eight word response copied straight from the test"], n=13
    )
    assert dec(f"Some text. {item.upper()}! More text.")[1] == "decontaminated"
    assert dec("nothing in common with the evaluation data at all, none whatsoever here")[0]
    assert not dec("intro: an eight word response copied straight from the test, end")[0]  # short item, whole
    assert dec("a short item here")[0]  # items under min_words are not indexed


def test_band_index_candidates_equal_datasketch_minhashlsh():
    """Same signatures, same (bands, rows): our numpy band table and datasketch's MinHashLSH
    return the same candidate set for every query, through several tail merges."""
    d = Deduper(num_perm=112, threshold=0.8)  # candidates at 0.6: datasketch's choice, 16 x 7
    assert (d.bands, d.rows) == lsh_params(0.6, 112)
    ref = MinHashLSH(num_perm=112, params=(d.bands, d.rows))
    rng = np.random.default_rng(0)
    bases = rng.integers(0, 2**32, (150, 112), dtype=np.uint32)
    sigs = []
    for i in range(900):  # a third fresh, the rest variants of a base with 5-60% of values changed
        s = bases[i % 150].copy() if i >= 150 and i % 3 else rng.integers(0, 2**32, 112, dtype=np.uint32)
        if i >= 150 and i % 3:
            k = rng.choice(112, int(112 * rng.uniform(0.05, 0.6)), replace=False)
            s[k] = rng.integers(0, 2**32, len(k), dtype=np.uint32)
        sigs.append(s)
    pairs = 0
    for i, s in enumerate(sigs):
        mh = d.signer.minhash(s)
        ours = {d.id(int(c)) for c in d.candidates(s)}
        assert ours == set(ref.query(mh)), i
        pairs += len(ours)
        d.add(f"d{i}", f"d{i}", s, None)
        ref.insert(f"d{i}", mh)
    assert pairs > 150 and len(d) == 900  # the sample does exercise collisions


def test_multi_index_keeps_insertion_order_across_merges():
    m = MultiIndex(tail=4)
    for v, k in enumerate([5, 3, 5, 9, 5, 3, 7]):
        m.add(np.array([k], np.uint64), v)
    assert m.get(np.array([5], np.uint64)).tolist() == [0, 2, 4]
    assert sorted(m.get(np.array([3, 7, 1], np.uint64)).tolist()) == [1, 5, 6]
    assert len(m) == 7


def test_dedup_shards_rereads_shingles_from_shard_files(tmp_path, monkeypatch):
    """prepare's phase 2 verifies against shingles re-read from the shard files and gives the same
    answers as an in-memory index; the saved index (format 2) reloads with ids and exact keys."""
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    import tasks.global_dedup
    from tasks.global_dedup import dedup_shards

    monkeypatch.setattr(tasks.global_dedup, "SHINGLE_CACHE_BYTES", 1)  # keep one shard: force re-reads

    texts = {f"s{s}-{i}": doc(1000 + s * 10 + i) for s in range(5) for i in range(4)}
    texts["s4-3"] = edit(texts["s0-1"], 3)  # near duplicate four shards back (out of the cache)
    texts["s1-3"] = texts["s0-2"].upper()  # exact
    mem, paths = Deduper(num_perm=112), []
    want = {}
    for s in range(5):
        rows = [(k, t) for k, t in texts.items() if k.startswith(f"s{s}-")]
        sh = [shingles(t, 5) for _, t in rows]
        sig = [mem.signer(x) for x in sh]
        for (k, t), x, g in zip(rows, sh, sig, strict=True):
            m = mem.check(k, exact_hash(t), g, x)
            if m:
                want[k] = (m.duplicate_of, m.kind, m.similarity)
        paths.append(tmp_path / f"kept-{s}.parquet")
        pq.write_table(
            pa.table(
                {
                    "id": [k for k, _ in rows],
                    "_exact": [exact_hash(t) for _, t in rows],
                    "_sig": pa.array([g.tolist() for g in sig], pa.list_(pa.uint32(), 112)),
                    "_shingles": pa.array([x.tolist() for x in sh], pa.list_(pa.uint32())),
                }
            ),
            paths[-1],
        )
    d = Deduper(num_perm=112, cache_docs=0)  # nothing in memory: every shingle set is re-read
    got = dedup_shards(paths, d)
    assert got == want and set(got) == {"s4-3", "s1-3"} and got["s4-3"][0] == "s0-1"
    assert d.shingle_rereads >= 1 and d.verified_by_estimate == 0
    d.save(tmp_path / "index.parquet")
    e = Deduper(num_perm=112)
    assert e.load(tmp_path / "index.parquet") == 18 and e.kept_ids == d.kept_ids
    assert e.check("again", exact_hash(texts["s0-2"]), None, None).duplicate_of == "s0-2"
