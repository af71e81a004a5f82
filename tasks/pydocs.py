"""The built-in corpus `builtin:pydocs`: real English technical text from the running interpreter.

Two parts, both offline and deterministic for a given Python installation:

* the Python reference documentation topics (`pydoc_data.topics`, one document per topic);
* the docstrings of the standard library (and, with `include_packages`, of the installed
  packages), one document per module: the module docstring, then `def qualname(sig):` with its
  docstring for every documented class, function and method.

Source files are PARSED with `ast`, never imported: importing stdlib modules has side effects
(`antigravity` opens a browser, `this` prints, `idlelib` wants a display). Files that do not
parse are skipped and counted. The walk is cached in-process (`walk`), so the ingest step and
the task-data step (tasks/task_data.py) share one parse.
"""

from __future__ import annotations

import ast
import hashlib
import os
import sysconfig
import textwrap
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

CHUNK_CHARS = 8000  # ~8 KB per document: long modules are split at object boundaries
SKIP_DIRS = frozenset(
    {"test", "tests", "testing", "idlelib", "turtledemo", "site-packages", "dist-packages",
     "__pycache__", "lib-dynload", "pydoc_data", "_vendor", "vendored", "_vendored"}
)  # fmt: skip


@dataclass(frozen=True)
class DocObject:
    """One documented class, function or method."""

    qualname: str  # fully qualified: json.JSONEncoder.default
    kind: str  # "class" | "function" | "method"
    signature: str  # "def json.dumps(obj, *, skipkeys=False, ...):" ("class json.JSONEncoder(object):")
    doc: str  # cleaned docstring (inspect.cleandoc)


@dataclass(frozen=True)
class ModuleDoc:
    name: str  # dotted module name
    path: str  # file path relative to its root
    root: str  # "stdlib" | "packages"
    doc: str | None
    objects: tuple[DocObject, ...]


@dataclass
class WalkResult:
    modules: list[ModuleDoc] = field(default_factory=list)
    files: int = 0
    skipped: int = 0  # files that could not be read or parsed
    seconds: float = 0.0


# --------------------------------------------------------------------------- parsing


def _signature(node: ast.AST, qualname: str) -> str:
    if isinstance(node, ast.ClassDef):
        bases = [ast.unparse(b) for b in node.bases] + [ast.unparse(k) for k in node.keywords]
        return f"class {qualname}({', '.join(bases)}):" if bases else f"class {qualname}:"
    assert isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    prefix = "async def" if isinstance(node, ast.AsyncFunctionDef) else "def"
    ret = f" -> {ast.unparse(node.returns)}" if node.returns is not None else ""
    return f"{prefix} {qualname}({ast.unparse(node.args)}){ret}:"


def _objects(body: list[ast.stmt], prefix: str, in_class: bool) -> Iterator[DocObject]:
    """Documented classes and functions at module level and inside classes (not nested defs)."""
    for node in body:
        if not isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        qualname = f"{prefix}.{node.name}"
        doc = ast.get_docstring(node, clean=True)
        if doc and doc.strip():
            kind = "class" if isinstance(node, ast.ClassDef) else ("method" if in_class else "function")
            yield DocObject(qualname, kind, _signature(node, qualname), doc.strip())
        if isinstance(node, ast.ClassDef):
            yield from _objects(node.body, qualname, in_class=True)


def parse_module(source: bytes, name: str, path: str, root: str) -> ModuleDoc:
    """Parse one source file (raises SyntaxError/ValueError/RecursionError on bad input)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # invalid escape sequences etc. in old files
        tree = ast.parse(source, filename=path)
    doc = ast.get_docstring(tree, clean=True)
    return ModuleDoc(name, path, root, doc.strip() if doc else None, tuple(_objects(tree.body, name, False)))


def _module_name(rel: Path) -> str | None:
    parts = list(rel.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    if not parts or not all(p.isidentifier() for p in parts):
        return None  # not importable as a module (e.g. "foo-1.0" folders, scripts)
    return ".".join(parts)


def _source_files(root: Path) -> Iterator[Path]:
    """Python files under root in a deterministic order, skipping tests and tool folders."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(
            d for d in dirnames if d not in SKIP_DIRS and not d.endswith((".dist-info", ".egg-info"))
        )
        for f in sorted(filenames):
            if f.endswith(".py"):
                yield Path(dirpath) / f


@lru_cache(maxsize=4)
def walk_root(root: str, label: str) -> WalkResult:
    """Parse every module under `root` (cached per process: ingest and task data share it)."""
    t0 = time.perf_counter()
    out = WalkResult()
    base = Path(root)
    if not base.is_dir():
        return out
    for file in _source_files(base):
        rel = file.relative_to(base)
        name = _module_name(rel)
        if name is None:
            continue
        out.files += 1
        try:
            out.modules.append(parse_module(file.read_bytes(), name, rel.as_posix(), label))
        except (OSError, SyntaxError, ValueError, RecursionError, MemoryError):
            out.skipped += 1
    out.seconds = time.perf_counter() - t0
    return out


def roots(include_packages: bool) -> list[tuple[str, str]]:
    """(directory, label) pairs to walk: the stdlib, then optionally the installed packages."""
    paths = sysconfig.get_paths()
    out = [(paths["stdlib"], "stdlib")]
    if include_packages:
        for key in ("purelib", "platlib"):
            if paths[key] not in [r for r, _ in out]:
                out.append((paths[key], "packages"))
    return out


def walk(include_packages: bool = False) -> list[WalkResult]:
    return [walk_root(r, label) for r, label in roots(include_packages)]


def package_modules(salt: str = "packages") -> Iterator[ModuleDoc]:
    """The installed packages' modules parsed lazily, in the order of a hash of their paths: any
    prefix of this walk is a spread over all packages, so a caller that needs a few thousand
    documented functions stops early instead of parsing every installed file (minutes)."""
    seen: set[str] = {sysconfig.get_paths()["stdlib"]}
    files: list[tuple[str, Path, str]] = []
    for root, _ in roots(True)[1:]:
        if root in seen or not Path(root).is_dir():
            continue
        seen.add(root)
        for file in _source_files(Path(root)):
            rel = file.relative_to(root).as_posix()
            h = hashlib.sha256(f"{salt}:{rel}".encode()).hexdigest()
            files.append((h, file, rel))
    for _, file, rel in sorted(files):
        name = _module_name(Path(rel))
        if name is None:
            continue
        try:
            yield parse_module(file.read_bytes(), name, rel, "packages")
        except (OSError, SyntaxError, ValueError, RecursionError, MemoryError):
            continue


# --------------------------------------------------------------------------- documents


def render_object(obj: DocObject) -> str:
    """`def qualname(sig):` followed by its docstring, indented like source code."""
    return f'{obj.signature}\n    """{textwrap.indent(obj.doc, "    ").lstrip()}\n    """\n'


def _split_long(text: str, limit: int) -> list[str]:
    """Cut one oversized piece at paragraph, then line, then word boundaries (hard cut last).

    Every part of a split is strictly shorter than `text`, so the recursion ends."""
    if len(text) <= limit:
        return [text]
    for sep in ("\n\n", "\n", " "):
        parts = text.split(sep)
        if len(parts) == 1:
            continue
        out: list[str] = []
        cur = ""
        for part in parts:
            for q in _split_long(part, limit):
                if cur and len(cur) + len(sep) + len(q) > limit:
                    out.append(cur)
                    cur = q
                else:
                    cur = f"{cur}{sep}{q}" if cur else q
        return [*out, cur] if cur else out
    return [text[i : i + limit] for i in range(0, len(text), limit)]


def pack(pieces: list[str], limit: int = CHUNK_CHARS) -> list[str]:
    """Greedily join pieces into chunks of at most `limit` characters, never splitting a piece
    that fits (object boundaries are kept)."""
    chunks: list[str] = []
    cur = ""
    for piece in pieces:
        for part in _split_long(piece, limit):
            if cur and len(cur) + len(part) + 1 > limit:
                chunks.append(cur)
                cur = ""
            cur = f"{cur}\n{part}" if cur else part
    if cur.strip():
        chunks.append(cur)
    return [c.strip("\n") + "\n" for c in chunks if c.strip()]


def topic_documents(limit: int = CHUNK_CHARS) -> Iterator[tuple[str, str, dict]]:
    """(location, text, meta) for each reference-documentation topic (long topics chunked)."""
    from pydoc_data.topics import topics

    for name in sorted(topics):
        for i, chunk in enumerate(pack([topics[name]], limit)):
            yield f"topic:{name}#{i}", chunk, {"kind": "topic", "topic": name, "chunk": i}


def module_documents(
    include_packages: bool = False, limit: int = CHUNK_CHARS
) -> Iterator[tuple[str, str, dict]]:
    """(location, text, meta) per module chunk: module docstring, then each documented object."""
    for result in walk(include_packages):
        for mod in result.modules:
            pieces = [f"# module {mod.name}\n\n{mod.doc}\n" if mod.doc else f"# module {mod.name}\n"]
            pieces += [render_object(o) for o in mod.objects]
            if not mod.doc and not mod.objects:
                continue  # nothing documented: no document
            for i, chunk in enumerate(pack(pieces, limit)):
                if i:
                    chunk = f"# module {mod.name} (continued)\n\n{chunk}"
                meta = {"kind": "module", "module": mod.name, "root": mod.root, "path": mod.path, "chunk": i}
                yield f"{mod.root}:{mod.name}#{i}", chunk, meta


def iter_documents(include_packages: bool = False) -> Iterator[tuple[str, str, dict]]:
    """The whole corpus in a deterministic order: topics, then stdlib modules, then packages."""
    yield from topic_documents()
    yield from module_documents(include_packages)


def corpus_size(include_packages: bool = False) -> dict:
    """Documents, MB and build seconds of the corpus (for the README and benchmarks)."""
    t0 = time.perf_counter()
    docs = 0
    size = 0
    for _, text, _ in iter_documents(include_packages):
        docs += 1
        size += len(text.encode())
    results = walk(include_packages)
    return {
        "documents": docs,
        "mb": round(size / 1e6, 2),
        "modules": sum(len(r.modules) for r in results),
        "files": sum(r.files for r in results),
        "skipped": sum(r.skipped for r in results),
        "seconds": round(time.perf_counter() - t0, 2),
    }


if __name__ == "__main__":  # python -m tasks.pydocs [--packages]
    import json
    import sys

    print(json.dumps(corpus_size("--packages" in sys.argv), indent=2))
