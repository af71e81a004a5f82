"""The pipeline configuration: one pydantic model per step, composed into `PipelineConfig`.

Configs are data, validated once at the edge (YAML preset + `--set a.b=c` overrides, or the
typed parameter form of a Prefect deployment). Every model forbids unknown keys so a typo is an
error that names the key, never a silently ignored setting. A step's store key hashes its own
section only, so changing one step's settings recomputes that step and what depends on it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"

# Upper bounds that catch a typo (an extra zero, 1e23) before a run starts, never a real run:
# each is far beyond the largest run llmflow is meant for.
MAX_STEPS = 10_000_000  # optimizer steps; published LLM pretraining runs take 10^5 to 10^6
MAX_BATCH = 65_536  # sequences, examples or micro-batches
MAX_SECONDS = 366 * 86_400  # a year of wall clock
MAX_TOKENS = 10**15  # training tokens; the largest published runs use about 10^13
MAX_ITEMS = 10**12  # documents, examples, batches
MAX_PROCESSES = 4096  # worker or training processes
MAX_SEED = 2**32 - 1  # numpy's seed range


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --------------------------------------------------------------------------- ingest


class SourceConfig(Section):
    """One input source. `kind` says how to read it; `license` is recorded on every document."""

    name: str = Field(description="Short name recorded as each document's `source`.")
    kind: Literal["builtin", "text", "jsonl", "parquet", "csv", "hf"] = Field(
        description="builtin: a corpus shipped with llmflow (path = 'pydocs'); text: a folder of "
        ".txt/.md files; jsonl/parquet/csv: files or a folder of them; hf: a Hugging Face dataset "
        "by hub name or local path."
    )
    path: str = Field(description="File, folder, glob, builtin name, or HF dataset name/path.")
    glob: str | None = Field(
        default=None,
        description="For folders: which files to read (recursive glob, e.g. '**/*.txt'); default by "
        "kind: text -> **/*.txt and **/*.md, jsonl -> **/*.jsonl, parquet -> **/*.parquet, csv -> **/*.csv.",
    )
    text_field: str = Field(default="text", description="Column/field holding the text.")
    split: str = Field(default="train", description="HF dataset split.")
    hf_config: str | None = Field(default=None, description="HF dataset configuration name.")
    license: str = Field(default="unknown", description="Declared licence, carried in every document's meta.")
    include_packages: bool = Field(
        default=False, description="builtin:pydocs only: add docstrings of installed packages (tens of MB)."
    )
    limit: int | None = Field(
        default=None, ge=1, le=MAX_ITEMS, description="Read at most this many documents."
    )


class IngestConfig(Section):
    sources: list[SourceConfig] = Field(
        default_factory=lambda: [
            SourceConfig(name="pydocs", kind="builtin", path="pydocs", license="PSF-2.0")
        ],
        min_length=1,
    )
    shard_docs: int = Field(
        default=5000, ge=1, le=MAX_ITEMS, description="Documents per output shard (bounds memory)."
    )
    shard_mb: float = Field(
        default=256, gt=0, description="Also close a shard once its text reaches this size."
    )
    min_chars: int = Field(default=1, ge=0, description="Shorter texts are rejected as invalid:empty.")

    @field_validator("sources")
    @classmethod
    def _unique_names(cls, v: list[SourceConfig]) -> list[SourceConfig]:
        names = [s.name for s in v]
        if len(names) != len(set(names)):
            raise ValueError(f"source names must be unique, got {names}")
        return v


class TaskDataConfig(Section):
    """The supervised fine-tuning/evaluation task (prompt -> response pairs)."""

    source: str = Field(
        default="builtin:pydocs-summary",
        description="builtin:pydocs-summary (signature + docstring body -> one-line summary) or a "
        "JSONL/Parquet file with prompt/response or messages.",
    )
    validation_fraction: float = Field(default=0.05, ge=0.0, lt=0.5)
    test_fraction: float = Field(default=0.05, gt=0.0, lt=0.5)
    max_prompt_chars: int = Field(default=1200, ge=64)
    max_summary_chars: int = Field(
        default=120, ge=16, description="pydocs-summary: longest one-line summary."
    )
    include_packages: bool = Field(
        default=False, description="pydocs-summary: also use the installed packages' docstrings."
    )
    limit: int | None = Field(
        default=None, ge=1, le=MAX_ITEMS, description="Keep at most this many examples."
    )


# --------------------------------------------------------------------------- prepare


class NormalizeConfig(Section):
    """Unicode NFC, control characters, whitespace; mojibake repair (tasks/normalize.py)."""

    enabled: bool = True
    fix_mojibake: bool = Field(default=True, description="Repair mojibake with ftfy when installed.")


class QualityConfig(Section):
    """Gopher / C4 / FineWeb style heuristics (see tasks/filters.py for each rule's origin)."""

    enabled: bool = True
    max_chars: int = Field(
        default=2_000_000, ge=1, description="Longer texts are dropped before any other work (bounds memory)."
    )
    min_words: int = Field(default=50, ge=0, description="Gopher: at least 50 words.")
    max_words: int = Field(default=100_000, ge=1, description="Gopher: at most 100,000 words.")
    min_mean_word_length: float = Field(default=3.0, ge=0, description="Gopher: mean word length >= 3.")
    max_mean_word_length: float = Field(default=10.0, ge=1, description="Gopher: mean word length <= 10.")
    max_symbol_word_ratio: float = Field(default=0.1, ge=0, description="Gopher: '#' and '...' per word.")
    max_bullet_lines_ratio: float = Field(default=0.9, ge=0, le=1, description="Gopher.")
    max_ellipsis_lines_ratio: float = Field(default=0.3, ge=0, le=1, description="Gopher.")
    min_alpha_words_ratio: float = Field(
        default=0.8, ge=0, le=1, description="Gopher: 80% of words contain a letter."
    )
    min_stop_words: int = Field(default=2, ge=0, description="Gopher: at least 2 English stop words.")
    max_duplicate_line_fraction: float = Field(default=0.3, ge=0, le=1, description="Gopher.")
    max_duplicate_paragraph_fraction: float = Field(default=0.3, ge=0, le=1, description="Gopher.")
    max_duplicate_line_char_fraction: float = Field(default=0.2, ge=0, le=1, description="Gopher.")
    max_duplicate_paragraph_char_fraction: float = Field(default=0.2, ge=0, le=1, description="Gopher.")
    max_top_ngram_char_fraction: dict[int, float] = Field(
        default_factory=lambda: {2: 0.20, 3: 0.18, 4: 0.16},
        description="Gopher: characters covered by the most frequent n-gram, per n.",
    )
    max_dup_ngram_char_fraction: dict[int, float] = Field(
        default_factory=lambda: {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10},
        description="Gopher: characters covered by repeated n-grams, per n.",
    )
    c4_lorem_ipsum: bool = Field(default=True, description="C4: drop documents containing 'lorem ipsum'.")
    min_line_punct_ratio: float = Field(
        default=0.12, ge=0, le=1, description="FineWeb: lines ending in terminal punctuation (0 = off)."
    )
    max_short_line_ratio: float = Field(
        default=0.67, ge=0, le=1, description="FineWeb: lines under 30 chars (1 = off)."
    )
    max_fineweb_dup_line_char_fraction: float = Field(
        default=0.01, ge=0, le=1, description="FineWeb: characters in duplicated lines (1 = off)."
    )


class LangIdConfig(Section):
    """Offline language ID with py3langid (its model ships in the wheel)."""

    enabled: bool = True
    allow: list[str] = Field(
        default_factory=lambda: ["en"], description="Allowed ISO 639-1 codes; empty = all."
    )
    min_score: float = Field(default=0.0, ge=0, le=1, description="Minimum probability of the top language.")
    max_chars: int = Field(default=1500, ge=100, description="Classify this many leading characters.")


class ToxicityConfig(Section):
    """Word-list toxicity (better_profanity's list, read as data), see tasks/toxicity.py."""

    enabled: bool = True
    max_score: float = Field(default=0.02, ge=0, le=1, description="Share of words on the block list.")
    ignore: list[str] = Field(
        default_factory=lambda: [
            "kill",
            "strip",
            "screw",
            "hell",
            "god",
            "xxx",
            "sex",
            "virgin",
            "crap",
            "suck",
            "len",
            "meth",
            "slope",
            "pot",
            "ugly",
        ],  # fmt: skip
        description="Dual-use words not counted (common in technical text: `kill -9`, `str.strip`, `len()`).",
    )


class MinHashConfig(Section):
    enabled: bool = True
    num_perm: int = Field(default=112, ge=16, le=1024)
    threshold: float = Field(default=0.8, gt=0, lt=1, description="Target Jaccard similarity.")
    shingle_words: int = Field(default=5, ge=1, le=32)
    verify_jaccard: bool = Field(default=True, description="Check candidate pairs by true Jaccard.")
    candidate_threshold: float | None = Field(
        default=None,
        gt=0,
        lt=1,
        description="LSH candidate threshold (sets bands/rows); default threshold - 0.2 when "
        "verifying (recall), else threshold.",
    )
    verify_cache_docs: int = Field(
        default=50_000,
        ge=0,
        description="Deduper used on its own: kept docs whose shingles it holds in memory for "
        "verification. The prepare step re-reads shingles from its shard files instead.",
    )
    seed: int = Field(default=1, ge=0, le=MAX_SEED)


class DedupConfig(Section):
    exact: bool = True
    minhash: MinHashConfig = Field(default_factory=MinHashConfig)


class PiiConfig(Section):
    """Typed placeholders for email, phone, IP, credit card, SSN, IBAN, secrets (tasks/pii.py)."""

    enabled: bool = True
    types: list[str] = Field(
        default_factory=lambda: ["email", "phone", "ipv4", "ipv6", "credit_card", "ssn", "iban", "secret"],
        description="PII types to redact.",
    )


class DecontaminateConfig(Section):
    """Drop documents sharing a word n-gram with the task's test/validation prompts and responses."""

    enabled: bool = True
    ngram: int = Field(default=13, ge=4, le=64)
    min_matches: int = Field(default=1, ge=1, description="Shared n-grams needed to drop a document.")
    min_words: int = Field(
        default=8, ge=1, description="Items shorter than ngram but at least this long are matched whole."
    )
    splits: list[str] = Field(default_factory=lambda: ["test", "validation"])


class PrepareConfig(Section):
    normalize: NormalizeConfig = Field(default_factory=NormalizeConfig)
    quality: QualityConfig = Field(default_factory=QualityConfig)
    langid: LangIdConfig = Field(default_factory=LangIdConfig)
    toxicity: ToxicityConfig = Field(default_factory=ToxicityConfig)
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    pii: PiiConfig = Field(default_factory=PiiConfig)
    decontaminate: DecontaminateConfig = Field(default_factory=DecontaminateConfig)
    validation_fraction: float = Field(default=0.02, gt=0, lt=0.5, description="Split by id hash.")
    workers: int = Field(
        default=1, ge=0, le=MAX_PROCESSES, description="Processes for the per-shard work; 0 = all cores."
    )
    examples_per_reason: int = Field(default=3, ge=0, description="Reject examples in the data report.")


# --------------------------------------------------------------------------- tokenizer / pack


class TokenizerConfig(Section):
    """SentencePiece training on the prepared train split (lossless: identity normalisation)."""

    model_type: Literal["bpe", "unigram"] = "bpe"
    vocab_size: int = Field(
        default=8000,
        ge=64,
        le=262_144,
        description="Pieces incl. 4 specials, 256 byte pieces and the newline/role symbols. Larger "
        "than the training text supports is an error that names the largest possible value.",
    )
    character_coverage: float = Field(default=0.9995, gt=0.9, le=1.0)
    max_sentences: int = Field(
        default=200_000,
        ge=1000,
        le=MAX_ITEMS,
        description="Reservoir-sample at most this many lines for training.",
    )
    byte_fallback: bool = Field(default=True, description="Unknown characters become UTF-8 byte pieces.")
    split_digits: bool = Field(default=True, description="Every digit is its own piece.")
    threads: int = Field(
        default=0,
        ge=0,
        le=MAX_PROCESSES,
        description="Training threads; 0 = 16 on any machine (unigram pieces depend on it).",
    )
    seed: int = Field(default=1234, ge=0, le=MAX_SEED)


class PackConfig(Section):
    """Encoding the splits into flat token shards (eos after every document)."""

    workers: int = Field(default=0, ge=0, le=MAX_PROCESSES, description="Encoding processes; 0 = all cores.")
    batch_docs: int = Field(
        default=256, ge=1, le=MAX_ITEMS, description="Documents per unit of work (bounds memory)."
    )


# --------------------------------------------------------------------------- model training


class PretrainConfig(Section):
    preset: str = Field(default="tiny", description="Architecture preset from model/presets.py.")
    arch: Literal["qwen3", "llama"] = Field(
        default="qwen3", description="transformers family (see benchmarks/RESULTS.md for the choice)."
    )
    seq_len: int = Field(default=256, ge=8, le=32_768)
    batch_size: int = Field(
        default=16, ge=1, le=MAX_BATCH, description="Sequences per micro-batch per process."
    )
    grad_accum: int = Field(default=1, ge=1, le=MAX_BATCH)
    lr: float = Field(default=3e-3, gt=0, le=1)
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1)
    warmup_steps: int = Field(default=20, ge=0, le=MAX_STEPS)
    schedule: Literal["cosine", "wsd", "constant"] = "cosine"
    decay_fraction: float = Field(
        default=0.2, gt=0, le=1, description="wsd: share of the run spent decaying."
    )
    optimizer: Literal["adamw", "muon"] = "adamw"
    weight_decay: float = Field(default=0.1, ge=0)
    grad_clip: float = Field(default=1.0, ge=0)
    max_steps: int = Field(default=200, ge=1, le=MAX_STEPS)
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS)
    max_seconds: float | None = Field(default=None, gt=0, le=MAX_SECONDS)
    mixed_precision: Literal["no", "bf16", "fp16", "auto"] = "auto"
    gradient_checkpointing: bool = False
    compile: bool = False
    sliding_window: int | None = Field(
        default=None, ge=8, description="Sparse (sliding-window) attention span."
    )
    tie_embeddings: bool = True
    eval_every: int = Field(default=50, ge=1, le=MAX_STEPS)
    eval_batches: int = Field(default=8, ge=1, le=MAX_ITEMS)
    checkpoint_every: int = Field(default=100, ge=1, le=MAX_STEPS)
    keep_checkpoints: int = Field(default=2, ge=1, le=1000, description="Most recent checkpoints kept.")
    resume: bool = Field(default=True, description="Resume from the step's last good checkpoint.")
    log_every: int = Field(default=10, ge=1, le=MAX_STEPS)
    num_processes: int = Field(
        default=1, ge=1, le=MAX_PROCESSES, description=">1 runs `accelerate launch` as a subprocess."
    )
    seed: int = Field(default=1234, ge=0, le=MAX_SEED)


class DPOConfig(Section):
    """Preference tuning (DPO, sigmoid loss) on (prompt, chosen, rejected) triples."""

    beta: float = Field(default=0.1, gt=0, le=10, description="Strength of the KL anchor to the reference.")
    steps: int = Field(default=50, ge=1, le=MAX_STEPS)
    lr: float = Field(default=5e-4, gt=0, le=1)
    batch_size: int = Field(default=8, ge=1, le=MAX_BATCH, description="Triples per step.")
    warmup_steps: int = Field(default=5, ge=0, le=MAX_STEPS)
    seed: int = Field(default=1234, ge=0, le=MAX_SEED)


class FinetuneConfig(Section):
    """Supervised fine-tuning of the pretrained base on the task (see model/finetune.py)."""

    method: Literal["lora", "prompt", "full"] = Field(
        default="lora", description="lora: low-rank adapters; prompt: prompt tuning; full: all weights."
    )
    lora_r: int = Field(default=16, ge=1, le=512)
    lora_alpha: int = Field(default=32, ge=1)
    lora_dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    num_virtual_tokens: int = Field(default=16, ge=1, le=512)
    prompt_init_text: str = "Summarize the documented Python function in one line."
    lr: float = Field(default=1e-3, gt=0, le=1)
    batch_size: int = Field(default=16, ge=1, le=MAX_BATCH)
    max_steps: int = Field(default=100, ge=1, le=MAX_STEPS)
    max_seconds: float | None = Field(default=None, gt=0, le=MAX_SECONDS)
    max_len: int = Field(default=256, ge=16, le=32_768)
    warmup_steps: int = Field(default=10, ge=0, le=MAX_STEPS)
    weight_decay: float = Field(default=0.0, ge=0, description="AdamW decay of trainable matrices.")
    mixed_precision: Literal["no", "bf16", "fp16", "auto"] = "auto"
    checkpoint_every: int = Field(
        default=50, ge=1, le=MAX_STEPS, description="Steps between resumable checkpoints."
    )
    keep_checkpoints: int = Field(default=2, ge=1, le=1000, description="Most recent checkpoints kept.")
    resume: bool = Field(default=True, description="Resume from the step's last good checkpoint.")
    seed: int = Field(default=1234, ge=0, le=MAX_SEED)
    dpo: DPOConfig = Field(default_factory=DPOConfig, description="Used by preference tuning (feedback).")


class EvaluateConfig(Section):
    """Held-out evaluation of the fine-tuned model (see tasks/evaluate.py)."""

    max_samples: int = Field(
        default=200, ge=1, le=MAX_ITEMS, description="Test examples to generate for (the first N)."
    )
    max_new_tokens: int = Field(default=32, ge=1, le=1024)
    batch_size: int = Field(default=16, ge=1, le=MAX_BATCH, description="Generation and scoring batch size.")
    bpb_batches: int = Field(
        default=16, ge=1, le=MAX_ITEMS, description="Validation batches for bits per byte."
    )
    bpb_seq_len: int = Field(
        default=256, ge=8, le=32_768, description="Window for bits per byte (capped by the model)."
    )
    bootstrap: int = Field(
        default=1000, ge=0, le=100_000, description="Bootstrap resamples for 95% CIs (0 = none)."
    )
    baselines: bool = Field(
        default=True,
        description="Also score the model before fine-tuning and the task's trivial baselines on the "
        "same items, and the unigram language model's bits per byte (the gate's reference points).",
    )
    bias: bool = Field(default=True, description="Run the bias and fairness suite.")
    counterfactual_samples: int = Field(
        default=32,
        ge=0,
        le=MAX_ITEMS,
        description="Test prompts re-asked with swapped names/pronouns/groups (0 = off).",
    )
    toxicity_threshold: float = Field(
        default=0.0, ge=0, le=1, description="A generation whose toxicity score exceeds this is toxic."
    )
    seed: int = Field(default=1234, ge=0, le=MAX_SEED)


class Threshold(Section):
    metric: str
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _one_bound(self) -> Threshold:
        if self.min is None and self.max is None:
            raise ValueError(f"threshold for {self.metric!r} needs min or max")
        return self


class ChangeThreshold(Section):
    """A bound on the change from the champion, with TFX model-validation semantics on the measured
    values: diff = challenger - champion; relative = diff / champion.

    higher_is_better passes when diff >= absolute and relative >= relative; lower_is_better when
    diff <= absolute and relative <= relative. So a negative `absolute` on a higher-is-better
    metric is the drop allowed (-0.01: at most 0.01 worse), a positive one a required gain.
    """

    metric: str
    direction: Literal["higher_is_better", "lower_is_better"] = "higher_is_better"
    absolute: float | None = Field(
        default=None, description="Bound on diff (TFX GenericChangeThreshold.absolute)."
    )
    relative: float | None = Field(default=None, description="Bound on diff / champion (TFX .relative).")

    @model_validator(mode="after")
    def _one_bound(self) -> ChangeThreshold:
        if self.absolute is None and self.relative is None:
            raise ValueError(f"change threshold for {self.metric!r} needs absolute or relative")
        return self


class NonInferiority(Section):
    """Non-inferiority to the champion by a one-sided paired bootstrap on per-sample scores (paired
    by item id): passes when, at `confidence`, the challenger is at most `margin` worse."""

    metric: str = Field(default="rougeL", description="A per-sample metric (ROUGE, exact_match, f1).")
    margin: float = Field(ge=0, description="The largest drop tolerated (0 = must be at least as good).")
    confidence: float = Field(default=0.95, gt=0.5, lt=1)


class GateConfig(Section):
    """The promotion gate (see tasks/gate.py and the README's gate section).

    A candidate must beat the reference points that need no tuning on the same held-out items
    (the model before fine-tuning, the task's trivial baselines, the unigram language model),
    pass the value thresholds, and, when there is a champion, the change thresholds and
    non-inferiority tests against it.
    """

    value_thresholds: list[Threshold] = Field(
        default_factory=list, description="Bounds on the candidate's own metrics (min and/or max)."
    )
    change_thresholds: list[ChangeThreshold] = Field(
        default_factory=lambda: [ChangeThreshold(metric="rougeL", absolute=-0.01)],
        description="Bounds on diff = challenger - champion (TFX semantics, measured values).",
    )
    noninferiority: list[NonInferiority] = Field(
        default_factory=list, description="Paired-bootstrap non-inferiority tests against the champion."
    )
    task_metric: str = Field(
        default="rougeL", description="The per-sample metric on which the reference points must be beaten."
    )
    beat_base: bool = Field(
        default=True, description="Fine-tuning must help: beat the model before fine-tuning."
    )
    beat_baselines: list[str] | None = Field(
        default=None,
        description="Trivial baselines to beat (constant, first_sentence, name_words); None = every "
        "baseline the task has, [] = none.",
    )
    beat_unigram_bpb: bool = Field(
        default=True, description="val_bpb must be below the unigram model's (context was learned)."
    )
    confidence: float = Field(
        default=0.95, gt=0.5, lt=1, description="One-sided confidence of the paired bootstrap tests."
    )
    min_gain: float = Field(
        default=0.0,
        ge=0,
        description="The lower confidence bound of the gain over each reference point must exceed this.",
    )
    bootstrap: int = Field(default=1000, ge=100, le=100_000, description="Paired bootstrap resamples.")
    promote: bool = Field(default=True, description="Promote to champion when the gate passes.")
    seed: int = Field(default=1234, ge=0, le=MAX_SEED)

    @model_validator(mode="after")
    def _something_to_check(self) -> GateConfig:
        first_model_checks = (
            self.value_thresholds or self.beat_base or self.beat_baselines != [] or self.beat_unigram_bpb
        )
        if not first_model_checks:
            raise ValueError(
                "the gate has nothing to check for a first model: set value_thresholds or a reference "
                "point (beat_base, beat_baselines, beat_unigram_bpb)"
            )
        return self


class ServeConfig(Section):
    """The serving endpoint and the feedback loop (deployments/service.py, deployments/feedback.py).

    Secrets and addresses can come from the environment instead (LLMFLOW_SERVE_TOKEN,
    LLMFLOW_FEEDBACK_URL, LLMFLOW_GATE_FAILED_NOTIFY), which keeps them out of presets and Prefect
    parameter forms.
    """

    host: str = Field(
        default="127.0.0.1",
        description="Address to bind; anything but loopback (0.0.0.0 in a container) needs a token.",
    )
    port: int = Field(default=8000, ge=1, le=65_535)
    token: str | None = Field(
        default=None,
        description="Bearer token required by /generate, /feedback and /model (None = open, allowed on "
        "loopback only). LLMFLOW_SERVE_TOKEN overrides it.",
    )
    max_prompt_chars: int = Field(default=4000, ge=1, le=1_000_000, description="Longer prompts get 413.")
    max_feedback_chars: int = Field(
        default=8000, ge=1, le=1_000_000, description="Limit for a correction or preferred answer (413)."
    )
    max_body_bytes: int = Field(default=262_144, ge=1024, description="Larger request bodies get 413.")
    feedback_per_minute: float | None = Field(
        default=60.0,
        gt=0,
        description="Feedback requests one client may send per minute, after its burst (None = no "
        "limit); more get 429 with Retry-After. A client is its remote address and bearer token.",
    )
    feedback_burst: int = Field(
        default=20, ge=1, description="Feedback requests one client may send at once before the rate applies."
    )
    max_new_tokens: int = Field(default=256, ge=1, le=8192, description="Largest max_new_tokens accepted.")
    default_new_tokens: int = Field(default=64, ge=1, le=8192, description="When a request names none.")
    feedback_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the feedback store (postgresql://... or sqlite:///...); None = "
        "SQLite in WAL mode at $LLMFLOW_HOME/feedback/feedback.db. LLMFLOW_FEEDBACK_URL overrides it.",
    )
    threshold_count: int | None = Field(
        default=100, ge=1, description="Retrain after this many feedback items since the last retrain."
    )
    threshold_negative_rate: float | None = Field(
        default=0.3, gt=0, le=1, description="Retrain when this share of new ratings is negative."
    )
    min_ratings_for_rate: int = Field(
        default=20, ge=1, description="The negative rate counts only over at least this many ratings."
    )
    cooldown_seconds: float = Field(default=3600.0, ge=0, description="Least time between two retrains.")
    retrain_timeout_seconds: float = Field(
        default=6 * 3600.0, gt=0, description="A retrain pending longer than this is considered abandoned."
    )
    reload_interval_seconds: float = Field(
        default=10.0,
        ge=0,
        description="How often to ask the registry for a new champion (0 = every request).",
    )
    retrain_check_seconds: float = Field(
        default=60.0,
        gt=0,
        description="How often to re-check that the Prefect server at PREFECT_API_URL has the automation "
        "that runs `finetune` on this model's feedback event; without it no retrain is claimed.",
    )
    gate_failed_notify: str | None = Field(
        default=None,
        description="Where the automation on llmflow.gate.failed notifies: an http(s) webhook URL "
        "(JSON POST) or a Prefect notification block as '<block-type>/<block-name>', e.g. "
        "'slack-webhook/ops'; None = it only records the event. LLMFLOW_GATE_FAILED_NOTIFY overrides it.",
    )


class PipelineConfig(Section):
    """The whole pipeline. Each section configures one step."""

    name: str = Field(default="llmflow", description="Run name, used for the registry's model name.")
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    task_data: TaskDataConfig = Field(default_factory=TaskDataConfig)
    prepare: PrepareConfig = Field(default_factory=PrepareConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    pack: PackConfig = Field(default_factory=PackConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)


# --------------------------------------------------------------------------- loading


class ConfigError(ValueError):
    """A bad config: the message is one line that names the key."""


class InputError(ValueError):
    """The config is valid but what it points at cannot be used: a source path that does not
    exist, a source whose every record is rejected, checkpoints of which none loads. The message
    is one line naming the input and what to change. Trying again fails the same way, so a step
    that raises it is not retried, and `llmflow` exits with code 2 as for a bad config."""


def _format_validation_error(err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "<root>"
    if first["type"] == "extra_forbidden":
        return f"unknown config key '{loc}'"
    return f"invalid value for '{loc}': {first['msg']}"


def resolve_preset(name_or_path: str | os.PathLike[str]) -> Path:
    """A preset name (`demo`) or a YAML path."""
    p = Path(name_or_path)
    if p.suffix in {".yaml", ".yml"} or p.exists():
        if not p.exists():
            raise ConfigError(f"config file not found: {p}")
        if p.is_dir():
            raise ConfigError(f"config {p} is a folder: name a YAML file or a preset ({_known_presets()})")
        return p
    candidate = CONFIG_DIR / f"{name_or_path}.yaml"
    if not candidate.exists():
        raise ConfigError(f"unknown preset '{name_or_path}' ({_known_presets()})")
    return candidate


def _known_presets() -> str:
    return "known: " + ", ".join(sorted(q.stem for q in CONFIG_DIR.glob("*.yaml")))


def parse_override(item: str) -> tuple[list[str], Any]:
    """`a.b=c` -> (['a','b'], parsed c). Values are parsed as YAML scalars/lists."""
    if "=" not in item:
        raise ConfigError(f"override '{item}' is not of the form section.key=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{item}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        path, value = parse_override(item)
        node: Any = data
        for i, part in enumerate(path[:-1]):
            if isinstance(node, list):
                try:
                    node = node[int(part)]
                    continue
                except (ValueError, IndexError):
                    raise ConfigError(f"bad list index '{part}' in override '{item}'") from None
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            elif not isinstance(nxt, dict | list):
                raise ConfigError(
                    f"'{'.'.join(path[: i + 1])}' is a value, not a section (override '{item}')"
                )
            node = nxt
        if isinstance(node, list):
            try:
                node[int(path[-1])] = value
            except (ValueError, IndexError):
                raise ConfigError(f"bad list index '{path[-1]}' in override '{item}'") from None
        else:
            node[path[-1]] = value
    return data


def load_config(
    preset: str | os.PathLike[str] | None = None, overrides: list[str] | None = None
) -> PipelineConfig:
    """Load a preset (name or YAML path), apply `a.b=c` overrides, validate. Raises ConfigError."""
    data: dict[str, Any] = {}
    if preset is not None:
        path = resolve_preset(preset)
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not a YAML file (not UTF-8 text)") from None
        except OSError as e:
            raise ConfigError(f"{path}: cannot read it ({e.strerror or e})") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        data = loaded
    data = apply_overrides(data, overrides or [])
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e)) from None


def canonical_json(obj: Any) -> str:
    """Stable JSON for hashing: sorted keys, no whitespace, pydantic models dumped first."""
    if isinstance(obj, BaseModel):
        obj = obj.model_dump(mode="json")
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
