"""The code stays easy to change: no function in the packages grows past ~80 lines; imports follow the rules.

A ratchet, as issue 15 asked ("no function longer than ~80 lines"): every function over
:data:`LIMIT` lines must be listed in :data:`STILL_LONG` with at most its listed length, so a new
long function or a listed one that grows fails here; a listed one that shrinks below the limit
must be taken off the list (the test says so), so the list only ever gets shorter.
"""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("distill", "export", "serve", "mobile_benchmarks", "lesionlite", "benchmarks")
LIMIT = 80

#: "path:function" → its length today (lines); to be split into named steps, then removed from here.
STILL_LONG: dict[str, int] = {}


def _function_lengths() -> dict[str, int]:
    out: dict[str, int] = {}
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    key = f"{path.relative_to(REPO).as_posix()}:{node.name}"
                    out[key] = max(out.get(key, 0), node.end_lineno - node.lineno + 1)
    return out


def test_no_new_long_functions_and_the_listed_ones_do_not_grow() -> None:
    lengths = _function_lengths()
    too_long = {k: n for k, n in lengths.items() if n > LIMIT and n > STILL_LONG.get(k, 0)}
    assert not too_long, f"functions over {LIMIT} lines (split them into named steps): {too_long}"


def test_the_list_only_holds_functions_that_are_still_long() -> None:
    lengths = _function_lengths()
    done = sorted(k for k in STILL_LONG if lengths.get(k, 0) <= LIMIT)
    assert not done, f"now at most {LIMIT} lines (or gone): remove from STILL_LONG: {done}"


def _imports(pkgs: tuple[str, ...]) -> list[tuple[str, ast.AST]]:
    out = []
    for pkg in pkgs:
        for path in sorted((REPO / pkg).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            out += [(path.relative_to(REPO).as_posix(), n) for n in ast.walk(tree)]
    return out


def test_no_sys_path_edits_anywhere() -> None:
    """Code is imported as installed packages (benchmarks included), never by editing the import path."""
    edits = [f"{p}:{n.lineno}" for p, n in _imports((*PACKAGES, "tests"))
             if isinstance(n, ast.Attribute) and n.attr in ("insert", "append")
             and isinstance(n.value, ast.Attribute) and n.value.attr == "path"
             and isinstance(n.value.value, ast.Name) and n.value.value.id == "sys"]
    assert not edits, f"sys.path edits: {edits}"


def test_no_private_names_imported_across_modules() -> None:
    """``from x import _name`` reaches into another module's internals: make the helper public instead."""
    private = [f"{p}:{n.lineno} {n.module}.{a.name}" for p, n in _imports(PACKAGES)
               if isinstance(n, ast.ImportFrom) and n.module and n.module.split(".")[0] in PACKAGES
               for a in n.names if a.name.startswith("_") and not a.name.startswith("__")]
    assert not private, f"private names imported across modules: {private}"
