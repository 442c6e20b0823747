"""``lesionlite distill`` / ``python -m distill``: train a student and write a run directory.

Examples::

    python -m distill --demo --out runs/demo                       # CPU demo on synthetic data
    python -m distill --method scratch --data ham10000 --model mobilenet_v2 \\
        --weights ../shared/weights/mobilenet_v2/mobilenet_v2_imagenet_torchvision_from_tf2ptq.pth \\
        --epochs 30 --out runs/teacher
    python -m distill --method kd --teacher runs/teacher --model tiny_cnn --set method.temperature=3 --out runs/kd
    python -m distill --config exp.yaml --set optim.lr=3e-4 --out runs/x
    python -m distill --out runs/kd --resume                      # continue an interrupted run
    torchrun --nproc_per_node=2 -m distill --method scratch ...   # DDP (gloo on CPU, NCCL on GPU)

Every option is a config key (see :mod:`distill.config`); the explicit flags below are shortcuts
for the common ones and ``--set key.sub=value`` reaches any field, e.g. ``--set method.alpha=0.5``.
User errors raise :class:`LesionliteError`, printed as one line with exit status 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from distill.config import deep_merge, defaults_tree, method_config_cls, resolve_config, set_dotted
from distill.data import list_datasets
from distill.methods.registry import get_method, list_methods
from lesionlite.errors import LesionliteError
from lesionlite.fmt import fmt_value

#: flag dest → dotted config key
FLAG_KEYS: dict[str, str] = {
    "method": "method.name",
    "data": "data.name",
    "data_root": "data.root",
    "model": "model.arch",
    "teacher": "model.teacher",
    "weights": "model.weights",
    "epochs": "run.epochs",
    "batch_size": "optim.batch_size",
    "lr": "optim.lr",
    "optimizer": "optim.name",
    "weight_decay": "optim.weight_decay",
    "grad_clip": "optim.grad_clip",
    "schedule": "schedule.name",
    "warmup_epochs": "schedule.warmup_epochs",
    "image_size": "data.image_size",
    "seed": "run.seed",
    "out": "run.out",
    "device": "run.device",
    "workers": "data.workers",
    "threads": "run.threads",
    "teacher_input": "model.teacher_input",
    "max_steps_per_epoch": "run.max_steps_per_epoch",
    "cache": "data.cache",
    "early_stop": "run.early_stop",
    "amp": "run.amp",
    "channels_last": "run.channels_last",
    "progress": "run.progress",
}

#: ``--demo``: a MobileNetV2 student from scratch on SYNTHETIC 64 px data, about 2 CPU minutes on 2 cores
#: (test balanced accuracy ≈ 0.9 against 0.14 for chance). Flags still override it, e.g.
#: ``--demo --model tiny_cnn --image-size 32`` for a 20-second run.
DEMO_PRESET: dict[str, Any] = {
    "method.name": "scratch",
    "data.name": "synthetic",
    "data.image_size": 64,
    "data.workers": 0,
    "model.arch": "mobilenet_v2",
    "optim.name": "adamw",
    "optim.lr": 3e-3,
    "optim.weight_decay": 0.01,
    "optim.batch_size": 32,
    "schedule.name": "cosine",
    "schedule.warmup_epochs": 1.0,
    "run.epochs": 20,
    "run.device": "cpu",
    "run.threads": 2,
    "run.out": "runs/demo",
}


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are LesionliteErrors (one line, exit status 2 via run_stage)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise LesionliteError(f"{message} (see --help)")


def build_parser(prog: str = "python -m distill") -> argparse.ArgumentParser:
    p = _Parser(prog=prog, description="Train a lesion classifier student (scratch, kd, ssdkd, udcd, …).",
                formatter_class=argparse.RawDescriptionHelpFormatter,
                epilog="Any config field: --set section.key=value (sections: method, data, model, optim, "
                       "schedule, run). Precedence: defaults < method defaults < --demo < --config < flags < --set.")
    info = p.add_argument_group("information")
    info.add_argument("--list-methods", action="store_true", help="list training methods and exit")
    info.add_argument("--list-models", action="store_true", help="list student/teacher architectures and exit")
    info.add_argument("--list-datasets", action="store_true", help="list dataset specs and exit")
    info.add_argument("--print-config", action="store_true", help="print the resolved config (YAML) and exit")

    g = p.add_argument_group("run")
    g.add_argument("--config", metavar="FILE", help="YAML config file (sections method, data, model, optim, schedule, run)")
    g.add_argument("--demo", action="store_true",
                   help="preset: MobileNetV2 from scratch on SYNTHETIC 64px data, 20 epochs on CPU (~2 min on 2 cores); "
                        "implies --overwrite")
    g.add_argument("--method", help="training method (--list-methods); default scratch")
    g.add_argument("--data", metavar="SPEC",
                   help="dataset: synthetic, dermamnist, ham10000, isic2019, a path, … (--list-datasets)")
    g.add_argument("--data-root", metavar="DIR", help="data root (default $LESIONLITE_DATA or ../shared/data)")
    g.add_argument("--model", metavar="ARCH", help="student architecture (--list-models)")
    g.add_argument("--teacher", metavar="RUN_DIR", help="trained teacher run directory (kd, ssdkd)")
    g.add_argument("--teacher-input", choices=["student", "native"],
                   help="a teacher with a larger input than the student sees the student's input resized up "
                        "(student, default) or training views at its own size, the student their downscale (native)")
    g.add_argument("--weights", metavar="PATH", help="ImageNet weights for the student")
    g.add_argument("--epochs", type=int)
    g.add_argument("--batch-size", type=int, help="images per step per process")
    g.add_argument("--lr", type=float)
    g.add_argument("--optimizer", choices=["sgd", "adam", "adamw"])
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--grad-clip", type=float, metavar="NORM", help="clip the global gradient norm (0 = off)")
    g.add_argument("--schedule", choices=["cosine", "onecycle", "plateau", "none"])
    g.add_argument("--warmup-epochs", type=float, help="cosine schedule linear warm-up (epochs)")
    g.add_argument("--image-size", type=int, metavar="PX")
    g.add_argument("--seed", type=int)
    g.add_argument("--out", metavar="RUN_DIR", help="run directory (default runs/distill)")
    g.add_argument("--resume", nargs="?", const=True, default=None, metavar="RUN_DIR",
                   help="continue RUN_DIR/last.pt (RUN_DIR defaults to --out)")
    g.add_argument("--overwrite", action="store_true", help="start over in an --out that already holds a run")
    g.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    g.add_argument("--workers", type=int, help="data loader workers per process (default: what the cores allow; "
                                                "0 on 2 cores)")
    g.add_argument("--threads", type=int, metavar="N", help="torch CPU threads (on 2 shared cores: 1, pinned with "
                                                         "taskset -c 0)")
    g.add_argument("--max-steps-per-epoch", type=int, metavar="N",
                   help="cap on optimizer steps per epoch (a fresh random subset each epoch; quick experiments)")
    g.add_argument("--cache", action=argparse.BooleanOptionalAction, default=None,
                   help="decode every image once per run into RAM (default on)")
    g.add_argument("--early-stop", type=int, metavar="PATIENCE", help="epochs without better val balanced accuracy (0 = off)")
    g.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None, help="bf16 autocast on CUDA (default on)")
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels_last memory format (CPU and CUDA; default on)")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="tqdm progress bars")
    g.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="set any config field, e.g. --set method.temperature=3 (repeatable)")
    return p


def _list_methods() -> str:
    lines = ["methods:"]
    for name in list_methods():
        cls = get_method(name)
        doc = (cls.__doc__ or "").strip().splitlines()
        fields = [f.name for f in dataclasses.fields(method_config_cls(cls))]
        lines.append(f"  {name:<11} {doc[0] if doc else ''}")
        lines.append(f"  {'':<11} views={cls.num_views} ({cls.view_mode}), teacher={'required' if cls.needs_teacher else 'no'}"
                     f", options: {', '.join('method.' + f for f in fields) or 'none'}")
    return "\n".join(lines)


def _list_models() -> str:
    from distill.models import get_model_spec, list_models  # torch: the CLI parses and lists without it

    lines = ["models:"]
    for name in list_models():
        spec = get_model_spec(name)
        lines.append(f"  {name:<22} feature_dim={spec.feature_dim:<5} {spec.description}")
    return "\n".join(lines)


def _list_datasets() -> str:
    return "datasets:\n" + "\n".join(f"  {k:<15} {v}" for k, v in list_datasets().items())


def resolve_from_args(args: argparse.Namespace) -> tuple[Any, bool, bool]:
    """(TrainConfig, resume, overwrite) from parsed arguments."""
    from distill.train_state import checkpoint_config  # torch

    flags = {key: getattr(args, dest) for dest, key in FLAG_KEYS.items() if getattr(args, dest) is not None}
    resume = args.resume is not None
    overwrite = bool(args.overwrite)
    if resume:
        if resume and overwrite:
            raise LesionliteError("--resume and --overwrite contradict each other; pick one")
        if isinstance(args.resume, str):
            if args.out is not None and Path(args.out) != Path(args.resume):
                raise LesionliteError(f"--resume {args.resume} and --out {args.out} name different run directories")
            flags["run.out"] = args.resume
        run_dir = flags.get("run.out")
        if not run_dir:
            raise LesionliteError("--resume needs the run directory: --resume RUN_DIR or --out RUN_DIR --resume")
        base = checkpoint_config(run_dir)
        return resolve_config(args.config, flags, args.sets, base=base), True, False
    base = None
    if args.demo:
        overwrite = True
        method = flags.get("method.name", DEMO_PRESET["method.name"])
        base = defaults_tree(method)
        demo_tree: dict[str, Any] = {}
        for k, v in DEMO_PRESET.items():
            set_dotted(demo_tree, k, v)
        base = deep_merge(base, demo_tree)
    return resolve_config(args.config, flags, args.sets, base=base), False, overwrite


def summary_table(rows: Sequence[dict[str, Any]]) -> str:
    """A plain-text table of :meth:`TrainResult.summary_row` dicts."""
    cols = [("method", "method"), ("model", "model"), ("val_acc", "val acc"), ("val_bal_acc", "val bal-acc"),
            ("test_acc", "test acc"), ("test_bal_acc", "test bal-acc"), ("test_ece", "test ECE"),
            ("test_ece_cal", "ECE (T-scaled)"), ("wall_s", "wall"), ("run_dir", "run dir")]
    cells = []
    for r in rows:
        line = []
        for key, _ in cols:
            v = r.get(key)
            line.append(f"{v:.0f}s" if key == "wall_s" and isinstance(v, (int, float)) else fmt_value(v))
        cells.append(line)
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, (_, h) in enumerate(cols)]
    out = ["  ".join(h.ljust(w) for (_, h), w in zip(cols, widths)),
           "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in cells]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.list_methods or args.list_models or args.list_datasets:
        parts = []
        if args.list_methods:
            parts.append(_list_methods())
        if args.list_models:
            parts.append(_list_models())
        if args.list_datasets:
            parts.append(_list_datasets())
        print("\n\n".join(parts))
        return 0
    cfg, resume, overwrite = resolve_from_args(args)
    if args.print_config:
        print(cfg.to_yaml(), end="")
        return 0
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stdout)
    logging.getLogger("distill").setLevel(logging.INFO)
    from distill.train import train  # torch

    result = train(cfg, resume=resume, overwrite=overwrite)
    if int(os.environ.get("RANK", "0")) == 0:
        print()
        if result.synthetic:
            print("NOTE: SYNTHETIC DATA — generated images, not dermoscopy; the numbers only show the pipeline works.")
        print(summary_table([result.summary_row()]))
    return 0
