"""``lesionlite`` command: dispatches to each stage's own CLI without importing the others.

``lesionlite distill …`` ≡ ``python -m distill …``, ``lesionlite export …`` ≡ ``python -m export …``,
``lesionlite serve …`` ≡ ``python -m serve …``, ``lesionlite bench …`` ≡ ``python -m mobile_benchmarks …``.
Stage modules are imported lazily so that `serve` and `bench` work without torch installed.
"""
from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence

from lesionlite.errors import LesionliteError

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "distill": ("distill.cli", "train a student (scratch, kd, ssdkd, udcd, udcd-code)"),
    "export": ("export.cli", "quantize and convert a student to ONNX / TFLite / CoreML"),
    "adapt": ("distill.adapt_cli", "fit a trained student to a new clinic's images (BatchNorm, K labelled) before export"),
    "evaluate": ("export.evaluate_cli", "evaluate a run or exported artifacts on any data (e.g. the external set), with CIs"),
    "serve": ("serve.cli", "serve exported models over HTTP (FastAPI + uvicorn)"),
    "bench": ("mobile_benchmarks.cli", "benchmark exported models on this host or a device"),
    "verify": ("mobile_benchmarks.verify", "re-run exported artifacts' golden vectors (model file, preprocessing, runtime)"),
}


def run_stage(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None, prog: str) -> int:
    """Run a stage's ``main`` and turn :class:`LesionliteError` into one line and exit code 2."""
    try:
        rc = main(argv)
    except LesionliteError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


def _usage() -> str:
    lines = ["usage: lesionlite {" + ",".join(SUBCOMMANDS) + "} [options]", "", "subcommands:"]
    lines += [f"  {name:<8} {help_}" for name, (_, help_) in SUBCOMMANDS.items()]
    lines.append("\nrun 'lesionlite SUBCOMMAND --help' for a subcommand's options")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if args[0] == "--version":
        from lesionlite import __version__

        print(f"lesionlite {__version__}")
        return 0
    name = args[0]
    if name not in SUBCOMMANDS:
        print(f"lesionlite: error: unknown subcommand {name!r}\n{_usage()}", file=sys.stderr)
        return 2
    module_name = SUBCOMMANDS[name][0]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        print(
            f"lesionlite: error: '{name}' cannot start: missing dependency {exc.name!r}; "
            f"install it with: pip install 'lesionlite[{name}]'",
            file=sys.stderr,
        )
        return 2
    return run_stage(module.main, args[1:], prog=f"lesionlite {name}")


if __name__ == "__main__":
    raise SystemExit(main())
