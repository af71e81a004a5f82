"""The bias suite: minimal-pair scoring on a model with a known preference, swaps, toxicity."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tasks import bias
from tasks.bias_templates import CATEGORIES, pairs
from tests.helpers import tiny_model_dir

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(path, tok_dir, seed=0):
    model_dir = tiny_model_dir(path, tok_dir, seed=seed)
    return AutoModelForCausalLM.from_pretrained(model_dir).eval(), AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def tiny(tok_dir, tmp_path_factory):
    return _model(tmp_path_factory.mktemp("bias") / "model", tok_dir)


def _train_on(model, tokenizer, texts: list[str], steps: int = 40) -> None:
    """A few dozen full-batch steps on `texts` only: the model learns to prefer them."""
    enc = [[tokenizer.bos_token_id, *tokenizer(t, add_special_tokens=False)["input_ids"]] for t in texts]
    width = max(map(len, enc))
    ids = torch.full((len(enc), width), tokenizer.pad_token_id)
    labels = torch.full((len(enc), width), -100)
    for i, x in enumerate(enc):
        ids[i, : len(x)] = labels[i, : len(x)] = torch.tensor(x)
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=ids, attention_mask=(labels != -100).long(), labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def test_template_set_covers_every_category_with_tens_of_pairs():
    items = pairs()
    assert len({p["id"] for p in items}) == len(items)
    for cat in CATEGORIES:
        sel = [p for p in items if p["category"] == cat]
        assert 15 <= len(sel) <= 60, cat
        for p in sel:  # minimal pairs: same sentence up to the group term
            assert p["stereo"] != p["anti"] and p["stereo"][-8:] == p["anti"][-8:]


def test_sentence_loglik_matches_the_model_loss(tiny):
    model, tok = tiny
    text = "Women are bad at math."
    ids = torch.tensor([[tok.bos_token_id, *tok(text, add_special_tokens=False)["input_ids"]]])
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss.item()
    # batched with longer sentences (padding must not change the score)
    got = bias.sentence_loglik(
        model, tok, [text, "Old people are a burden on society, always."], batch_size=2
    )[0]
    assert got == pytest.approx(-loss * (ids.shape[1] - 1), rel=1e-4)


def test_model_trained_on_stereotypes_scores_far_from_50(tok_dir, tmp_path):
    model, tok = _model(tmp_path / "model", tok_dir, seed=1)
    items = pairs()
    before = bias.stereotype_scores(model, tok, items, n_boot=200)
    _train_on(model, tok, [p["stereo"] for p in items])
    after = bias.stereotype_scores(model, tok, items, n_boot=200)
    assert after["overall"]["stereotype_pct"] >= 90, after["overall"]
    assert after["overall"]["bias"] >= 40
    assert after["overall"]["mean_abs_delta"] > before["overall"]["mean_abs_delta"]
    for cat, s in after["categories"].items():
        lo, hi = s["stereotype_pct_ci"]
        assert lo <= s["stereotype_pct"] <= hi and lo > 50, (cat, s)
    assert set(after["categories"]) == set(CATEGORIES)
    assert len(after["pairs"]) == len(items)


def test_model_trained_on_the_contrast_sentences_prefers_them(tok_dir, tmp_path):
    model, tok = _model(tmp_path / "model", tok_dir, seed=2)
    items = pairs()
    _train_on(model, tok, [p["anti"] for p in items])
    assert bias.stereotype_scores(model, tok, items, n_boot=0)["overall"]["stereotype_pct"] <= 20


def test_swap_terms_both_ways_and_keeps_case():
    assert bias.swap_terms("He gave his book to Mary.") == "She gave her book to John."
    assert bias.swap_terms("SHE said the men left") == "HE said the women left"
    assert bias.swap_terms("Christians and muslims") == "Muslims and christians"
    assert bias.swap_terms("theme chemistry") == "theme chemistry"  # whole words only


def test_counterfactual_variants_and_report():
    rows = [
        {"id": "a", "prompt": "Why did he leave?", "response": "He was tired."},
        {"id": "b", "prompt": "def f(x): return x", "response": "Identity."},
    ]
    v = bias.counterfactual_variants(rows, limit=10)
    assert [x["kind"] for x in v] == ["swap", "name"]
    assert v[0]["b"] == "Why did she leave?" and v[0]["ref_b"] == "She was tired."
    assert v[1]["a"] != v[1]["b"] and v[1]["a"].startswith("def f(x)")
    exact = lambda p, r: float(p == r)  # noqa: E731
    rep = bias.counterfactual_report(
        v, ["He was tired.", "Identity."], ["He was tired.", "Identity."], exact, n_boot=50
    )
    # the swapped prompt answered with the unswapped text loses the exact match: change -1
    assert rep["n"] == 2 and rep["n_swapped"] == 1
    assert rep["max_abs_change"] == 1.0 and rep["worst"]["id"] == "a"
    assert rep["mean_abs_change"] == 0.5 and rep["identical_rate"] == 1.0
    assert bias.counterfactual_report([], [], [], exact) == {"n": 0}


def test_toxicity_rate_with_a_given_scorer():
    words = {"idiot", "stupid"}

    def score(text: str) -> float:
        toks = text.lower().split()
        return sum(t.strip(".,!") in words for t in toks) / max(1, len(toks))

    rep = bias.toxicity_rate(
        ["you idiot", "a fine answer", "stupid stupid code", "ok"], 0.02, score, n_boot=100
    )
    assert rep["rate"] == 0.5 and rep["flagged"] == 2
    assert rep["rate_ci"][0] <= 0.5 <= rep["rate_ci"][1]
    with pytest.raises(ValueError, match="no texts"):
        bias.toxicity_rate([], 0.02, score)
