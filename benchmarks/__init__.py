"""The project's benchmarks: command-line scripts (``python benchmarks/<name>.py``, or ``python -m
benchmarks.<name>``) over importable code, under the same rules as the packages.

:mod:`benchmarks.protocol` is ``reproduce.py``'s protocol (settings, plan, run, collect, verdicts, render);
:mod:`benchmarks.common` holds the helpers several scripts share. Every result file a script writes is
listed in ``benchmarks/RESULTS.md`` with the command that wrote it.
"""
