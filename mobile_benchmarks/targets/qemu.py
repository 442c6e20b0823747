"""``--target qemu``: the emulated board's aarch64 Python run directly, without ssh.

The same arm64 Python, wheels and ``qemu-aarch64`` as ``--target board`` (built by
``lesionlite bench board up --no-sshd`` or ``board up``), started as a local subprocess per
measurement — simpler when all you want is ARM-kernel outputs and no sshd. Times are labelled
emulated exactly as for ``--target board``.
"""
from __future__ import annotations

from typing import Any

from lesionlite.errors import LesionliteError
from mobile_benchmarks.board import board_dir
from mobile_benchmarks.targets import BenchOptions, local, register_target
from mobile_benchmarks.targets.common import SkipsBoardUnsupported


@register_target
class Target(SkipsBoardUnsupported, local.Target):
    name = "qemu"

    def __init__(self, spec: str, options: BenchOptions, board: str | None = None) -> None:
        super().__init__(spec, options)
        self.paths = board_dir(board or options.board_dir)
        if not self.paths.python.is_file() or not self.paths.stamp("wheels").is_file():
            raise LesionliteError(f"--target {spec}: no emulated board built in {self.paths.root}; "
                                  "build it with: lesionlite bench board up --no-sshd")
        self.emulated = "emulated (qemu-aarch64 user mode)"

    def python_cmd(self) -> list[str]:
        return [str(self.paths.python)]

    def describe(self) -> dict[str, Any]:
        return {"name": "qemu", "spec": self.spec, "emulated": self.emulated, "board_dir": str(self.paths.root),
                "device": {"machine": "aarch64", "python": str(self.paths.python), "emulator": self.emulated}}
