"""The hash of the code a step runs: part of its key, so an edited filter recomputes `prepare`.

A step's code is the file that defines its function plus every project module (packages
`llmflow`, `model`, `tasks`) that file imports, transitively. Imports are read statically from
the syntax tree, wherever they stand (also inside functions), never by importing; `import a.b`
also reaches the package `a/__init__.py`, as Python runs it. Each file is hashed by content, and
the step's hash is sha256 over its modules' names and content hashes: the same code gives the same
hash in any checkout, at any path, on any machine.

Not hashed are the modules that carry a step's output but do not shape it (`EXCLUDED`): the
runner, the artifact store, the Prefect adapter, the config schema (a step sees its config only
as values, and those are in the key already), the event names (emitted after a step, never
written into it) and the live training curves (a view, written outside the artifact). Their imports are not followed. A module outside the project (a library) is
not hashed either: a library upgrade does not recompute anything, bump the step's `VERSION`.

Hashes are cached per process: a file is read once, as the code this process runs was imported
once. `CodeHasher(root)` hashes another copy of the project (the tests edit one).
"""

from __future__ import annotations

import ast
import functools
import hashlib
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PACKAGES = ("llmflow", "model", "tasks")
EXCLUDED = frozenset(
    {
        "llmflow.step",  # runs a step: keys, staging, publishing
        "llmflow.store",  # where artifacts live and how they are verified
        "tasks.common",  # the Prefect adapter: cache policy, retries, UI artifacts
        "llmflow.config",  # the schema (a package: all of it); its effect on a step is the
        # config values, in the key
        "llmflow.events",  # event names, emitted after a step
        "tasks.live_curves",  # a view of a training step while it runs, written outside its artifact
    }
)
ROOT = Path(__file__).resolve().parents[1]


def excluded(module: str) -> bool:
    """An excluded module, or a module inside an excluded package."""
    return any(module == e or module.startswith(e + ".") for e in EXCLUDED)


@dataclass(frozen=True)
class CodeHash:
    sha256: str
    modules: tuple[str, ...]  # the modules hashed, by name, sorted

    def to_json(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "modules": list(self.modules)}


class CodeHasher:
    """Hashes step functions against the project under `root`; caches everything it reads."""

    def __init__(self, root: str | Path = ROOT):
        self.root = Path(root).resolve()
        self._files: dict[Path, str] = {}  # file -> sha256 of its bytes
        self._imports: dict[Path, tuple[str, ...]] = {}  # file -> project modules it imports
        self._entries: dict[tuple[str, str], CodeHash] = {}

    def of(self, fn: Any) -> CodeHash:
        """The code hash of step function `fn` (a function, a partial of one, or a callable)."""
        fn = inspect.unwrap(fn.func if isinstance(fn, functools.partial) else fn)
        module = getattr(fn, "__module__", None) or "__main__"
        qualname = getattr(fn, "__qualname__", type(fn).__qualname__)
        entry = (module, qualname)
        if entry not in self._entries:
            self._entries[entry] = self._hash(module, qualname, _source_file(fn))
        return self._entries[entry]

    def module_file(self, name: str) -> Path | None:
        """The file of project module `name` under the root, or None (not a project module)."""
        if name.split(".")[0] not in PACKAGES:
            return None
        base = self.root.joinpath(*name.split("."))
        for f in (base.with_suffix(".py"), base / "__init__.py"):
            if f.is_file():
                return f
        return None

    def _hash(self, module: str, qualname: str, source: Path | None) -> CodeHash:
        name = self._name_of(source, module) if source else module
        files: dict[str, Path] = {}
        todo = [(name, source)] if source else []
        while todo:
            mod, path = todo.pop()
            if mod in files or excluded(mod):
                continue
            files[mod] = path
            package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
            for dep in self._project_imports(path, package):
                f = self.module_file(dep)
                if f is not None:
                    todo.append((dep, f))
        h = hashlib.sha256(f"{module}:{qualname}\n".encode())
        for mod in sorted(files):
            h.update(f"{mod} {self._file_hash(files[mod])}\n".encode())
        return CodeHash(h.hexdigest(), tuple(sorted(files)))

    def _name_of(self, source: Path, module: str) -> str:
        """A project file's module name from its path (location-independent); else `module`."""
        try:
            rel = source.resolve().relative_to(self.root).with_suffix("")
        except ValueError:
            return module
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        return ".".join(parts) if parts and parts[0] in PACKAGES else module

    def _file_hash(self, path: Path) -> str:
        if path not in self._files:
            self._files[path] = hashlib.sha256(path.read_bytes()).hexdigest()
        return self._files[path]

    def _project_imports(self, path: Path, package: str) -> tuple[str, ...]:
        """Project modules imported anywhere in `path`, with their parent packages."""
        if path not in self._imports:
            names: set[str] = set()
            for node in ast.walk(ast.parse(path.read_bytes(), filename=str(path))):
                if isinstance(node, ast.Import):
                    names.update(a.name for a in node.names)
                elif isinstance(node, ast.ImportFrom):
                    base = _absolute(node.module, node.level, package)
                    if base is None:
                        continue
                    names.add(base)
                    # `from a import b`: b is a submodule or a name defined in a/__init__.py
                    names.update(f"{base}.{a.name}" for a in node.names if a.name != "*")
            reached = set()
            for n in names:
                parts = n.split(".")
                if parts[0] in PACKAGES:
                    reached.update(".".join(parts[: i + 1]) for i in range(len(parts)))
            self._imports[path] = tuple(sorted(reached))
        return self._imports[path]


def _source_file(fn: Any) -> Path | None:
    """The file defining `fn` (or its class); None for builtins and code typed into a REPL."""
    for obj in (fn, type(fn)):
        try:
            f = inspect.getsourcefile(obj)
        except TypeError:
            continue
        if f:
            return Path(f)
    return None


def _absolute(module: str | None, level: int, package: str) -> str | None:
    """The absolute name of `from <level dots><module> import ...` inside `package`."""
    if level == 0:
        return module
    parts = package.split(".") if package else []
    if level - 1 > len(parts):
        return None
    base = parts[: len(parts) - (level - 1)]
    return ".".join([*base, module] if module else base) or None


_default = CodeHasher()


def code_hash(fn: Any) -> CodeHash:
    """The code hash of a step function against this checkout (cached for the process)."""
    return _default.of(fn)
