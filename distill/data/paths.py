"""Where real data is found: ONE setting.

The data root is the ``root`` argument, else the ``LESIONLITE_DATA`` environment variable, else
``<repo>/../shared/data`` when that folder exists. Paths inside dataset specs are tried as given
(relative to the working directory) and then relative to the data root.
"""
from __future__ import annotations

import os
from pathlib import Path

from lesionlite.errors import LesionliteError

ENV_VAR = "LESIONLITE_DATA"
REPO_ROOT = Path(__file__).resolve().parents[2]


def data_root(root: str | os.PathLike | None = None) -> Path | None:
    """The data root, or None when no setting points anywhere (synthetic data still works)."""
    if root is not None and str(root) != "":
        p = Path(root).expanduser()
        if not p.is_dir():
            raise LesionliteError(f"data root {p} does not exist or is not a directory")
        return p
    env = os.environ.get(ENV_VAR)
    if env:
        p = Path(env).expanduser()
        if not p.is_dir():
            raise LesionliteError(f"{ENV_VAR}={env} does not exist or is not a directory")
        return p
    default = REPO_ROOT.parent / "shared" / "data"
    return default if default.is_dir() else None


def describe_root(root: Path | None) -> str:
    if root is not None:
        return str(root)
    return f"(no data root: pass --data-root, set {ENV_VAR}, or create {REPO_ROOT.parent / 'shared' / 'data'})"


def resolve_path(arg: str, root: Path | None) -> Path:
    """A path from a spec: as given if it exists, else under the data root; error if neither."""
    p = Path(arg).expanduser()
    if p.exists():
        return p
    if root is not None and not p.is_absolute() and (root / p).exists():
        return root / p
    tried = [str(p)] + ([str(root / p)] if root is not None and not p.is_absolute() else [])
    raise LesionliteError(f"path not found: {arg} (tried {', '.join(tried)})")
