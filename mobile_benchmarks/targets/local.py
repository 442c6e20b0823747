"""``--target local``: measure on this host with ONNX Runtime, the LiteRT interpreter and ExecuTorch.

Each artifact × thread count runs in a fresh Python subprocess (``remote_runner.py``) so that the
peak resident memory of one artifact never leaks into another's figure and each measurement
starts from a cold runtime. ONNX Runtime: ``InferenceSession`` with ``intra_op_num_threads=N``,
``inter_op_num_threads=1``, sequential execution, CPU provider. LiteRT:
``ai_edge_litert.interpreter.Interpreter(model_path, num_threads=N)`` (XNNPACK is its default
delegate). ExecuTorch: ``executorch.runtime.Runtime.get().load_program(pte).load_method("forward")``, the
XNNPACK threadpool reset to N threads; it needs torch installed (its compiled module links against it), and
an artifact is reported as skipped, naming the pip install, where executorch is missing. CoreML cannot
run on Linux and is reported as skipped.
"""
from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from lesionlite.errors import LesionliteError
from mobile_benchmarks import op_profile, remote_runner
from mobile_benchmarks.hostinfo import host_info
from mobile_benchmarks.targets import BenchOptions, BenchTarget, register_target
from mobile_benchmarks.targets.common import (
    empty_result,
    find_runner_json,
    from_runner,
    predict_args,
    predict_result,
    predict_timeout,
    runner_measurement_args,
)

RUNNER = Path(remote_runner.__file__).resolve()


@register_target
class Target(BenchTarget):
    name = "local"
    #: times measured here are this host's own (see targets/qemu.py for an emulated variant)
    emulated: str | None = None

    def __init__(self, spec: str, options: BenchOptions) -> None:
        self.spec = spec
        self.options = options

    def python_cmd(self) -> list[str]:
        """The interpreter that runs ``remote_runner.py`` (this one; the qemu target swaps it)."""
        return [sys.executable]

    def check(self) -> None:
        if self.options.delegate in ("gpu", "nnapi"):
            raise LesionliteError(
                f"--use-{self.options.delegate} applies to --target adb (an Android phone); on this host the "
                "LiteRT interpreter runs on the CPU with XNNPACK (its default delegate)"
            )
        if self.options.taskset:
            try:
                cpus = remote_runner.parse_mask(self.options.taskset)
            except ValueError:
                raise LesionliteError(f"bad --taskset {self.options.taskset!r}: expected a hex mask like 0x3 or a "
                                      "list like 0,2-3") from None
            if not cpus:
                raise LesionliteError(f"--taskset {self.options.taskset!r} selects no CPU")

    def describe(self) -> dict[str, Any]:
        return {"name": "local", "spec": self.spec, "device": host_info()}

    def measure(self, art: dict[str, Any], model_path: Path, threads: int, input_npy: Path | None) -> dict[str, Any]:
        kind = art["kind"]
        if kind == "coreml":
            if platform.system() != "Darwin":
                return empty_result(art, threads, "skipped",
                                    f"CoreML cannot run on {platform.system() or 'this OS'}: Core ML executes only on Apple "
                                    "platforms (macOS/iOS); no figures measured")
            return empty_result(art, threads, "skipped", "CoreML benchmarking is not implemented by this tool")
        cmd = [
            *self.python_cmd(), str(RUNNER), "--model", str(model_path), "--kind", kind, "--delegate", "xnnpack",
            *runner_measurement_args(self.options, art, threads),
        ]
        if input_npy is not None:
            cmd += ["--input", str(input_npy)]
        return run_runner_process(cmd, art, threads, self.options.timeout_s, source=f"{self.name} subprocess")

    def op_profile(self, art: dict[str, Any], model_path: Path, threads: int, input_npy: Path | None) -> dict[str, Any]:
        """Per-op-type time (``bench --op-profile``): the runner's ``--op-profile`` for ONNX/ExecuTorch; for TFLite
        the desktop ``benchmark_model`` given with ``--benchmark-model`` (LiteRT's Python API has no profiler)."""
        if art["kind"] == "tflite":
            if not self.options.benchmark_model:
                return op_profile.skipped(art, threads, op_profile.TFLITE_HOST_UNAVAILABLE)
            cmd = [self.options.benchmark_model, f"--graph={model_path}", f"--num_threads={threads}",
                   f"--num_runs={self.options.runs}", f"--warmup_runs={self.options.warmup}",
                   "--enable_op_profiling=true"]
            if self.options.taskset:
                cmd = ["taskset", self.options.taskset, *cmd]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=self.options.timeout_s)
            except (OSError, subprocess.TimeoutExpired) as exc:
                return {**op_profile.skipped(art, threads, ""), "status": "failed",
                        "reason": f"cannot run {self.options.benchmark_model}: {exc}"}
            return op_profile.from_benchmark_model_text(art, threads, (proc.stdout or "") + "\n" + (proc.stderr or ""),
                                                        proc.returncode)
        cmd = [*self.python_cmd(), str(RUNNER), "--model", str(model_path), *op_profile.runner_args(self.options, art, threads)]
        if input_npy is not None:
            cmd += ["--input", str(input_npy)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=self.options.timeout_s)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return op_profile.from_runner_json(art, threads, None, f"op profile did not complete: {exc}")
        tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-1:] or ["no output"]
        return op_profile.from_runner_json(art, threads, find_runner_json(proc.stdout),
                                           f"runner exited with status {proc.returncode}: {tail[0][:300]}")

    def predict(self, art: dict[str, Any], model_path: Path, inputs_npy: Path) -> dict[str, Any]:
        """The artifact's outputs for each row of ``inputs_npy`` (runner ``--predict``), or a failure."""
        cmd = [*self.python_cmd(), str(RUNNER), "--model", str(model_path), "--predict", str(inputs_npy),
               *predict_args(art)]
        limit = predict_timeout(self.options, inputs_npy)
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=limit)
        except subprocess.TimeoutExpired:
            return {"status": "failed", "reason": f"prediction timed out after {limit:.0f} s"}
        except OSError as exc:
            return {"status": "failed", "reason": f"cannot start the runner: {exc}"}
        return predict_result(proc.stdout, proc.stderr, proc.returncode)

    def close(self) -> None:
        pass


def run_runner_process(cmd: list[str], art: dict[str, Any], threads: int, timeout_s: float, source: str) -> dict[str, Any]:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return empty_result(art, threads, "failed", f"measurement timed out after {timeout_s:.0f} s")
    except OSError as exc:
        return empty_result(art, threads, "failed", f"cannot start the runner: {exc}")
    data = find_runner_json(proc.stdout)
    if data is None:
        tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-1:] or ["no output"]
        return empty_result(art, threads, "failed", f"runner exited with status {proc.returncode}: {tail[0][:300]}")
    return from_runner(art, threads, data, (proc.stderr or "") + "\n" + (proc.stdout or ""), source=source)
