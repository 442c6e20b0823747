"""Helpers several benchmark scripts share (one copy each)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lesionlite.atomic import write_json_atomic, write_text_atomic

#: the repository root (benchmarks/ is one of its folders)
REPO = Path(__file__).resolve().parents[1]
#: where the committed benchmark results live
RESULTS = REPO / "benchmarks" / "results"


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON document at ``path``, or None when it is missing or unreadable (a run not finished yet)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def publish(out: Path, doc: dict[str, Any], md: str) -> None:
    """Write a result as JSON at ``out`` and its Markdown table beside it (``.md``), both atomically; print the table."""
    write_json_atomic(out, doc)
    write_text_atomic(Path(out).with_suffix(".md"), md)
    print(md)
