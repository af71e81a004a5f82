"""The trivial baselines read the signature wherever the built-in task's prompt format puts it."""

from __future__ import annotations

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
