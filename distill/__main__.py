"""``python -m distill ...`` ≡ ``lesionlite distill ...`` (errors: one line, exit status 2)."""
from __future__ import annotations

import sys

from distill.cli import main
from lesionlite.cli import run_stage

if __name__ == "__main__":
    sys.exit(run_stage(main, None, prog="distill"))
