"""The prompt format for supervised data and generation.

A prompt renders as `<|user|>\\n{prompt}<|end|>\\n<|assistant|>\\n`; the training target is
`{response}<|end|>` followed by eos. The role tokens are atomic pieces of the trained tokenizer,
so the format costs a handful of tokens and generation can stop on `<|end|>`.
"""

from __future__ import annotations

SYSTEM = "<|system|>"
USER = "<|user|>"
ASSISTANT = "<|assistant|>"
END = "<|end|>"
ROLE_TOKENS = [SYSTEM, USER, ASSISTANT, END]


def format_prompt(prompt: str, system: str | None = None) -> str:
    """The text the model sees before it answers."""
    head = f"{SYSTEM}\n{system}{END}\n" if system else ""
    return f"{head}{USER}\n{prompt}{END}\n{ASSISTANT}\n"


def format_response(response: str) -> str:
    """The text the model learns to produce (eos is appended as a token id, not as text)."""
    return f"{response}{END}"


def fit_prompt(tokenizer, prompt: str, budget: int) -> tuple[list[int], bool]:
    """(token ids of a rendered prompt in at most `budget` tokens, whether it was cut).

    Too long: with `tokenizer.truncation_side == "left"` (llmflow's default, as for a chat) the
    prompt loses its start; with "right" its text loses its end but the answer cue
    (`<|end|>\\n<|assistant|>\\n`) stays, so a task whose prompts open with what matters most
    (a signature, a title) keeps it. A prompt that fits is tokenized whole either way.
    """
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if len(ids) <= budget:
        return ids, False
    cut = prompt.rfind(END)
    if getattr(tokenizer, "truncation_side", "left") != "right" or cut < 0:
        return (ids[len(ids) - budget :] if budget > 0 else []), True
    head = tokenizer(prompt[:cut], add_special_tokens=False)["input_ids"]
    cue = tokenizer(prompt[cut:], add_special_tokens=False)["input_ids"]
    return (head[: max(budget - len(cue), 0)] + cue)[-budget:] if budget > 0 else [], True


def format_messages(messages: list[dict[str, str]]) -> tuple[str, str]:
    """Chat messages -> (prompt text up to the last assistant turn, last assistant response)."""
    if not messages or messages[-1].get("role") != "assistant":
        raise ValueError("messages must end with an assistant turn")
    parts = []
    for m in messages[:-1]:
        role = m.get("role")
        tag = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT}.get(role or "")
        if tag is None:
            raise ValueError(f"unknown chat role {role!r}")
        parts.append(f"{tag}\n{m.get('content', '')}{END}\n")
    return "".join(parts) + f"{ASSISTANT}\n", messages[-1].get("content", "")


CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}<|system|>\n{{ m['content'] }}<|end|>\n"
    "{% elif m['role'] == 'user' %}<|user|>\n{{ m['content'] }}<|end|>\n"
    "{% else %}<|assistant|>\n{{ m['content'] }}<|end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
