"""The task_data step: the supervised prompt -> response task for fine-tuning and evaluation.

Sources:

* `builtin:pydocs-summary` (default): every documented function or method of the standard
  library whose docstring opens with a one-line summary (first paragraph one line, at most
  `max_summary_chars`) followed by a body. prompt = the signature line then the docstring body
  (summary removed), cut to `max_prompt_chars` (`prompt_format: signature_last` puts the
  signature after the body; `signature_first_name_words` adds a last line with the name as
  lowercase words, the same body otherwise); response = the summary; group = the module.
* a JSONL or Parquet file (or a folder/glob of them) with `prompt`/`response` fields, or chat
  `messages` ending with an assistant turn (response = that turn, prompt = the turns before it,
  the content alone for a single user turn, else `Role: content` paragraphs). An optional
  `group` field groups rows; without one every row is its own group.

Splits take whole groups in the order of a hash of the group name (see `assign_splits`), so no
group (module) is in two splits and the test items are never trained on. Duplicate prompts
(and duplicate docstrings under another name) are dropped into `rejects.jsonl` with a reason,
like every unusable row. `limit` keeps a deterministic,
hash-ordered subset spread over all groups.
"""

from __future__ import annotations

import hashlib
import json
import platform
import textwrap
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmflow.config import InputError, TaskDataConfig
from llmflow.erasure import Rules
from llmflow.step import StepContext
from llmflow.store import ArtifactStore
from tasks.baselines import identifier_words, signature_name
from tasks.common import step_task

SPLITS = ("train", "validation", "test")
BUILTIN = "builtin:pydocs-summary"
MIN_BODY_CHARS = 40  # a prompt must keep at least this much of the docstring body


@dataclass
class Example:
    id: str
    prompt: str
    response: str
    group: str
    key: str = ""  # dedup key beyond the prompt (the docstring without the qualified name)


def _hash01(s: str) -> float:
    return int(hashlib.sha256(s.encode()).hexdigest()[:15], 16) / 16**15


def _cut(text: str, limit: int) -> str:
    """Cut at a line (else word) boundary so prompts end on whole words."""
    if len(text) <= limit:
        return text
    head = text[:limit]
    for sep in ("\n", " "):
        i = head.rfind(sep)
        if i > limit // 2:
            return head[:i].rstrip()
    return head


# --------------------------------------------------------------------------- builtin


def summary_and_body(doc: str, max_summary: int) -> tuple[str, str] | None:
    """(summary, body) when the docstring opens with a one-line summary and has a body."""
    head, sep, body = doc.strip().partition("\n\n")
    summary, body = head.strip(), body.strip()
    if not sep or not summary or "\n" in summary or len(summary) > max_summary or not body:
        return None
    return summary, body


def pydocs_examples(
    cfg: TaskDataConfig, rejects: list[dict[str, Any]], one_line: list[Example] | None = None
) -> Iterator[Example]:
    from tasks import pydocs

    for result in pydocs.walk(cfg.include_packages):
        yield from module_examples(result.modules, cfg, rejects, one_line)


def one_line_example(obj: Any, group: str, cfg: TaskDataConfig) -> Example | None:
    """signature (+ the name hint line in `signature_first_name_words`) -> the docstring, for a
    function whose whole docstring is one line of at most `max_summary_chars`, else None. The
    task proper needs a body to summarise; these teach the step from a name to a summary."""
    doc = obj.doc.strip()
    if not doc or "\n" in doc or len(doc) > cfg.max_summary_chars:
        return None
    prompt = obj.signature
    if cfg.prompt_format == "signature_first_name_words" and (
        words := identifier_words(signature_name(obj.signature) or "")
    ):
        prompt += f"\n{words}"
    h = hashlib.sha256(f"{obj.signature}\0{doc}".encode()).hexdigest()[:10]
    return Example(f"{obj.qualname}#{h}", prompt, doc, group)


def module_examples(
    modules: Iterable[Any],
    cfg: TaskDataConfig,
    rejects: list[dict[str, Any]],
    one_line: list[Example] | None = None,
) -> Iterator[Example]:
    """Examples of the documented functions and methods of parsed modules (tasks/pydocs.py).
    With a `one_line` list, the functions whose docstring is a single line (no body, so no
    example) are appended to it as `one_line_example`s."""
    for mod in modules:
        for obj in mod.objects:
            if obj.kind == "class":
                continue
            sb = summary_and_body(obj.doc, cfg.max_summary_chars)
            if sb is None:
                if one_line is not None and (ex := one_line_example(obj, mod.name, cfg)) is not None:
                    one_line.append(ex)
                continue
            summary, body = sb
            budget = cfg.max_prompt_chars - len(obj.signature) - 1
            if budget < MIN_BODY_CHARS:  # the signature alone would fill the prompt
                rejects.append({"id": obj.qualname, "reason": "prompt_too_long", "group": mod.name})
                continue
            body_text = _cut(textwrap.indent(body, "    "), budget)
            if cfg.prompt_format == "signature_last":
                prompt = f"{body_text}\n{obj.signature}"
            else:
                prompt = f"{obj.signature}\n{body_text}"
            if cfg.prompt_format == "signature_first_name_words" and (
                words := identifier_words(signature_name(obj.signature) or "")
            ):
                prompt += f"\n{words}"  # next to the answer: left truncation keeps it
            # the id does not depend on the prompt format: the same item in either layout
            h = hashlib.sha256(f"{obj.signature}\n{body_text}\0{summary}".encode()).hexdigest()[:10]
            yield Example(f"{obj.qualname}#{h}", prompt, summary, mod.name, key=f"{body}\0{summary}")


def package_train_examples(
    cfg: TaskDataConfig,
    held_out: list[Example],
    seen: set[str],
    rules: Rules,
    rejects: list[dict[str, Any]],
) -> tuple[list[Example], int]:
    """Up to `cfg.train_from_packages` extra TRAIN examples from the installed packages' docstrings
    (the standard library's validation and test splits are untouched). A package example is
    dropped when it repeats a kept one (`seen`: prompt or docstring), when it shares a word 13-gram
    with a held-out prompt or response (tasks/decontaminate.py: packages vendor and paraphrase the
    standard library), or when an erasure pattern matches it. Returns (examples, erased)."""
    from tasks import pydocs
    from tasks.decontaminate import Decontaminator

    dc = Decontaminator.from_texts(t for ex in held_out for t in (ex.prompt, ex.response))
    out: list[Example] = []
    erased = 0
    for ex in module_examples(pydocs.package_modules(), cfg, rejects):
        if len(out) >= cfg.train_from_packages:
            break
        ex.group = f"packages:{ex.group}"
        if rules.patterns and (rules.matches_text(ex.prompt) or rules.matches_text(ex.response)):
            erased += 1
            continue
        reason = None
        if ex.prompt in seen or ex.key in seen:
            reason = "duplicate"
        elif dc.matches(ex.prompt) or dc.matches(ex.response):
            reason = "contaminated"
        if reason:
            rejects.append({"id": ex.id, "reason": reason, "group": ex.group, "prompt": ex.prompt[:2000]})
            continue
        seen.update((ex.prompt, ex.key))
        out.append(ex)
    return out, erased


def add_one_line_train(
    kept: list[Example],
    one_line: list[Example],
    split_of: dict[str, str],
    seen: set[str],
    rules: Rules,
    rejects: list[dict[str, Any]],
) -> tuple[int, int]:
    """Append to `kept` the one-line docstrings (`one_line_example`) of the modules in the TRAIN
    split: a module of the validation or test split gives nothing, so the held-out splits are
    the task's own. A repeated prompt is a `duplicate` reject; an erasure pattern's match is
    counted, written nowhere. Returns (added, erased)."""
    added = erased = 0
    for ex in one_line:
        if split_of.get(ex.group) != "train":
            continue
        if rules.patterns and (rules.matches_text(ex.prompt) or rules.matches_text(ex.response)):
            erased += 1
            continue
        if ex.prompt in seen:
            rejects.append({"id": ex.id, "reason": "duplicate", "group": ex.group, "prompt": ex.prompt})
            continue
        seen.add(ex.prompt)
        kept.append(ex)
        added += 1
    return added, erased


# --------------------------------------------------------------------------- files


def _render_messages(messages: Any) -> tuple[str, str]:
    """Chat turns -> (prompt text, last assistant turn); ValueError on a malformed list."""
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty list")
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            raise ValueError("each message needs a string 'content'")
        if m.get("role") not in ("system", "user", "assistant"):
            raise ValueError(f"unknown role {m.get('role')!r}")
    if messages[-1]["role"] != "assistant":
        raise ValueError("messages must end with an assistant turn")
    before = messages[:-1]
    if len(before) == 1 and before[0]["role"] == "user":
        return before[0]["content"], messages[-1]["content"]
    prompt = "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in before)
    return prompt, messages[-1]["content"]


def _file_rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    """(row number, row or None, reject reason) for a JSONL or Parquet file, streaming."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        n = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                yield n, row, None
                n += 1
        return
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                yield lineno, None, "invalid:json"
                continue
            yield lineno, row, (None if isinstance(row, dict) else "invalid:json")


def file_examples(cfg: TaskDataConfig, rejects: list[dict[str, Any]]) -> Iterator[Example]:
    from tasks.readers import resolve_files

    kind = "parquet" if cfg.source.endswith(".parquet") else "jsonl"
    try:
        files = resolve_files(cfg.source, kind)
    except FileNotFoundError as e:
        raise InputError(f"task_data.source: {e}: name a JSONL/Parquet file or folder") from None
    if not files:
        raise InputError(f"task_data.source: no JSONL/Parquet files in {cfg.source}")
    for f, name in files:
        for n, row, reason in _file_rows(f):
            rid = f"{name}:{n}"
            if row is not None and row.get("id") is not None:
                rid = str(row["id"])
            if reason is None:
                assert row is not None
                try:
                    if "messages" in row and row["messages"] is not None:
                        prompt, response = _render_messages(row["messages"])
                    elif "prompt" in row and "response" in row:
                        prompt, response = row["prompt"], row["response"]
                    else:
                        raise KeyError
                except KeyError:
                    reason = "invalid:missing_field"
                except ValueError:
                    reason = "invalid:messages"
                else:
                    if not isinstance(prompt, str) or not isinstance(response, str):
                        reason = "invalid:type"
                    elif not prompt.strip() or not response.strip():
                        reason = "invalid:empty"
                    else:
                        group = str(row.get("group") or rid)
                        yield Example(rid, _cut(prompt, cfg.max_prompt_chars), response.strip(), group)
                        continue
            rejects.append({"id": rid, "reason": reason, "file": name, "row": n})


# --------------------------------------------------------------------------- splitting


def assign_splits(groups: list[str], val_frac: float, test_frac: float) -> dict[str, str]:
    """group -> split. Groups are ordered by a hash of their name, then dealt to test until it
    holds `test_frac` of the items, then to validation, the rest to train: whole groups only, so
    no group is in two splits, and the item fractions stay close to the targets even when group
    sizes vary a lot (modules do). A split with a non-zero fraction gets at least one group when
    there are at least three."""
    sizes = Counter(groups)
    order = sorted(sizes, key=lambda g: (_hash01(f"split:{g}"), g))
    total = sum(sizes.values())
    out: dict[str, str] = {}
    i = 0
    for split, frac in (("test", test_frac), ("validation", val_frac)):
        n = 0
        while i < len(order) - 1 and frac > 0 and (n < frac * total or n == 0) and len(order) >= 3:
            out[order[i]] = split
            n += sizes[order[i]]
            i += 1
    out.update({g: "train" for g in order[i:]})
    return out


def fingerprint(cfg: TaskDataConfig) -> str:
    """The interpreter version for the builtin task (with the installed distributions and their
    versions when packages are read), else a hash of the files' names, sizes and modification
    times: pass it as the step's `extra` so edited task files or packages change the key."""
    if cfg.source.startswith("builtin:"):
        if cfg.include_packages or cfg.train_from_packages:  # the installed packages are input too
            from importlib.metadata import distributions

            dists = sorted({f"{d.metadata['Name']}=={d.version}" for d in distributions()})
            digest = hashlib.sha256("\n".join(dists).encode()).hexdigest()[:16]
            return f"python-{platform.python_version()}-packages-{digest}"
        return f"python-{platform.python_version()}"
    from tasks.readers import resolve_files

    try:
        files = resolve_files(cfg.source, "parquet" if cfg.source.endswith(".parquet") else "jsonl")
    except FileNotFoundError:
        return "missing"
    h = hashlib.sha256()
    for f, name in files:
        st = f.stat()
        h.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def task_extra(cfg: TaskDataConfig, home: str | None = None) -> dict[str, Any]:
    """The step's `extra`: the task files' `fingerprint` and the (hashed) `match` patterns of the
    store's erasure requests, so that edited files or a new request change the key."""
    return {"fingerprint": fingerprint(cfg), "erased": Rules.load(ArtifactStore(home)).key_part()["match"]}


def task_data_step(ctx: StepContext) -> dict[str, Any]:
    """Build train/validation/test prompt -> response examples split by group. An example that an
    erasure request's pattern matches (llmflow/erasure.py) is counted as `erased`, written nowhere."""
    cfg: TaskDataConfig = ctx.config
    rules = Rules.load(ctx.store)
    keyed = ctx.extra.get("erased", []) if isinstance(ctx.extra, dict) else []
    if keyed != rules.key_part()["match"]:
        raise ValueError(
            "the store's erasure requests are not those in this step's key: pass "
            "extra=task_extra(config, home) (tasks/task_data.py) so that a request changes the key"
        )
    n_erased = 0
    rejects: list[dict[str, Any]] = []
    one_line: list[Example] = []
    if cfg.source == BUILTIN:
        examples = pydocs_examples(cfg, rejects, one_line if cfg.train_one_line_docstrings else None)
    elif cfg.source.startswith("builtin:"):
        raise InputError(f"task_data.source: unknown builtin {cfg.source!r} (known: {BUILTIN})")
    else:
        examples = file_examples(cfg, rejects)

    kept: list[Example] = []
    seen: set[str] = set()
    for ex in examples:
        if rules.patterns and (rules.matches_text(ex.prompt) or rules.matches_text(ex.response)):
            n_erased += 1
            continue
        keys = [ex.prompt] + ([ex.key] if ex.key else [])
        if any(k in seen for k in keys):
            rejects.append(
                {"id": ex.id, "reason": "duplicate", "group": ex.group, "prompt": ex.prompt[:2000]}
            )
            continue
        seen.update(keys)
        kept.append(ex)
    available = len(kept)
    if cfg.limit is not None and len(kept) > cfg.limit:
        kept = sorted(kept, key=lambda e: _hash01(f"limit:{e.id}"))[: cfg.limit]
    if not kept:
        reasons = ", ".join(f"{k} {v:,}" for k, v in Counter(r["reason"] for r in rejects).most_common())
        raise InputError(
            f"task_data.source {cfg.source}: no usable examples ({len(rejects):,} rejected: "
            f"{reasons or 'none'}); each row needs prompt and response strings, or messages"
        )

    split_of = assign_splits([e.group for e in kept], cfg.validation_fraction, cfg.test_fraction)
    n_limited, n_packages = len(kept), 0
    n_one_line, erased = add_one_line_train(kept, one_line, split_of, seen, rules, rejects)
    n_erased += erased
    if cfg.train_from_packages:
        held_out = [e for e in kept if split_of[e.group] != "train"]
        extra, erased = package_train_examples(cfg, held_out, seen, rules, rejects)
        n_erased += erased
        n_packages = len(extra)
        split_of.update({e.group: "train" for e in extra})
        kept += extra
    counts: Counter[str] = Counter()
    groups: dict[str, set[str]] = {s: set() for s in SPLITS}
    with ExitStack() as stack:
        files = {s: stack.enter_context(open(ctx.out / f"{s}.jsonl", "w", encoding="utf-8")) for s in SPLITS}
        for ex in kept:
            s = split_of[ex.group]
            row = {"id": ex.id, "prompt": ex.prompt, "response": ex.response, "group": ex.group}
            files[s].write(json.dumps(row, ensure_ascii=False) + "\n")
            counts[s] += 1
            groups[s].add(ex.group)
    with open(ctx.out / "rejects.jsonl", "w", encoding="utf-8") as fh:
        for r in rejects:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")

    by_reason = Counter(r["reason"] for r in rejects)
    stats = {
        "source": cfg.source,
        **{s: counts[s] for s in SPLITS},
        "rejected": len(rejects),
        "rejects_by_reason": dict(by_reason),
        "available": available,
        "groups": {s: len(groups[s]) for s in SPLITS},
        "erased": n_erased,
        "train_from_packages": n_packages,
        "train_one_line": n_one_line,
    }
    sample = kept[0]
    ctx.report(
        "\n".join(
            [
                "# Task data",
                "",
                f"Source `{cfg.source}`: {available:,} usable examples"
                + (f", limited to {n_limited:,}" if n_limited < available else "")
                + (f", {n_one_line:,} one-line docstrings of train modules" if n_one_line else "")
                + (f", and {n_packages:,} train examples from the installed packages" if n_packages else "")
                + f"; {len(rejects):,} rejected ({dict(by_reason) or 'none'}).",
                "",
                "| split | examples | groups |",
                "|---|---:|---:|",
                *(f"| {s} | {counts[s]:,} | {len(groups[s]):,} |" for s in SPLITS),
                "",
                "Example prompt:",
                "",
                "```",
                sample.prompt[:600],
                "```",
                "",
                f"Response: `{sample.response}`",
            ]
        )
        + "\n"
    )
    return stats


build_task_data = step_task("task_data", 1, task_data_step)
