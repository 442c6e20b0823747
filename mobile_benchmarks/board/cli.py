"""``lesionlite bench board up|down|status`` — the emulated aarch64 board.

    lesionlite bench board up [--dir DIR]      build what is missing (cached), start the loopback sshd
    lesionlite bench board down [--dir DIR]    stop the sshd that 'up' started (by its PID)
    lesionlite bench board status [--dir DIR]  built? running? how to reach it

Then: ``lesionlite bench MODEL_DIR --target board`` (ssh to the board) or ``--target qemu`` (the same
aarch64 Python run directly, no ssh). Default folder: ``$LESIONLITE_CACHE/board-aarch64``
(``~/.cache/lesionlite/board-aarch64``).
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from lesionlite.errors import LesionliteError
from mobile_benchmarks.board import HOST_ALIAS, board_dir


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise LesionliteError(f"{message} (see --help)")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main(argv: Sequence[str]) -> int:
    p = _Parser(prog="lesionlite bench board", description="Emulated aarch64 board (qemu user mode + loopback sshd).")
    p.add_argument("action", choices=["up", "down", "status"])
    p.add_argument("--dir", help="board folder (default $LESIONLITE_CACHE/board-aarch64)")
    p.add_argument("--no-sshd", action="store_true", help="up: build only (enough for --target qemu)")
    a = p.parse_args(list(argv))
    paths = board_dir(a.dir)
    from mobile_benchmarks.board import sshd

    if a.action == "up":
        from mobile_benchmarks.board.build import Builder

        _log(f"[board] folder {paths.root}")
        Builder(paths, _log).build()
        if a.no_sshd:
            print("board built (no sshd): lesionlite bench MODEL_DIR --target qemu")
            return 0
        st = sshd.start(paths, _log)
        print(f"board up: ssh -F {paths.ssh_config} {HOST_ALIAS}  (127.0.0.1:{st['port']}, pid {st['pid']}); "
              f"bench with: lesionlite bench MODEL_DIR --target board")
        return 0
    if a.action == "down":
        sshd.stop(paths, _log)
        return 0
    st = sshd.running(paths)
    built = all(paths.stamp(s).is_file() for s in ("qemu", "sysroot", "wheels")) and paths.python.is_file()
    print(f"board folder {paths.root}: {'built' if built else 'not built'}; "
          + (f"sshd running (pid {st['pid']}, 127.0.0.1:{st['port']})" if st else "sshd not running"))
    return 0 if (built and st) else 1
