"""``python -m export …`` ≡ ``lesionlite export …``."""
from __future__ import annotations

import sys

from lesionlite.cli import run_stage


def _main() -> int:
    from export.cli import main

    return run_stage(main, sys.argv[1:], prog="lesionlite export")


if __name__ == "__main__":
    raise SystemExit(_main())
