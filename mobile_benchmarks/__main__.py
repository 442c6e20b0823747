"""``python -m mobile_benchmarks …`` ≡ ``lesionlite bench …``."""
from lesionlite.cli import run_stage
from mobile_benchmarks.cli import main

if __name__ == "__main__":
    raise SystemExit(run_stage(main, None, prog="lesionlite bench"))
