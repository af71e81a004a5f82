"""Answers generated piece by piece (model/streaming.py) and concurrent answers batched together
(model/batching.py), on a tiny real model: the pieces add up to what `model.generate` answers,
stop strings cut without a piece past the cut, a batch gives each stream the answer it gets
alone (its own limit and stop strings), and a consumer that leaves stops the model."""

from __future__ import annotations

import threading
import time

import pytest

from model.batching import Batcher
from model.chat import format_prompt
from model.generate import generate, load
from model.streaming import TextStream
from tests.helpers import tiny_model_dir, tiny_tokenizer_dir

PROMPTS = [
    "def add(a, b): return a + b",
    "hi",
    "sort the items by key return the length of the sequence",
    "x",
    "open a file for reading",
]


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    base = tmp_path_factory.mktemp("stream")
    return load(tiny_model_dir(base / "m", tiny_tokenizer_dir(base / "tok")), device="cpu")


def test_pieces_add_up_to_the_answer_generate_gives(lm):
    model, tokenizer = lm
    prompt = format_prompt(PROMPTS[0])
    stream = TextStream(model, tokenizer, prompt, max_new_tokens=24)
    pieces = list(stream)
    assert len(pieces) > 1 and "".join(pieces) == stream.text
    assert stream.text == generate(model, tokenizer, [prompt], max_new_tokens=24)[0]
    assert stream.prompt_tokens == 1 + len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert stream.completion_tokens == 24 and stream.finish_reason == "length"


def test_a_stop_string_cuts_the_text_and_no_piece_passes_it(lm):
    model, tokenizer = lm
    prompt = format_prompt(PROMPTS[0])
    full = "".join(TextStream(model, tokenizer, prompt, max_new_tokens=24))
    stop = full[len(full) // 2 :][:4]  # likely across tokens
    stream = TextStream(model, tokenizer, prompt, max_new_tokens=24, stop=[stop, "never there"])
    pieces = list(stream)
    assert stream.text == full[: full.index(stop)] and stream.finish_reason == "stop"
    assert stream.completion_tokens < 24  # the model stopped there too
    sent = ""
    for piece in pieces:  # nothing streamed was ever part of the stop string
        sent += piece
        assert full.startswith(sent) and len(sent) <= full.index(stop)


def test_a_batch_gives_each_stream_the_answer_it_gets_alone(lm):
    model, tokenizer = lm

    def streams(runner=None):
        return [
            TextStream(
                model,
                tokenizer,
                format_prompt(p),
                max_new_tokens=12 + 3 * i,
                stop=["e"] if i == 2 else (),
                runner=runner,
            )
            for i, p in enumerate(PROMPTS)
        ]

    alone = streams()
    for s in alone:
        list(s)
    batcher = Batcher(max_batch=8, wait=0.5)
    together = streams(batcher)
    threads = [threading.Thread(target=lambda s=s: list(s)) for s in together]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    batcher.close()
    assert batcher.batches == 1 and batcher.streams == len(PROMPTS)
    for a, b in zip(alone, together, strict=True):
        assert (b.text, b.completion_tokens, b.finish_reason) == (
            a.text,
            a.completion_tokens,
            a.finish_reason,
        )
    assert together[2].finish_reason == "stop" and together[4].completion_tokens == 24


def test_sampled_streams_share_a_batch_only_when_they_choose_tokens_alike(lm):
    model, tokenizer = lm

    def key(**kw):
        return TextStream(model, tokenizer, "x", max_new_tokens=4, **kw).batch_key

    assert key() == key(top_p=0.5)  # greedy ignores top_p
    assert key(temperature=0.7, top_p=0.9) == key(temperature=0.7, top_p=0.9)
    assert key(temperature=0.7) != key(temperature=0.8) and key(temperature=0.7) != key()
    seeded = [TextStream(model, tokenizer, "x", max_new_tokens=4, temperature=0.7, seed=1) for _ in range(2)]
    assert seeded[0].batch_key != seeded[1].batch_key  # a seeded sample runs alone


def test_a_consumer_that_leaves_stops_the_model(lm):
    model, tokenizer = lm
    lock = threading.Lock()
    stream = TextStream(model, tokenizer, "x", max_new_tokens=250, lock=lock)
    for _ in stream:
        break
    deadline = time.monotonic() + 30
    while not lock.acquire(blocking=False):  # the generating thread gives the model back
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert stream.completion_tokens < 250
