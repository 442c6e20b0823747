"""Which directories under a model folder are artifacts: one rule for ``serve``, ``bench`` and Triton export.

An artifact directory holds a ``manifest.json``. Hidden directories (a name starting with ``.``) are
never artifacts and never searched: they are where ``export`` stages work in progress
(``.NAME.PID.XXXX.staging``) and where a replaced artifact waits to be deleted (``.NAME.old-PID``),
so a killed export can leave them behind. Before this rule ``serve`` loaded such a staging folder (and
once made it the default model) while ``bench`` ignored it; now every stage sees the same set.

An artifact directory's own subfolders (e.g. a CoreML ``.mlpackage``) are not searched either.
"""
from __future__ import annotations

import os
from pathlib import Path

from lesionlite.manifest import MANIFEST_NAME

#: how deep below the model folder artifacts are looked for (``runs/x/export/NAME`` is depth 3)
MAX_DEPTH = 4


def is_hidden(path: Path) -> bool:
    return path.name.startswith(".")


def walk(root: Path, max_depth: int = MAX_DEPTH) -> tuple[list[Path], list[Path]]:
    """One walk below ``root``: (artifact directories, hidden directories holding a manifest).

    ``root`` is taken as given even when its own name is hidden (the user named it); below it, hidden
    directories are not searched. Unreadable directories are skipped, not fatal."""
    found: list[Path] = []
    hidden: list[Path] = []
    stack = [(root, 0)]
    while stack:
        d, depth = stack.pop()
        if (d / MANIFEST_NAME).is_file():
            found.append(d)
            continue
        try:
            children = [c for c in d.iterdir() if c.is_dir()]
        except OSError:
            continue
        hidden += [c for c in children if is_hidden(c) and (c / MANIFEST_NAME).is_file()]
        if depth < max_depth:
            stack.extend((c, depth + 1) for c in children if not is_hidden(c))
    return sorted(found), sorted(hidden)


def artifact_dirs(root: str | os.PathLike[str], max_depth: int = MAX_DEPTH) -> list[Path]:
    """Artifact directories at or below ``root`` (``root`` itself when it holds a manifest), sorted."""
    return walk(Path(root), max_depth)[0]
