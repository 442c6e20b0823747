"""Running the plan: train each run (or resume it, or take its committed record), export its int8 artifacts,
within a time budget; the machine it ran on and the GPU's utilisation while it ran."""
from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.protocol.collect import committed_record, export_summary, run_state
from benchmarks.protocol.plan import RunSpec
from benchmarks.protocol.settings import Settings
from distill.config import resolve_config
from distill.train import train
from lesionlite.errors import LesionliteError
from mobile_benchmarks.hostinfo import cpu_model, simd_flags

EXIT_INCOMPLETE = 3


class BudgetStop(Exception):
    """Raised from the epoch callback when the next epoch would end past the deadline."""


# ------------------------------------------------------------------------------------------------
# Machine / GPU utilisation
# ------------------------------------------------------------------------------------------------
def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {"cpu": cpu_model() or "unknown", "cpu_flags": simd_flags(), "cpu_count": os.cpu_count(),
                            "platform": platform.platform(),
                            "python": platform.python_version(), "torch": torch.__version__,
                            "torch_threads": torch.get_num_threads(), "gpu": None}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_count"] = torch.cuda.device_count()
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    try:
        load = os.getloadavg()
        info["load_average_at_start"] = [round(x, 2) for x in load]
    except OSError:
        pass
    return info


def read_gpu_utilisation() -> tuple[float | None, float | None]:
    """(utilisation %, memory used MiB) of GPU 0 from torch.cuda.utilization or nvidia-smi; Nones when unknown."""
    try:
        return float(torch.cuda.utilization()), None
    except Exception:
        pass
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits",
                              "-i", "0"], capture_output=True, text=True, timeout=5).stdout.strip()
        u, m = out.split(",")[:2]
        return float(u), float(m)
    except Exception:
        return None, None


class GpuSampler:
    """Samples GPU utilisation (torch.cuda.utilization / nvidia-smi) once a second in a thread."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self.samples: list[float] = []
        self.mem: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            u, m = read_gpu_utilisation()
            if u is not None:
                self.samples.append(u)
            if m is not None:
                self.mem.append(m)

    def __enter__(self) -> GpuSampler:
        if torch.cuda.is_available():
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def summary(self) -> dict[str, Any] | None:
        if not self.samples:
            return None
        return {"util_mean": statistics.fmean(self.samples), "util_max": max(self.samples), "samples": len(self.samples),
                "memory_used_mib_max": max(self.mem) if self.mem else None}


# ------------------------------------------------------------------------------------------------
# Training and export
# ------------------------------------------------------------------------------------------------
def make_config(spec: RunSpec, settings: Settings) -> Any:
    """The run's :class:`distill.config.Config`: method, common overrides, the run's own keys, its overrides."""
    flags: dict[str, Any] = {"method.name": spec.method}
    flags.update(settings.common_overrides)
    flags.update({
        "data.name": settings.data, "data.image_size": settings.image_size,
        "model.arch": spec.arch, "model.weights": spec.weights, "run.seed": spec.seed, "run.epochs": spec.epochs,
        "run.out": str(spec.run_dir),
    })
    if spec.teacher_dir is not None:
        flags["model.teacher"] = str(spec.teacher_dir)
    flags.update(spec.overrides)
    if flags.get("model.weights") is None:
        flags.pop("model.weights")
    return resolve_config(flags=flags)


def budget_callback(epochs: int, deadline: float | None) -> Callable[[dict[str, Any]], None]:
    """An ``on_epoch`` callback that stops (:class:`BudgetStop`) when the next epoch would end past the deadline."""
    t_last = [time.time()]

    def on_epoch(r: dict[str, Any]) -> None:
        now = time.time()
        est = max(now - t_last[0], float(r.get("time_s") or 0.0)) * 1.1
        t_last[0] = now
        if r["epoch"] < epochs and deadline is not None and now + est > deadline:
            raise BudgetStop(f"stopped after epoch {r['epoch']}/{epochs}: the next would end past "
                             f"the deadline (~{est:.0f} s)")
    return on_epoch


class Runner:
    """Trains and exports the plan's runs one by one; ``stopped`` once the time budget ran out."""

    def __init__(self, settings: Settings, deadline: float | None, bundle: Any,
                 needed_on_disk: set[Path] | None = None) -> None:
        self.settings = settings
        self.deadline = deadline
        self.bundle = bundle
        self.stopped = False
        #: run directories whose weights a pending run needs (a teacher): a record cannot stand for them
        self.needed_on_disk = needed_on_disk or set()

    def remaining(self) -> float:
        return math.inf if self.deadline is None else self.deadline - time.time()

    def why_not_train(self, spec: RunSpec, state: str) -> str | None:
        """The run's status when it is not trained in this call (done, a record, waiting for its teacher or time)."""
        if spec.run_dir not in self.needed_on_disk and committed_record(self.settings, spec) is not None:
            return "done (committed record)"
        if spec.teacher_dir is not None and not (spec.teacher_dir / "manifest.json").is_file():
            return "pending (teacher unfinished)"
        if self.remaining() < 15:
            self.stopped = True
            return "pending (time budget)"
        return None

    def train(self, spec: RunSpec) -> dict[str, Any]:
        state = run_state(spec)
        rec: dict[str, Any] = {"state_before": state}
        if state == "done":
            return rec
        skip = self.why_not_train(spec, state)
        if skip is not None:
            rec["status"] = skip
            return rec
        print(f"[reproduce] {'resume' if state == 'partial' else 'train'} {spec.key} seed {spec.seed} "
              f"({spec.method}, {spec.arch}, {spec.epochs} epochs) -> {spec.run_dir}", flush=True)
        t0 = time.time()
        with GpuSampler() as gs:
            rec["status"] = self.train_once(spec, state)
        rec["this_call_s"] = round(time.time() - t0, 2)
        rec["gpu"] = gs.summary()
        if rec.get("gpu"):
            (spec.run_dir / "reproduce_gpu.json").write_text(json.dumps(rec["gpu"]), encoding="utf-8")
        print(f"[reproduce] {spec.key} seed {spec.seed}: {rec['status']} ({rec['this_call_s']:.0f} s)", flush=True)
        return rec

    def train_once(self, spec: RunSpec, state: str) -> str:
        """Train (or resume) the run until done or the budget; its status. A failure is a status, not a crash."""
        cfg = make_config(spec, self.settings)
        spec.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            train(cfg, resume=(state == "partial"), overwrite=(state == "new"),
                  on_epoch=budget_callback(cfg.run.epochs, self.deadline))
            return "done"
        except BudgetStop as exc:
            self.stopped = True
            return f"partial ({exc})"
        except LesionliteError as exc:
            return f"failed: {exc}"
        except Exception as exc:  # keep the other runs going; the traceback goes to the log
            traceback.print_exc()
            return f"failed: {type(exc).__name__}: {exc}"

    def export(self, spec: RunSpec) -> dict[str, Any]:
        ex = self.settings.export_recipe
        edir = spec.run_dir / "export"
        if not ex.formats or not spec.export:
            return {"status": "skipped"}
        if ex.only and spec.key not in ex.only:
            return {"status": "skipped (not in export.only)"}
        if export_summary(edir) is not None:
            return {"status": "done"}
        if self.remaining() < 30:
            self.stopped = True
            return {"status": "pending (time budget)"}
        print(f"[reproduce] export {spec.key} seed {spec.seed} -> {edir} ({', '.join(ex.formats)} int8)", flush=True)
        t0 = time.time()
        try:
            from export.api import export_model  # a broken export stage fails this export, not the table

            export_model(spec.run_dir, edir, ex.formats, ex.precisions or ["int8"], calib_samples=ex.calib_samples,
                         eval_samples=ex.eval_samples, parity_threshold=0.0, dataset=self.bundle, seed=0)
        except LesionliteError as exc:
            return {"status": f"failed: {exc}"}
        except Exception as exc:
            traceback.print_exc()
            return {"status": f"failed: {type(exc).__name__}: {exc}"}
        wall = round(time.time() - t0, 2)
        (edir / "reproduce_export_time.json").write_text(json.dumps({"wall_s": wall}), encoding="utf-8")
        print(f"[reproduce] export {spec.key} seed {spec.seed}: done ({wall:.0f} s)", flush=True)
        return {"status": "done"}
