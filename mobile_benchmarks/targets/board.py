"""``--target board``: the emulated aarch64 board (``lesionlite bench board up``), over real ssh.

This is the ``ssh://`` target unchanged — ``ssh``/``scp`` to the board's loopback sshd, a temporary
directory there, ``remote_runner.py`` run by the board's Python — with the connection details read
from the board folder: its port and user (``run/state.json``), its generated key and its own
``known_hosts`` (the user's ``~/.ssh`` is neither read nor written), and its "remote python", a
wrapper that runs the arm64 Python 3.11 under ``qemu-aarch64``. Equivalent by hand::

    lesionlite bench MODEL_DIR --target ssh://USER@127.0.0.1:PORT --remote-python BOARD/bin/python3-aarch64
    # with BOARD/ssh/id_ed25519 in the ssh agent or ~/.ssh/config

Everything it measures runs on ARM kernels, but *in an emulator on this host*: results carry
``emulated`` and the reports label every time as emulated (see ``mobile_benchmarks/README.md``).
"""
from __future__ import annotations

import json
import shlex
from typing import Any

from lesionlite.errors import LesionliteError
from mobile_benchmarks.board import board_dir
from mobile_benchmarks.board.sshd import running
from mobile_benchmarks.targets import BenchOptions, register_target
from mobile_benchmarks.targets import ssh as ssh_target
from mobile_benchmarks.targets.common import SkipsBoardUnsupported

PROBE = ("import json, os, platform\n"
         "cpu = None\n"
         "try:\n"
         "    cpu = next((l.split(':', 1)[1].strip() for l in open('/proc/cpuinfo') if l.startswith('model name')), None)\n"
         "except OSError:\n"
         "    pass\n"
         "print(json.dumps({'machine': platform.machine(), 'python': platform.python_version(), 'cpu': cpu,\n"
         "                  'cores': os.cpu_count(), 'emulator': os.environ.get('LESIONLITE_EMULATOR')}))\n")


@register_target
class Target(SkipsBoardUnsupported, ssh_target.Target):
    name = "board"
    spec_forms = ("board",)

    @classmethod
    def parse_spec(cls, spec: str) -> dict[str, Any] | None:
        return {} if spec == cls.name else None

    def __init__(self, spec: str, options: BenchOptions, board: str | None = None) -> None:
        self.paths = board_dir(board or options.board_dir)
        state = running(self.paths)
        if state is None:
            raise LesionliteError(f"--target {spec}: the emulated board in {self.paths.root} is not running; "
                                  "start it with: lesionlite bench board up")
        if options.remote_python in ("python3", "", None):
            options.remote_python = str(self.paths.python)
        super().__init__(spec, options, host=state["host"], port=int(state["port"]), user=state["user"])
        self.emulated = "emulated"

    def ssh_options(self) -> list[str]:
        return ["-i", str(self.paths.client_key), "-o", "IdentitiesOnly=yes",
                "-o", f"UserKnownHostsFile={self.paths.known_hosts}", "-o", "StrictHostKeyChecking=yes"]

    def check(self) -> None:
        super().check()
        py = shlex.quote(self.options.remote_python)
        proc = self._ssh(f"{py} -c {shlex.quote(PROBE)}", check=False, timeout=120)
        try:
            info = json.loads(proc.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise LesionliteError(f"--target board: the board's python does not run: "
                                  f"{(proc.stderr.strip().splitlines() or ['no output'])[-1]}") from None
        self.emulated = info.get("emulator") or "emulated (qemu-aarch64 user mode)"
        # the ssh host is this machine; what runs the models is the emulated ARM CPU
        self.device.update({"uname": f"ssh host {self.device.get('uname')}", "machine": info["machine"],
                            "cpu": info.get("cpu"), "python": info.get("python"), "cores": info.get("cores"),
                            "emulator": self.emulated})

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "name": "board", "emulated": self.emulated, "board_dir": str(self.paths.root)}
