"""The argument parser every ``lesionlite`` subcommand uses: a usage mistake is one line and exit status 2.

argparse prints its usage and exits by itself; raising :class:`LesionliteError` instead lets
:func:`lesionlite.cli.run_stage` report it like any other bad input.
"""
from __future__ import annotations

import argparse

from lesionlite.errors import LesionliteError


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str):  # type: ignore[override]  # one line + status 2, like LesionliteError
        raise LesionliteError(f"{message} (see --help)")
