"""An emulated aarch64 "board" that any Linux machine with apt and network access to the Debian and
PyPI registries can bring up: qemu-aarch64 (user mode) + an arm64 Python 3.11 sysroot + aarch64
wheels of the runtimes, reached over a loopback-only sshd with a generated key.

Why: the phone/board benchmark path (``--target ssh://``) had never run against anything real. The
board exercises it end to end (ssh, scp, ``remote_runner.py`` on aarch64 Python, ARM's own NEON
kernels) and answers the question emulation *can* answer — do ARM's kernels give the same outputs as
the host's? — while its wall times are those of an emulator and are always labelled "emulated".

Layout (all under :func:`board_dir`)::

    apt/          private apt configuration, package lists and download cache (system apt untouched)
    debs/         downloaded .deb files
    qemu/         qemu-aarch64 (one static binary, from bookworm-backports: qemu 7.2 crashes here)
    sysroot/      arm64 Python 3.11 and its libraries (dpkg-deb -x, no installation)
    site-aarch64/ aarch64 wheels of numpy, onnxruntime, ai-edge-litert (same versions as the host)
    sshd/         amd64 sshd + sftp-server (+ libwrap) extracted from Debian, when no system sshd
    ssh/          host key, client key, authorized_keys, sshd_config, ssh_config, known_hosts
    bin/python3-aarch64   the "remote python": execs qemu-aarch64 -L sysroot sysroot/usr/bin/python3.11
    run/          sshd.pid, sshd.log, state.json (port, pid)
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

#: environment variable naming the cache folder (default ~/.cache/lesionlite)
CACHE_ENV = "LESIONLITE_CACHE"
#: set by the board's python wrapper; remote_runner reports it so results can be labelled emulated
EMULATOR_ENV = "LESIONLITE_EMULATOR"
#: ssh host alias written into the board's ssh_config
HOST_ALIAS = "lesionlite-board"
DEFAULT_QEMU_CPU = "neoverse-n1"


def cache_root() -> Path:
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lesionlite"


@dataclass(frozen=True)
class BoardPaths:
    """Every path of one board folder (one place, so build, sshd and the target agree)."""

    root: Path

    @property
    def apt(self) -> Path: return self.root / "apt"
    @property
    def debs(self) -> Path: return self.root / "debs"
    @property
    def qemu(self) -> Path: return self.root / "qemu" / "qemu-aarch64"
    @property
    def sysroot(self) -> Path: return self.root / "sysroot"
    @property
    def site(self) -> Path: return self.root / "site-aarch64"
    @property
    def sshd_root(self) -> Path: return self.root / "sshd"
    @property
    def ssh(self) -> Path: return self.root / "ssh"
    @property
    def python(self) -> Path: return self.root / "bin" / "python3-aarch64"
    @property
    def run(self) -> Path: return self.root / "run"
    @property
    def state(self) -> Path: return self.run / "state.json"
    @property
    def ssh_config(self) -> Path: return self.ssh / "ssh_config"
    @property
    def client_key(self) -> Path: return self.ssh / "id_ed25519"
    @property
    def known_hosts(self) -> Path: return self.ssh / "known_hosts"

    def stamp(self, step: str) -> Path:
        return self.root / f".done-{step}"


def board_dir(root: str | os.PathLike | None = None) -> BoardPaths:
    """The board folder: ``root`` if given, else ``$LESIONLITE_CACHE/board-aarch64``."""
    return BoardPaths(Path(root).expanduser().resolve() if root else (cache_root() / "board-aarch64").resolve())
