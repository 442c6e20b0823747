"""Plain values: a number that may be missing as text (the CLIs' tables and logs), a nested structure as
YAML/JSON-friendly dicts and lists."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any


def fmt_value(v: Any, nd: int = 3, missing: str = "—") -> str:
    """``v`` with ``nd`` decimals when it is a float (``nan`` stays ``nan``), ``missing`` for None, else ``str(v)``."""
    if v is None:
        return missing
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def plain_tree(x: Any, leaf: Callable[[Any], Any] = lambda v: v) -> Any:
    """A copy of ``x`` with string keys and lists for tuples, ``leaf`` applied to everything else."""
    if isinstance(x, dict):
        return {str(k): plain_tree(v, leaf) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [plain_tree(v, leaf) for v in x]
    return leaf(x)
