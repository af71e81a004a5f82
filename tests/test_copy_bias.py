"""The copy bias: decoding that leans toward the prompt's own tokens (model.generate.CopyBias)."""

from __future__ import annotations

import pytest
import torch

from model.chat import ROLE_TOKENS
from model.generate import CopyBias, _copy_processor, encode_prompt, generate, load
from model.sft_data import render_prompt
from tests.helpers import tiny_model_dir, tiny_tokenizer_dir


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("copy")
    return load(tiny_model_dir(tmp / "m", tiny_tokenizer_dir(tmp / "tok")), "cpu")


def test_the_bias_goes_to_each_rows_prompt_tokens_and_follows_repeated_rows():
    proc = CopyBias([[1, 4, 4, 7], [2]], vocab_size=9, bias=1.5, exclude={7})
    scores = torch.zeros((2, 9))
    out = proc(None, scores)
    assert out[0].tolist() == [0, 1.5, 0, 0, 1.5, 0, 0, 0, 0]  # 7 is excluded, 4 counted once
    assert out[1].tolist() == [0, 0, 1.5, 0, 0, 0, 0, 0, 0]
    # sampling N sequences per prompt: transformers repeats each prompt's row N times in a row
    many = proc(None, torch.zeros((6, 9)))
    assert [r.argmax().item() for r in many] == [1, 1, 1, 2, 2, 2]
    assert torch.equal(many[:3], out[:1].expand(3, 9)) and torch.equal(many[3:], out[1:].expand(3, 9))


def test_special_role_and_whitespace_tokens_get_no_bias(lm):
    model, tok = lm
    prompt = render_prompt("read the file\n    and return the lines", tok)
    ids, _ = encode_prompt(tok, prompt, 200)
    proc = _copy_processor(model, tok, [ids], 3.0)["logits_processor"][0]
    boosted = set(proc.bias[0].nonzero().flatten().tolist())
    roles = {tok.convert_tokens_to_ids(t) for t in ROLE_TOKENS}
    assert boosted and boosted < set(ids)
    assert not boosted & (roles | set(tok.all_special_ids))
    assert all(tok.decode([t]).strip() for t in boosted)
    assert {tok.decode([t]).strip() for t in boosted} >= {
        "file",
        "lines",
        "return",
    }  # the words of a tiny vocabulary
    assert _copy_processor(model, tok, [ids], 0.0) == {}


def test_a_large_bias_answers_with_the_prompts_tokens_only(lm):
    model, tok = lm
    prompts = [render_prompt(p, tok) for p in ("sort the items by key", "open a file for reading")]
    plain = generate(model, tok, prompts, max_new_tokens=8)
    assert generate(model, tok, prompts, max_new_tokens=8, copy_bias=0.0) == plain
    copied = generate(model, tok, prompts, max_new_tokens=8, copy_bias=50.0)
    assert copied != plain
    assert generate(model, tok, prompts, max_new_tokens=8, copy_bias=50.0, mbr_samples=3, seed=1) == generate(
        model, tok, prompts, max_new_tokens=8, copy_bias=50.0, mbr_samples=3, seed=1
    )
    # the ids generate() decodes: greedy and sampled, every new token is one of the prompt's
    for p in prompts:
        ids, _ = encode_prompt(tok, p, 200)
        proc = _copy_processor(model, tok, [ids], 50.0)
        for sample in (False, True):
            torch.manual_seed(0)
            out = model.generate(
                input_ids=torch.tensor([ids]),
                max_new_tokens=8,
                do_sample=sample,
                num_return_sequences=3 if sample else 1,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
                **proc,
            )
            new = set(out[:, len(ids) :].flatten().tolist())
            assert new <= set(proc["logits_processor"][0].bias[0].nonzero().flatten().tolist())
