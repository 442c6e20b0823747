"""``--target adb[:SERIAL]``: an attached Android phone, measured with TFLite's official ``benchmark_model``.

Needs ``adb`` on PATH, one attached device in state ``device`` (or the SERIAL given) and the
``benchmark_model`` binary for the phone's ABI (``--benchmark-model PATH``; e.g.
``android_aarch64_benchmark_model`` from the TFLite performance-measurement page). The model and
the binary are pushed to ``/data/local/tmp/lesionlite``; the run is
``[taskset MASK] benchmark_model --graph=… --num_threads=N --num_runs=R --warmup_runs=W
--min_secs=0 --warmup_min_secs=0 [--use_xnnpack=true|--use_gpu=true|--use_nnapi=true]`` and its
output is parsed by :func:`mobile_benchmarks.parsers.parse_tflite_benchmark_model`. ONNX artifacts
are skipped (benchmark_model runs TFLite only).
"""
from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

from lesionlite.errors import LesionliteError
from mobile_benchmarks import op_profile
from mobile_benchmarks.parsers import parse_tflite_benchmark_model
from mobile_benchmarks.targets import BenchOptions, BenchTarget, register_target
from mobile_benchmarks.targets.common import empty_result, from_benchmark_model

REMOTE_DIR = "/data/local/tmp/lesionlite"
INSTALL_HINT = (
    "install Android platform-tools (https://developer.android.com/tools/releases/platform-tools) "
    "and put adb on PATH"
)


def parse_adb_devices(text: str) -> list[tuple[str, str]]:
    """``adb devices`` output → [(serial, state)] (state: device, unauthorized, offline, …)."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("List of devices") or line.startswith("*"):
            continue
        parts = line.split()
        if len(parts) >= 2:
            out.append((parts[0], parts[1]))
    return out


@register_target
class Target(BenchTarget):
    name = "adb"
    spec_forms = ("adb", "adb:SERIAL")

    @classmethod
    def parse_spec(cls, spec: str) -> dict[str, Any] | None:
        if spec == "adb" or spec.startswith("adb:"):
            return {"serial": spec[4:] or None}
        return None

    def __init__(self, spec: str, options: BenchOptions, serial: str | None = None) -> None:
        self.spec = spec
        self.options = options
        self.serial = serial
        self.adb: str | None = None
        self.device: dict[str, Any] = {}
        self._pushed_binary = False

    # -- helpers ---------------------------------------------------------------------------
    def _adb(self, *args: str, timeout: float = 60.0, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [self.adb or "adb"] + (["-s", self.serial] if self.serial else []) + list(args)
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise LesionliteError(f"adb timed out after {timeout:.0f} s: {' '.join(cmd)}") from None
        except OSError as exc:
            raise LesionliteError(f"cannot run adb: {exc}") from None
        if check and proc.returncode != 0:
            msg = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise LesionliteError(f"adb {' '.join(args[:2])} failed (status {proc.returncode}): {msg[0]}")
        return proc

    # -- interface ---------------------------------------------------------------------------
    def check(self) -> None:
        self.adb = shutil.which("adb")
        if self.adb is None:
            raise LesionliteError(f"--target adb: 'adb' not found on PATH; {INSTALL_HINT}")
        bm = self.options.benchmark_model
        if not bm:
            raise LesionliteError(
                "--target adb needs --benchmark-model PATH: the official TFLite benchmark_model binary for the "
                "phone's ABI (e.g. android_aarch64_benchmark_model, https://ai.google.dev/edge/litert/models/measurement)"
            )
        if not Path(bm).is_file():
            raise LesionliteError(f"--benchmark-model {bm}: file not found")
        try:
            proc = subprocess.run([self.adb, "devices"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise LesionliteError(f"cannot run 'adb devices': {exc}") from None
        devices = parse_adb_devices(proc.stdout)
        ready = [s for s, st in devices if st == "device"]
        if self.serial:
            state = dict(devices).get(self.serial)
            if state is None:
                raise LesionliteError(
                    f"no Android device with serial {self.serial!r} attached (adb devices lists: "
                    f"{', '.join(s for s, _ in devices) or 'none'})"
                )
            if state != "device":
                raise LesionliteError(f"Android device {self.serial} is '{state}'; accept USB debugging on the phone")
        elif not ready:
            extra = f" ({', '.join(f'{s}: {st}' for s, st in devices)})" if devices else ""
            raise LesionliteError(f"no Android device attached: 'adb devices' lists none ready{extra}; "
                                  "connect a phone with USB debugging enabled")
        elif len(ready) > 1:
            raise LesionliteError(f"several Android devices attached ({', '.join(ready)}); pick one with --target adb:SERIAL")
        else:
            self.serial = ready[0]
        props = {}
        for key in ("ro.product.manufacturer", "ro.product.model", "ro.product.cpu.abi", "ro.soc.model",
                    "ro.board.platform", "ro.build.version.release", "ro.build.version.sdk"):
            p = self._adb("shell", "getprop", key, check=False, timeout=15)
            props[key] = p.stdout.strip() or None
        cpu = self._adb("shell", "cat /proc/cpuinfo | grep -m1 -E 'Hardware|model name'", check=False, timeout=15)
        nproc = self._adb("shell", "nproc", check=False, timeout=15)
        self.device = {"serial": self.serial, **props, "cpuinfo": cpu.stdout.strip() or None,
                       "cores": nproc.stdout.strip() or None}

    def describe(self) -> dict[str, Any]:
        return {"name": "adb", "spec": self.spec, "device": self.device,
                "benchmark_model": str(self.options.benchmark_model)}

    def _ensure_binary(self) -> str:
        remote = f"{REMOTE_DIR}/benchmark_model"
        if not self._pushed_binary:
            self._adb("shell", f"mkdir -p {REMOTE_DIR}")
            self._adb("push", str(self.options.benchmark_model), remote, timeout=300)
            self._adb("shell", f"chmod 755 {remote}")
            self._pushed_binary = True
        return remote

    def benchmark_command(self, remote_model: str, threads: int) -> str:
        o = self.options
        args = [f"{REMOTE_DIR}/benchmark_model", f"--graph={remote_model}", f"--num_threads={threads}",
                f"--num_runs={o.runs}", f"--warmup_runs={o.warmup}", f"--min_secs={o.min_secs:g}",
                f"--warmup_min_secs={o.warmup_min_secs:g}"]
        if o.delegate == "xnnpack":
            args.append("--use_xnnpack=true")
        elif o.delegate == "gpu":
            args.append("--use_gpu=true")
        elif o.delegate == "nnapi":
            args.append("--use_nnapi=true")
        cmd = " ".join(shlex.quote(a) for a in args)
        if o.taskset:
            cmd = f"taskset {shlex.quote(o.taskset)} {cmd}"
        return cmd

    def measure(self, art: dict[str, Any], model_path: Path, threads: int, input_npy: Path | None) -> dict[str, Any]:
        if art["kind"] != "tflite":
            return empty_result(art, threads, "skipped",
                                f"{art['kind']} artifacts are not run on --target adb (benchmark_model runs TFLite only)")
        self._ensure_binary()
        remote_model = f"{REMOTE_DIR}/{art['name'].replace('/', '_')}_{model_path.name}"
        self._adb("push", str(model_path), remote_model, timeout=300)
        proc = self._adb("shell", self.benchmark_command(remote_model, threads), check=False,
                         timeout=self.options.timeout_s)
        text = (proc.stdout or "") + "\n" + (proc.stderr or "")
        try:
            parsed = parse_tflite_benchmark_model(text)
        except ValueError:
            tail = text.strip().splitlines()[-1:] or ["no output"]
            return empty_result(art, threads, "failed",
                                f"benchmark_model exited with status {proc.returncode} without timings: {tail[0][:300]}")
        res = from_benchmark_model(art, threads, parsed)
        res["raw_output_tail"] = text.strip().splitlines()[-12:]
        return res

    def op_profile(self, art: dict[str, Any], model_path: Path, threads: int, input_npy: Path | None) -> dict[str, Any]:
        """Per-op-type time on the phone: ``benchmark_model … --enable_op_profiling=true``, its node-type table parsed."""
        if art["kind"] != "tflite":
            return op_profile.skipped(art, threads, f"{art['kind']} artifacts are not run on --target adb "
                                                    "(benchmark_model runs TFLite only)")
        self._ensure_binary()
        remote_model = f"{REMOTE_DIR}/{art['name'].replace('/', '_')}_{model_path.name}"
        self._adb("push", str(model_path), remote_model, timeout=300)
        proc = self._adb("shell", self.benchmark_command(remote_model, threads) + " --enable_op_profiling=true",
                         check=False, timeout=self.options.timeout_s)
        return op_profile.from_benchmark_model_text(art, threads, (proc.stdout or "") + "\n" + (proc.stderr or ""),
                                                    proc.returncode)

    def close(self) -> None:
        if self.serial and self.adb:
            self._adb("shell", f"rm -rf {REMOTE_DIR}", check=False, timeout=30)
