"""``python -m serve`` ≡ ``lesionlite serve``."""
import sys

from lesionlite.cli import run_stage
from serve.cli import main

if __name__ == "__main__":
    sys.exit(run_stage(main, sys.argv[1:], prog="lesionlite serve"))
