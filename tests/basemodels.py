"""Tiny random-weight base models of other families, as a user would bring them: saved with
`save_pretrained`, each with its own tokenizer (trained here with the `tokenizers` library on
tests/helpers.py's corpus; nothing is downloaded) and a model card naming a licence.

- `gpt2_dir`: GPT-2 (Conv1D layers), a byte-level BPE whose only special token is
  `<|endoftext|>` (bos = eos = unk), no pad, no chat template: llmflow's template is used, its
  role markers plain text in this vocabulary.
- `llama_dir`: Llama with a ChatML chat template of its own (`<|im_start|>`, `<|im_end|>`).
- `hub_cache(cache, repo_id, model_dir)`: the model laid out as the Hugging Face cache holds a
  downloaded snapshot, so `snapshot_download(..., local_files_only=True)` finds it offline.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.helpers import corpus

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
REVISION = "0123456789abcdef0123456789abcdef01234567"


def _card(path: Path, licence: str) -> None:
    (path / "README.md").write_text(
        f"---\nlicense: {licence}\nlibrary_name: transformers\n---\n\n# tiny test model\n"
    )


def _text() -> list[str]:
    return corpus() + [f"<|user|>\nreturn the {w}<|end|>\n" for w in ("sum", "list", "value")]


def gpt2_dir(path: str | Path, seed: int = 0) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_text(), trainer=trainer)
    end = "<|endoftext|>"
    fast = GPT2TokenizerFast(tokenizer_object=tok, bos_token=end, eos_token=end, unk_token=end)
    fast.save_pretrained(path)
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(fast), n_embd=32, n_layer=2, n_head=4, n_positions=256,
        bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id, initializer_range=0.2,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,  # a training step's loss is the model's own
    )  # fmt: skip
    GPT2LMHeadModel(config).save_pretrained(path)
    _card(path, "mit")
    return path


def llama_dir(path: str | Path, seed: int = 0, extra_tokens: int = 0) -> Path:
    """A tiny Llama with a ChatML template; `extra_tokens` > 0 adds tokens past its embedding table."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    specials = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=360,
        special_tokens=specials,
        initial_alphabet=list(
            "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,:;()[]{}_-=+*/'\"!?<>|#\n"
        ),
        show_progress=False,
    )
    tok.train_from_iterator(_text(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        extra_special_tokens=["<|im_start|>", "<|im_end|>"], chat_template=CHATML,
    )  # fmt: skip
    rows = len(fast)
    if extra_tokens:
        fast.add_tokens([f"<extra_{i}>" for i in range(extra_tokens)])
    fast.save_pretrained(path)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=rows, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id, tie_word_embeddings=True, initializer_range=0.2,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(path)
    _card(path, "apache-2.0")
    return path


def hub_cache(cache: str | Path, repo_id: str, model_dir: str | Path) -> Path:
    """Lay `model_dir` out as a cached hub snapshot of `repo_id` under `cache` (HF_HUB_CACHE)."""
    repo = Path(cache) / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / REVISION
    shutil.copytree(model_dir, snapshot)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(REVISION)
    return snapshot
