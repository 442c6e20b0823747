"""One way to print a number that may be missing, for the CLIs' tables and logs."""
from __future__ import annotations

from typing import Any


def fmt_value(v: Any, nd: int = 3, missing: str = "—") -> str:
    """``v`` with ``nd`` decimals when it is a float (``nan`` stays ``nan``), ``missing`` for None, else ``str(v)``."""
    if v is None:
        return missing
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)
