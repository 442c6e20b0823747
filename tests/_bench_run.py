"""Run ``python -m mobile_benchmarks`` in a child process with torch blocked, as a user without torch would."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def bench_without_torch(model_dir: Path, out: Path, *extra: str) -> dict[str, Any]:
    """bench.json of a quick bench run (1 thread, 10 runs, 1 repeat) with ``extra`` arguments; fails with stderr."""
    argv = ["mobile_benchmarks", str(model_dir), "--threads", "1", "--runs", "10", "--warmup", "1", "--out", str(out),
            "--repeats", "1", "--min-secs", "0", "--quiet", *extra]
    code = ("import sys, runpy; sys.modules['torch'] = None\n"
            f"sys.argv = {argv!r}\n"
            "runpy.run_module('mobile_benchmarks', run_name='__main__')\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    return json.loads((out / "bench.json").read_text())
