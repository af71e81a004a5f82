"""The built-in corpus: real stdlib text, parsed with ast, never imported."""

from __future__ import annotations

import sys

import pytest

from llmflow.config import SourceConfig
from tasks import pydocs
from tasks.readers import read_source


@pytest.fixture(scope="module")
def corpus() -> list[tuple[str, str, dict]]:
    return list(pydocs.iter_documents())


def test_corpus_has_topics_and_real_stdlib_docstrings(corpus):
    kinds = {m["kind"] for _, _, m in corpus}
    assert kinds == {"topic", "module"}
    json_docs = [t for _, t, m in corpus if m.get("module") == "json"]
    assert any("def json.dumps(obj, *, skipkeys=False" in t and "Serialize ``obj``" in t for t in json_docs)
    assert any(m.get("topic") == "assert" and "assert_stmt" in t for _, t, m in corpus)
    assert any("class collections.OrderedDict(dict):" in t for _, t, m in corpus)
    size = sum(len(t.encode()) for _, t, _ in corpus)
    assert 1e6 < size < 10e6  # about 1-3 MB of real text


def test_chunks_are_bounded_ordered_and_unique(corpus):
    assert max(len(t) for _, t, _ in corpus) <= pydocs.CHUNK_CHARS + 64
    locs = [loc for loc, _, _ in corpus]
    assert len(locs) == len(set(locs))
    assert locs == [loc for loc, _, _ in pydocs.iter_documents()]  # deterministic


def test_skips_tests_and_tool_folders_and_does_not_import(corpus):
    before = set(sys.modules)
    mods = {m["module"] for _, _, m in corpus if m["kind"] == "module"}
    assert "json.decoder" in mods and "email.mime.text" in mods
    assert not any(n.startswith(("test.", "idlelib", "turtledemo")) or ".tests" in n for n in mods)
    list(pydocs.module_documents())
    assert "antigravity" not in sys.modules and "turtle" not in set(sys.modules) - before


def test_parse_module_collects_signatures_and_skips_undocumented():
    src = b'''"""Module doc."""
class A(Base, metaclass=M):
    """A class."""
    def m(self, x: int = 1, *a, k=2, **kw) -> str:
        """Method doc."""
    def undocumented(self): pass
async def f(): 
    """Async."""
'''
    mod = pydocs.parse_module(src, "pkg.mod", "pkg/mod.py", "stdlib")
    assert mod.doc == "Module doc."
    sigs = [o.signature for o in mod.objects]
    assert sigs == [
        "class pkg.mod.A(Base, metaclass=M):",
        "def pkg.mod.A.m(self, x: int=1, *a, k=2, **kw) -> str:",
        "async def pkg.mod.f():",
    ]
    assert [o.kind for o in mod.objects] == ["class", "method", "function"]
    with pytest.raises(SyntaxError):
        pydocs.parse_module(b"def broken(:\n", "x", "x.py", "stdlib")


def test_unparseable_files_are_skipped_and_counted(tmp_path):
    (tmp_path / "good.py").write_text('"""Good module."""\n')
    (tmp_path / "bad.py").write_text("def broken(:\n")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "t.py").write_text('"""Skipped folder."""\n')
    res = pydocs.walk_root(str(tmp_path), "packages")
    assert [m.name for m in res.modules] == ["good"]
    assert res.files == 2 and res.skipped == 1


def test_pack_keeps_object_boundaries():
    pieces = ["a" * 30, "b" * 30, "c" * 30]
    assert pydocs.pack(pieces, 70) == ["a" * 30 + "\n" + "b" * 30 + "\n", "c" * 30 + "\n"]
    long = ("word " * 50 + "\n\n") * 10
    chunks = pydocs.pack([long], 600)
    assert all(len(c) <= 601 for c in chunks) and len(chunks) >= 4


def test_builtin_source_through_reader(corpus):
    recs = list(
        read_source(SourceConfig(name="pydocs", kind="builtin", path="pydocs", license="PSF-2.0", limit=5))
    )
    assert len(recs) == 5 and all(r.ok and r.meta["license"] == "PSF-2.0" for r in recs)
    with pytest.raises(ValueError, match="unknown builtin"):
        list(read_source(SourceConfig(name="x", kind="builtin", path="nope")))
