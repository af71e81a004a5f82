"""The trivial baselines read the signature wherever the built-in task's prompt format puts it."""

from __future__ import annotations

import pytest

from tasks import baselines as B

BODY = "    Read the whole file.\n    Use this for small files.  def other(x): is not the name."
EXAMPLE = "    Example:\n\n    def helper(x):\n        return x"


def test_name_words_and_first_sentence_from_either_end():
    first = f"def pkg.mod.read_file(path):\n{BODY}"
    last = f"{BODY}\ndef pkg.mod.read_file(path):"
    hinted = f"{first}\nread file"  # signature_first_name_words: the hint line is not text
    for prompt in (first, last, hinted):
        assert B.name_words(prompt) == "Read file."
        assert B.first_sentence(prompt) == "Read the whole file."
    assert B.name_words("async def io.HTTPServer.serve_forever(self):") == "Serve forever."
    assert B.name_words("class json.JSONDecoder(object):") == "Json decoder."


def test_identifier_words_and_a_body_without_a_sentence_end():
    assert B.identifier_words("raw_decode") == "raw decode"
    assert B.identifier_words("HTTPServer") == "http server"
    assert B.identifier_words("__init__") == "init"
    # the hint line never joins the first sentence of a body that has no sentence end
    assert B.first_sentence("def m.get_size(x):\n    Size in bytes\nget size") == "Size in bytes"
    assert (
        B.first_sentence("def m.get_size(x):\n    Size in bytes\nother words") == "Size in bytes other words"
    )


def test_an_example_def_inside_the_body_is_not_the_signature():
    # the body's lines are indented; only an unindented line is the signature
    assert B.name_words(f"{EXAMPLE}\ndef mod.fetch_all(url):") == "Fetch all."
    assert B.name_words(f"def mod.fetch_all(url):\n{EXAMPLE}") == "Fetch all."
    assert B.signature_name("    no signature here\n    at all") is None
    answers = B.baseline_answers(B.BUILTIN, ["plain text prompt.", "def f(x):\n    Body."], [])
    assert "name_words" not in answers  # one prompt without a signature: the baseline does not apply


def test_nearest_train_answers_with_the_most_similar_train_prompt():
    train_prompts = [
        "def io.read_lines(path):\n    Open the file and read its lines.",
        "def m.sqrt(x):\n    The square root of x, for x >= 0.",
        "def m.sort(items):\n    Sort the items in place and return them.",
    ]
    responses = ["Read lines.", "Return the square root.", "Sort items."]
    prompts = ["def n.isqrt(n):\n    The integer square root of n.", "Qwerty zzz 42 !!", ""]
    assert B.nearest_train(prompts, train_prompts, responses, "Return the result.") == [
        "Return the square root.",
        "Return the result.",  # no word in common with any train prompt
        "Return the result.",
    ]
    answers = B.baseline_answers(B.BUILTIN, prompts[:1], responses, train_prompts)
    assert answers["nearest_train"] == ["Return the square root."]
    assert "nearest_train" not in B.baseline_answers(B.BUILTIN, prompts[:1], responses)
    with pytest.raises(ValueError, match="pair up"):
        B.baseline_answers(B.BUILTIN, prompts[:1], responses, train_prompts[:2])


def test_nearest_train_picks_what_scikit_learn_tfidf_picks():
    """The same TF-IDF (sublinear tf, smoothed idf, l2, cosine) as scikit-learn's, on random texts
    over a Zipf-like vocabulary; scikit-learn comes with the dev extra's mlflow."""
    import random

    sk = pytest.importorskip("sklearn.feature_extraction.text")
    rng = random.Random(7)
    vocab = [f"w{chr(97 + i % 26)}{chr(97 + i // 26)}" for i in range(300)]
    weights = [1 / (i + 1) for i in range(len(vocab))]

    def text() -> str:
        return " ".join(rng.choices(vocab, weights, k=rng.randint(3, 40)))

    train, queries = [text() for _ in range(300)], [text() for _ in range(100)]
    vec = sk.TfidfVectorizer(sublinear_tf=True, token_pattern=r"[A-Za-z]+").fit(train)
    sims = (vec.transform(queries) @ vec.transform(train).T).toarray()
    ids = [str(i) for i in range(len(train))]
    ours = B.nearest_train(queries, train, ids, "none")
    for q, got in enumerate(ours):
        assert sims[q, int(got)] == pytest.approx(sims[q].max(), abs=1e-12), q
    assert sum(int(got) == sims[q].argmax() for q, got in enumerate(ours)) >= 99
    # the k nearest (MBR's neighbours, tasks/mbr_evidence.py): scikit-learn's k largest similarities, best first
    index = B.TfidfIndex(train)
    for q in range(len(queries)):
        top = index.top(queries[q], 5)
        assert [sims[q, i] for i in top] == pytest.approx(sorted(sims[q], reverse=True)[:5], abs=1e-12), q
    assert index.top("no shared words at all", 5) == [] and index.top(queries[0], 0) == []
