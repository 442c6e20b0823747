"""The protocol's plan: the ordered runs (:class:`RunSpec`) that the settings ask for."""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.protocol.settings import (
    METHOD_LABELS,
    TEACHER_METHODS,
    Recipe,
    Role,
    Settings,
    resolve_settings,
)

#: UDCD public code: distillation from epoch 20 of 80, consistency ramp-up over 30 epochs
UDCD_CODE_WARMUP_FRACTION = 20 / 80
UDCD_CODE_RAMPUP_FRACTION = 30 / 80


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


def build_plan(args: argparse.Namespace, recipe: Recipe) -> tuple[Settings, list[RunSpec]]:
    """Resolve recipe + flags into the settings and the ordered list of runs."""
    settings = resolve_settings(args, recipe)
    return settings, plan_runs(settings)


def needs_teacher(settings: Settings) -> bool:
    methods = [*settings.methods, *(a["method"] for a in settings.ablations.values())]
    return any(m in TEACHER_METHODS for m in methods)


def teacher_identity(settings: Settings) -> dict[str, Any]:
    """What names the teacher a distilled run learned from (part of the run's record identity)."""
    t = settings.teacher
    return {"arch": t.arch, "weights": t.weights_note, "epochs": t.epochs, "overrides": dict(t.overrides),
            "shared": settings.teacher_shared}


def teacher_run(teacher: Role, seed: int, run_dir: Path) -> RunSpec:
    return RunSpec("teacher", "teacher", "scratch", teacher.arch, teacher.weights, teacher.weights_note, seed,
                   teacher.epochs, run_dir, dict(teacher.overrides), export=False)


def seed_runs(settings: Settings, seed: int, tdir: Path, teacher_id: dict[str, Any]) -> list[RunSpec]:
    """One seed's student rows (table order), then its ablation rows (the base method's settings, then the
    switched-off terms)."""
    sd = settings.out / f"seed{seed}"
    mo = settings.method_overrides
    runs: list[RunSpec] = []
    for m in settings.methods:
        role, method = (settings.self_distill, "udcd") if m == "udcd-densenet121" else (settings.student, m)
        distilled = method in TEACHER_METHODS
        ov = run_overrides(method, dict(mo.get(m, {})), seed, settings.epochs)
        runs.append(RunSpec(m, "student", method, role.arch, role.weights, role.weights_note, seed, settings.epochs,
                            sd / f"{m}_{role.arch}", ov, teacher_dir=tdir if distilled else None,
                            teacher_id=teacher_id if distilled else None))
    s = settings.student
    for name, ab in settings.ablations.items():
        base = ab["method"]
        distilled = base in TEACHER_METHODS
        ov = run_overrides(base, {**mo.get(base, {}), **ab["overrides"]}, seed, settings.epochs)
        runs.append(RunSpec(name, "ablation", base, s.arch, s.weights, s.weights_note, seed, settings.epochs,
                            sd / f"{name}_{s.arch}", ov, teacher_dir=tdir if distilled else None,
                            label_text=ab["label"], teacher_id=teacher_id if distilled else None, export=False))
    return runs


def plan_runs(settings: Settings) -> list[RunSpec]:
    """Every run of the protocol: the teacher(s) first, then each seed's rows; ``order: method`` runs every seed of
    a method before the next method (the cheap comparisons land first)."""
    need_teacher = needs_teacher(settings)
    t_name = f"teacher_{settings.teacher.arch}"
    shared_tdir = settings.out / t_name
    plan: list[RunSpec] = []
    if need_teacher and settings.teacher_shared:  # one teacher, trained once, distilled by every seed
        plan.append(teacher_run(settings.teacher, settings.teacher_seed, shared_tdir))
    for seed in settings.seeds:
        tdir = shared_tdir if settings.teacher_shared else settings.out / f"seed{seed}" / t_name
        if need_teacher and not settings.teacher_shared:
            plan.append(teacher_run(settings.teacher, seed, tdir))
        plan += seed_runs(settings, seed, tdir, teacher_identity(settings))
    if settings.order == "method":
        rank = {k: i for i, k in enumerate(["teacher", *settings.methods, *settings.ablations])}
        seeds = settings.seeds
        plan.sort(key=lambda r: (rank.get(r.key, 99), seeds.index(r.seed) if r.seed in seeds else -1))
    return plan
