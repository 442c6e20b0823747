"""Reproduce the two papers' table on real data: teachers, MobileNetV2 students, int8 exports, one table.

For every seed this script trains, on the same data split (``data.split_seed`` is fixed; only the
run seed changes):

* the teacher (``scratch`` on ``--teacher-arch``: ResNet-50 from scratch unless ``--teacher-weights``;
  EfficientNet-Lite from the shared ImageNet weights in the CPU protocol);
* MobileNetV2 students by ``scratch``, Hinton ``kd``, ``ssdkd``, ``udcd`` and ``udcd-code``
  (``kd``/``ssdkd`` distil the teacher above; UDCD is self-distillation with an EMA teacher);
* ``udcd-densenet121``: UDCD on DenseNet-121, its own student and teacher, as in the UDCD paper;
* ablation rows defined by the recipe (``ablations:``; ``--ablations`` picks or ``none``): a method's
  settings with some terms switched off, e.g. SSD-KD without L5, to show which term helps or hurts;

exports every student to int8 TFLite and int8 ONNX (:func:`export.api.export_model`), and writes
``benchmarks/results/paper_table[_<protocol>].{json,md}``: test accuracy, balanced accuracy, macro-F1,
macro AUC, ECE, parameters, MACs, int8 size and int8 accuracy as mean ± std over the seeds, the
wall time and training images/s of every run (and images/s relative to scratch training of the same
student), the machine, and pass/fail verdicts on the papers' claims computed from the numbers.

Protocols (``--protocol``; a recipe YAML under ``benchmarks/recipes/`` each, flags override it):

* ``gpu`` (default when CUDA is available): HAM10000, 224 px, 3 seeds, the authors' recipes
  (each method's ``default_overrides``), bf16 autocast + channels_last (the loop's defaults on CUDA),
  8 loader workers, GPU utilisation sampled during every run.
* ``cpu``: the converged CPU protocol (issue 13): HAM10000 at 64 px, 3 seeds, every run trained to
  convergence on 2 CPU cores, one 128 px MobileNetV2 teacher shared by every seed (``teacher.shared``,
  distilled at its native input: ``model.teacher_input=native``),
  runs ordered method-major (scratch and KD for every seed before the costly methods), each finished
  run written to ``benchmarks/results/paper_table_cpu_runs/`` with its test predictions, and the
  differences to scratch per seed with a paired bootstrap 95 % CI on the test images.
* ``cpu-reduced`` (default without CUDA): HAM10000 at 64 px, 1 seed, 2 epochs of 30 steps, one short
  uniform recipe, EfficientNet-Lite0 teacher; labelled as reduced in the title, the JSON and every row.
* ``smoke``: synthetic data, tiny_cnn, 1 epoch, exports included; what ``tests/test_reproduce.py`` runs.

Resumable across calls (a device lends 10 minutes per call): each run directory is a normal
``distill`` run directory; finished runs (``metrics.json``) are skipped, unfinished ones continue from
``last.pt`` with the loop's ``--resume``, finished exports (``export_report.json``) are skipped.
``--time-budget SECONDS`` stops cleanly after the epoch that would otherwise end past the deadline
(the checkpoint is already written), writes the table of what is done, and exits with status 3
("call again to continue"); 0 means the protocol is complete.

    python benchmarks/reproduce.py --protocol cpu-reduced --time-budget 2700
    python benchmarks/reproduce.py --protocol gpu --time-budget 560     # repeat until exit status 0
    python benchmarks/reproduce.py --protocol smoke --out /tmp/r --results /tmp/r
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import yaml  # noqa: E402

from lesionlite.errors import LesionliteError  # noqa: E402

if str(Path(__file__).resolve().parent) not in sys.path:  # the verdicts module beside this script
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from protocol_verdicts import (  # noqa: E402
    declared_qat_recipe, evaluate_targets, explain_misses, read_accuracy_gap, read_qat_rows,
)

RECIPES = REPO / "benchmarks" / "recipes"
RESULTS = REPO / "benchmarks" / "results"
PROTOCOLS = ("gpu", "cpu", "cpu-reduced", "smoke")
#: student rows in table order; ``udcd-densenet121`` = UDCD self-distillation of the self_distill arch
METHODS = ("scratch", "kd", "ssdkd", "udcd", "udcd-code", "udcd-densenet121")
METHOD_LABELS = {
    "teacher": "Teacher (scratch training)",
    "scratch": "Scratch (class-weighted CE)",
    "kd": "Hinton KD",
    "ssdkd": "SSD-KD",
    "udcd": "UDCD (paper, Eq. 8)",
    "udcd-code": "UDCD (public code)",
    "udcd-densenet121": "UDCD self-distillation",
}
#: methods that distil the protocol's trained teacher (the others need none)
TEACHER_METHODS = ("kd", "ssdkd")
#: the metrics aggregated over seeds (keys of a run's ``metrics``)
METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc", "ece")
#: UDCD public code: distillation from epoch 20 of 80, consistency ramp-up over 30 epochs
UDCD_CODE_WARMUP_FRACTION = 20 / 80
UDCD_CODE_RAMPUP_FRACTION = 30 / 80
EXIT_INCOMPLETE = 3
#: ImageNet weights staged in ../shared/weights (used when --teacher-arch picks one of these archs)
SHARED_WEIGHTS = {
    "mobilenet_v2": "../shared/weights/mobilenet_v2/mobilenet_v2_imagenet_torchvision_from_tf2ptq.pth",
    **{f"efficientnet_lite{n}": f"../shared/weights/efficientnet_lite/tf_efficientnet_lite{n}_imagenet_timm.pth"
       for n in range(3)},
}


class BudgetStop(Exception):
    """Raised from the epoch callback when the next epoch would end past the deadline."""


# ------------------------------------------------------------------------------------------------
# Aggregation (pure functions; tested on hand-made numbers)
# ------------------------------------------------------------------------------------------------
def aggregate(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean ± sample standard deviation (ddof = 1) of the finite values; std is None below 2 values."""
    vals = [float(v) for v in values if v is not None and isinstance(v, (int, float)) and math.isfinite(float(v))]
    n = len(vals)
    if n == 0:
        return {"mean": None, "std": None, "n": 0, "values": []}
    return {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if n >= 2 else None, "n": n,
            "values": vals}


def fmt_pm(agg: dict[str, Any] | None, scale: float = 100.0, nd: int = 1) -> str:
    """``"78.3 ± 1.2"`` (percent by default); ``"78.3"`` for one value; ``"n/a"`` for none."""
    if not agg or agg.get("mean") is None:
        return "n/a"
    m = agg["mean"] * scale
    if agg.get("std") is None:
        return f"{m:.{nd}f}"
    return f"{m:.{nd}f} ± {agg['std'] * scale:.{nd}f}"


def aggregate_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (role, method, arch) over the seeds of its finished runs."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["role"], r["key"], r["arch"]), []).append(r)
    rows = []
    for (role, key, arch), rs in groups.items():
        done = [r for r in rs if r["status"] == "done"]
        row: dict[str, Any] = {
            "role": role, "key": key, "method": rs[0]["method"], "arch": arch, "label": rs[0]["label"],
            "protocol": rs[0]["protocol"], "weights": rs[0]["weights_note"],
            "seeds": [r["seed"] for r in done], "seeds_planned": [r["seed"] for r in rs],
            "status": "done" if len(done) == len(rs) else f"{len(done)}/{len(rs)} seeds done",
            # what ties a seed's later measurements (a QAT probe of its directory) to this very run
            "per_seed": {r["seed"]: {"run_dir": r.get("run_dir"),
                                     "balanced_accuracy": r["metrics"].get("balanced_accuracy")} for r in done},
        }
        for m in METRICS:
            row[m] = aggregate([r["metrics"].get(m) for r in done])
        for k in ("params", "macs"):
            vals = [r.get(k) for r in done if r.get(k) is not None]
            row[k] = vals[0] if vals else None
        for fmt in ("tflite", "onnx"):
            ex = [(r.get("int8") or {}).get(fmt) or {} for r in done]
            row[f"int8_{fmt}_size_bytes"] = aggregate([e.get("size_bytes") for e in ex])
            for m in ("accuracy", "balanced_accuracy", "macro_f1", "top1_agreement"):
                row[f"int8_{fmt}_{m}"] = aggregate([e.get(m) for e in ex])
        row["wall_time_s"] = aggregate([r.get("wall_time_s") for r in done])
        row["export_time_s"] = aggregate([r.get("export_time_s") for r in done])
        row["images_per_s"] = aggregate([r.get("images_per_s") for r in done])
        row["images_per_s_vs_scratch"] = aggregate([r.get("images_per_s_vs_scratch") for r in done])
        row["gpu_util_percent"] = aggregate([(r.get("gpu") or {}).get("util_mean") for r in done])
        rows.append(row)
    order = {"teacher": 0, "student": 1}
    mi = {m: i for i, m in enumerate(METHODS)}
    rows.sort(key=lambda r: (order.get(r["role"], 2), mi.get(r["key"], 99)))
    return rows


def paired_comparisons(runs: list[dict[str, Any]], num_classes: int, n_boot: int = 2000) -> dict[str, dict[str, Any]]:
    """For every student method: Bal-ACC difference to scratch per seed, mean, paired bootstrap 95 % CI.

    Uses the test predictions each finished run stored (``test_pred``) on the seeds that both the
    method and scratch have finished.
    """
    from distill.metrics import paired_bootstrap_balanced_accuracy_delta

    done = {(r["key"], r["seed"]): r for r in runs if r["status"] == "done" and r.get("test_pred") is not None
            and r["role"] == "student"}
    labels = next((r.get("test_labels") for r in runs if r.get("test_labels") is not None), None)
    out: dict[str, dict[str, Any]] = {}
    if labels is None:
        return out
    for key in {k for k, _ in done if k != "scratch"}:
        seeds = sorted(s for k, s in done if k == key and ("scratch", s) in done)
        if not seeds:
            continue
        res = paired_bootstrap_balanced_accuracy_delta(
            labels, [done[(key, s)]["test_pred"] for s in seeds], [done[("scratch", s)]["test_pred"] for s in seeds],
            num_classes, n_boot=n_boot)
        res["seed_ids"] = seeds
        out[key] = res
    return out


def per_class_recall(runs: list[dict[str, Any]], class_names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Mean test recall per class over each row's finished seeds, from the stored test predictions.

    Balanced accuracy is the mean of these; which classes a method gains or loses is what a clinical user
    asks next (melanoma above all), and two methods with the same Bal-ACC can trade classes very differently.
    """
    per_key: dict[str, list[list[float | None]]] = {}
    for r in runs:
        if r["status"] != "done" or r.get("test_pred") is None or r.get("test_labels") is None:
            continue
        y, p = np.asarray(r["test_labels"]), np.asarray(r["test_pred"])
        per_key.setdefault(r["key"], []).append(
            [float(np.mean(p[y == c] == c)) if np.any(y == c) else None for c in range(len(class_names))])
    out: dict[str, dict[str, Any]] = {}
    for key, recs in per_key.items():
        cols = [[v[c] for v in recs if v[c] is not None] for c in range(len(class_names))]
        out[key] = {"seeds": len(recs),
                    "recall": {name: (sum(col) / len(col) if col else None) for name, col in zip(class_names, cols)}}
    return out


# ------------------------------------------------------------------------------------------------
# Machine / GPU utilisation
# ------------------------------------------------------------------------------------------------
def machine_info() -> dict[str, Any]:
    import torch

    from mobile_benchmarks.hostinfo import cpu_model, simd_flags

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


class GpuSampler:
    """Samples GPU utilisation (torch.cuda.utilization / nvidia-smi) once a second in a thread."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self.samples: list[float] = []
        self.mem: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def _read() -> tuple[float | None, float | None]:
        import torch

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

    def __enter__(self) -> "GpuSampler":
        import torch

        if torch.cuda.is_available():
            def loop() -> None:
                while not self._stop.wait(self.interval):
                    u, m = self._read()
                    if u is not None:
                        self.samples.append(u)
                    if m is not None:
                        self.mem.append(m)
            self._thread = threading.Thread(target=loop, daemon=True)
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
# Protocol
# ------------------------------------------------------------------------------------------------
@dataclass
class RunSpec:
    key: str  # "teacher" or a METHODS entry
    role: str  # teacher | student | ablation
    method: str
    arch: str
    weights: str | None
    weights_note: str
    seed: int
    epochs: int
    run_dir: Path
    overrides: dict[str, Any] = field(default_factory=dict)
    teacher_dir: Path | None = None
    export: bool = True
    label_text: str | None = None  # ablation rows name themselves
    #: which teacher a distilled run learned from (arch, weights, epochs, overrides); part of its record's
    #: identity, so a record distilled from another teacher never stands for this run
    teacher_id: dict[str, Any] | None = None

    @property
    def label(self) -> str:
        return self.label_text or METHOD_LABELS.get(self.key, self.key)


def load_recipe(protocol: str, path: str | None = None) -> dict[str, Any]:
    p = Path(path) if path else RECIPES / f"{protocol}.yaml"
    if not p.is_file():
        raise LesionliteError(f"recipe not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:  # a broken recipe is a clear error, not a traceback
        raise LesionliteError(f"{p}: cannot read it as YAML ({exc})") from None
    if not isinstance(data, dict):
        raise LesionliteError(f"{p}: a recipe must be a YAML mapping")
    return data


def _resolve_weights(path: str | None) -> tuple[str | None, str]:
    """(absolute path or None, note for the table). A missing file falls back to random init, said so."""
    if not path or str(path).lower() in ("none", "null", "scratch", ""):
        return None, "random init (no ImageNet weights)"
    p = Path(path)
    if not p.is_absolute():
        p = (REPO / p).resolve()
    if not p.is_file():
        return None, f"random init (weights file {path} not found)"
    return str(p), f"ImageNet weights {p.name}"


def parse_list(value: str | None, default: Sequence[Any], cast=str) -> list[Any]:
    if value is None:
        return list(default)
    return [cast(v.strip()) for v in value.split(",") if v.strip()]


def run_overrides(method: str, overrides: dict[str, Any], seed: int, epochs: int) -> dict[str, Any]:
    """A run's method overrides plus what the protocol derives for it (same for student and ablation rows).

    UDCD variants draw their own seed from the run seed; udcd-code's 20/80-epoch warm-up and 30/80
    ramp-up are scaled to shorter runs.
    """
    ov = dict(overrides)
    if method in ("udcd", "udcd-code"):
        ov.setdefault("method.seed", seed)
    if method == "udcd-code" and epochs < 80:
        ov.setdefault("method.warmup_epochs", int(round(epochs * UDCD_CODE_WARMUP_FRACTION)))
        ov.setdefault("method.cons_rampup_epochs", max(1.0, epochs * UDCD_CODE_RAMPUP_FRACTION))
    return ov


def build_plan(args: argparse.Namespace, recipe: dict[str, Any]) -> tuple[dict[str, Any], list[RunSpec]]:
    """Resolve recipe + flags into the settings and the ordered list of runs."""
    methods = parse_list(args.methods, recipe.get("methods", METHODS))
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise LesionliteError(f"unknown method {bad[0]!r} for the table; choose from {', '.join(METHODS)}")
    ablations = dict(recipe.get("ablations") or {})
    if args.ablations is None:  # default: the recipe's ablations of the methods being run
        ablations = {k: v for k, v in ablations.items() if not isinstance(v, dict) or v.get("method") in methods}
    else:
        wanted = [] if args.ablations.strip().lower() == "none" else parse_list(args.ablations, [])
        unknown = [a for a in wanted if a not in ablations]
        if unknown:
            raise LesionliteError(f"unknown ablation {unknown[0]!r}; the recipe defines: {', '.join(ablations) or 'none'}")
        ablations = {a: ablations[a] for a in wanted}
    for name, ab in ablations.items():
        if name in METHODS or not isinstance(ab, dict) or ab.get("method") not in METHODS:
            raise LesionliteError(f"ablation {name!r}: needs a name other than a method's and 'method:' one of "
                                  f"{', '.join(METHODS)}")
    seeds = parse_list(args.seeds, recipe.get("seeds", [0]), int)
    if not seeds:
        raise LesionliteError("--seeds: give at least one seed")
    teacher = dict(recipe.get("teacher") or {})
    student = dict(recipe.get("student") or {})
    selfd = dict(recipe.get("self_distill") or {})
    if args.teacher_arch:
        if args.teacher_arch != teacher.get("arch"):  # the recipe's weights belong to its own arch
            teacher["weights"] = SHARED_WEIGHTS.get(args.teacher_arch)
        teacher["arch"] = args.teacher_arch
    if args.teacher_weights is not None:
        teacher["weights"] = args.teacher_weights
    if args.student_weights is not None:
        student["weights"] = args.student_weights
    image_size = int(args.image_size or recipe.get("image_size", 224))
    epochs = int(args.epochs or recipe.get("epochs", 30))
    t_epochs = int(args.teacher_epochs or teacher.get("epochs", epochs))
    data = args.data or recipe.get("data", "ham10000")
    recipe_mode = args.recipe or recipe.get("recipe", "authors")
    common = dict(recipe.get("common") or {})
    if args.max_steps is not None:
        common["run.max_steps_per_epoch"] = args.max_steps or None
    if args.threads is not None:
        common["run.threads"] = args.threads
    if args.workers is not None:
        common["data.workers"] = args.workers
    if recipe_mode == "authors":  # keep every method's own optimizer / schedule / batch
        common = {k: v for k, v in common.items() if not k.startswith(("optim.", "schedule."))}
    mo = {k: dict(v or {}) for k, v in (recipe.get("method_overrides") or {}).items()}
    out = Path(args.out)
    t_w, t_note = _resolve_weights(teacher.get("weights"))
    s_w, s_note = _resolve_weights(student.get("weights"))
    d_w, d_note = _resolve_weights(selfd.get("weights"))
    settings = {
        "protocol": args.protocol, "recipe": recipe_mode, "data": data, "image_size": image_size,
        "seeds": seeds, "methods": methods, "epochs": epochs, "teacher_epochs": t_epochs,
        "teacher_arch": teacher.get("arch", "resnet50"), "teacher_weights": t_note,
        "student_arch": student.get("arch", "mobilenet_v2"), "student_weights": s_note,
        "self_distill_arch": selfd.get("arch", "densenet121"), "self_distill_weights": d_note,
        "common_overrides": common, "method_overrides": mo, "export": dict(recipe.get("export") or {}),
        "ablations": {k: {"method": v["method"], "label": v.get("label", k), "overrides": dict(v.get("overrides") or {})}
                      for k, v in ablations.items()},
        "out": str(out), "title": recipe.get("title", f"Paper table ({args.protocol} protocol)"),
        "results_dir": str(args.results),
    }
    settings["qat_recipe"] = declared_qat_recipe(recipe)  # a bad one fails here, before any training
    if args.no_export:
        settings["export"]["formats"] = []
    settings["teacher_shared"] = bool(teacher.get("shared", False))
    settings["order"] = str(recipe.get("order", "seed"))
    if settings["order"] not in ("seed", "method"):
        raise LesionliteError(f"recipe order must be 'seed' or 'method', got {settings['order']!r}")
    need_teacher = any(m in TEACHER_METHODS for m in [*methods, *(a["method"] for a in ablations.values())])
    shared_tdir = out / f"teacher_{settings['teacher_arch']}"
    teacher_id = {"arch": settings["teacher_arch"], "weights": t_note, "epochs": t_epochs,
                  "overrides": dict(teacher.get("overrides") or {}), "shared": settings["teacher_shared"]}
    plan: list[RunSpec] = []
    if need_teacher and settings["teacher_shared"]:  # one teacher, trained once, distilled by every seed
        # with the recipe's first seed even when --seeds picks others: one teacher, one record, whoever runs it
        t_seed = int((recipe.get("seeds") or seeds)[0])
        plan.append(RunSpec("teacher", "teacher", "scratch", settings["teacher_arch"], t_w, t_note, t_seed, t_epochs,
                            shared_tdir, dict(teacher.get("overrides") or {}), export=False))
    for seed in seeds:
        sd = out / f"seed{seed}"
        tdir = shared_tdir if settings["teacher_shared"] else sd / f"teacher_{settings['teacher_arch']}"
        if need_teacher and not settings["teacher_shared"]:
            plan.append(RunSpec("teacher", "teacher", "scratch", settings["teacher_arch"], t_w, t_note, seed, t_epochs,
                                tdir, dict(teacher.get("overrides") or {}), export=False))
        for m in methods:
            if m == "udcd-densenet121":
                arch, w, note, method = settings["self_distill_arch"], d_w, d_note, "udcd"
            else:
                arch, w, note, method = settings["student_arch"], s_w, s_note, m
            ov = run_overrides(method, dict(mo.get(m, {})), seed, epochs)
            plan.append(RunSpec(m, "student", method, arch, w, note, seed, epochs, sd / f"{m}_{arch}", ov,
                                teacher_dir=tdir if method in TEACHER_METHODS else None,
                                teacher_id=teacher_id if method in TEACHER_METHODS else None))
        for name, ab in settings["ablations"].items():  # the base method's settings, then the switched-off terms
            base = ab["method"]
            ov = run_overrides(base, {**mo.get(base, {}), **ab["overrides"]}, seed, epochs)
            arch = settings["student_arch"]
            plan.append(RunSpec(name, "ablation", base, arch, s_w, s_note, seed, epochs, sd / f"{name}_{arch}", ov,
                                teacher_dir=tdir if base in TEACHER_METHODS else None, label_text=ab["label"],
                                teacher_id=teacher_id if base in TEACHER_METHODS else None,
                                export=False))
    if settings["order"] == "method":  # every seed of a method before the next method (cheap ones first)
        rank = {k: i for i, k in enumerate(["teacher", *methods, *settings["ablations"]])}
        plan.sort(key=lambda r: (rank.get(r.key, 99), seeds.index(r.seed) if r.seed in seeds else -1))
    return settings, plan


def make_config(spec: RunSpec, settings: dict[str, Any]):
    from distill.config import resolve_config

    flags: dict[str, Any] = {"method.name": spec.method}
    flags.update(settings["common_overrides"])
    flags.update({
        "data.name": settings["data"], "data.image_size": settings["image_size"],
        "model.arch": spec.arch, "model.weights": spec.weights, "run.seed": spec.seed, "run.epochs": spec.epochs,
        "run.out": str(spec.run_dir),
    })
    if spec.teacher_dir is not None:
        flags["model.teacher"] = str(spec.teacher_dir)
    flags.update(spec.overrides)
    if flags.get("model.weights") is None:
        flags.pop("model.weights")
    return resolve_config(flags=flags)


# ------------------------------------------------------------------------------------------------
# Running
# ------------------------------------------------------------------------------------------------
def _read_json(p: Path) -> dict[str, Any] | None:
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def run_state(spec: RunSpec) -> str:
    """done | partial | new."""
    d = spec.run_dir
    mj = _read_json(d / "metrics.json")
    man = _read_json(d / "manifest.json")
    if mj is not None and man is not None and (d / "student.pt").is_file():
        extra = man.get("extra") or {}
        if extra.get("epochs") == spec.epochs or extra.get("stopped_early"):
            return "done"
    if (d / "last.pt").is_file():
        return "partial"
    return "new"


#: a record's fields that must equal the plan's for the record to stand for the run
RECORD_IDENTITY = ("protocol", "key", "method", "arch", "seed", "epochs", "overrides", "teacher")


def committed_record(settings: dict[str, Any], spec: RunSpec) -> dict[str, Any] | None:
    """The committed record of this exact run (same protocol, method, arch, seed, epochs, overrides),
    finished, or None. Run directories (checkpoints) are not committed, so a later session on a fresh
    checkout knows a finished run only by its record: the table is built from it, nothing is retrained."""
    if not settings.get("results_dir"):
        return None
    rec = _read_json(run_record_path(settings, spec))
    if not rec or rec.get("status") != "done" or not rec.get("metrics"):
        return None
    want = {"protocol": settings["protocol"], "key": spec.key, "method": spec.method, "arch": spec.arch,
            "seed": spec.seed, "epochs": spec.epochs, "overrides": spec.overrides, "teacher": spec.teacher_id}
    return rec if all(rec.get(k) == want[k] for k in RECORD_IDENTITY) else None


def _summary_from_run(spec: RunSpec) -> dict[str, Any]:
    mj = _read_json(spec.run_dir / "metrics.json") or {}
    man = _read_json(spec.run_dir / "manifest.json") or {}
    s = mj.get("summary") or {}
    extra = man.get("extra") or {}
    return {
        "metrics": {m: s.get(f"test_{m}") for m in METRICS} | {
            "ece_calibrated": s.get("test_ece_calibrated"), "val_balanced_accuracy": s.get("val_balanced_accuracy"),
            "val_accuracy": s.get("val_accuracy")},
        "best_epoch": mj.get("best_epoch"), "epochs_run": mj.get("epochs_run"),
        "wall_time_s": mj.get("wall_time_s"), "images_per_s": mj.get("images_per_s"),
        "weights_in_manifest": extra.get("weights"), "data": man.get("data"),
    }


def _model_stats(spec: RunSpec, image_size: int) -> dict[str, Any]:
    from distill.artifacts import load_student
    from export.modelstats import model_stats

    model, _ = load_student(spec.run_dir)
    st = model_stats(model, image_size)
    return {"params": st["params"], "macs": st["macs"]}


def _export_summary(export_dir: Path) -> dict[str, Any] | None:
    rep = _read_json(export_dir / "export_report.json")
    if rep is None:
        return None
    out: dict[str, Any] = {}
    for a in rep.get("artifacts", []):
        if a.get("precision") != "int8":
            continue
        m = a.get("metrics") or {}
        out[a["format"]] = {"size_bytes": a.get("size_bytes"), "accuracy": m.get("accuracy"),
                            "balanced_accuracy": m.get("balanced_accuracy"), "macro_f1": m.get("macro_f1"),
                            "n": m.get("n"), "top1_agreement": (a.get("parity") or {}).get("top1_agreement"),
                            "status": a.get("status"), "path": a.get("path")}
    out["eval_split"] = (rep.get("data") or {}).get("eval_split")
    out["pytorch_metrics"] = (rep.get("source") or {}).get("metrics")
    return out


class Runner:
    def __init__(self, settings: dict[str, Any], deadline: float | None, bundle: Any,
                 needed_on_disk: set[Path] | None = None) -> None:
        self.settings = settings
        self.deadline = deadline
        self.bundle = bundle
        self.stopped = False
        #: run directories whose weights a pending run needs (a teacher): a record cannot stand for them
        self.needed_on_disk = needed_on_disk or set()

    def remaining(self) -> float:
        return math.inf if self.deadline is None else self.deadline - time.time()

    def train(self, spec: RunSpec) -> dict[str, Any]:
        from distill.train import train

        state = run_state(spec)
        rec: dict[str, Any] = {"state_before": state}
        if state == "done":
            return rec
        if spec.run_dir not in self.needed_on_disk and committed_record(self.settings, spec) is not None:
            rec["status"] = "done (committed record)"
            return rec
        if spec.teacher_dir is not None and not (spec.teacher_dir / "manifest.json").is_file():
            rec["status"] = "pending (teacher unfinished)"
            return rec
        if self.remaining() < 15:
            self.stopped = True
            rec["status"] = "pending (time budget)"
            return rec
        cfg = make_config(spec, self.settings)
        spec.run_dir.mkdir(parents=True, exist_ok=True)
        t_last = [time.time()]

        def on_epoch(r: dict[str, Any]) -> None:
            now = time.time()
            est = max(now - t_last[0], float(r.get("time_s") or 0.0)) * 1.1
            t_last[0] = now
            if r["epoch"] < cfg.run.epochs and self.deadline is not None and now + est > self.deadline:
                raise BudgetStop(f"stopped after epoch {r['epoch']}/{cfg.run.epochs}: the next would end past "
                                 f"the deadline (~{est:.0f} s)")

        print(f"[reproduce] {'resume' if state == 'partial' else 'train'} {spec.key} seed {spec.seed} "
              f"({spec.method}, {spec.arch}, {spec.epochs} epochs) -> {spec.run_dir}", flush=True)
        t0 = time.time()
        with GpuSampler() as gs:
            try:
                train(cfg, resume=(state == "partial"), overwrite=(state == "new"), on_epoch=on_epoch)
                rec["status"] = "done"
            except BudgetStop as exc:
                self.stopped = True
                rec["status"] = f"partial ({exc})"
            except LesionliteError as exc:
                rec["status"] = f"failed: {exc}"
            except Exception as exc:  # keep the other runs going; the traceback goes to the log
                traceback.print_exc()
                rec["status"] = f"failed: {type(exc).__name__}: {exc}"
        rec["this_call_s"] = round(time.time() - t0, 2)
        rec["gpu"] = gs.summary()
        if rec.get("gpu"):
            (spec.run_dir / "reproduce_gpu.json").write_text(json.dumps(rec["gpu"]), encoding="utf-8")
        print(f"[reproduce] {spec.key} seed {spec.seed}: {rec['status']} ({rec['this_call_s']:.0f} s)", flush=True)
        return rec

    def export(self, spec: RunSpec) -> dict[str, Any]:
        ex = self.settings.get("export") or {}
        formats = list(ex.get("formats") or [])
        edir = spec.run_dir / "export"
        if not formats or not spec.export:
            return {"status": "skipped"}
        only = ex.get("only")
        if only and spec.key not in only:
            return {"status": "skipped (not in export.only)"}
        if _export_summary(edir) is not None:
            return {"status": "done"}
        if self.remaining() < 30:
            self.stopped = True
            return {"status": "pending (time budget)"}
        print(f"[reproduce] export {spec.key} seed {spec.seed} -> {edir} ({', '.join(formats)} int8)", flush=True)
        t0 = time.time()
        try:
            from export.api import export_model  # a broken export stage fails this export, not the table

            export_model(spec.run_dir, edir, formats, list(ex.get("precisions") or ["int8"]),
                         calib_samples=int(ex.get("calib_samples", 300)), eval_samples=ex.get("eval_samples"),
                         parity_threshold=0.0, dataset=self.bundle, seed=0)
        except LesionliteError as exc:
            return {"status": f"failed: {exc}"}
        except Exception as exc:
            traceback.print_exc()
            return {"status": f"failed: {type(exc).__name__}: {exc}"}
        wall = round(time.time() - t0, 2)
        (edir / "reproduce_export_time.json").write_text(json.dumps({"wall_s": wall}), encoding="utf-8")
        print(f"[reproduce] export {spec.key} seed {spec.seed}: done ({wall:.0f} s)", flush=True)
        return {"status": "done"}


def test_predictions(spec: RunSpec, bundle: Any) -> tuple[list[int], list[int]]:
    """(predicted, true) labels of the run's best student on the test split, with its own preprocessing."""
    import torch

    from distill.artifacts import load_student
    from distill.transforms import eval_transform

    model, man = load_student(spec.run_dir, map_location="cpu")
    model.eval()
    tf = eval_transform(man.preprocessing)
    test = bundle.split("test")
    preds: list[int] = []
    with torch.no_grad():
        for i in range(0, len(test), 128):
            x = torch.stack([tf(test[j][0]) for j in range(i, min(len(test), i + 128))])
            preds += model(x).argmax(1).tolist()
    return preds, [int(v) for v in test.labels]


def external_records(spec: RunSpec) -> dict[str, Any] | None:
    """The run's best student and its int8 TFLite on the external set (isic-archive under the data root),
    with per-image labels and melanoma probabilities; None when the set is not here. Evaluation only."""
    from export.evaluate import external_block

    try:
        out: dict[str, Any] = {"pytorch": external_block(spec.run_dir)}
        if out["pytorch"] is None:
            return None
        int8 = spec.run_dir / "export" / f"{spec.arch}_tflite_int8"
        if (int8 / "manifest.json").is_file():
            out["tflite_int8"] = external_block(int8)
        return out
    except Exception as exc:  # the table still has the run's internal figures
        return {"error": f"{type(exc).__name__}: {exc}"}


def run_record_path(settings: dict[str, Any], spec: RunSpec) -> Path:
    """Where a finished run's record is committed: ``<results>/<stem>_runs/seed<S>_<key>.json``."""
    return Path(settings["results_dir"]) / f"{results_stem(settings['protocol'])}_runs" / f"seed{spec.seed}_{spec.key}.json"


def write_run_record(settings: dict[str, Any], spec: RunSpec, rec: dict[str, Any]) -> None:
    """The finished run's metrics, learning curve and test predictions, as soon as it finishes (commit it)."""
    from lesionlite.atomic import write_json_atomic

    hist = (_read_json(spec.run_dir / "metrics.json") or {}).get("history") or []
    keep = ("protocol", "key", "role", "label", "method", "arch", "seed", "epochs", "epochs_run", "best_epoch",
            "weights_note", "overrides", "status", "metrics", "wall_time_s", "images_per_s", "params", "macs",
            "int8", "export_time_s", "test_pred", "test_labels", "teacher", "external")
    doc = {k: rec.get(k) for k in keep}
    doc["curve"] = [{k: h.get(k) for k in ("epoch", "lr", "train_loss", "train_acc", "val_loss", "val_accuracy",
                                           "val_balanced_accuracy", "time_s", "images_per_s", "data_time_s")}
                    for h in hist]
    path = run_record_path(settings, spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, doc)


def collect(spec: RunSpec, settings: dict[str, Any], train_rec: dict[str, Any], export_rec: dict[str, Any],
            bundle: Any = None) -> dict[str, Any]:
    state = run_state(spec)
    status = "done" if state == "done" else train_rec.get("status") or ("partial" if state == "partial" else "pending")
    if status == "done (committed record)":  # finished in an earlier session; its run directory is gone
        rec = committed_record(settings, spec) or {}
        keep = {k: v for k, v in rec.items() if k not in ("curve", "status")}
        return {**keep, "reduced": settings["protocol"] != "gpu", "label": spec.label, "role": spec.role,
                "weights_note": spec.weights_note, "run_dir": str(spec.run_dir), "status": "done",
                "source": "committed record", "export_status": "done" if rec.get("int8") else "skipped (record)",
                "teacher_dir": str(spec.teacher_dir) if spec.teacher_dir else None}
    r: dict[str, Any] = {
        "protocol": settings["protocol"], "reduced": settings["protocol"] != "gpu",
        "key": spec.key, "role": spec.role, "label": spec.label, "method": spec.method, "arch": spec.arch,
        "seed": spec.seed, "epochs": spec.epochs, "weights_note": spec.weights_note, "run_dir": str(spec.run_dir),
        "teacher_dir": str(spec.teacher_dir) if spec.teacher_dir else None, "overrides": spec.overrides,
        "teacher": spec.teacher_id, "status": status, "metrics": {}, "export_status": export_rec.get("status"),
    }
    if status != "done":
        return r
    r.update(_summary_from_run(spec))
    try:
        r.update(_model_stats(spec, settings["image_size"]))
    except Exception as exc:  # stats are informative; never lose a row over them
        r["params"] = r["macs"] = None
        r["stats_error"] = str(exc)
    r["int8"] = _export_summary(spec.run_dir / "export")
    et = _read_json(spec.run_dir / "export" / "reproduce_export_time.json")
    r["export_time_s"] = et.get("wall_s") if et else None
    r["gpu"] = _read_json(spec.run_dir / "reproduce_gpu.json")
    old = _read_json(run_record_path(settings, spec)) if settings.get("results_dir") else None
    same_split = bool(old) and (bundle is None or len(old.get("test_labels") or []) == len(bundle.split("test")))
    if same_split and old.get("test_pred") and old.get("metrics") == r["metrics"]:  # same finished run: reuse
        r["test_pred"], r["test_labels"] = old["test_pred"], old["test_labels"]
    elif bundle is not None and len(bundle.split("test")):
        try:
            r["test_pred"], r["test_labels"] = test_predictions(spec, bundle)
        except Exception as exc:  # the table still has the run's own metrics
            r["test_pred_error"] = f"{type(exc).__name__}: {exc}"
    if same_split and old.get("external") and old.get("metrics") == r["metrics"]:
        r["external"] = old["external"]
    elif bundle is not None:
        r["external"] = external_records(spec)
    # A preview collect (no data bundle: an interim table's not-yet-visited runs) must not replace a committed
    # record's test predictions with nothing: it writes only when it has them or could have computed them.
    if settings.get("results_dir") and (bundle is not None or r.get("test_pred")):
        write_run_record(settings, spec, r)
    return r


# ------------------------------------------------------------------------------------------------
# Output
# ------------------------------------------------------------------------------------------------
def _fmt_bytes(agg: dict[str, Any]) -> str:
    if not agg or agg.get("mean") is None:
        return "n/a"
    return f"{agg['mean'] / 1e6:.2f} MB"


def _fmt_num(v: Any, unit: str = "") -> str:
    if v is None:
        return "n/a"
    if v >= 1e9:
        return f"{v / 1e9:.2f}G{unit}"
    if v >= 1e6:
        return f"{v / 1e6:.2f}M{unit}"
    if v >= 1e3:
        return f"{v / 1e3:.1f}k{unit}"
    return f"{v}{unit}"


def _pct(v: Any) -> str:
    return "n/a" if v is None else f"{v * 100:.1f}"


def _fmt_plain(agg: dict[str, Any], nd: int | None = None) -> str:
    if nd is None:
        nd = 1 if agg and agg.get("mean") is not None and agg["mean"] < 10 else 0
    return fmt_pm(agg, scale=1.0, nd=nd)


def _flags_note(machine: dict[str, Any]) -> str:
    """``; avx2 fma`` — the SIMD flags of the CPU that measured the table (absent from tables made before them)."""
    flags = machine.get("cpu_flags")
    return "" if flags is None else "; " + (" ".join(flags) or "no AVX2/NEON-class SIMD flags")


def render_markdown(doc: dict[str, Any]) -> str:
    s = doc["settings"]
    label = doc["label"]
    lines = [f"# {doc['title']}", ""]
    if doc["protocol"] == "cpu":
        lines += [f"**{label}** — every run trained to convergence on real data, but at 64 px on 2 CPU cores: "
                  "not the papers' 224 px protocol, so not directly comparable with their tables.", ""]
    elif doc["reduced"]:
        lines += [f"**{label}** — numbers from a reduced budget, not comparable with the papers' tables.", ""]
    if not doc["complete"]:
        lines += ["**INCOMPLETE**: some runs are unfinished (time budget); call the script again to continue.", ""]
    lines += [f"![Learning curves and differences to scratch]({results_stem(doc['protocol'])}.png)", ""]
    lines += ["Test split; mean ± sample std over seeds (a single number = one seed). ACC, Bal-ACC, F1, AUC, "
              "ECE in %. int8 ACC = accuracy of the int8 artifact on the same test split. img/s = training "
              "images per second (each image counted once whatever the number of views); × scratch = relative "
              "to scratch training of the same student.", ""]
    head = ("| Protocol | Method | Model | Init | Seeds | ACC | Bal-ACC | Macro-F1 | Macro-AUC | ECE | Params | MACs "
            "| int8 TFLite | int8 TFLite ACC / Bal-ACC | int8 ONNX | int8 ONNX ACC / Bal-ACC | img/s | × scratch "
            "| wall s (train) | status |")
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for r in doc["rows"]:
        proto = doc["protocol_label"]
        seeds = f"{len(r['seeds'])}/{len(r['seeds_planned'])}"
        ips = fmt_pm(r["images_per_s"], 1.0, 1)
        rel = fmt_pm(r["images_per_s_vs_scratch"], 1.0, 2)
        lines.append(
            f"| {proto} | {r['label']} | {r['arch']} | {r['weights']} | {seeds} | {fmt_pm(r['accuracy'])} | "
            f"{fmt_pm(r['balanced_accuracy'])} | {fmt_pm(r['macro_f1'])} | {fmt_pm(r['macro_auc'])} | "
            f"{fmt_pm(r['ece'])} | {_fmt_num(r['params'])} | {_fmt_num(r['macs'])} | "
            f"{_fmt_bytes(r['int8_tflite_size_bytes'])} | {fmt_pm(r['int8_tflite_accuracy'])} / "
            f"{fmt_pm(r['int8_tflite_balanced_accuracy'])} | {_fmt_bytes(r['int8_onnx_size_bytes'])} | "
            f"{fmt_pm(r['int8_onnx_accuracy'])} / {fmt_pm(r['int8_onnx_balanced_accuracy'])} | {ips} | {rel} | "
            f"{_fmt_plain(r['wall_time_s'])} | {r['status']} |")
    if doc.get("comparisons"):
        lines += ["", "## Against scratch (same seeds, same test images)", "",
                  "Difference of test Bal-ACC to scratch in points, per seed and mean; 95 % CI from a paired "
                  "bootstrap over the test images (2,000 resamples, one draw shared by every seed, seeds pooled).", "",
                  "| Method | seeds | per-seed Δ | mean Δ | 95 % CI |", "|---|---|---|---|---|"]
        for key, c in sorted(doc["comparisons"].items(), key=lambda kv: METHODS.index(kv[0]) if kv[0] in METHODS else 99):
            lines.append(f"| {METHOD_LABELS.get(key, key)} | {', '.join(map(str, c['seed_ids']))} | "
                         f"{', '.join(f'{d * 100:+.2f}' for d in c['per_seed'])} | {c['delta'] * 100:+.2f} | "
                         f"[{c['ci_low'] * 100:+.2f}, {c['ci_high'] * 100:+.2f}] |")
    lines += _recall_section(doc)
    lines += ["", "## Targets (verdicts computed from the numbers above)", "",
              "| Target | Verdict | Detail | Measured reason for a miss |", "|---|---|---|---|"]
    for t in doc["targets"]:
        lines.append(f"| {t['target']} | **{t['verdict'].upper()}** | {t['detail']} | {t.get('why', '')} |")
    m = doc["machine"]
    lines += ["", "## Setup", ""]
    lines += [f"- protocol: **{label}**; recipe `{s['recipe']}`; seeds {s['seeds']}; students {s['epochs']} "
              f"epochs, teacher {s['teacher_epochs']} epochs",
              f"- data: {doc['data'].get('description', s['data'])}",
              f"- input: {s['image_size']}×{s['image_size']} px",
              f"- teacher: {s['teacher_arch']} ({s['teacher_weights']}); students: {s['student_arch']} "
              f"({s['student_weights']}); UDCD self-distillation arch: {s['self_distill_arch']} "
              f"({s['self_distill_weights']})",
              f"- common overrides: `{json.dumps(s['common_overrides'])}`",
              f"- per-method overrides: `{json.dumps(s['method_overrides'])}` (udcd-code warm-up/ramp-up scaled "
              "to the epoch count: 20/80 and 30/80 of it)",
              "- ablations (rows after the students; the base method's settings with these overrides): "
              + ("; ".join(f"{k} = {v['method']} + `{json.dumps(v['overrides'])}`" for k, v in s.get("ablations", {}).items())
                 or "none"),
              f"- export: {', '.join(s['export'].get('formats') or []) or 'none'} int8, calibration "
              f"{s['export'].get('calib_samples')} train images, parity gate off (int8 accuracy is reported instead)"
              + (f"; only {', '.join(s['export']['only'])} exported" if s["export"].get("only") else "")
              + "; teachers are not exported",
              f"- machine: CPU {m['cpu']} ({m['cpu_count']} cores{_flags_note(m)}), GPU {m.get('gpu') or 'none'}, torch {m['torch']}, "
              f"python {m['python']}" + (f"; load average at start {m.get('load_average_at_start')}"
                                         if m.get("load_average_at_start") else ""),
              f"- wall time: this call {doc['wall_time_s']:.0f} s; sum of run wall times "
              f"{doc['total_run_wall_s']:.0f} s; exports {doc['total_export_wall_s']:.0f} s",
              f"- GPU: {doc['gpu_note']}"]
    if doc.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in doc["notes"]]
    lines += ["", "## Runs", "", "| Seed | Run | Status | Epochs | best epoch | ACC | Bal-ACC | int8 TFLite ACC | wall s | "
              "img/s | dir |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in doc["runs"]:
        mt = r.get("metrics") or {}
        i8 = ((r.get("int8") or {}).get("tflite") or {}).get("accuracy")
        wall = "n/a" if r.get("wall_time_s") is None else f"{r['wall_time_s']:.0f}"
        ips = "n/a" if r.get("images_per_s") is None else f"{r['images_per_s']:.1f}"
        lines.append(f"| {r['seed']} | {r['key']} ({r['arch']}) | {r['status']} | {r.get('epochs_run', 'n/a')}/{r['epochs']} "
                     f"| {r.get('best_epoch', 'n/a')} "
                     f"| {_pct(mt.get('accuracy'))} | {_pct(mt.get('balanced_accuracy'))} | {_pct(i8)} | {wall} | {ips} | "
                     f"`{r['run_dir']}` |")
    return "\n".join(lines) + "\n"


def _recall_section(doc: dict[str, Any]) -> list[str]:
    """Markdown: test recall per class and row, in %, mean over the row's finished seeds."""
    recall = doc.get("per_class_recall") or {}
    names = list(doc["data"].get("class_names") or [])
    if not recall or not names:
        return []
    order = ["teacher", *METHODS, *sorted(k for k in recall if k not in METHODS and k != "teacher")]
    lines = ["", "## Test recall per class (%, mean over the finished seeds)", "",
             "Balanced accuracy is the mean of a row; the columns say which classes a method gains or loses.", "",
             "| Row | seeds | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for key in (k for k in order if k in recall):
        cells = [_pct(recall[key]["recall"].get(n)) for n in names]
        lines.append(f"| {METHOD_LABELS.get(key, key)} | {recall[key]['seeds']} | " + " | ".join(cells) + " |")
    return lines


def short_table(doc: dict[str, Any]) -> str:
    out = [f"{doc['title']}" + ("" if doc["complete"] else "  [INCOMPLETE]"),
           f"{'method':<28} {'model':<18} {'ACC':>13} {'Bal-ACC':>13} {'int8 ACC':>13} {'x scratch':>10} {'status'}"]
    for r in doc["rows"]:
        out.append(f"{r['label'][:28]:<28} {r['arch'][:18]:<18} {fmt_pm(r['accuracy']):>13} "
                   f"{fmt_pm(r['balanced_accuracy']):>13} {fmt_pm(r['int8_tflite_accuracy']):>13} "
                   f"{fmt_pm(r['images_per_s_vs_scratch'], 1.0, 2):>10} {r['status']}")
    for t in doc["targets"]:
        out.append(f"[{t['verdict'].upper()}] {t['target']}: {t['detail']}")
    return "\n".join(out)


def data_description(bundle: Any, spec: str, image_size: int) -> dict[str, Any]:
    name = getattr(bundle, "name", spec)
    n = {s: len(bundle.split(s)) for s in ("train", "val", "test")}
    if name.startswith("ham10000"):
        why = ("HAM10000 200×150 JPEGs from ../shared/data with the 7 DermaMNIST classes and a 70/10/20 split by "
               "lesion_id (no lesion in two splits); chosen over the only DermaMNIST file here (28×28, rebuilt from "
               "lossy JPEGs): it is real data at 64–224 px and its split cannot leak a lesion between train and test "
               "(DermaMNIST's official split is per image). Not DermaMNIST's official split: numbers are not "
               "directly comparable with MedMNIST's.")
    elif "dermamnist" in name:
        why = "DermaMNIST (official split) from ../shared/data: 28×28 rebuilt from lossy JPEGs."
    elif getattr(bundle, "synthetic", False):
        why = "SYNTHETIC generated images (not real data): the numbers say nothing about any method."
    else:
        why = str(getattr(bundle, "source", spec))
    return {"spec": spec, "name": name, "source": str(getattr(bundle, "source", "")),
            "fingerprint": getattr(bundle, "fingerprint", None), "synthetic": bool(getattr(bundle, "synthetic", False)),
            "class_names": list(bundle.class_names), "split_sizes": n, "image_size": image_size,
            "description": f"{name}: train {n['train']} / val {n['val']} / test {n['test']} images. {why}"}


def build_doc(settings: dict[str, Any], runs: list[dict[str, Any]], machine: dict[str, Any], data: dict[str, Any],
              wall: float, complete: bool) -> dict[str, Any]:
    # images/s relative to scratch training of the same student, same seed
    scratch_ips = {(r["seed"], r["arch"]): r.get("images_per_s") for r in runs
                   if r["key"] == "scratch" and r["status"] == "done"}
    for r in runs:
        base = scratch_ips.get((r["seed"], r["arch"]))
        r["images_per_s_vs_scratch"] = (r["images_per_s"] / base) if (r.get("images_per_s") and base) else None
    rows = aggregate_rows(runs)
    comparisons = paired_comparisons(runs, len(data.get("class_names") or []) or 1)
    protocol = settings["protocol"]
    plabel = {"gpu": "GPU protocol", "cpu": "CPU protocol", "cpu-reduced": "CPU-REDUCED protocol",
              "smoke": "SMOKE protocol"}[protocol]
    notes = list(settings.get("notes") or [])
    if protocol != "gpu":
        notes.append(f"{plabel}: not the papers' protocol (see the setup above); every row is labelled with it.")
    if len(settings["seeds"]) < 3:
        notes.append(f"{len(settings['seeds'])} seed(s) instead of the papers' 3: no standard deviation is shown "
                     "for a single seed.")
    if settings["common_overrides"].get("run.max_steps_per_epoch"):
        k = settings["common_overrides"]["run.max_steps_per_epoch"]
        notes.append(f"training subset: at most {k} optimizer steps per epoch (a fresh random subset of the "
                     "training split each epoch); val/test are always the whole splits.")
    if settings["recipe"] == "uniform":
        notes.append("uniform recipe: every method uses the same optimizer/schedule/batch (common overrides) so "
                     "that only the loss differs; the authors' recipes (their default_overrides) are used by the "
                     "GPU protocol.")
    if "udcd-densenet121" not in settings["methods"]:
        notes.append("UDCD on DenseNet-121 (the UDCD paper's own self-distillation setting) is not in this run.")
    if "random init" in settings["teacher_weights"]:
        notes.append(f"teacher {settings['teacher_arch']} trained from scratch (no ImageNet weights available here).")
    by_key = {(r["role"], r["key"]): r for r in rows}
    t_row, s_row = by_key.get(("teacher", "teacher")), by_key.get(("student", "scratch"))
    t_bal = (t_row or {}).get("balanced_accuracy", {}).get("mean")
    s_bal = (s_row or {}).get("balanced_accuracy", {}).get("mean")
    if t_bal is not None and s_bal is not None and t_bal <= s_bal:
        notes.append(f"the teacher ({settings['teacher_arch']}, test Bal-ACC {t_bal * 100:.1f}) is not better than "
                     f"the scratch student ({s_bal * 100:.1f}): KD and SSD-KD distil a weaker model here, so they are "
                     "not expected to beat scratch; the papers' teachers are far stronger than their students.")
    notes.append("img/s and wall times are those of this machine while the run went on: runs that shared the "
                 "CPU with other work are slower; compare them with care (load average at start in the setup).")
    notes.append("torch.compile is not used: the shared training loop has no compile hook (bf16 autocast and "
                 "channels_last are the loop's defaults on CUDA).")
    title = settings["title"]
    if protocol != "gpu" and plabel.split()[0] not in title:
        title += f" [{plabel}]"
    gpu_note = ("utilisation sampled once a second during every run (torch.cuda.utilization / nvidia-smi)"
                if machine.get("gpu") else "no GPU on this machine; CPU run")
    doc = {
        "benchmark": "reproduce_paper_table", "title": title, "protocol": protocol, "protocol_label": plabel,
        "reduced": protocol != "gpu", "label": plabel, "complete": complete,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine, "data": data, "settings": settings,
        "rows": rows, "runs": [{k: v for k, v in r.items() if k not in ("test_pred", "test_labels")} for r in runs],
        "comparisons": comparisons, "per_class_recall": per_class_recall(runs, data.get("class_names") or []),
        "targets": explain_misses(evaluate_targets(rows, settings["image_size"], settings["student_arch"], comparisons,
                                                   accuracy_gap=read_accuracy_gap(protocol),
                                                   qat_rows=read_qat_rows(protocol),
                                                   qat_recipe=settings.get("qat_recipe")),
                                   rows, protocol),
        "notes": notes, "gpu_note": gpu_note, "wall_time_s": wall,
        "total_run_wall_s": sum(r.get("wall_time_s") or 0 for r in runs),
        "total_export_wall_s": sum(r.get("export_time_s") or 0 for r in runs),
    }
    return doc


def plot_protocol(doc: dict[str, Any], path: Path) -> Path | None:
    """Learning curves (val Bal-ACC per epoch of every finished run, from the committed run records)
    beside each method's test Bal-ACC difference to scratch with its paired 95 % CI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs_dir = Path(doc["settings"]["results_dir"]) / f"{results_stem(doc['protocol'])}_runs"
    records = [r for r in (_read_json(p) for p in sorted(runs_dir.glob("seed*_*.json"))) if r and r.get("curve")]
    if not records:
        return None
    keys = [k for k in ("teacher", *METHODS) if any(r["key"] == k for r in records)]
    colors = {k: plt.cm.tab10(i % 10) for i, k in enumerate(keys)}
    fig, (ax_c, ax_d) = plt.subplots(1, 2, figsize=(13, 4.6), gridspec_kw={"width_ratios": [1.5, 1]})
    styles = ["-", "--", ":", "-."]
    for r in records:
        ep = [c["epoch"] for c in r["curve"]]
        ys = [c.get("val_balanced_accuracy") for c in r["curve"]]
        ax_c.plot(ep, [100 * y if y is not None else np.nan for y in ys], color=colors.get(r["key"], "k"),
                  linestyle=styles[int(r["seed"]) % len(styles)], alpha=0.85,
                  label=f"{METHOD_LABELS.get(r['key'], r['key'])} s{r['seed']}")
        if r.get("best_epoch"):
            b = int(r["best_epoch"])
            if 0 < b <= len(ys) and ys[b - 1] is not None:
                ax_c.plot([b], [100 * ys[b - 1]], marker="o", color=colors.get(r["key"], "k"), markersize=4)
    ax_c.set_xlabel("epoch")
    ax_c.set_ylabel("val balanced accuracy (%)")
    ax_c.set_title("learning curves (dot = best epoch, kept for test)")
    ax_c.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax_c.grid(alpha=0.3)
    ax_c.legend(fontsize=6, ncol=2)
    comps = doc.get("comparisons") or {}
    names = [k for k in METHODS if k in comps]
    if names:
        d = [100 * comps[k]["delta"] for k in names]
        lo = [100 * (comps[k]["delta"] - comps[k]["ci_low"]) for k in names]
        hi = [100 * (comps[k]["ci_high"] - comps[k]["delta"]) for k in names]
        ax_d.errorbar(range(len(names)), d, yerr=[lo, hi], fmt="o", capsize=4, color="k")
        for i, k in enumerate(names):
            for s_ in comps[k]["per_seed"]:
                ax_d.plot([i], [100 * s_], marker="x", color=colors.get(k, "gray"), alpha=0.8)
        ax_d.set_xticks(range(len(names)), [METHOD_LABELS.get(k, k) for k in names], rotation=20, fontsize=8)
    else:
        ax_d.text(0.5, 0.5, "no method has finished\nthe seeds scratch has", ha="center", va="center",
                  transform=ax_d.transAxes, color="gray")
        ax_d.set_xticks([])
    ax_d.axhline(0, color="gray", linewidth=1)
    ax_d.set_ylabel("test Bal-ACC − scratch (points)")
    ax_d.set_title("vs scratch: mean, paired 95% CI, × = seeds")
    ax_d.grid(alpha=0.3, axis="y")
    fig.suptitle(doc["title"] + ("" if doc["complete"] else "  [INCOMPLETE]"), fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def results_stem(protocol: str) -> str:
    return {"gpu": "paper_table", "cpu": "paper_table_cpu", "cpu-reduced": "paper_table_cpu_reduced",
            "smoke": "paper_table_smoke"}[protocol]


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--protocol", choices=PROTOCOLS, help="gpu | cpu-reduced | smoke (default: gpu when CUDA is available)")
    p.add_argument("--recipe-file", help="recipe YAML (default benchmarks/recipes/<protocol>.yaml)")
    p.add_argument("--recipe", choices=["authors", "uniform"], help="authors: each method's own optimizer/schedule; "
                   "uniform: the recipe's common optim/schedule keys for all")
    p.add_argument("--seeds", help="comma-separated run seeds, e.g. 0,1,2")
    p.add_argument("--methods", help=f"comma-separated subset of {','.join(METHODS)}")
    p.add_argument("--data", help="dataset spec (ham10000, ham10000-isic8, dermamnist:PATH, synthetic, ...)")
    p.add_argument("--image-size", type=int)
    p.add_argument("--epochs", type=int, help="student epochs")
    p.add_argument("--teacher-epochs", type=int)
    p.add_argument("--teacher-arch", help="teacher architecture (e.g. resnet50, efficientnet_lite2)")
    p.add_argument("--teacher-weights", help="ImageNet weights file for the teacher ('none' = from scratch)")
    p.add_argument("--student-weights", help="ImageNet weights file for the students ('none' = from scratch)")
    p.add_argument("--max-steps", type=int, help="cap on optimizer steps per epoch (0 = whole training split)")
    p.add_argument("--threads", type=int, help="torch CPU threads per run (run.threads)")
    p.add_argument("--workers", type=int, help="data loader workers (data.workers)")
    p.add_argument("--ablations", help="comma-separated subset of the recipe's ablation rows, or 'none' "
                                       "(default: the recipe's ablations of the methods being run)")
    p.add_argument("--no-export", action="store_true", help="skip the int8 exports")
    p.add_argument("--out", default="runs/reproduce", help="root of the run directories (default runs/reproduce)")
    p.add_argument("--results", default=str(RESULTS), help="where paper_table*.{json,md} go (default benchmarks/results)")
    p.add_argument("--time-budget", type=float, metavar="SECONDS",
                   help="stop cleanly before this many seconds from the start (exit status 3 when unfinished)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    t_start = time.time()
    import torch

    if args.protocol is None:
        args.protocol = "gpu" if torch.cuda.is_available() else "cpu-reduced"
    if args.protocol == "gpu" and not torch.cuda.is_available():
        print("[reproduce] WARNING: --protocol gpu without CUDA: running the GPU recipe on the CPU", flush=True)
    try:
        recipe = load_recipe(args.protocol, args.recipe_file)
        settings, plan = build_plan(args, recipe)
        machine = machine_info()
        from distill.data import load_dataset

        opts = dict((settings["common_overrides"].get("data.options") or {}))
        bundle = load_dataset(settings["data"], seed=0, synthetic_size=settings["image_size"], **opts)
        data = data_description(bundle, settings["data"], settings["image_size"])
    except LesionliteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    deadline = None if args.time_budget is None else t_start + float(args.time_budget)
    # a teacher whose students are not all finished must be on disk (its weights), whatever its record says
    needed = {sp.teacher_dir for sp in plan if sp.teacher_dir is not None and run_state(sp) != "done"
              and committed_record(settings, sp) is None}
    runner = Runner(settings, deadline, bundle, needed)
    print(f"[reproduce] {args.protocol}: {len(plan)} runs under {settings['out']} ({data['description'][:120]}…)",
          flush=True)
    from lesionlite.atomic import write_json_atomic, write_text_atomic

    res = Path(args.results)
    res.mkdir(parents=True, exist_ok=True)
    stem = results_stem(args.protocol)

    def write_table(runs: list[dict[str, Any]], final: bool) -> dict[str, Any]:
        """The table of what is known so far (every run of the plan, pending ones as such)."""
        seen = {(r["key"], r["seed"]) for r in runs}
        pending = [] if final else [collect(sp, settings, {}, {"status": "pending"}) for sp in plan
                                    if (sp.key, sp.seed) not in seen]
        allr = runs + pending
        complete = final and all(r["status"] == "done" for r in allr) and all(
            str(r["export_status"]).startswith(("done", "skipped")) for r in allr if r["status"] == "done")
        doc = build_doc(settings, allr, machine, data, time.time() - t_start, complete)
        write_json_atomic(res / f"{stem}.json", doc)
        write_text_atomic(res / f"{stem}.md", render_markdown(doc))
        try:
            plot_protocol(doc, res / f"{stem}.png")
        except Exception as exc:  # a plot is a convenience; the table is written already
            print(f"[reproduce] could not draw {stem}.png: {type(exc).__name__}: {exc}", flush=True)
        return doc

    runs: list[dict[str, Any]] = []
    for spec in plan:
        trec = runner.train(spec)
        erec = runner.export(spec) if run_state(spec) == "done" else {"status": trec.get("status", "pending")}
        runs.append(collect(spec, settings, trec, erec, bundle))
        if trec.get("status") == "done" or erec.get("status") == "done":  # something new finished: table now
            write_table(runs, final=False)
    doc = write_table(runs, final=True)
    print(f"[reproduce] wrote {res / (stem + '.json')} and {res / (stem + '.md')}", flush=True)
    print(short_table(doc), flush=True)
    return 0 if doc["complete"] else EXIT_INCOMPLETE


if __name__ == "__main__":
    sys.exit(main())
