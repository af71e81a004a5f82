"""Where the demo's quality comes from: fine-tuning levers on the demo base, scored like the gate.

Builds (or reuses) the demo pipeline's data and a base pretrained for a fixed number of steps
(`--pretrain-steps`, equal to what the demo's 3-minute budget reaches on a quiet 2-core machine),
then fine-tunes it once per lever and scores each candidate on the task's VALIDATION split (the
test split is kept for the demo itself), next to the model before fine-tuning and the trivial
baselines, with the gate's one-sided paired bootstrap against the best baseline.

    python benchmarks/demo_levers.py [--levers lora,full,...] [--home benchmarks/out/levers-home]

`--cv-fold K/N` scores on fold K of the train split's modules instead (the fine-tune trains on
the other N-1 folds): every scored item comes from a module the fine-tune never saw, as on the
test split, where the 108 validation items (39 from one module) do not separate fine-tune levers.

Writes benchmarks/results/demo-levers.json and prints a table. Budgets are in steps, so the
ROUGE-L column does not depend on other jobs; the seconds do (they are marked with the load).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# lever name -> finetune overrides (on top of the demo preset)
LEVERS: dict[str, dict] = {
    "lora-demo": {},  # the preset as it is (LoRA r8, lr 1e-3), at the steps 80 s reach when quiet
    "lora-300": {"max_steps": 300},
    "full-300": {"method": "full", "lr": 5e-4, "max_steps": 300},
    "full-300-lr2e-3": {"method": "full", "lr": 2e-3, "max_steps": 300},
    "full-600-lr2e-3": {"method": "full", "lr": 2e-3, "max_steps": 600},
    "full-600-lr2e-3-right": {"method": "full", "lr": 2e-3, "max_steps": 600, "truncation_side": "right"},
    "full-300-lr4e-3": {"method": "full", "lr": 4e-3, "max_steps": 300},
    "full-1000-lr2e-3-right": {"method": "full", "lr": 2e-3, "max_steps": 1000, "truncation_side": "right"},
    "full-400-lr2e-3": {"method": "full", "lr": 2e-3, "max_steps": 400},
    "full-600-lr1e-3": {"method": "full", "lr": 1e-3, "max_steps": 600},
    # prompt format: the docstring body first, the signature last (next to the answer, as in the
    # pretraining documents, where the summary follows the signature)
    "full-600-lr2e-3-siglast": {"method": "full", "lr": 2e-3, "max_steps": 600, "prompt_format": "sig_last"},
    "full-400-lr2e-3-siglast": {"method": "full", "lr": 2e-3, "max_steps": 400, "prompt_format": "sig_last"},
    "full-600-lr1e-3-siglast": {"method": "full", "lr": 1e-3, "max_steps": 600, "prompt_format": "sig_last"},
    "full-600-lr2e-3-seed2-siglast": {
        "method": "full",
        "lr": 2e-3,
        "max_steps": 600,
        "seed": 2,
        "prompt_format": "sig_last",
    },
    "lora-300-siglast": {"max_steps": 300, "prompt_format": "sig_last"},
    "full-400-lr2e-3-wordslast": {
        "method": "full",
        "lr": 2e-3,
        "max_steps": 400,
        "prompt_format": "words_last",
    },
    "full-400-lr2e-3-seed2": {"method": "full", "lr": 2e-3, "max_steps": 400, "seed": 2},
    "full-400-lr2e-3-siglast-seed2": {
        "method": "full",
        "lr": 2e-3,
        "max_steps": 400,
        "seed": 2,
        "prompt_format": "sig_last",
    },
    "full-400-lr2e-3-wordslast-seed2": {
        "method": "full",
        "lr": 2e-3,
        "max_steps": 400,
        "seed": 2,
        "prompt_format": "words_last",
    },
    "full-400-lr2e-3-siglastwords": {
        "method": "full",
        "lr": 2e-3,
        "max_steps": 400,
        "prompt_format": "sig_last_words",
    },
    # more supervised data: documented functions of the installed packages in the TRAIN split only
    # (task_data.train_from_packages; validation and test are the standard library's, unchanged)
    "full-400-lr2e-3-pkg3000": {
        "method": "full",
        "lr": 2e-3,
        "max_steps": 400,
        "task": {"train_from_packages": 3000},
    },
    "full-400-lr2e-3-pkg6000": {
        "method": "full",
        "lr": 2e-3,
        "max_steps": 400,
        "task": {"train_from_packages": 6000},
    },
    "full-600-lr2e-3-pkg6000": {
        "method": "full",
        "lr": 2e-3,
        "max_steps": 600,
        "task": {"train_from_packages": 6000},
    },
    "full-600-lr2e-3-pkg12000": {
        "method": "full",
        "lr": 2e-3,
        "max_steps": 600,
        "task": {"train_from_packages": 12000},
    },
    # the prompt tokens' loss at a small weight beside the response's (finetune.prompt_loss_weight)
    **{
        f"full-400-lr2e-3-plw{w}": {"method": "full", "lr": 2e-3, "max_steps": 400, "prompt_loss_weight": w}
        for w in (0.01, 0.03, 0.1, 0.3, 0.5, 1.0)
    },
    **{
        f"full-400-lr2e-3-plw{w}-seed2": {
            "method": "full",
            "lr": 2e-3,
            "max_steps": 400,
            "prompt_loss_weight": w,
            "seed": 2,
        }
        for w in (0.03, 0.1, 0.3, 0.5)
    },
    # regularising the fine-tune (it memorises the train split's phrases: train loss ~1, validation 3.4)
    "full-400-lr2e-3-plw0.3-wd0.1": {
        "method": "full", "lr": 2e-3, "max_steps": 400, "prompt_loss_weight": 0.3, "weight_decay": 0.1,
    },
    **{
        f"full-400-lr2e-3-plw0.3-neft{a}": {
            "method": "full", "lr": 2e-3, "max_steps": 400, "prompt_loss_weight": 0.3, "neftune_alpha": a,
        }
        for a in (2, 5, 10)
    },
    # one-line docstrings of the train split's modules as extra train items (signature -> summary)
    "full-400-lr2e-3-plw0.3-oneline": {
        "method": "full", "lr": 2e-3, "max_steps": 400, "prompt_loss_weight": 0.3, "oneline": True,
    },
    "full-400-lr2e-3-plw0.3-oneline-seed2": {
        "method": "full", "lr": 2e-3, "max_steps": 400, "prompt_loss_weight": 0.3, "oneline": True, "seed": 2,
    },
    "full-600-lr2e-3-plw0.3-oneline": {
        "method": "full", "lr": 2e-3, "max_steps": 600, "prompt_loss_weight": 0.3, "oneline": True,
    },
    # retrieval: the summary of the most similar train item of another module on a line before
    # the name words (TF-IDF over the prompts; a test item's module is never in train)
    "full-400-lr2e-3-plw0.3-neighbor": {
        "method": "full", "lr": 2e-3, "max_steps": 400, "prompt_loss_weight": 0.3, "neighbor": "summary",
    },
    "full-400-lr2e-3-plw0.3-neighbor-named": {
        "method": "full", "lr": 2e-3, "max_steps": 400, "prompt_loss_weight": 0.3, "neighbor": "named",
    },
}  # fmt: skip


def neighbor_rows(train: list[dict], rows: list[dict], style: str) -> list[dict]:
    """`rows` with the summary of each prompt's most similar `train` item of another group (TF-IDF
    cosine over the prompts' words) on a line before the prompt's last line (the name words).
    Needs scikit-learn, which the dev extra's full mlflow installs."""
    import numpy as np
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer(sublinear_tf=True, token_pattern=r"[A-Za-z]+").fit([r["prompt"] for r in train])
    sims = (
        vec.transform([r["prompt"] for r in rows]) @ vec.transform([r["prompt"] for r in train]).T
    ).toarray()
    groups = np.array([r["group"] for r in train])
    out = []
    for i, r in enumerate(rows):
        sims[i, groups == r["group"]] = -1.0
        nb = train[int(sims[i].argmax())]
        head, _, last = r["prompt"].rpartition("\n")
        hint = nb["response"]
        if style == "named":
            hint = f"{nb['prompt'].rpartition(chr(10))[2]}: {hint}"
        out.append({**r, "prompt": f"{head}\nsee also: {hint}\n{last}"})
    return out


def oneline_rows(groups: set[str], task_cfg) -> list[dict]:
    """The one-line docstrings of `groups`, as the task step collects them
    (`tasks.task_data.module_examples` with a `one_line` list)."""
    from tasks import pydocs
    from tasks.task_data import module_examples

    one_line: list = []
    for res in pydocs.walk(False):
        for _ in module_examples([m for m in res.modules if m.name in groups], task_cfg, [], one_line):
            pass  # the examples with a body are the task's own; only the one-line list is kept
    return [{"id": e.id, "prompt": e.prompt, "response": e.response, "group": e.group} for e in one_line]


def sig_last(prompt: str) -> str:
    """`def f(x):\n    body` -> `    body\ndef f(x):` (a prompt without a signature is kept)."""
    head, _, body = prompt.partition("\n")
    return f"{body}\n{head}" if head.startswith(("def ", "class ")) and body else prompt


def _words(prompt: str) -> str | None:
    """The task's name hint (`signature_first_name_words`): the signature's name as words."""
    from tasks.baselines import identifier_words, signature_name

    name = signature_name(prompt)
    return identifier_words(name) or None if name else None


def words_last(prompt: str) -> str:
    """Signature first, the function's name as lowercase words on a last line of its own
    (identifier subtokens, as code summarisation models take them): left truncation keeps it."""
    w = _words(prompt)
    return f"{prompt}\n{w}" if w else prompt


def sig_last_words(prompt: str) -> str:
    """Body, then the name as words in a comment line, then the signature (next to the answer)."""
    w, moved = _words(prompt), sig_last(prompt)
    if not w or moved == prompt:
        return moved
    body, _, sig = moved.rpartition("\n")
    return f"{body}\n# {w}\n{sig}"


PROMPT_FORMATS = {"sig_last": sig_last, "words_last": words_last, "sig_last_words": sig_last_words}


def cv_tasks(store, task, task_dir: Path, fold: str):
    """(fine-tune task, evaluation task, the evaluation task's folder) for fold `K/N` of the train
    split: modules go to folds by a hash of their name; the fine-tune's train split is the other
    folds (its validation split stays the task's, for the validation loss), the evaluation task's
    test split is fold K and its train split the other folds (the baselines' training answers)."""
    import hashlib

    k, n = map(int, fold.split("/"))
    parts: dict[bool, list[str]] = {True: [], False: []}  # in fold K, or not
    for line in (task_dir / "train.jsonl").read_text().splitlines():
        group = json.loads(line)["group"]
        parts[int(hashlib.sha256(group.encode()).hexdigest(), 16) % n == k].append(line + "\n")
    held, rest = "".join(parts[True]), "".join(parts[False])
    val = (task_dir / "validation.jsonl").read_text()
    refs = []
    for tag, test in (("ft", val), ("eval", held)):
        key = f"cv{k}of{n}-{tag}-{task.key[:16]}"
        with store.write("task_data", key, {"stats": task.stats}) as out:
            for split, text in (("train", rest), ("validation", val), ("test", test)):
                (out / f"{split}.jsonl").write_text(text)
        refs.append(store.ref("task_data", key))
    print(f"cv fold {fold}: {held.count(chr(10))} held-out items, {rest.count(chr(10))} train", flush=True)
    return refs[0], refs[1], store.local_path(refs[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--home", default=str(ROOT / "benchmarks" / "out" / "levers-home"))
    ap.add_argument("--levers", default=",".join(LEVERS))
    ap.add_argument("--pretrain-steps", type=int, default=400)
    ap.add_argument("--demo-finetune-steps", type=int, default=60)
    ap.add_argument("--set", action="append", default=[], help="extra config overrides (upstream too)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "demo-levers.json"))
    ap.add_argument(
        "--shape",
        default=None,
        help="NAME:hidden,layers,heads,kv_heads,ffn: pretrain a model of that shape (registered as "
        "preset NAME for this run) instead of the demo's `small`",
    )
    ap.add_argument(
        "--cv-fold",
        default=None,
        metavar="K/N",
        help="score on fold K of N of the TRAIN split's modules instead of the validation split "
        "(the fine-tune trains on the other folds): more held-out items, and every one from a module "
        "the fine-tune never saw, as the test split's are",
    )
    args = ap.parse_args()
    if args.cv_fold:
        k, _, n = args.cv_fold.partition("/")
        if not (k.isdigit() and n.isdigit() and int(k) < int(n)):
            ap.error(f"--cv-fold {args.cv_fold!r}: expected K/N with 0 <= K < N, e.g. 0/5")
    if args.shape:
        from model.presets import PRESETS

        name, dims = args.shape.split(":")
        keys = (
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "intermediate_size",
        )
        PRESETS[name] = dict(zip(keys, map(int, dims.split(",")), strict=True))
        args.set.append(f"pretrain.preset={name}")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

    import numpy as np
    from prefect import flow

    from flows.pipeline import compose
    from llmflow.config import load_config
    from llmflow.step import run_step
    from llmflow.store import ArtifactStore, StepRef
    from tasks import evaluate as E
    from tasks import finetune as F
    from tasks import metrics as M

    sets = [f"pretrain.max_steps={args.pretrain_steps}", "pretrain.max_seconds=null", *args.set]
    cfg = load_config("demo", sets)
    store = ArtifactStore(args.home)

    @flow(name="levers-upstream")
    def upstream() -> dict:
        return compose(cfg, "pretrain", home=args.home)

    t0 = time.time()
    refs = {k: StepRef(**v) for k, v in upstream().items()}
    base, task = refs["pretrain"], refs["task_data"]
    print(f"upstream (pretrain {base.stats.get('steps')} steps): {time.time() - t0:.0f}s", flush=True)

    # the validation split as the evaluation set (selection never looks at the test split)
    task_dir = store.local_path(task)
    with store.write("task_data", f"validation-as-test-{task.key[:16]}", {"stats": task.stats}) as out:
        for split, src in (("train", "train"), ("validation", "validation"), ("test", "validation")):
            (out / f"{split}.jsonl").write_text((task_dir / f"{src}.jsonl").read_text())
    val_task = store.ref("task_data", f"validation-as-test-{task.key[:16]}")
    if args.cv_fold:  # fine-tune on the other folds of the train split, score on fold K
        task, val_task, task_dir = cv_tasks(store, task, task_dir, args.cv_fold)

    def task_variant(fmt: str):
        """The task (and the validation-as-test task) with every prompt rendered by `fmt`."""
        out_refs = []
        for t, tag in ((task, "task"), (val_task, "val")):
            key = f"{fmt}-{tag}-{task.key[:16]}"
            with store.write("task_data", key, {"stats": task.stats}) as out:
                for split in ("train", "validation", "test"):
                    rows = [
                        json.loads(x)
                        for x in (store.local_path(t) / f"{split}.jsonl").read_text().splitlines()
                    ]
                    text = "".join(
                        json.dumps({**r, "prompt": PROMPT_FORMATS[fmt](r["prompt"])}) + "\n" for r in rows
                    )
                    (out / f"{split}.jsonl").write_text(text)
            out_refs.append(store.ref("task_data", key))
        return out_refs

    def more_train(task_over: dict):
        """The task rebuilt with `task_over` (train_from_packages): its validation and test
        splits must be the base task's, byte for byte; only the train split grows."""
        from tasks import task_data as T

        tcfg = cfg.task_data.model_copy(update=task_over)
        ref = run_step(
            "task_data", 1, T.task_data_step, tcfg, {}, store=store, extra=T.task_extra(tcfg, args.home)
        )
        for split in ("validation", "test"):
            same = (store.local_path(ref) / f"{split}.jsonl").read_bytes() == (
                task_dir / f"{split}.jsonl"
            ).read_bytes()
            assert same, f"{split} split changed with {task_over}"
        print(f"task {task_over}: {ref.stats['train']} train examples", flush=True)
        return ref

    def with_oneline(t):
        """`t` with the one-line docstrings of its train split's modules added to its train split."""
        d = store.local_path(t)
        train = [json.loads(x) for x in (d / "train.jsonl").read_text().splitlines()]
        seen = {r["prompt"] for r in train}
        extra = [
            r for r in oneline_rows({r["group"] for r in train}, cfg.task_data) if r["prompt"] not in seen
        ]
        key = f"oneline-{t.key[:40]}"
        with store.write("task_data", key, {"stats": t.stats}) as out:
            rows = train + extra
            (out / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            for split in ("validation", "test"):
                (out / f"{split}.jsonl").write_text((d / f"{split}.jsonl").read_text())
        print(f"oneline: {len(extra)} one-line docstrings added to {len(train)} train items", flush=True)
        return store.ref("task_data", key)

    def with_neighbors(t, style: str):
        """`t` with every prompt given its nearest train item of another module (`neighbor_rows`)."""
        d = store.local_path(t)
        split_rows = {
            s: [json.loads(x) for x in (d / f"{s}.jsonl").read_text().splitlines()]
            for s in ("train", "validation", "test")
        }
        key = f"neighbor-{style}-{t.key[:40]}"
        with store.write("task_data", key, {"stats": t.stats}) as out:
            for s, rows in split_rows.items():
                rows = neighbor_rows(split_rows["train"], rows, style)
                (out / f"{s}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return store.ref("task_data", key)

    # the trivial baselines, always on the original prompts
    from tasks import baselines as B

    eval_split = "test" if args.cv_fold else "validation"
    val_rows = [json.loads(x) for x in (task_dir / f"{eval_split}.jsonl").read_text().splitlines()]
    train_rows = [json.loads(x) for x in (task_dir / "train.jsonl").read_text().splitlines()]
    base_answers = B.baseline_answers(  # nearest_train too: the retrieval answer of tasks/baselines.py
        "builtin:pydocs-summary",
        [r["prompt"] for r in val_rows],
        [r["response"] for r in train_rows],
        [r["prompt"] for r in train_rows],
    )
    base_scores = {
        b: [x["rougeL"] for x in M.rouge(a, [r["response"] for r in val_rows])]
        for b, a in base_answers.items()
    }
    print({b: round(float(np.mean(v)), 4) for b, v in base_scores.items()}, flush=True)

    results = {}
    for name in args.levers.split(","):
        over = dict(LEVERS[name])
        fmt = over.pop("prompt_format", None)
        ft_task, ev_task = task_variant(fmt) if fmt else (task, val_task)
        if "task" in over:
            ft_task = more_train(over.pop("task"))
        if over.pop("oneline", False):
            ft_task = with_oneline(ft_task)
        if style := over.pop("neighbor", None):
            ft_task, ev_task = with_neighbors(ft_task, style), with_neighbors(ev_task, style)
        if name == "lora-demo":
            over = {"max_steps": args.demo_finetune_steps, "max_seconds": None}
        ft_cfg = cfg.finetune.model_copy(update={"max_seconds": None, **over})
        t1 = time.time()
        tuned = run_step(
            "finetune", F.VERSION, F.finetune_step, ft_cfg, {"base": base, "task": ft_task}, store=store
        )
        ft_seconds = time.time() - t1
        ev = run_step(
            "evaluate",
            E.VERSION,
            E.evaluate_step,
            cfg.evaluate.model_copy(update={"bias": False, "counterfactual_samples": 0}),
            {"model": tuned, "base": base, "shards": refs["pack"], "task": ev_task},
            store=store,
            extra={"name": f"levers-{name}"},
        )
        ev_dir = store.local_path(ev)
        doc = json.loads((ev_dir / "metrics.json").read_text())
        samples = [json.loads(line) for line in (ev_dir / "samples.jsonl").read_text().splitlines()]
        cand = [s["scores"]["rougeL"] for s in samples]
        refs_b = {
            b: [s["baselines"][b]["scores"]["rougeL"] for s in samples] for b in samples[0]["baselines"]
        }
        refs_b.update(base_scores)  # the trivial baselines on the original prompts
        best = max((b for b in refs_b if b != "base"), key=lambda b: np.mean(refs_b[b]))
        vs_best = M.paired_lower_bound(cand, refs_b[best], 1000, 1234, 0.95)
        key = name + (f"@cv{args.cv_fold}" if args.cv_fold else "")  # folds do not overwrite each other
        results[key] = {
            "finetune": {
                k: v
                for k, v in ft_cfg.model_dump(mode="json").items()
                if k
                in (
                    "method",
                    "lr",
                    "max_steps",
                    "lora_r",
                    "prompt_loss_weight",
                    "seed",
                    "weight_decay",
                    "neftune_alpha",
                )
            },
            "steps": tuned.stats.get("steps"),
            "finetune_seconds": round(ft_seconds, 1),
            "rougeL": doc["metrics"]["rougeL"],
            "rougeL_ci": doc["ci"]["rougeL"],
            "bleu": doc["metrics"]["bleu"],
            "chrf": doc["metrics"]["chrf"],
            "exact_match": doc["metrics"]["exact_match"],
            "baselines": doc["baselines"],
            "best_baseline": best,
            "gain_over_best": vs_best,
            "load_avg": os.getloadavg()[0],
        }
        r = results[key]
        print(
            f"{name}: rougeL {r['rougeL']:.4f} {r['rougeL_ci']} vs {best} {np.mean(refs_b[best]):.4f}, "
            f"gain {vs_best['diff']:+.4f} (95% lower {vs_best['lower']:+.4f}); {r['steps']} steps {ft_seconds:.0f}s",
            flush=True,
        )
    prev = json.loads(Path(args.out).read_text()) if Path(args.out).exists() else {}
    prev.update(results)
    Path(args.out).write_text(json.dumps(prev, indent=2))


if __name__ == "__main__":
    main()
