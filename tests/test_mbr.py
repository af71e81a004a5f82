"""Minimum Bayes risk decoding: the consensus answer among greedy + samples, seeded and repeatable."""

from __future__ import annotations

import pytest

from model import mbr
from tests.helpers import tiny_model_dir, tiny_tokenizer_dir


def test_choose_returns_the_consensus_answer():
    # hand-checked: "return the sum" shares most words with the other answers; the outlier loses
    cands = ["open a bzip2 file", "return the sum of x", "return the sum", "return the sum of items"]
    assert mbr.choose(cands) == "return the sum of x"
    assert mbr.choose(["only"]) == "only"
    assert mbr.choose(["a b", "c d", "e f"]) == "a b"  # no agreement: the first (greedy) answer stays
    assert mbr.choose(["x y", "", "x y"]) == "x y"
    assert mbr.rouge_l("Return the files.", "return file") == pytest.approx(0.8)  # stemmed: 2 of 3 and 2 of 2
    with pytest.raises(ValueError):
        mbr.choose([])
    assert mbr.choose(["p", "q", "q"], utility=lambda a, b: 1.0 if a == b else 0.0) == "q"


def test_generate_with_mbr_is_seeded_and_picks_a_candidate(tmp_path):
    from model.generate import generate, load

    tok = tiny_tokenizer_dir(tmp_path / "tok")
    model, tokenizer = load(tiny_model_dir(tmp_path / "m", tok), "cpu")
    prompts = ["def f(x): return x", "read the file"]
    kw = dict(max_new_tokens=6, mbr_samples=4, mbr_temperature=1.0, seed=7)
    first = generate(model, tokenizer, prompts, **kw)
    assert first == generate(model, tokenizer, prompts, **kw)  # the same seed, the same answers
    greedy = generate(model, tokenizer, prompts, max_new_tokens=6)
    seen = []
    picks = generate(
        model, tokenizer, prompts, **kw, mbr_utility=lambda a, b: seen.append((a, b)) or float(a == b)
    )
    assert len(picks) == 2 and seen  # the utility was asked
    cands = {x for pair in seen for x in pair}
    assert set(picks) <= cands | set(greedy)
