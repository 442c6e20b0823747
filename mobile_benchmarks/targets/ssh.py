"""``--target ssh://[USER@]HOST[:PORT]``: a Linux board reachable over ssh.

Copies ``remote_runner.py`` (stdlib + numpy + onnxruntime / ai_edge_litert only), each model and
its prepared input to a temporary directory on the board with ``scp``, runs the runner with
``--remote-python`` in a fresh process per artifact × thread count, parses its JSON and removes
the directory. Uses ``BatchMode`` (keys, no password prompts) and a short connect timeout: an
unreachable host is reported in one line.
"""
from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

from lesionlite.errors import LesionliteError
from mobile_benchmarks import op_profile, remote_runner
from mobile_benchmarks.targets import BenchOptions, BenchTarget, common, register_target


@register_target
class Target(BenchTarget):
    name = "ssh"
    spec_forms = ("ssh://[USER@]HOST[:PORT]",)

    @classmethod
    def parse_spec(cls, spec: str) -> dict[str, Any] | None:
        """``ssh://[USER@]HOST[:PORT]`` (IPv6 hosts in brackets) → user, host, port."""
        if not spec.startswith("ssh://"):
            return None
        rest = spec[len("ssh://"):].rstrip("/")
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
        return {"user": user or None, "host": host, "port": port}
    #: a real board's times are its own; the emulated board (targets/board.py) says otherwise
    emulated: str | None = None

    def __init__(self, spec: str, options: BenchOptions, host: str, port: int = 22, user: str | None = None) -> None:
        self.spec = spec
        self.options = options
        self.host = host
        self.port = port
        self.user = user
        self.remote_dir: str | None = None
        self.device: dict[str, Any] = {}
        self._copied: set[str] = set()

    @property
    def dest(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    def ssh_options(self) -> list[str]:
        """Options placed before the defaults (ssh keeps the first value of each): none for a plain host."""
        return []

    def _opts(self) -> list[str]:
        return [*self.ssh_options(), "-o", "BatchMode=yes", "-o", f"ConnectTimeout={self.options.connect_timeout_s}",
                "-o", "StrictHostKeyChecking=accept-new", "-o", "LogLevel=ERROR"]

    def _ssh(self, command: str, timeout: float = 60.0, check: bool = True) -> subprocess.CompletedProcess:
        cmd = ["ssh", *self._opts(), "-p", str(self.port), self.dest, command]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise LesionliteError(f"ssh {self.dest}:{self.port}: no answer within {timeout:.0f} s") from None
        if check and proc.returncode != 0:
            msg = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"status {proc.returncode}"]
            raise LesionliteError(f"ssh {self.dest}:{self.port}: {msg[0]}")
        return proc

    def _scp(self, local: Path, remote: str) -> None:
        cmd = ["scp", "-q", *self._opts(), "-P", str(self.port), str(local), f"{self.dest}:{remote}"]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        except subprocess.TimeoutExpired:
            raise LesionliteError(f"scp to {self.dest}:{self.port} timed out") from None
        if proc.returncode != 0:
            msg = proc.stderr.strip().splitlines()[-1:] or [f"status {proc.returncode}"]
            raise LesionliteError(f"scp {local.name} to {self.dest}: {msg[0]}")

    def check(self) -> None:
        for tool in ("ssh", "scp"):
            if shutil.which(tool) is None:
                raise LesionliteError(f"--target ssh: '{tool}' not found on PATH; install an OpenSSH client")
        if self.options.delegate in ("gpu", "nnapi"):
            raise LesionliteError(f"--use-{self.options.delegate} applies to --target adb only")
        t = self.options.connect_timeout_s + 5
        try:
            probe = subprocess.run(["ssh", *self._opts(), "-p", str(self.port), self.dest, "true"],
                                   capture_output=True, text=True, timeout=t)
        except subprocess.TimeoutExpired:
            raise LesionliteError(f"ssh host {self.dest}:{self.port} unreachable: no answer within {t} s") from None
        if probe.returncode != 0:
            msg = (probe.stderr.strip().splitlines() or [f"ssh exited with status {probe.returncode}"])[-1]
            raise LesionliteError(f"ssh host {self.dest}:{self.port} unreachable: {msg}")
        py = shlex.quote(self.options.remote_python)
        info = self._ssh(f"{py} -c 'import sys, platform; print(platform.python_version())' && uname -srm && "
                         "(grep -m1 -E 'model name|Hardware|Model' /proc/cpuinfo || true) && nproc", check=False)
        if info.returncode != 0:
            raise LesionliteError(f"ssh host {self.dest}: '{self.options.remote_python}' does not run there "
                                  "(set --remote-python)")
        lines = info.stdout.strip().splitlines()
        self.device = {"host": self.host, "port": self.port, "user": self.user, "python": lines[0] if lines else None,
                       "uname": lines[1] if len(lines) > 1 else None,
                       "cpu": lines[2].split(":", 1)[-1].strip() if len(lines) > 3 else None,
                       "cores": lines[-1] if len(lines) > 2 else None}
        self.remote_dir = self._ssh("mktemp -d /tmp/lesionlite-bench.XXXXXX").stdout.strip()
        self._scp(Path(remote_runner.__file__), f"{self.remote_dir}/remote_runner.py")

    def describe(self) -> dict[str, Any]:
        return {"name": "ssh", "spec": self.spec, "device": self.device, "remote_python": self.options.remote_python}

    def _copy_once(self, local: Path, name: str) -> str:
        remote = f"{self.remote_dir}/{name}"
        if remote not in self._copied:
            self._scp(local, remote)
            self._copied.add(remote)
        return remote

    def measure(self, art: dict[str, Any], model_path: Path, threads: int, input_npy: Path | None) -> dict[str, Any]:
        if art["kind"] == "coreml":
            return common.empty_result(art, threads, "skipped", "CoreML cannot run on a Linux board (Apple platforms only)")
        safe = art["name"].replace("/", "_")
        rmodel = self._copy_once(model_path, f"{safe}_{model_path.name}")
        args = [self.options.remote_python, f"{self.remote_dir}/remote_runner.py", "--model", rmodel, "--kind", art["kind"],
                *common.runner_measurement_args(self.options, art, threads)]
        if input_npy is not None:
            args += ["--input", self._copy_once(input_npy, f"{safe}_input.npy")]
        proc = self._ssh(" ".join(shlex.quote(a) for a in args), timeout=self.options.timeout_s, check=False)
        data = common.find_runner_json(proc.stdout)
        if data is None:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            return common.empty_result(art, threads, "failed",
                                       f"remote runner exited with status {proc.returncode}: {tail[0][:300]}")
        return common.from_runner(art, threads, data, proc.stderr + "\n" + proc.stdout, source=f"ssh {self.dest}")

    def op_profile(self, art: dict[str, Any], model_path: Path, threads: int, input_npy: Path | None) -> dict[str, Any]:
        """Per-op-type time on the board: the copied runner's ``--op-profile`` (ONNX Runtime / ExecuTorch)."""
        if art["kind"] == "tflite":
            return op_profile.skipped(art, threads, "LiteRT's Python interpreter on the board exposes no per-op "
                                                    "profiler; run TFLite's benchmark_model there with "
                                                    "--enable_op_profiling=true (or use --target adb)")
        safe = art["name"].replace("/", "_")
        rmodel = self._copy_once(model_path, f"{safe}_{model_path.name}")
        args = [self.options.remote_python, f"{self.remote_dir}/remote_runner.py", "--model", rmodel,
                *op_profile.runner_args(self.options, art, threads)]
        if input_npy is not None:
            args += ["--input", self._copy_once(input_npy, f"{safe}_input.npy")]
        try:
            proc = self._ssh(" ".join(shlex.quote(a) for a in args), timeout=self.options.timeout_s, check=False)
        except LesionliteError as exc:
            return op_profile.from_runner_json(art, threads, None, str(exc))
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return op_profile.from_runner_json(art, threads, common.find_runner_json(proc.stdout),
                                           f"remote runner exited with status {proc.returncode}: {tail[0][:300]}")

    def predict(self, art: dict[str, Any], model_path: Path, inputs_npy: Path) -> dict[str, Any]:
        """The artifact's outputs on the board for each row of ``inputs_npy`` (runner ``--predict``)."""
        safe = art["name"].replace("/", "_")
        rmodel = self._copy_once(model_path, f"{safe}_{model_path.name}")
        rin = self._copy_once(inputs_npy, f"{safe}_{inputs_npy.name}")
        args = [self.options.remote_python, f"{self.remote_dir}/remote_runner.py", "--model", rmodel, "--predict", rin,
                *common.predict_args(art)]
        try:
            proc = self._ssh(" ".join(shlex.quote(a) for a in args), timeout=common.predict_timeout(self.options, inputs_npy),
                             check=False)
        except LesionliteError as exc:  # no answer in time: this artifact's row fails, the others still run
            return {"status": "failed", "reason": str(exc)}
        return common.predict_result(proc.stdout, proc.stderr, proc.returncode)

    def close(self) -> None:
        if self.remote_dir:
            try:
                self._ssh(f"rm -rf {shlex.quote(self.remote_dir)}", check=False, timeout=30)
            except LesionliteError:
                pass


def _port(p: str, spec: str) -> int:
    try:
        port = int(p)
    except ValueError:
        raise LesionliteError(f"bad ssh target {spec!r}: port {p!r} is not a number") from None
    if not 0 < port < 65536:
        raise LesionliteError(f"bad ssh target {spec!r}: port {port} out of range")
    return port
