"""MBR's draws (model/sampling.py): the same distribution as transformers' sampling, finished rows
leave the batch without disturbing the others."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import tiny_model_dir, tiny_tokenizer_dir


def _reference_probs(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None):
    """The distribution transformers samples from: its own warpers, in its order."""
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    scores = TemperatureLogitsWarper(temperature)(None, logits[None].clone())
    if top_k:
        scores = TopKLogitsWarper(top_k)(None, scores)
    if top_p is not None and top_p < 1:
        scores = TopPLogitsWarper(top_p)(None, scores)
    return scores.softmax(-1)[0]


@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p"), [(0.8, 50, None), (1.3, 6, 0.7), (0.8, None, 0.9)]
)
def test_draws_follow_transformers_warpers(temperature, top_k, top_p):
    from model.sampling import draw

    torch.manual_seed(0)
    logits = torch.randn(200) * 2
    n = 40_000
    tokens = draw(logits.expand(n, -1), temperature, top_k, top_p)
    freq = torch.bincount(tokens, minlength=200).double() / n
    want = _reference_probs(logits, temperature, top_k, top_p).double()
    assert (freq[want == 0] == 0).all()  # nothing outside the top-k / nucleus
    assert 0.5 * (freq - want).abs().sum() < 0.02  # total variation; sampling noise is ~0.01
    other = _reference_probs(logits, temperature * 1.5, top_k, top_p).double()
    assert 0.5 * (freq - other).abs().sum() > 0.04  # the check tells a wrong temperature apart


def _qwen3_window(tokenizer, window: int):
    """A tiny Qwen3 of llmflow's presets with sliding-window attention on every layer."""
    from model.presets import build_config, build_model

    torch.manual_seed(0)
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    config = build_config(
        "tiny", len(tokenizer), sliding_window=window, **ids, pad_token_id=tokenizer.pad_token_id
    )
    return build_model(config).eval()


@pytest.mark.parametrize("window", [None, 4])
def test_finished_rows_leave_the_batch_and_the_rest_decode_as_greedy(tmp_path, window):
    """With top-k 1 the loop is greedy decoding: on left-padded prompts of different lengths, with
    the copy bias and stop tokens that end rows at different steps (so rows are dropped from the
    batch and its KV cache mid-way), every row is transformers' greedy answer token for token; also
    with a sliding window shorter than the prompts (its cache keeps only the window)."""
    import model.generate as G
    from model.sampling import sample_continuations

    tok = tiny_tokenizer_dir(tmp_path / "tok")
    model, tokenizer = G.load(tiny_model_dir(tmp_path / "m", tok), "cpu")
    if window:
        model = _qwen3_window(tokenizer, window)
    prompts = ["def f(x): return the sum of the items of x", "read", "open the file and read its lines"]
    enc = [G.encode_prompt(tokenizer, p, 200)[0] for p in prompts]
    width = max(map(len, enc))
    ids = torch.full((3, width), tokenizer.pad_token_id)
    att = torch.zeros((3, width), dtype=torch.long)
    for j, e in enumerate(enc):
        ids[j, width - len(e) :], att[j, width - len(e) :] = torch.tensor(e), 1
    copy = G._copy_processor(model, tokenizer, enc, 2.0)

    def greedy(stop: list[int]) -> list[list[int]]:
        out = model.generate(
            input_ids=ids, attention_mask=att, max_new_tokens=10, do_sample=False,
            eos_token_id=stop, pad_token_id=tokenizer.pad_token_id, **copy,
        )[:, width:].tolist()  # fmt: skip
        return [r[: next((k for k, t in enumerate(r) if t in stop), len(r))] for r in out]

    free = greedy([tokenizer.eos_token_id])
    for stop in (
        [t] for t in sorted({t for r in free for t in r})
    ):  # a token that ends rows at different steps
        ends = [next((k for k, t in enumerate(r) if t in stop), len(r)) for r in free]
        if len(set(ends)) > 1 and min(ends) > 0:
            break
    want = greedy(stop)
    assert len({len(r) for r in want}) > 1  # the rows end at different steps
    got = sample_continuations(
        model,
        G._repeated_prompts(model, ids, att, 2),
        max_new_tokens=10,
        temperature=0.8,
        stop_ids=stop,
        top_k=1,
        row_bias=copy["logits_processor"][0].bias.repeat_interleave(2, 0),
    )
    assert got == [r for r in want for _ in range(2)]


def test_sampling_top_k_follows_the_generation_config(tmp_path):
    from model.sampling import sampling_top_k

    tok = tiny_tokenizer_dir(tmp_path / "tok")
    from model.generate import load

    model, _ = load(tiny_model_dir(tmp_path / "m", tok), "cpu")
    assert sampling_top_k(model, None) == 50  # transformers' default
    assert sampling_top_k(model, 7) == 7
    model.generation_config.top_k = 0
    assert sampling_top_k(model, None) is None  # 0: no cut, as in transformers


def test_a_generation_config_beyond_top_k_and_top_p_is_left_to_transformers(tmp_path, monkeypatch):
    """A checkpoint whose generation config sets a repetition penalty (many hub models do) is
    sampled by transformers' `generate`, which applies it; the plain config takes the fast loop."""
    import model.generate as G
    import model.sampling as S

    tok = tiny_tokenizer_dir(tmp_path / "tok")
    model, tokenizer = G.load(tiny_model_dir(tmp_path / "m", tok), "cpu")
    calls = []
    monkeypatch.setattr(
        G, "sample_continuations", lambda *a, **k: calls.append(1) or S.sample_continuations(*a, **k)
    )
    kw = dict(max_new_tokens=4, mbr_samples=3, seed=1)
    G.generate(model, tokenizer, ["read the file"], **kw)
    assert calls == [1] and S.supports(model)
    model.generation_config.repetition_penalty = 1.3
    assert not S.supports(model)
    assert len(G.generate(model, tokenizer, ["read the file"], **kw)) == 1 and calls == [1]


def test_a_temperature_of_zero_is_refused(tmp_path):
    import model.generate as G
    from model.sampling import sample_continuations

    tok = tiny_tokenizer_dir(tmp_path / "tok")
    model, tokenizer = G.load(tiny_model_dir(tmp_path / "m", tok), "cpu")
    ids = torch.tensor([G.encode_prompt(tokenizer, "read the file", 100)[0]])
    inputs = G._repeated_prompts(model, ids, torch.ones_like(ids), 2)
    with pytest.raises(ValueError, match="temperature > 0"):
        sample_continuations(model, inputs, max_new_tokens=4, temperature=0.0, stop_ids=[2])
