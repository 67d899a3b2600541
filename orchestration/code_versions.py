"""Each asset's `code_version`, derived from the `ml_core` code its compute imports.

Dagster shows a materialized partition as stale when its asset's code version differs from the
one it was materialized with. An asset's version is a hash of every `ml_core` module its
compute function can run: the `ml_core` names the function uses (module-level imports of its
module, imports inside it, and through the module's own helpers and the `orchestration` functions
it calls), then, transitively, every `ml_core` module those import anywhere in their source
(also inside functions, and modules named in strings, as the model registry names its models),
with the packages above each. Nothing is kept by hand: editing a module an asset can reach
changes its version, editing any other module does not.

    uv run python -m orchestration.code_versions      # each asset's version and its modules
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import re
import sys
from functools import cache
from pathlib import Path

from ml_core.paths import PROJECT_ROOT

_PACKAGES = ("ml_core", "orchestration")
_MODULE_NAME = re.compile(r"ml_core(\.\w+)+")


def _module_file(root: Path, module: str) -> Path | None:
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _tree(path: Path) -> ast.Module:
    return _parse(path.read_text())


@cache
def _parse(source: str) -> ast.Module:
    return ast.parse(source)


def _import_targets(node: ast.Import | ast.ImportFrom) -> dict[str, str]:
    """{local name: what it names (`module` or `module.attribute`)} for one import."""
    if isinstance(node, ast.Import):
        return {
            (a.asname or a.name.split(".")[0]): (a.name if a.asname else a.name.split(".")[0])
            for a in node.names
        }
    if node.level or node.module is None:
        return {}
    return {(a.asname or a.name): f"{node.module}.{a.name}" for a in node.names}


def _ml_core_modules(root: Path, dotted: str) -> set[str]:
    """The `ml_core` modules a dotted name imports: the longest prefix that is a module, with
    every package above it."""
    parts = dotted.split(".")
    if parts[0] != "ml_core":
        return set()
    for end in range(len(parts), 0, -1):
        if _module_file(root, ".".join(parts[:end])) is not None:
            return {".".join(parts[:i]) for i in range(1, end + 1)}
    return set()


_FROM_IMPORT = re.compile(r"^\s*from\s+(ml_core(?:\.\w+)*)\s+import\s+(\([^)]*\)|[^\n]*)", re.M)
_IMPORT = re.compile(
    r"^\s*import\s+([\w.]+(?:\s+as\s+\w+)?(?:\s*,\s*[\w.]+(?:\s+as\s+\w+)?)*)", re.M
)
_QUOTED_MODULE = re.compile(r"[\"'](ml_core(?:\.\w+)+)[\"']")


def _module_imports(root: Path, path: Path) -> frozenset[str]:
    return _imports_of_source(root, path.read_text())


@cache
def _imports_of_source(root: Path, source: str) -> frozenset[str]:
    """Every `ml_core` module an `ml_core` source imports, anywhere in it, or names in a
    string. Read with patterns rather than parsed: the code location computes this for every
    module each time it loads, and parsing all of them would cost more than everything else."""
    found: set[str] = set()
    for module, names in _FROM_IMPORT.findall(source):
        found |= _ml_core_modules(root, module)
        for name in re.sub(r"#[^\n]*", "", names).strip("()").split(","):
            if name.strip():
                found |= _ml_core_modules(root, f"{module}.{name.split()[0]}")
    for names in _IMPORT.findall(source):
        for name in names.split(","):
            found |= _ml_core_modules(root, name.split()[0])
    for module in _QUOTED_MODULE.findall(source):
        found |= _ml_core_modules(root, module)
    return frozenset(found)


def _imports_in(root: Path, tree: ast.AST) -> set[str]:
    """Every `ml_core` module a source imports, anywhere in it, or names in a string."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            for target in _import_targets(node).values():
                found |= _ml_core_modules(root, target)
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and _MODULE_NAME.fullmatch(node.value)
        ):
            found |= _ml_core_modules(root, node.value)
    return found


def _closure(root: Path, modules: set[str]) -> set[str]:
    seen: set[str] = set()
    todo = list(modules)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        path = _module_file(root, module)
        if path is not None:
            todo.extend(_module_imports(root, path) - seen)
    return seen


def _used_names(function: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(function) if isinstance(n, ast.Name)}


def _function_roots(root: Path, module: str, name: str, seen: set[tuple[str, str]]) -> set[str]:
    """The `ml_core` modules function `name` of project module `module` uses directly, through
    the module's own functions and through functions of other project modules it imports."""
    if (module, name) in seen:
        return set()
    seen.add((module, name))
    path = _module_file(root, module)
    if path is None:
        return set()
    tree = _tree(path)
    top_level = {
        node.name: node
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
    }
    if name not in top_level:
        return set()
    function = top_level[name]
    imported: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            imported |= _import_targets(node)
    found = _imports_in(root, function)  # imports inside the function itself
    for used in _used_names(function):
        if used in top_level and used != name:
            found |= _function_roots(root, module, used, seen)
        elif used in imported:
            target = imported[used]
            found |= _ml_core_modules(root, target)
            if target.split(".")[0] in _PACKAGES and target.split(".")[0] != "ml_core":
                owner, _, attribute = target.rpartition(".")
                found |= _function_roots(root, owner, attribute, seen)
    return found


def asset_modules(module_file: str | Path, function: str, root: Path = PROJECT_ROOT) -> list[str]:
    """Every `ml_core` module the compute `function` of the project module at `module_file`
    can run, sorted."""
    module = ".".join(Path(module_file).resolve().relative_to(root).with_suffix("").parts)
    return sorted(_closure(root, _function_roots(root, module, function, set())))


def code_version(module_file: str | Path, function: str, root: Path = PROJECT_ROOT) -> str:
    """The code version of the asset computed by `function` of the module at `module_file`
    (pass `__file__`): a hash of the source of every `ml_core` module it can run."""
    digest = hashlib.sha256()
    for module in asset_modules(module_file, function, root):
        path = _module_file(root, module)
        assert path is not None
        digest.update(f"{module}\n".encode() + path.read_bytes() + b"\n")
    return digest.hexdigest()[:12]


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    from orchestration.definitions import defs

    graph = defs().resolve_asset_graph()
    for key in sorted(graph.materializable_asset_keys, key=lambda k: k.to_user_string()):
        node = graph.get(key)
        print(f"{key.to_user_string():<20} {node.code_version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
