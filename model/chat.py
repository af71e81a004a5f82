"""The prompt format for supervised data and generation.

llmflow's format: a prompt renders as `<|user|>\\n{prompt}<|end|>\\n<|assistant|>\\n`; the
training target is `{response}<|end|>` followed by eos. The role tokens are atomic pieces of the
trained tokenizer, so the format costs a handful of tokens and generation can stop on `<|end|>`.

A base model brought from elsewhere keeps its own format: when its tokenizer has a chat template
other than `CHAT_TEMPLATE`, prompts are rendered by that template (`apply_chat_template`, the
leading bos text removed: the bos id is added once, as a token) and the target is the response
followed by what the template writes after an answer (`end_marker`, e.g. `<|im_end|>`), then
eos. A tokenizer without a template gets llmflow's; in a foreign vocabulary the role tokens are
then plain text of several tokens, and generation stops on eos or on the text `<|end|>`
(`model.generate`). Every function takes the tokenizer (None: llmflow's format).
"""

from __future__ import annotations

SYSTEM = "<|system|>"
USER = "<|user|>"
ASSISTANT = "<|assistant|>"
END = "<|end|>"
ROLE_TOKENS = [SYSTEM, USER, ASSISTANT, END]


_PROBE = "llmflow-probe-0e1f"  # stands in for a message's content when reading a template


def own_format(tokenizer) -> bool:
    """Whether prompts use llmflow's format: no tokenizer, or one with llmflow's template or none."""
    template = getattr(tokenizer, "chat_template", None)
    return tokenizer is None or not template or template == CHAT_TEMPLATE


def _render(tokenizer, messages: list[dict[str, str]], generation: bool) -> str:
    """The tokenizer's own template applied to `messages`, without a leading bos text."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)
    bos = tokenizer.bos_token
    return text[len(bos) :] if bos and text.startswith(bos) else text


def format_prompt(prompt: str, system: str | None = None, tokenizer=None) -> str:
    """The text the model sees before it answers."""
    if not own_format(tokenizer):
        head = [{"role": "system", "content": system}] if system else []
        return _render(tokenizer, [*head, {"role": "user", "content": prompt}], True)
    head = f"{SYSTEM}\n{system}{END}\n" if system else ""
    return f"{head}{USER}\n{prompt}{END}\n{ASSISTANT}\n"


def end_marker(tokenizer=None) -> str:
    """The text that closes an answer: `<|end|>`, or what the tokenizer's template writes after
    an assistant message (trailing whitespace and eos text dropped: eos is appended as an id)."""
    if own_format(tokenizer):
        return END
    user = [{"role": "user", "content": "x"}]
    full = _render(tokenizer, [*user, {"role": "assistant", "content": _PROBE}], False)
    tail = full[full.index(_PROBE) + len(_PROBE) :].rstrip() if _PROBE in full else ""
    eos = tokenizer.eos_token
    return tail[: -len(eos)].rstrip() if eos and tail.endswith(eos) else tail


def format_response(response: str, tokenizer=None) -> str:
    """The text the model learns to produce (eos is appended as a token id, not as text)."""
    return f"{response}{end_marker(tokenizer)}"


def is_rendered(prompt: str, tokenizer=None) -> bool:
    """Whether `prompt` is already a rendered conversation ending with the answer cue (as the
    OpenAI chat endpoint records one), to be taken as it is."""
    if own_format(tokenizer):
        return prompt.startswith((USER, SYSTEM)) and prompt.endswith(f"{ASSISTANT}\n")
    cue = format_prompt(_PROBE, tokenizer=tokenizer).partition(_PROBE)[2]
    return bool(cue.strip()) and prompt.endswith(cue)


def render_chat(tokenizer, messages: list[dict[str, str]]) -> str:
    """Chat messages up to the answer cue, by the tokenizer's template (llmflow's when it has none)."""
    if own_format(tokenizer):
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, chat_template=CHAT_TEMPLATE
        )
    return _render(tokenizer, messages, True)


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


def format_messages(messages: list[dict[str, str]], tokenizer=None) -> tuple[str, str]:
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
    if not own_format(tokenizer):
        turns = [{"role": m["role"], "content": m.get("content", "")} for m in messages[:-1]]
        return _render(tokenizer, turns, True), messages[-1].get("content", "")
    return "".join(parts) + f"{ASSISTANT}\n", messages[-1].get("content", "")


CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}<|system|>\n{{ m['content'] }}<|end|>\n"
    "{% elif m['role'] == 'user' %}<|user|>\n{{ m['content'] }}<|end|>\n"
    "{% else %}<|assistant|>\n{{ m['content'] }}<|end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
