"""The protocol's settings: the recipe YAML as typed dataclasses, and the settings of one call (recipe + flags).

A recipe (``benchmarks/recipes/<protocol>.yaml``) is read into :class:`Recipe`: an unknown key or a value of the
wrong type is a :class:`~lesionlite.errors.LesionliteError` naming the file and the key, before anything runs.
:func:`resolve_settings` applies the command-line flags and gives :class:`Settings`, whose :meth:`Settings.as_dict`
is the ``settings`` block of the table's JSON.
"""
from __future__ import annotations

import argparse
import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from benchmarks.common import REPO, RESULTS
from benchmarks.protocol.verdicts import parse_qat_recipe
from distill.config import dataclass_from_dict
from lesionlite.errors import LesionliteError

RECIPES = REPO / "benchmarks" / "recipes"
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
#: ImageNet weights staged in ../shared/weights (used when --teacher-arch picks one of these archs)
SHARED_WEIGHTS = {
    "mobilenet_v2": "../shared/weights/mobilenet_v2/mobilenet_v2_imagenet_torchvision_from_tf2ptq.pth",
    **{f"efficientnet_lite{n}": f"../shared/weights/efficientnet_lite/tf_efficientnet_lite{n}_imagenet_timm.pth"
       for n in range(3)},
}
_STEMS = {"gpu": "paper_table", "cpu": "paper_table_cpu", "cpu-reduced": "paper_table_cpu_reduced",
          "smoke": "paper_table_smoke"}


def results_stem(protocol: str) -> str:
    """``paper_table_cpu`` for ``cpu``: the name of a protocol's table files and of its records' folder."""
    return _STEMS[protocol]


# ------------------------------------------------------------------------------------------------
# The recipe file
# ------------------------------------------------------------------------------------------------
@dataclass
class RoleRecipe:
    """``teacher:``, ``student:`` or ``self_distill:`` of a recipe."""

    arch: str | None = None
    weights: str | None = None
    epochs: int | None = None
    shared: bool = False  # teacher only: trained once, distilled by every seed
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class AblationRecipe:
    """One ablation row: a method's settings with some terms switched off."""

    method: str
    label: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class ExportRecipe:
    """``export:`` of a recipe: the int8 artifacts every student gets, and the protocol's one QAT recipe."""

    formats: list[str] = field(default_factory=list)
    precisions: list[str] = field(default_factory=lambda: ["int8"])
    calib_samples: int = 300
    eval_samples: int | None = None
    only: list[str] | None = None
    qat: dict[str, Any] | None = None


@dataclass
class Recipe:
    """A protocol's recipe file, typed. ``export`` keeps the mapping as declared (the table reports it verbatim);
    :attr:`export_recipe` is the same, typed."""

    protocol: str | None = None
    title: str | None = None
    data: str = "ham10000"
    image_size: int = 224
    seeds: list[int] | None = None
    methods: list[str] | None = None
    order: str = "seed"
    recipe: Literal["authors", "uniform"] = "authors"
    epochs: int = 30
    teacher: RoleRecipe = field(default_factory=RoleRecipe)
    student: RoleRecipe = field(default_factory=RoleRecipe)
    self_distill: RoleRecipe = field(default_factory=RoleRecipe)
    common: dict[str, Any] = field(default_factory=dict)
    method_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    export: dict[str, Any] = field(default_factory=dict)
    ablations: dict[str, AblationRecipe] = field(default_factory=dict)

    @property
    def export_recipe(self) -> ExportRecipe:
        return dataclass_from_dict(ExportRecipe, self.export, "export")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recipe:
        """Typed recipe from a YAML mapping; a section given as null is the section's default."""
        data = {k: v for k, v in data.items() if v is not None or k not in _SECTIONS}
        ablations = data.pop("ablations", None) or {}
        if not isinstance(ablations, dict):
            raise LesionliteError("config key 'ablations': expected a mapping of name -> {method, label, overrides}")
        recipe = dataclass_from_dict(cls, data)
        recipe.method_overrides = {k: dict(v or {}) for k, v in recipe.method_overrides.items()}
        recipe.ablations = {name: _ablation(name, ab) for name, ab in ablations.items()}
        dataclass_from_dict(ExportRecipe, recipe.export, "export")  # validated now, not at the first export
        return recipe


_SECTIONS = ("teacher", "student", "self_distill", "common", "method_overrides", "export", "ablations")


def _ablation(name: str, ab: Any) -> AblationRecipe:
    if name in METHODS or not isinstance(ab, dict) or ab.get("method") not in METHODS:
        raise LesionliteError(f"ablation {name!r}: needs a name other than a method's and 'method:' one of "
                              f"{', '.join(METHODS)}")
    return dataclass_from_dict(AblationRecipe, ab, f"ablations.{name}")


def read_recipe(protocol: str, path: str | None = None) -> dict[str, Any]:
    """The recipe YAML as a mapping (``benchmarks/recipes/<protocol>.yaml`` unless ``path``); a missing or broken
    file is a one-line error, not a parser traceback."""
    p = Path(path) if path else RECIPES / f"{protocol}.yaml"
    if not p.is_file():
        raise LesionliteError(f"recipe not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise LesionliteError(f"{p}: cannot read it as YAML ({exc})") from None
    if not isinstance(data, dict):
        raise LesionliteError(f"{p}: a recipe must be a YAML mapping")
    return data


def load_recipe(protocol: str, path: str | None = None) -> Recipe:
    """:func:`read_recipe`, typed; errors name the file."""
    data = read_recipe(protocol, path)
    try:
        return Recipe.from_dict(data)
    except LesionliteError as exc:
        raise LesionliteError(f"{path or RECIPES / f'{protocol}.yaml'}: {exc}") from None


# ------------------------------------------------------------------------------------------------
# The settings of one call
# ------------------------------------------------------------------------------------------------
@dataclass
class Role:
    """A resolved model role: architecture, weights file (None = random init) and how the table names it."""

    arch: str
    weights: str | None
    weights_note: str
    epochs: int
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class Settings:
    """Recipe + flags, resolved. :meth:`as_dict` is the ``settings`` block of the table's JSON."""

    protocol: str
    recipe: str
    data: str
    image_size: int
    seeds: list[int]
    methods: list[str]
    epochs: int
    teacher: Role
    student: Role
    self_distill: Role
    common_overrides: dict[str, Any]
    method_overrides: dict[str, dict[str, Any]]
    export: dict[str, Any]
    ablations: dict[str, dict[str, Any]]
    out: Path
    title: str
    results_dir: str
    qat_recipe: dict[str, Any] | None
    teacher_shared: bool
    order: str
    #: the seed of a shared teacher: the recipe's first, whatever --seeds picks (one teacher, one record)
    teacher_seed: int

    def as_dict(self) -> dict[str, Any]:
        t, s, d = self.teacher, self.student, self.self_distill
        return {
            "protocol": self.protocol, "recipe": self.recipe, "data": self.data, "image_size": self.image_size,
            "seeds": list(self.seeds), "methods": list(self.methods), "epochs": self.epochs,
            "teacher_epochs": t.epochs, "teacher_arch": t.arch, "teacher_weights": t.weights_note,
            "student_arch": s.arch, "student_weights": s.weights_note,
            "self_distill_arch": d.arch, "self_distill_weights": d.weights_note,
            "common_overrides": dict(self.common_overrides), "method_overrides": copy.deepcopy(self.method_overrides),
            "export": copy.deepcopy(self.export), "ablations": copy.deepcopy(self.ablations), "out": str(self.out),
            "title": self.title, "results_dir": self.results_dir, "qat_recipe": self.qat_recipe,
            "teacher_shared": self.teacher_shared, "order": self.order,
        }

    @property
    def export_recipe(self) -> ExportRecipe:
        return dataclass_from_dict(ExportRecipe, self.export, "export")

    @property
    def reduced(self) -> bool:
        return self.protocol != "gpu"


def parse_list(value: str | None, default: Sequence[Any], cast: Callable[[str], Any] = str) -> list[Any]:
    """``"0,1,2"`` → ``[0, 1, 2]`` with ``cast``; the default when the flag is not given."""
    if value is None:
        return list(default)
    return [cast(v.strip()) for v in value.split(",") if v.strip()]


def resolve_weights(path: str | None) -> tuple[str | None, str]:
    """(absolute path or None, note for the table). A missing file falls back to random init, said so."""
    if not path or str(path).lower() in ("none", "null", "scratch", ""):
        return None, "random init (no ImageNet weights)"
    p = Path(path)
    if not p.is_absolute():
        p = (REPO / p).resolve()
    if not p.is_file():
        return None, f"random init (weights file {path} not found)"
    return str(p), f"ImageNet weights {p.name}"


def select_methods(args: argparse.Namespace, recipe: Recipe) -> list[str]:
    methods = parse_list(args.methods, recipe.methods if recipe.methods is not None else METHODS)
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise LesionliteError(f"unknown method {bad[0]!r} for the table; choose from {', '.join(METHODS)}")
    return methods


def select_ablations(args: argparse.Namespace, recipe: Recipe, methods: list[str]) -> dict[str, AblationRecipe]:
    """The recipe's ablations of the methods being run, or those ``--ablations`` names (``none``: none)."""
    ablations = recipe.ablations
    if args.ablations is None:
        return {k: v for k, v in ablations.items() if v.method in methods}
    wanted = [] if args.ablations.strip().lower() == "none" else parse_list(args.ablations, [])
    unknown = [a for a in wanted if a not in ablations]
    if unknown:
        raise LesionliteError(f"unknown ablation {unknown[0]!r}; the recipe defines: {', '.join(ablations) or 'none'}")
    return {a: ablations[a] for a in wanted}


def resolve_roles(args: argparse.Namespace, recipe: Recipe, epochs: int) -> tuple[Role, Role, Role]:
    """Teacher, student and self-distillation roles after the flags (a new teacher arch drops the recipe's
    weights, which belong to its own arch)."""
    t_arch, t_weights = recipe.teacher.arch, recipe.teacher.weights
    if args.teacher_arch:
        if args.teacher_arch != t_arch:
            t_weights = SHARED_WEIGHTS.get(args.teacher_arch)
        t_arch = args.teacher_arch
    if args.teacher_weights is not None:
        t_weights = args.teacher_weights
    s_weights = recipe.student.weights if args.student_weights is None else args.student_weights
    t_epochs = int(args.teacher_epochs or recipe.teacher.epochs or epochs)
    teacher = Role(t_arch or "resnet50", *resolve_weights(t_weights), t_epochs, dict(recipe.teacher.overrides))
    student = Role(recipe.student.arch or "mobilenet_v2", *resolve_weights(s_weights), epochs)
    selfd = Role(recipe.self_distill.arch or "densenet121", *resolve_weights(recipe.self_distill.weights), epochs)
    return teacher, student, selfd


def common_overrides(args: argparse.Namespace, recipe: Recipe, mode: str) -> dict[str, Any]:
    """Dotted config keys applied to every run; the authors' recipe keeps each method's optimizer and schedule."""
    common = dict(recipe.common)
    if args.max_steps is not None:
        common["run.max_steps_per_epoch"] = args.max_steps or None
    if args.threads is not None:
        common["run.threads"] = args.threads
    if args.workers is not None:
        common["data.workers"] = args.workers
    if mode == "authors":
        common = {k: v for k, v in common.items() if not k.startswith(("optim.", "schedule."))}
    return common


def resolve_settings(args: argparse.Namespace, recipe: Recipe) -> Settings:
    """Recipe + command-line flags → :class:`Settings` (a bad method, ablation, order or QAT recipe fails here,
    before any training)."""
    methods = select_methods(args, recipe)
    ablations = select_ablations(args, recipe, methods)
    seeds = parse_list(args.seeds, recipe.seeds if recipe.seeds is not None else [0], int)
    if not seeds:
        raise LesionliteError("--seeds: give at least one seed")
    epochs = int(args.epochs or recipe.epochs)
    mode = args.recipe or recipe.recipe
    teacher, student, selfd = resolve_roles(args, recipe, epochs)
    export = copy.deepcopy(recipe.export)
    if args.no_export:
        export["formats"] = []
    if recipe.order not in ("seed", "method"):
        raise LesionliteError(f"recipe order must be 'seed' or 'method', got {recipe.order!r}")
    return Settings(
        protocol=args.protocol, recipe=mode, data=args.data or recipe.data,
        image_size=int(args.image_size or recipe.image_size), seeds=seeds, methods=methods, epochs=epochs,
        teacher=teacher, student=student, self_distill=selfd, common_overrides=common_overrides(args, recipe, mode),
        method_overrides={k: dict(v) for k, v in recipe.method_overrides.items()}, export=export,
        ablations={k: {"method": v.method, "label": v.label or k, "overrides": dict(v.overrides)}
                   for k, v in ablations.items()},
        out=Path(args.out), title=recipe.title or f"Paper table ({args.protocol} protocol)",
        results_dir=str(args.results), qat_recipe=parse_qat_recipe(recipe.export.get("qat")),
        teacher_shared=bool(recipe.teacher.shared), order=str(recipe.order),
        teacher_seed=int((recipe.seeds or seeds)[0]))


__all__ = ["AblationRecipe", "ExportRecipe", "METHODS", "METHOD_LABELS", "METRICS", "PROTOCOLS", "RECIPES",
           "RESULTS", "Recipe", "Role", "RoleRecipe", "Settings", "TEACHER_METHODS", "load_recipe", "read_recipe",
           "resolve_settings", "results_stem"]
