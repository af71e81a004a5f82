"""A lossless SentencePiece tokenizer, trained from a stream of texts and exported for transformers.

Contract:

- `decode(encode(text)) == text` for any text: no normalisation (`identity`), whitespace kept as
  is (runs of spaces become `▁▁▁` pieces), unknown characters fall back to UTF-8 byte pieces.
- SentencePiece trains on lines, so documents are split on "\\n" and the newline is a
  user-defined symbol: always exactly one token, never merged with its neighbours. Indentation
  after a newline is its own whitespace piece.
- Ids: unk=0, bos `<s>`=1, eos `</s>`=2, pad `<pad>`=3, then "\\n" and the chat-role tokens of
  `model.chat.ROLE_TOKENS` as atomic user-defined pieces. No bos/eos is added by `encode`; whoever
  packs documents appends eos (see tasks/pack.py).
- No dummy prefix: a text is encoded the same wherever it starts, which keeps SentencePiece and the
  exported `tokenizers` pipeline identical (`AutoTokenizer` gives the same ids, tested).
- `export_hf` writes a `tokenizer.json` directory that `AutoTokenizer.from_pretrained(dir)` loads
  without remote code, with the same ids as SentencePiece (BPE: exactly; unigram: except where
  two segmentations are equally likely, which the two Viterbi implementations break differently). bos/eos/pad/unk are not matched inside text (`split_special_tokens`), as in
  SentencePiece, where control symbols never come from text.
- `encode_documents` / `ParallelEncoder` turn documents into one flat id array with eos after
  each, on all cores (the `pack` step's engine).
"""

from __future__ import annotations

import io
import logging
import multiprocessing
import os
import random
import re
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from itertools import chain
from pathlib import Path

import numpy as np
import sentencepiece as spm

from model.chat import CHAT_TEMPLATE, ROLE_TOKENS

log = logging.getLogger("llmflow.tokenizer")

UNK, BOS, EOS, PAD = "<unk>", "<s>", "</s>", "<pad>"
NEWLINE = "\n"
USER_SYMBOLS = [NEWLINE, *ROLE_TOKENS]
MODEL_FILE = "spm.model"
VOCAB_FILE = "spm.vocab"
# Unigram training sums over per-thread chunks, so its pieces depend on the thread count: a fixed
# default (SentencePiece's own), not the machine's core count, trains the same model everywhere.
DEFAULT_THREADS = 16


class VocabTooLargeError(ValueError):
    """The requested vocabulary is larger than the training text can fill."""


def document_lines(texts: Iterable[str]) -> Iterator[str]:
    """Training sentences: the non-empty lines of each document (newlines are their own symbol)."""
    for text in texts:
        for line in text.split(NEWLINE):
            if line:
                yield line


def sample_lines(lines: Iterable[str], k: int, seed: int) -> list[str]:
    """A uniform sample of at most `k` lines of a stream of any length (reservoir sampling,
    algorithm R, with its own seeded generator): the same stream gives the same sample, in order."""
    rng = random.Random(seed)
    sample: list[str] = []
    for i, line in enumerate(lines):
        if i < k:
            sample.append(line)
        else:
            j = rng.randrange(i + 1)
            if j < k:
                sample[j] = line
    return sample


def train(
    lines: Iterable[str],
    out_dir: str | os.PathLike[str],
    *,
    model_type: str = "bpe",
    vocab_size: int = 8000,
    character_coverage: float = 0.9995,
    max_sentences: int = 200_000,
    byte_fallback: bool = True,
    split_digits: bool = True,
    threads: int = 0,
    seed: int = 1234,
) -> spm.SentencePieceProcessor:
    """Train on a stream of lines; write `spm.model` and `spm.vocab` under `out_dir`.

    `max_sentences` lines are reservoir-sampled from the stream (`sample_lines`), so memory stays
    bounded however large the corpus is. The same lines, seed and `threads` give byte-identical
    files on any machine: the sample is drawn here with `seed` (SentencePiece's own sampling does
    not follow `set_random_generator_seed`), and the thread count, which does not change a BPE
    model, is not recorded in it. A vocabulary the text cannot fill raises `VocabTooLargeError`
    naming the largest size that works.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spm.set_random_generator_seed(seed)
    sample = sample_lines(lines, max_sentences, seed)
    buf = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sample),
            model_writer=buf,
            model_type=model_type,
            vocab_size=vocab_size,
            character_coverage=character_coverage,
            input_sentence_size=0,  # all of the sample, in its order
            shuffle_input_sentence=False,
            max_sentence_length=1 << 16,
            # lossless: no normalisation, keep every space, allow pure-whitespace pieces
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            add_dummy_prefix=False,
            allow_whitespace_only_pieces=True,
            split_digits=split_digits,
            byte_fallback=byte_fallback,
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=3,
            unk_piece=UNK,
            bos_piece=BOS,
            eos_piece=EOS,
            pad_piece=PAD,
            user_defined_symbols=USER_SYMBOLS,
            num_threads=threads or DEFAULT_THREADS,
            minloglevel=2,
        )
    except RuntimeError as e:
        msg = str(e)
        m = re.search(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)", msg)
        if m:
            raise VocabTooLargeError(
                f"tokenizer.vocab_size={m.group(1)} is larger than the training text supports "
                f"(at most {m.group(2)} with these settings): lower tokenizer.vocab_size or add data"
            ) from None
        m = re.search(r"smaller than required_chars\. (\d+) vs (\d+)", msg)
        if m:
            raise ValueError(
                f"tokenizer.vocab_size={m.group(1)} is smaller than the {m.group(2)} pieces it needs "
                "(specials, byte pieces and covered characters): raise it or lower character_coverage"
            ) from None
        raise RuntimeError(f"SentencePiece training failed: {msg}") from e
    proto = _without_thread_count(buf.getvalue())
    (out / MODEL_FILE).write_bytes(proto)
    sp = spm.SentencePieceProcessor(model_proto=proto)
    write_vocab(sp, out / VOCAB_FILE)
    return sp


def _without_thread_count(proto: bytes) -> bytes:
    """The model with `trainer_spec.num_threads` cleared: how it was trained, not what it is."""
    from sentencepiece import sentencepiece_model_pb2

    m = sentencepiece_model_pb2.ModelProto()
    m.ParseFromString(proto)
    m.trainer_spec.ClearField("num_threads")
    return m.SerializeToString(deterministic=True)


def write_vocab(sp: spm.SentencePieceProcessor, path: Path) -> None:
    """`piece<TAB>score` per line like SentencePiece's own .vocab, with \\n, \\t, \\r escaped."""
    esc = str.maketrans({"\n": "\\n", "\t": "\\t", "\r": "\\r"})
    with open(path, "w", encoding="utf-8") as f:
        for i in range(sp.get_piece_size()):
            f.write(f"{sp.id_to_piece(i).translate(esc)}\t{sp.get_score(i):g}\n")


def load(path: str | os.PathLike[str]) -> spm.SentencePieceProcessor:
    """The SentencePiece model of a tokenizer directory (or the `.model` file itself)."""
    p = Path(path)
    p = p / MODEL_FILE if p.is_dir() else p
    if not p.exists():
        raise FileNotFoundError(f"no SentencePiece model at {p}")
    return spm.SentencePieceProcessor(model_file=str(p))


def export_hf(model_file: str | os.PathLike[str], out_dir: str | os.PathLike[str]):
    """Write the Hugging Face tokenizer files (tokenizer.json + config) for `model_file` to `out_dir`.

    Uses transformers' own SentencePiece -> `tokenizers` conversion, which follows the model's
    normaliser spec, ranks BPE merges by piece score and isolates user-defined pieces. Returns the
    `PreTrainedTokenizerFast`.
    """
    from tokenizers import AddedToken
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import SentencePieceExtractor, SpmConverter

    extractor = SentencePieceExtractor(str(model_file))
    proto = extractor.proto
    vocab = extractor.extract(None)["vocab"]
    if isinstance(vocab, list):
        # Unigram: SentencePiece never matches control, unknown or byte pieces against text;
        # priced out of the lattice here, they only come back through byte fallback.
        vocab = [(p, s if proto.pieces[i].type in (1, 4) else -1e9) for i, (p, s) in enumerate(vocab)]
    backend = SpmConverter.build_tokenizer_from_spm_proto(proto=proto, vocab=vocab, legacy=False)
    if backend is None:
        raise ValueError(f"cannot convert SentencePiece model {model_file}")
    if isinstance(backend.model, BPE):
        # Looking a whole chunk up in the vocabulary would turn the text "<s>" into bos.
        backend.model.ignore_merges = False
    # The user-defined symbols are matched on the raw text before the model, as in SentencePiece.
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in USER_SYMBOLS])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token=UNK,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        extra_special_tokens=list(ROLE_TOKENS),
        split_special_tokens=True,  # bos/eos/pad/unk never come from text
        add_bos_token=False,
        add_eos_token=False,
        clean_up_tokenization_spaces=False,
        chat_template=CHAT_TEMPLATE,
    )
    tok.save_pretrained(str(out_dir))
    return tok


def mismatches(sp: spm.SentencePieceProcessor, hf, texts: Iterable[str]) -> list[str]:
    """Texts on which the HF tokenizer's ids differ from SentencePiece's (should be none)."""
    texts = list(texts)
    if not texts:
        return []
    hf_ids = hf(texts, add_special_tokens=False)["input_ids"]
    return [t for t, a, b in zip(texts, sp.encode(texts), hf_ids, strict=True) if a != b]


# --------------------------------------------------------------------------- encoding on all cores


def encode_many(sp: spm.SentencePieceProcessor, texts: list[str]) -> list[list[int]]:
    """`sp.encode(texts)`, line by line when "\\n" is an atomic symbol (same ids, ~1.4x faster:
    SentencePiece's BPE slows down on long inputs, and no piece can span a newline)."""
    nl = sp.piece_to_id(NEWLINE)
    if nl == sp.unk_id() or sp.id_to_piece(nl) != NEWLINE:
        return sp.encode(texts)
    split = [t.split(NEWLINE) for t in texts]
    flat = iter(sp.encode([line for lines in split for line in lines]))
    out = []
    for lines in split:
        ids = next(flat)
        for _ in range(len(lines) - 1):
            ids.append(nl)
            ids.extend(next(flat))
        out.append(ids)
    return out


def encode_documents(sp: spm.SentencePieceProcessor, texts: list[str], dtype=np.uint32):
    """Encode documents into one flat array with eos after each: (tokens, lengths, utf8_bytes).

    `lengths[i]` counts document i's tokens including its eos, so document starts are the
    exclusive cumulative sum. `utf8_bytes` is the documents' size for bits-per-byte.
    """
    ids = encode_many(sp, texts)
    lengths = np.fromiter((len(x) + 1 for x in ids), dtype=np.int64, count=len(ids))
    total = int(lengths.sum())
    tokens = np.full(total, sp.eos_id(), dtype=dtype)
    keep = np.ones(total, dtype=bool)
    keep[np.cumsum(lengths) - 1] = False  # the eos slots
    tokens[keep] = np.fromiter(chain.from_iterable(ids), dtype=dtype, count=total - len(ids))
    return tokens, lengths, sum(len(t.encode("utf-8")) for t in texts)


_worker: tuple[spm.SentencePieceProcessor, np.dtype] | None = None


def _init_worker(model_file: str, dtype: str) -> None:
    global _worker
    _worker = (load(model_file), np.dtype(dtype))


def _encode_in_worker(texts: list[str]):
    assert _worker is not None, "worker not initialised"
    return encode_documents(_worker[0], texts, _worker[1])


class ParallelEncoder:
    """`encode_documents` over batches on `workers` processes, results in input order.

    At most `2 * workers` batches are in flight, so a stream of any length encodes in bounded
    memory. Workers are spawned (not forked: the caller may run threads, e.g. Prefect's) and
    import only this module, plus the caller's `__main__` as spawn always does (so a script
    that packs needs the usual `if __name__ == "__main__":` guard). `workers=1` encodes in the
    calling process.
    """

    def __init__(self, model_file: str | os.PathLike[str], workers: int, dtype=np.uint32):
        self.workers = max(1, workers)
        self.dtype = np.dtype(dtype)
        self.sp = load(model_file)
        self.pool = None
        if self.workers > 1:
            self.pool = ProcessPoolExecutor(
                self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker,
                initargs=(str(model_file), self.dtype.str),
            )

    def map(self, batches: Iterable[list[str]]) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
        if self.pool is None:
            for batch in batches:
                yield encode_documents(self.sp, batch, self.dtype)
            return
        pending: deque = deque()
        for batch in batches:
            pending.append(self.pool.submit(_encode_in_worker, batch))
            if len(pending) >= 2 * self.workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)
            self.pool = None

    def __enter__(self) -> ParallelEncoder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
