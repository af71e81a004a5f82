"""Text metrics against known vectors, non-ASCII and empty inputs, bootstrap CIs."""

from __future__ import annotations

import pytest
from rouge_score import rouge_scorer

from tasks import metrics as M

# sacrebleu's README example (two reference streams): BLEU = 48.53, chrF2 = 59.73.
SYS = ["The dog bit the man.", "It wasn't surprising.", "The man had just bitten him."]
REFS = [
    ["The dog bit the man.", "It was not unexpected.", "The man bit him first."],
    ["The dog had bit the man.", "No one was surprised.", "The man had bitten the dog."],
]


def test_rouge_known_vectors():
    # rouge-score's own test: "testing one two" vs target "testing" -> ROUGE-1 F = 0.5
    (s,) = M.rouge(["testing one two"], ["testing"])
    assert s["rouge1"] == pytest.approx(0.5) and s["rougeL"] == pytest.approx(0.5) and s["rouge2"] == 0.0
    (s,) = M.rouge(["the cats are running"], ["The cat runs"])  # stemming on: the, cat, run match
    assert s["rouge1"] == pytest.approx(2 * (3 / 4) * 1.0 / (3 / 4 + 1.0))


def test_pairwise_rouge_l_equals_the_corpus_scorer():
    pairs = [
        ("the cats are running", "The cat runs"),
        ("Return the sum.\nOf all items", "return a sum of items"),
        ("Привет мир", "привет, мир!"),
        ("", "anything"),
    ]
    for pred, ref in pairs:
        assert M.rouge_l(pred, ref) == M.rouge([pred], [ref])[0]["rougeL"]


def test_bit_parallel_rouge_l_equals_rouge_score_on_random_pairs():
    """`rouge_l` (cached tokens, bit-parallel LCS: MBR's utility) against rouge-score's own LCS
    table, bit for bit, on random texts with repeats, stems, non-ASCII words and empty sides."""
    import random

    rng = random.Random(7)
    words = [
        "Return",
        "returns",
        "the",
        "a",
        "sum",
        "of",
        "items",
        "x",
        "é",
        "naïve",
        "—",
        "files",
        "file",
        "reading",
        "read",
        "0",
        "1",
        "data",
    ]
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True, tokenizer=M.UnicodeTokenizer())
    for _ in range(3000):
        ref = " ".join(rng.choice(words) for _ in range(rng.randint(0, 12)))
        pred = " ".join(rng.choice(words) for _ in range(rng.randint(0, 40)))
        assert M.rouge_l(pred, ref) == scorer.score(ref, pred)["rougeL"].fmeasure
    from model.mbr import lcs_length

    assert lcs_length("abcbdab", "bdcaba") == 4 and lcs_length("", "abc") == 0  # CLRS's example


def test_unicode_tokenizer_equals_default_on_ascii():
    default = rouge_scorer.RougeScorer(list(M.ROUGE_TYPES), use_stemmer=True)
    pairs = [
        ("The quick brown fox_jumps!", "a quick fox jumped over"),
        ("x = f(3.5) returns 42", "returns 42"),
    ]
    for pred, ref in pairs:
        want = default.score(ref, pred)
        (got,) = M.rouge([pred], [ref])
        for k in M.ROUGE_TYPES:
            assert got[k] == pytest.approx(want[k].fmeasure), k


def test_non_ascii_references_are_scored():
    default = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True)
    assert default.score("Привет мир", "Привет мир")["rouge1"].fmeasure == 0.0  # the problem
    (s,) = M.rouge(["Привет мир"], ["Привет мир"])
    assert s["rouge1"] == 1.0 and s["rougeL"] == 1.0
    (s,) = M.rouge(["Le café est très bon"], ["le café était très bon"])
    assert s["rouge1"] == pytest.approx(0.8)
    assert M.exact_match("Café!", "café") == 1.0


def test_sacrebleu_documented_corpus_scores():
    bleu = M.corpus_sacrebleu("bleu", SYS, REFS)
    chrf = M.corpus_sacrebleu("chrf", SYS, REFS)
    assert bleu["score"] == pytest.approx(48.53, abs=0.01)
    assert chrf["score"] == pytest.approx(59.73, abs=0.01)
    assert bleu["signature"].startswith("nrefs:2|case:mixed|eff:no|tok:13a|smooth:exp|version:")
    assert chrf["signature"].startswith("nrefs:2|case:mixed|eff:yes|nc:6|nw:0|space:no|version:")
    assert len(bleu["per_sample"]) == 3 and bleu["per_sample"][0] == pytest.approx(100.0)


def test_squad_em_and_f1():
    assert M.normalize_answer("The  Cat, sat!") == "cat sat"
    assert M.exact_match("the cat sat.", "Cat sat") == 1.0
    assert M.token_f1("cat sat on mat", "the cat sat") == pytest.approx(2 * 0.5 * 1.0 / 1.5)
    assert M.token_f1("", "") == 1.0 and M.token_f1("", "x") == 0.0 and M.token_f1("a cat", "the dog") == 0.0
    assert M.token_f1("a", "the") == 1.0  # both normalise to nothing: SQuAD counts a match


def test_empty_predictions_score_zero_not_crash():
    metrics, cis, per_sample, sig = M.score_all(["", ""], ["a reference", "another one"], n_boot=50)
    assert all(metrics[k] == 0.0 for k in ("rouge1", "rougeL", "bleu", "chrf", "exact_match", "f1"))
    assert len(per_sample) == 2 and set(sig) == {"bleu", "chrf"}
    with pytest.raises(ValueError, match="no predictions"):
        M.score_all([], [])
    with pytest.raises(ValueError, match="2 predictions for 1"):
        M.score_all(["a", "b"], ["a"])


def test_score_all_means_and_cis_are_seeded():
    preds = [f"return the sum of {i} values" for i in range(40)]
    refs = [f"return the {'sum' if i % 2 else 'product'} of values" for i in range(40)]
    m1, c1, ps, _ = M.score_all(preds, refs, n_boot=300, seed=7)
    m2, c2, _, _ = M.score_all(preds, refs, n_boot=300, seed=7)
    assert c1 == c2 and m1 == m2
    assert m1["rougeL"] == pytest.approx(sum(p["rougeL"] for p in ps) / 40)
    for k in ("rougeL", "f1", "bleu", "chrf"):
        lo, hi = c1[k]
        assert lo <= m1[k] <= hi and lo < hi, k
    assert M.score_all(preds, refs, n_boot=300, seed=8)[1] != c1


def test_bootstrap_and_paired_bootstrap():
    lo, hi = M.bootstrap_ci([0.0, 1.0] * 50, 2000, seed=1)
    assert 0.38 < lo < 0.5 < hi < 0.62
    same = M.paired_bootstrap([0.3, 0.5, 0.9], [0.3, 0.5, 0.9], 100)
    assert same["diff"] == 0.0 and same["ci"] == [0.0, 0.0]
    better = M.paired_bootstrap([x + 0.1 for x in range(30)], list(range(30)), 200)
    assert better["ci"][0] == pytest.approx(0.1) and better["diff"] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="equal"):
        M.paired_bootstrap([1.0], [1.0, 2.0])
