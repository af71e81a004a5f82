"""Shared test fixtures: a real tiny tokenizer and a tiny random Llama model, built in a second.

`tiny_tokenizer_dir(path)` trains a small BPE tokenizer (the `tokenizers` library, SentencePiece
style metaspace) with `<s>`, `</s>`, `<pad>`, `<unk>` and the chat role tokens of
`model.chat.ROLE_TOKENS` as single tokens, and saves it so `AutoTokenizer.from_pretrained(path)`
loads it. `tiny_model_dir(path, tokenizer_dir)` saves a randomly initialised `LlamaForCausalLM`
(hidden 32, 2 layers, init std 0.2) sized to that tokenizer, with the tokenizer files beside it, the layout a
`pretrain` artifact's `model/` folder has.
"""

from __future__ import annotations

import json
from pathlib import Path

from model.chat import CHAT_TEMPLATE, ROLE_TOKENS

SPECIAL = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}

_WORDS = (
    "the function returns a list of values from the given path and raises an error when the file "
    "is missing compute the sum of two numbers open a file for reading write text to a stream "
    "parse a string into an integer sort the items by key return the length of the sequence "
    "split the line on whitespace join the parts with a comma convert the value to a float "
    "check whether the object is callable make a new directory read all lines of a file "
    "def class import from self args kwargs return none true false if else for while in not "
)


def corpus(n_lines: int = 200) -> list[str]:
    """A few KB of deterministic English-ish text with some Python-looking lines."""
    words = _WORDS.split()
    lines = []
    for i in range(n_lines):
        k = 5 + i % 11
        start = (i * 7) % len(words)
        line = " ".join(words[(start + j * 3) % len(words)] for j in range(k))
        lines.append(f"{line}." if i % 3 else f"def f{i % 13}(x, y): {line}")
    return lines


def tiny_tokenizer_dir(path: str | Path, vocab_size: int = 320) -> Path:
    """Train and save a small BPE tokenizer loadable with AutoTokenizer. Returns the path."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE(unk_token=SPECIAL["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[
            SPECIAL["unk_token"],
            SPECIAL["bos_token"],
            SPECIAL["eos_token"],
            SPECIAL["pad_token"],
        ],
        initial_alphabet=list(
            "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,:;()[]{}_-=+*/'\"!?<>|#\n"
        ),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL)
    fast.add_special_tokens({"additional_special_tokens": list(ROLE_TOKENS)})
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(path)
    return path


def tiny_model_dir(path: str | Path, tokenizer_dir: str | Path, seed: int = 0, **overrides) -> Path:
    """Save a tiny random LlamaForCausalLM matched to the tokenizer (plus its files). Returns path."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    path = Path(path)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    kwargs = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        initializer_range=0.2,  # not flat logits: small tuning methods have something to steer
    )
    kwargs.update(overrides)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**kwargs))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def write_jsonl(path: str | Path, rows: list[dict]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def task_rows(n: int, prefix: str = "r") -> list[dict]:
    """n prompt/response rows of the task_data contract: a learnable mapping word -> word."""
    words = _WORDS.split()
    rows = []
    for i in range(n):
        w = words[i % len(words)]
        rows.append(
            {
                "id": f"{prefix}{i}",
                "prompt": f"def {w}(x): return the {w} of x",
                "response": f"return {w}.",
                "group": "g",
            }
        )
    return rows


def shuffled_targets_task(store, task_ref, key: str = "shuffled-targets", seed: int = 0):
    """A task_data artifact whose train responses are shuffled among the prompts (validation and
    test unchanged): fine-tuning on it can learn the answers' style but nothing about the prompts."""
    import random

    from llmflow.store import StepRef

    task_dir = store.local_path(task_ref)
    train = [json.loads(line) for line in (task_dir / "train.jsonl").read_text().splitlines() if line]
    responses = [r["response"] for r in train]
    random.Random(seed).shuffle(responses)
    source = (store.manifest("task_data", task_ref.key) or {}).get("config", {}).get("source")
    manifest = {"stats": task_ref.stats, "config": {"source": source, "shuffled_from": task_ref.key}}
    with store.write("task_data", key, manifest) as out:
        rows = [{**r, "response": s} for r, s in zip(train, responses, strict=True)]
        (out / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        for split in ("validation", "test"):
            (out / f"{split}.jsonl").write_text((task_dir / f"{split}.jsonl").read_text())
    ref = store.ref("task_data", key)
    assert isinstance(ref, StepRef)
    return ref
