"""Reproduce the two papers' table on real data: teachers, MobileNetV2 students, int8 exports, one table.

The command-line entry point of :mod:`benchmarks.protocol` (see :mod:`benchmarks.protocol.cli` for the
protocols, the recipes and resuming):

    python benchmarks/reproduce.py --protocol cpu-reduced --time-budget 2700
    python benchmarks/reproduce.py --protocol gpu --time-budget 560     # repeat until exit status 0
    python -m benchmarks.reproduce --protocol smoke --out /tmp/r --results /tmp/r
"""
from __future__ import annotations

import sys

from benchmarks.protocol.cli import main

if __name__ == "__main__":
    sys.exit(main())
