"""Sections of the data steps: ingest, task_data, prepare (and its sub-steps), tokenizer, pack."""

from __future__ import annotations

import importlib.util
from typing import Literal

from pydantic import Field, field_validator, model_validator

from llmflow.config.base import (
    MAX_ITEMS,
    MAX_PROCESSES,
    MAX_SEED,
    Section,
)

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
    prompt_format: Literal["signature_first", "signature_last", "signature_first_name_words"] = Field(
        default="signature_first",
        description="pydocs-summary: the prompt's layout. signature_first: the signature line, then "
        "the docstring body (a Python source file's layout). signature_last: the body, then the "
        "signature. signature_first_name_words: signature_first plus a last line with the "
        "function's name split into lowercase words (`raw_decode` -> `raw decode`, the identifier "
        "subtokens code summarisers take), next to the answer; the body is the same as in the "
        "other layouts. Measured on the demo (benchmarks/RESULTS.md, demo levers, fifth round).",
    )
    include_packages: bool = Field(
        default=False, description="pydocs-summary: also use the installed packages' docstrings."
    )
    train_from_packages: int = Field(
        default=0,
        ge=0,
        le=MAX_ITEMS,
        description="pydocs-summary: add up to this many documented functions of the installed "
        "packages to the TRAIN split (validation and test stay the standard library's; an item sharing "
        "a word 13-gram with a held-out prompt or response is dropped as contaminated).",
    )
    train_one_line_docstrings: bool = Field(
        default=False,
        description="pydocs-summary: also add to the TRAIN split the functions of train-split "
        "modules whose whole docstring is one line (prompt: the signature, and the name hint line "
        "in signature_first_name_words; response: the docstring). They have no body to summarise, "
        "so the task proper leaves them out; they teach the step from a name to a summary. "
        "Validation and test are unchanged.",
    )
    limit: int | None = Field(
        default=None,
        ge=1,
        le=MAX_ITEMS,
        description="Keep at most this many examples (before train_from_packages and "
        "train_one_line_docstrings).",
    )

    @model_validator(mode="after")
    def _packages_train_only(self) -> TaskDataConfig:
        if self.train_from_packages and (self.include_packages or not self.source.startswith("builtin:")):
            raise ValueError(
                "train_from_packages adds package docstrings to the train split of builtin:pydocs-summary; "
                "it does not combine with include_packages (packages in every split) or a task file"
            )
        return self

    @model_validator(mode="after")
    def _one_line_builtin_only(self) -> TaskDataConfig:
        if self.train_one_line_docstrings and not self.source.startswith("builtin:"):
            raise ValueError(
                "train_one_line_docstrings adds one-line docstrings to the train split of "
                "builtin:pydocs-summary; a task file has no docstrings to read"
            )
        return self


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
    words: Literal["whitespace", "spacy"] = Field(
        default="whitespace",
        description="What a word is for Gopher and FineWeb: whitespace-split (fast, the default) or spaCy's "
        "English tokens as datatrove counts them (punctuation as words; needs spaCy, ~4x slower).",
    )
    min_words: int = Field(default=50, ge=0, description="Gopher: at least 50 words.")
    max_words: int = Field(default=100_000, ge=1, description="Gopher: at most 100,000 words.")
    min_mean_word_length: float = Field(default=3.0, ge=0, description="Gopher: mean word length >= 3.")
    max_mean_word_length: float = Field(default=10.0, ge=1, description="Gopher: mean word length <= 10.")
    max_symbol_word_ratio: float = Field(
        default=0.1, ge=0, description="Gopher: '#' per word, and (separately) '...'/'…' per word."
    )
    max_bullet_lines_ratio: float = Field(default=0.9, ge=0, le=1, description="Gopher.")
    max_ellipsis_lines_ratio: float = Field(default=0.3, ge=0, le=1, description="Gopher.")
    min_alpha_words_ratio: float = Field(
        default=0.8, ge=0, le=1, description="Gopher: 80% of words contain a letter."
    )
    min_stop_words: int = Field(
        default=2, ge=0, description="Gopher: at least 2 distinct English stop words."
    )
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
    c4_lorem_ipsum: bool = Field(
        default=True, description="C4: drop documents with 'lorem ipsum' in a kept line."
    )
    c4_curly_bracket: bool = Field(default=True, description="C4: drop documents with '{' in a kept line.")
    c4_min_sentences: int = Field(
        default=5, ge=0, description="C4: at least this many sentences in the kept lines (0 = off)."
    )
    c4_terminal_punct: bool = Field(
        default=True, description="C4 line rule: only lines ending in . ? ! \" ' (not ...) are kept."
    )
    c4_min_words_per_line: int = Field(
        default=3, ge=0, description="C4 line rule: kept lines have >= 3 words."
    )
    c4_max_word_length: int = Field(
        default=1000, ge=0, description="C4 line rule: lines with a longer word are dropped (0 = off)."
    )
    c4_javascript: bool = Field(
        default=True, description="C4 line rule: lines mentioning 'javascript' are dropped."
    )
    c4_policy: bool = Field(
        default=True,
        description="C4 line rule: lines with 'terms of use', 'privacy policy', cookies are dropped.",
    )
    c4_remove_citations: bool = Field(
        default=True,
        description="C4 line rule: '[1]', '[edit]', '[citation needed]' are cut before the checks.",
    )
    min_line_punct_ratio: float = Field(
        default=0.12, ge=0, le=1, description="FineWeb: lines ending in terminal punctuation (0 = off)."
    )
    max_short_line_ratio: float = Field(
        default=0.67, ge=0, le=1, description="FineWeb: lines under 30 chars (1 = off)."
    )
    max_fineweb_dup_line_char_fraction: float = Field(
        default=0.01, ge=0, le=1, description="FineWeb: characters in duplicated lines (1 = off)."
    )
    max_fineweb_list_ratio: float = Field(
        default=0.3, ge=0, description="FineWeb: newlines per word (list-like pages; a large value = off)."
    )

    @field_validator("words")
    @classmethod
    def _spacy_installed(cls, v: str) -> str:
        if v == "spacy" and importlib.util.find_spec("spacy") is None:
            raise ValueError("words: spacy needs spaCy installed (pip install 'llmflow[spacy]')")
        return v


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
    incremental: bool | None = Field(
        default=None,
        description="Dedup new documents against the persisted index of this pipeline's earlier "
        "prepare runs, so a refresh cannot re-admit their duplicates. None: on in the scheduled "
        "deployments (data-refresh, retrain), off in a one-off run, whose result then depends on "
        "its inputs alone.",
    )


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
