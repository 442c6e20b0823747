"""Target registry: where a benchmark runs. One module per target, chosen by ``--target``.

* ``local``                      — this host (ONNX Runtime + LiteRT, fresh subprocess per measurement)
* ``adb`` / ``adb:SERIAL``       — an attached Android phone, TFLite ``benchmark_model`` over adb
* ``ssh://[USER@]HOST[:PORT]``   — a Linux board: copies ``remote_runner.py`` and runs it there
* ``board``                      — the emulated aarch64 board (``bench board up``), over ssh; times labelled emulated
* ``qemu``                       — the same emulated aarch64 Python, run directly (no ssh)

Every target raises :class:`~lesionlite.errors.LesionliteError` with one line when it cannot run
(tool missing, nothing attached, host unreachable) and never fills in figures it did not measure.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from lesionlite.errors import LesionliteError

TARGETS: dict[str, str] = {
    "local": "mobile_benchmarks.targets.local",
    "adb": "mobile_benchmarks.targets.adb",
    "ssh": "mobile_benchmarks.targets.ssh",
    "board": "mobile_benchmarks.targets.board",
    "qemu": "mobile_benchmarks.targets.qemu",
}


@dataclass
class BenchOptions:
    threads: list[int] = field(default_factory=lambda: [1])
    runs: int = 100
    warmup: int = 10
    #: time each measurement at least this long and warm up at least this long (benchmark_model's
    #: --min_secs / --warmup_min_secs, same defaults): a fast model's 100 runs last milliseconds
    min_secs: float = 1.0
    warmup_min_secs: float = 0.5
    #: fresh processes per artifact × thread count; the spread between them is the reported noise
    repeats: int = 3
    delegate: str | None = None  # None (runtime default) | xnnpack | gpu | nnapi
    taskset: str | None = None
    benchmark_model: str | None = None
    remote_python: str = "python3"
    timeout_s: float = 600.0
    connect_timeout_s: int = 5
    #: board/qemu targets: the board folder (default $LESIONLITE_CACHE/board-aarch64)
    board_dir: str | None = None
    #: ARM-vs-host agreement: this many real test images per artifact (0: none; None: the target's default)
    agreement_images: int | None = None


def parse_target(spec: str) -> tuple[str, dict[str, Any]]:
    """``local`` | ``adb[:SERIAL]`` | ``ssh://[USER@]HOST[:PORT]`` → (name, params)."""
    s = (spec or "local").strip()
    if s == "local":
        return "local", {}
    if s in ("board", "qemu"):
        return s, {}
    if s == "adb" or s.startswith("adb:"):
        serial = s[4:] or None
        return "adb", {"serial": serial}
    if s.startswith("ssh://"):
        rest = s[len("ssh://"):].rstrip("/")
        user = None
        if "@" in rest:
            user, rest = rest.rsplit("@", 1)
        port = 22
        host = rest
        if rest.startswith("["):  # [ipv6]:port
            host, _, tail = rest[1:].partition("]")
            if tail.startswith(":"):
                port = _port(tail[1:], spec)
        elif rest.count(":") == 1:
            host, p = rest.split(":")
            port = _port(p, spec)
        if not host:
            raise LesionliteError(f"bad ssh target {spec!r}: no host; expected ssh://[USER@]HOST[:PORT]")
        return "ssh", {"user": user or None, "host": host, "port": port}
    raise LesionliteError(
        f"unknown target {spec!r}; expected one of: local, adb, adb:SERIAL, ssh://[USER@]HOST[:PORT], board, qemu"
    )


def _port(p: str, spec: str) -> int:
    try:
        port = int(p)
    except ValueError:
        raise LesionliteError(f"bad ssh target {spec!r}: port {p!r} is not a number") from None
    if not 0 < port < 65536:
        raise LesionliteError(f"bad ssh target {spec!r}: port {port} out of range")
    return port


def get_target(spec: str, options: BenchOptions):
    name, params = parse_target(spec)
    module = importlib.import_module(TARGETS[name])
    return module.Target(spec=spec, options=options, **params)
