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


def test_default_utility_equals_rouge_score():
    """MBR's default utility (cached tokens, bit-parallel LCS) is rouge-score's ROUGE-L F, bit for bit."""
    import random

    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    rng = random.Random(3)
    words = ["Return", "returns", "the", "sum", "of", "items", "files", "file", "read", "reading", "0", "x"]
    for _ in range(2000):
        a = " ".join(rng.choice(words) for _ in range(rng.randint(0, 30)))
        b = " ".join(rng.choice(words) for _ in range(rng.randint(0, 10)))
        assert mbr.rouge_l(a, b) == scorer.score(a, b)["rougeL"].fmeasure == mbr.rouge_l(b, a)


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


@pytest.mark.parametrize("copy_bias", [0.0, 2.0])
def test_samples_from_the_shared_prompt_cache_are_transformers_own(tmp_path, monkeypatch, copy_bias):
    """MBR's samples run each prompt once and repeat its KV cache (`_repeated_prompts`); drawn by
    transformers' `generate` (the reference of benchmarks/mbr_sampling.py, and what generate()
    still does with a null contrast or stop strings), with the same seed they are token for token
    the samples of `num_return_sequences`, which runs the prompt once per sample: left padding
    (prompts of different lengths), the copy bias's repeated rows and the candidates MBR sees are
    all the same."""
    import model.generate as G
    from benchmarks.mbr_sampling import transformers_draws

    monkeypatch.setattr(G, "sample_continuations", transformers_draws)

    tok = tiny_tokenizer_dir(tmp_path / "tok")
    model, tokenizer = G.load(tiny_model_dir(tmp_path / "m", tok), "cpu")
    prompts = ["def f(x): return the sum of the items of x", "read", "open the file and read its lines"]
    seen: list[list[tuple[str, str]]] = [[], []]

    def run(i: int) -> list[str]:
        return G.generate(
            model, tokenizer, prompts, max_new_tokens=8, mbr_samples=5, mbr_temperature=1.0, seed=3,
            copy_bias=copy_bias, mbr_utility=lambda a, b: seen[i].append((a, b)) or float(a == b),
        )  # fmt: skip

    shared = run(0)
    monkeypatch.setattr(
        G,
        "_repeated_prompts",
        lambda m, ids, att, n: {"input_ids": ids, "attention_mask": att, "num_return_sequences": n},
    )
    assert run(1) == shared
    assert seen[0] == seen[1] and len({a for a, _ in seen[0]}) > 3  # the same, varied candidates


def test_null_contrast_matches_a_step_by_step_recomputation(tmp_path):
    """Context-aware decoding with its own KV cache (`NullContrast`) picks, at every step, the
    argmax of log p(.|prompt) + w (log p(.|prompt) - log p(.|null)) recomputed from scratch on the
    whole sequences; with several samples per prompt it runs and picks among them."""
    import torch

    import model.generate as G
    from model.chat import format_prompt

    tok = tiny_tokenizer_dir(tmp_path / "tok")
    model, tokenizer = G.load(tiny_model_dir(tmp_path / "m", tok), "cpu")
    raw = ["def f(x): return the sum of the items of x", "read", "open the file and read its lines"]
    prompts = [format_prompt(p) for p in raw]
    nulls = [format_prompt(p.split(":")[0]) for p in raw]  # left-padded null prompts of other lengths
    budget, stop = G.prompt_budget(model, tokenizer, 8), G.stop_token_ids(tokenizer)
    for w, null_prompts in ((1.0, None), (0.5, nulls)):
        got = G.generate(
            model, tokenizer, prompts, max_new_tokens=8, contrast=w, contrast_prompts=null_prompts
        )
        want = []
        for k, p in enumerate(prompts):
            ids = G.encode_prompt(tokenizer, p, budget)[0]
            nid = G.encode_prompt(tokenizer, (null_prompts or [format_prompt("")] * 3)[k], budget)[0]
            gen: list[int] = []
            for _ in range(8):
                with torch.no_grad():
                    c = model(torch.tensor([ids + gen])).logits[0, -1].log_softmax(-1)
                    n = model(torch.tensor([nid + gen])).logits[0, -1].log_softmax(-1)
                t = int((c + w * (c - n)).argmax())
                if t in stop:
                    break
                gen.append(t)
            want.append(tokenizer.decode(gen, skip_special_tokens=True))
        assert got == want
    assert got != G.generate(model, tokenizer, prompts, max_new_tokens=8)  # the contrast changes answers
    picks = G.generate(
        model, tokenizer, prompts, max_new_tokens=8, contrast=1.0, mbr_samples=3, seed=1, copy_bias=2.0
    )
    assert len(picks) == 3


def test_evidence_weighs_the_choice_and_the_answer_stays_a_candidate():
    """Pseudo-references beyond the samples (tasks/mbr_evidence.py): weight x mean ROUGE-L against
    each group is added to a candidate's mean utility; the answer is always one of the candidates."""
    cands = ["return the sum", "return the sum of x", "read a file"]
    # plain MBR: "return the sum" and "return the sum of x" agree (0.75 each), the first wins
    assert mbr.choose(cands) == "return the sum"
    hint = ["read the file"]  # ROUGE-L 1/3 with the first, 2/3 with the last
    assert mbr.choose(cands, evidence=[(1.0, hint)]) == "return the sum"  # 0.375 + 0.333 > 0 + 0.667
    assert mbr.choose(cands, evidence=[(2.0, hint)]) == "read a file"  # 0.375 + 0.667 < 1.333
    assert mbr.choose(cands, evidence=[(0.0, hint), (5.0, [])]) == "return the sum"  # nothing to weigh
    assert mbr.choose(["a b", "c d"], evidence=[(9.0, ["e f"])]) == "a b"  # never the evidence itself
    # two groups add up: the mean within a group, the weight per group
    two = [(1.0, ["read the file", "return the sum"]), (1.5, ["read file"])]
    assert mbr.choose(cands, evidence=two) == "read a file"
