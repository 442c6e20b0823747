"""Training configuration: dataclasses, YAML files, CLI overrides and validation.

A run is described by one :class:`TrainConfig`::

    method:   {name: kd, temperature: 4.0, alpha: 0.9, ...}   # name + the method's own config_cls fields
    data:     DataConfig      (dataset, root, image size, workers, ...)
    model:    ModelConfig     (student architecture, --weights, --teacher run dir, dropout)
    optim:    OptimConfig     (optimizer, lr, weight decay, batch size, grad clipping)
    schedule: ScheduleConfig  (cosine / onecycle / plateau / none, warm-up, ...)
    run:      RunConfig       (epochs, seed, output dir, device, AMP, early stopping, ...)

The ``method`` section is special: its ``name`` picks the plug-in (``get_method(name)``) and every
other key is a field of that plug-in's ``config_cls`` dataclass (a class attribute of the method;
a method without one takes no options). A method may also define ``default_overrides`` (a dict of
dotted keys, e.g. ``{"optim.name": "sgd", "optim.lr": 0.01}``): these replace the global defaults
when the method is chosen, *before* the YAML file and the command line are applied.

Precedence, lowest first: dataclass defaults → method ``default_overrides`` → ``--config`` YAML →
explicit CLI flags (``--lr``, ``--epochs``, …) → ``--set key.sub=value`` (values parsed as YAML
scalars/lists, then coerced to the field's type). Unknown keys and ill-typed values raise
:class:`LesionliteError` naming the key, the valid keys and the expected type. The resolved config
is written to ``RUN_DIR/config.yaml`` and stored in every checkpoint.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from distill.methods.registry import get_method
from lesionlite.atomic import write_text_atomic
from lesionlite.errors import LesionliteError
from lesionlite.fmt import plain_tree

OptimizerName = Literal["sgd", "adam", "adamw"]
ScheduleName = Literal["cosine", "onecycle", "plateau", "none"]


@dataclass
class DataConfig:
    #: dataset name understood by ``distill.data.load_dataset`` (synthetic, dermamnist, ham10000, …)
    name: str = "synthetic"
    #: data root (else $LESIONLITE_DATA, else ../shared/data)
    root: str | None = None
    #: model input size (square); images are resized to it (see lesionlite.preprocessing)
    image_size: int = 224
    #: shorter side before a centre crop of image_size; None = squash straight to image_size
    resize_size: int | None = None
    #: side (px) at which the synthetic dataset is generated; None = data.image_size
    synthetic_size: int | None = None
    #: seed of the train/val/test split for datasets without an official one. Kept fixed (not the
    #: run seed) so that a teacher and its students, and runs with different seeds, share one split.
    split_seed: int = 0
    #: DataLoader worker processes per training process; None = auto: on CUDA min(8, CPU cores), on
    #: CPU the cores the training threads leave free (0 on a 2-core host: a worker beside two torch threads
    #: oversubscribes it; benchmarks/RESULTS.md, section 0a, has the throughput)
    workers: int | None = None
    #: training augmentation strength (distill.transforms.train_transform)
    augment: Literal["default", "light", "none"] = "default"
    #: colour-constancy augmentation (distill.transforms.RandomIlluminant): with probability 0.8 a training image's
    #: light (Shades-of-Gray estimate) is divided out and a random one put in, exp(u) per channel with
    #: u ~ U(-spread, spread) before it is brought to the old light's mean level (0 = off; issue 28's study: 0.3)
    illuminant_augment: float = 0.0
    #: decode every image once per run into RAM (distill.data.cache): training images downscaled to
    #: ``cache_short_side``, val/test as their exact eval tensors. Off = decode from disk every epoch.
    cache: bool = True
    #: shorter side (px) of the cached training images; None = 2 × image_size (never enlarged)
    cache_short_side: int | None = None
    #: extra keyword arguments for load_dataset, e.g. {synthetic_counts: [280, 70, 140]}
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelConfig:
    #: student architecture (``--list-models``)
    arch: str = "mobilenet_v2"
    #: ImageNet weights file for the student (``--weights``); None = random initialisation
    weights: str | None = None
    #: dropout before the classifier; None = the architecture's default
    dropout: float | None = None
    #: run directory of a trained teacher (``--teacher``), for methods that need one
    teacher: str | None = None
    #: what the teacher sees when its input size is larger than the student's: "student" = the
    #: student's input, resized up to the teacher's size; "native" = training views made at the
    #: teacher's size (it sees the detail it was trained on) and the student gets their antialiased
    #: downscale (the same augmented crop). Evaluation of the student is unchanged.
    teacher_input: Literal["student", "native"] = "student"
    #: what to do when ``weights`` has BatchNorm folded into its convolutions (identity BN layers, e.g.
    #: weights recovered from a TFLite model): "recalibrate" = measure each BN's input statistics on 512
    #: training images and unfold (same function, trainable BN; the best of the three, benchmarks/RESULTS.md
    #: section 1), "freeze" = keep BN in eval mode while training, "train" = nothing (BN re-normalises the
    #: folded features: stays at chance)
    folded_bn: Literal["recalibrate", "freeze", "train"] = "recalibrate"


@dataclass
class OptimConfig:
    name: OptimizerName = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.05
    #: SGD momentum
    momentum: float = 0.9
    nesterov: bool = True
    #: Adam/AdamW betas
    betas: tuple[float, float] = (0.9, 0.999)
    #: images per optimizer step *per process* (DDP: global batch = batch_size × world size)
    batch_size: int = 32
    #: max global gradient L2 norm; 0 disables clipping
    grad_clip: float = 0.0
    #: no weight decay on biases and normalisation weights (1-D parameters), as in timm
    no_decay_bias_norm: bool = True


@dataclass
class ScheduleConfig:
    name: ScheduleName = "cosine"
    #: cosine: linear warm-up length in epochs (fractions allowed), from lr × warmup_start_ratio
    warmup_epochs: float = 0.0
    warmup_start_ratio: float = 0.01
    #: cosine: final lr = lr × min_lr_ratio
    min_lr_ratio: float = 0.0
    #: onecycle: fraction of steps rising, initial lr = lr / div_factor, final = initial / final_div_factor
    pct_start: float = 0.3
    div_factor: float = 25.0
    final_div_factor: float = 1e4
    #: plateau: the validation metric watched, the factor, and epochs without improvement
    plateau_monitor: Literal["val_loss", "val_balanced_accuracy"] = "val_loss"
    plateau_factor: float = 0.1
    plateau_patience: int = 3
    plateau_min_lr: float = 1e-6


@dataclass
class RunConfig:
    epochs: int = 30
    seed: int = 0
    #: run directory (checkpoints, student, metrics, plots, logs)
    out: str = "runs/distill"
    #: auto | cpu | cuda | cuda:N
    device: str = "auto"
    #: bf16 autocast (CUDA only; ignored on CPU)
    amp: bool = True
    #: channels_last memory format for the student and teacher, on CPU and CUDA (MobileNetV2 64 px
    #: training ran 1.3-5x faster with it on 2-core CPU hosts: benchmarks/train_throughput.py)
    channels_last: bool = True
    #: early stopping patience in epochs without a better val balanced accuracy; 0 = off
    early_stop: int = 0
    #: torch deterministic algorithms (slower on GPU; CPU runs are deterministic anyway)
    deterministic: bool = False
    #: tqdm progress bars (only on a terminal)
    progress: bool = True
    #: batch size for val/test (None = 2 × batch_size)
    eval_batch_size: int | None = None
    #: cap on training steps per epoch (quick experiments); None = the whole training set
    max_steps_per_epoch: int | None = None
    #: DDP: convert BatchNorm to SyncBatchNorm
    sync_bn: bool = False
    #: torch CPU threads per process; None = torch's default (OMP_NUM_THREADS / all cores)
    threads: int | None = None
    #: draw curves.png, confusion_matrix.png and reliability.png at the end
    plots: bool = True


@dataclass
class EmptyMethodConfig:
    """Config of a method that takes no options."""


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "optim": OptimConfig,
    "schedule": ScheduleConfig,
    "run": RunConfig,
}


@dataclass
class TrainConfig:
    method_name: str = "scratch"
    method: Any = field(default_factory=EmptyMethodConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML/JSON friendly); ``method`` holds ``name`` plus the method's fields."""
        out: dict[str, Any] = {"method": {"name": self.method_name, **plain_tree(dataclasses.asdict(self.method))}}
        for name in SECTIONS:
            out[name] = plain_tree(dataclasses.asdict(getattr(self, name)))
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False)

    def save(self, path: str | Path) -> Path:
        return write_text_atomic(path, self.to_yaml())

    def get(self, dotted: str) -> Any:
        obj: Any = self
        for part in dotted.split("."):
            obj = getattr(obj, "method_name" if (obj is self and part == "method_name") else part)
        return obj


# ------------------------------------------------------------------------------------------------
# Type coercion
# ------------------------------------------------------------------------------------------------
def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if origin is not None:
        return str(tp).replace("typing.", "")
    return getattr(tp, "__name__", str(tp))


_TRUE = {"true", "yes", "on", "1", "y"}
_FALSE = {"false", "no", "off", "0", "n"}


def _coerce_literal(value: Any, args: tuple[Any, ...], bad: LesionliteError) -> Any:
    """One of the Literal's choices, matching strings case-insensitively so ``--set optim.name=SGD`` works."""
    if isinstance(value, str):
        for a in args:
            if isinstance(a, str) and a.lower() == value.lower():
                return a
    if value in args:
        return value
    raise bad


def _coerce_union(value: Any, args: tuple[Any, ...], key: str, bad: LesionliteError) -> Any:
    """None for a null-ish value when allowed, else the first member type that accepts the value."""
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "~", "")):
        if type(None) in args:
            return None
    for a in args:
        if a is type(None):
            continue
        try:
            return _coerce(value, a, key)
        except LesionliteError:
            continue
    raise bad


def _coerce_bool(value: Any, bad: LesionliteError) -> bool:
    """A bool from a bool, 0/1 or a yes/no-style string, since CLI and YAML spell booleans many ways."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise bad


def _coerce_int(value: Any, bad: LesionliteError) -> int:
    """An int from an int, an integral float or such a string, refusing bools and fractions so nothing is rounded."""
    if isinstance(value, bool):
        raise bad
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            try:
                f = float(value)
            except ValueError:
                raise bad from None
            if f.is_integer():
                return int(f)
    raise bad


def _coerce_float(value: Any, bad: LesionliteError) -> float:
    """A float from a number or a numeric string, refusing bools (True is not 1.0 in a config)."""
    if isinstance(value, bool):
        raise bad
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            raise bad from None
    raise bad


def _coerce_str(value: Any, bad: LesionliteError) -> str:
    """A str, accepting numbers because YAML parses values such as ``1e-3`` or ``42`` as numbers."""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise bad


def _coerce_sequence(value: Any, tp: Any, origin: Any, args: tuple[Any, ...], key: str,
                     bad: LesionliteError) -> Any:
    """A list/tuple (also from a "a,b" or "[a,b]" string), each element coerced to its annotated type."""
    if isinstance(value, str):
        value = [v for v in (s.strip() for s in value.strip("[]()").split(",")) if v != ""]
        value = [yaml.safe_load(v) for v in value]
    if not isinstance(value, (list, tuple)):
        raise bad
    if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
        if len(value) != len(args):
            raise LesionliteError(f"config key {key!r}: expected {len(args)} values, got {list(value)!r}")
        return tuple(_coerce(v, a, key) for v, a in zip(value, args))
    elem = args[0] if args else Any
    seq = [_coerce(v, elem, key) for v in value]
    return tuple(seq) if (origin is tuple or tp is tuple) else seq


def _coerce_other(value: Any, tp: Any, key: str, bad: LesionliteError) -> Any:
    """Dicts, nested dataclasses (built from a mapping) and any other class the value already is."""
    if typing.get_origin(tp) is dict or tp is dict:
        if isinstance(value, Mapping):
            return dict(value)
        raise bad
    if is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if isinstance(value, Mapping):
            return dataclass_from_dict(tp, value, key)
        raise bad
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise bad


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Coerce ``value`` to the annotated type ``tp`` or raise a LesionliteError naming ``key``."""
    bad = LesionliteError(f"config key {key!r}: expected {_type_name(tp)}, got {value!r}")
    if tp is Any or tp is typing.Any:
        return value
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Literal:
        return _coerce_literal(value, args, bad)
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, args, key, bad)
    if tp is type(None):
        if value is None:
            return None
        raise bad
    if tp is bool:
        return _coerce_bool(value, bad)
    if tp is int:
        return _coerce_int(value, bad)
    if tp is float:
        return _coerce_float(value, bad)
    if tp is str:
        return _coerce_str(value, bad)
    if origin in (tuple, list) or tp in (tuple, list):
        return _coerce_sequence(value, tp, origin, args, key, bad)
    return _coerce_other(value, tp, key, bad)


def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # unresolvable forward reference: fall back to no coercion
        return {f.name: Any for f in fields(cls)}


def _unknown_key(key: str, valid: Sequence[str]) -> LesionliteError:
    section, _, leaf = key.rpartition(".")
    close = difflib.get_close_matches(leaf, list(valid), n=1)
    hint = f"; did you mean {(section + '.' if section else '') + close[0]!r}?" if close else ""
    where = f"in section {section!r}" if section else "at top level"
    return LesionliteError(
        f"unknown config key {key!r}{hint} (valid keys {where}: {', '.join(valid) or 'none'})"
    )


def dataclass_from_dict(cls: type, data: Mapping[str, Any] | None, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``; unknown keys and bad types raise LesionliteError."""
    data = dict(data or {})
    hints = _hints(cls)
    names = [f.name for f in fields(cls)]
    kwargs: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in names:
            raise _unknown_key(key, names)
        kwargs[k] = _coerce(v, hints.get(k, Any), key)
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise LesionliteError(f"config section {prefix or cls.__name__!r}: {exc}") from None


# ------------------------------------------------------------------------------------------------
# Nested-dict layering
# ------------------------------------------------------------------------------------------------
def parse_set(item: str) -> tuple[str, Any]:
    """``"method.temperature=3"`` → ``("method.temperature", 3)`` (value parsed as YAML)."""
    if "=" not in item:
        raise LesionliteError(f"--set expects key.sub=value, got {item!r}")
    key, _, raw = item.partition("=")
    key = key.strip()
    if not key or key.startswith(".") or key.endswith("."):
        raise LesionliteError(f"--set expects key.sub=value, got {item!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() != "" else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    """Set ``tree[a][b]... = value`` for ``key = "a.b..."`` (``method=kd`` sets the method name)."""
    parts = key.split(".")
    if parts == ["method_name"] or (parts == ["method"] and isinstance(value, str)):
        parts = ["method", "name"]
    if len(parts) == 1 and (parts[0] in SECTIONS or parts[0] == "method") and not isinstance(value, dict):
        raise LesionliteError(f"config key {key!r} is a section; set one of its keys, e.g. {key}.<field>=...")
    node = tree
    for i, part in enumerate(parts[:-1]):
        nxt = node.get(part)
        if nxt is None:
            nxt = {}
        elif i == 0 and part == "method" and isinstance(nxt, str):
            nxt = {"name": nxt}
        if not isinstance(nxt, dict):
            raise LesionliteError(f"config key {'.'.join(parts[: i + 1])!r} is not a section (cannot set {key!r})")
        node[part] = nxt
        node = nxt
    node[parts[-1]] = value


def deep_merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        if k == "method" and isinstance(v, str):
            v = {"name": v}
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        elif k == "method" and isinstance(v, Mapping) and isinstance(out.get(k), str):
            out[k] = deep_merge({"name": out[k]}, v)
        else:
            out[k] = dict(v) if isinstance(v, Mapping) else v
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise LesionliteError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        msg = str(exc).replace("\n", " ")
        raise LesionliteError(f"{p}: not a readable YAML config ({msg})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise LesionliteError(f"{p}: a config file must be a YAML mapping (sections data, model, optim, ...)")
    return data


def method_config_cls(method_cls: type) -> type:
    cls = method_cls.config_cls or EmptyMethodConfig
    if not is_dataclass(cls):
        raise TypeError(f"{method_cls.__name__}.config_cls must be a dataclass, got {cls!r}")
    return cls


def config_from_dict(tree: Mapping[str, Any]) -> TrainConfig:
    """Build and validate a :class:`TrainConfig` from a nested dict (the YAML layout)."""

    tree = dict(tree)
    valid_top = ["method", *SECTIONS]
    for k in tree:
        if k not in valid_top:
            raise _unknown_key(str(k), valid_top)
    msec = tree.get("method", {})
    if isinstance(msec, str):
        msec = {"name": msec}
    if not isinstance(msec, Mapping):
        raise LesionliteError("config section 'method' must be a mapping with a 'name' key")
    msec = dict(msec)
    name = msec.pop("name", TrainConfig.method_name)
    if not isinstance(name, str):
        raise LesionliteError(f"config key 'method.name': expected a method name, got {name!r}")
    method_cls = get_method(name)
    mcfg = dataclass_from_dict(method_config_cls(method_cls), msec, "method")
    kwargs: dict[str, Any] = {"method_name": name, "method": mcfg}
    for sec, cls in SECTIONS.items():
        val = tree.get(sec, {})
        if val is None:
            val = {}
        if not isinstance(val, Mapping):
            raise LesionliteError(f"config section {sec!r} must be a mapping, got {val!r}")
        kwargs[sec] = dataclass_from_dict(cls, val, sec)
    cfg = TrainConfig(**kwargs)
    validate(cfg)
    return cfg


def defaults_tree(method_name: str | None = None) -> dict[str, Any]:
    """Global defaults with the chosen method's ``default_overrides`` applied (method fields omitted)."""
    base = TrainConfig().to_dict()
    base["method"] = {"name": method_name or TrainConfig.method_name}
    if method_name:
        for k, v in get_method(method_name).default_overrides.items():
            set_dotted(base, k, v)
    return base


def _method_name_of(*layers: Mapping[str, Any] | None) -> str | None:
    name = None
    for layer in layers:
        if not layer:
            continue
        m = layer.get("method")
        if isinstance(m, str):
            name = m
        elif isinstance(m, Mapping) and "name" in m:
            name = m["name"]
    return name


def resolve_config(
    yaml_path: str | Path | None = None,
    flags: Mapping[str, Any] | None = None,
    sets: Sequence[str] = (),
    base: Mapping[str, Any] | None = None,
) -> TrainConfig:
    """Layer defaults (or ``base``, e.g. a checkpoint's config) ← YAML ← flags ← ``--set`` items.

    ``flags`` maps dotted keys to already-typed values (``{"optim.lr": 0.01}``); ``None`` values
    are skipped (flag not given).
    """
    file_tree = load_yaml(yaml_path) if yaml_path else {}
    flag_tree: dict[str, Any] = {}
    for k, v in (flags or {}).items():
        if v is not None:
            set_dotted(flag_tree, k, v)
    set_tree: dict[str, Any] = {}
    for item in sets:
        k, v = parse_set(item)
        set_dotted(set_tree, k, v)
    if base is not None:
        tree = deep_merge({}, base)
    else:
        tree = defaults_tree(_method_name_of(file_tree, flag_tree, set_tree))
    for layer in (file_tree, flag_tree, set_tree):
        new_name = _method_name_of(layer)
        if new_name is not None and new_name != _method_name_of(tree):
            # a layer that picks another method drops the options set for the previous one
            tree["method"] = {"name": new_name}
        tree = deep_merge(tree, layer)
    return config_from_dict(tree)


def validate(cfg: TrainConfig) -> None:
    """Range checks with messages that name the key (types are checked on construction)."""
    checks = [
        (cfg.run.epochs >= 1, "run.epochs must be at least 1"),
        (cfg.optim.batch_size >= 1, "optim.batch_size must be at least 1"),
        (cfg.optim.lr > 0, "optim.lr must be positive"),
        (cfg.optim.weight_decay >= 0, "optim.weight_decay must be >= 0"),
        (cfg.optim.grad_clip >= 0, "optim.grad_clip must be >= 0 (0 disables clipping)"),
        (cfg.data.image_size >= 8, "data.image_size must be at least 8 pixels"),
        (cfg.data.resize_size is None or cfg.data.resize_size >= cfg.data.image_size,
         "data.resize_size must be >= data.image_size (it is the size before the centre crop)"),
        (cfg.data.workers is None or cfg.data.workers >= 0, "data.workers must be >= 0 (or null = auto)"),
        (cfg.data.cache_short_side is None or cfg.data.cache_short_side >= cfg.data.image_size,
         "data.cache_short_side must be >= data.image_size (cached images are cropped down to the input size)"),
        (cfg.run.early_stop >= 0, "run.early_stop must be >= 0 (0 = off)"),
        (cfg.schedule.warmup_epochs >= 0, "schedule.warmup_epochs must be >= 0"),
        (0 < cfg.schedule.pct_start < 1, "schedule.pct_start must be in (0, 1)"),
        (0 < cfg.schedule.plateau_factor < 1, "schedule.plateau_factor must be in (0, 1)"),
        (cfg.run.eval_batch_size is None or cfg.run.eval_batch_size >= 1, "run.eval_batch_size must be >= 1"),
        (cfg.run.max_steps_per_epoch is None or cfg.run.max_steps_per_epoch >= 1,
         "run.max_steps_per_epoch must be >= 1"),
        (cfg.run.threads is None or cfg.run.threads >= 1, "run.threads must be >= 1"),
        (cfg.model.dropout is None or 0 <= cfg.model.dropout < 1, "model.dropout must be in [0, 1)"),
        (math.isfinite(cfg.data.illuminant_augment) and cfg.data.illuminant_augment >= 0,
         "data.illuminant_augment must be a finite number >= 0 (0 = off)"),
        (cfg.data.illuminant_augment == 0 or cfg.data.augment != "none",
         "data.illuminant_augment needs an augmentation: data.augment default or light, not data.augment none"),
        (bool(cfg.run.out), "run.out (--out) must name a run directory"),
    ]
    for ok, msg in checks:
        if not ok:
            raise LesionliteError(msg)
    dev = cfg.run.device
    if not (dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit())):
        raise LesionliteError(f"run.device must be auto, cpu, cuda or cuda:N, got {dev!r}")


#: Keys that may change when resuming a run (everything else must match the checkpoint's config).
RESUME_MUTABLE = {
    "run.epochs", "run.device", "run.progress", "run.threads", "run.plots", "run.out", "run.early_stop", "run.eval_batch_size",
    "data.workers", "data.root", "model.teacher",
}


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def resume_differences(saved: TrainConfig | Mapping[str, Any], new: TrainConfig) -> list[str]:
    """Keys (outside :data:`RESUME_MUTABLE`) whose value differs between a checkpoint and now."""
    a = flatten(saved.to_dict() if isinstance(saved, TrainConfig) else saved)
    b = flatten(new.to_dict())
    diffs = []
    for k in sorted(set(a) | set(b)):
        if k in RESUME_MUTABLE:
            continue
        if a.get(k) != b.get(k):
            diffs.append(f"{k} ({a.get(k)!r} in the checkpoint, {b.get(k)!r} now)")
    return diffs
