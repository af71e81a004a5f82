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
