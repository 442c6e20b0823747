"""The one training loop shared by every method (scratch, kd, ssdkd, udcd, …).

In the style of the torchvision / timm reference scripts. :func:`train` takes a resolved
:class:`~distill.config.TrainConfig` and

1. starts DDP when run under ``torchrun`` (:mod:`distill.ddp`), picks the device, seeds everything;
2. loads the dataset (``distill.data.load_dataset``) and wraps the training split in a
   ``MultiViewDataset`` with the method's ``num_views`` / ``view_mode``;
3. builds the student (``build_model`` + optional ``--weights``), loads a frozen teacher from
   ``--teacher RUN_DIR`` when ``method.needs_teacher`` (class names must match the data), builds the
   method ``get_method(name)(student, teacher, cfg.method, MethodContext(...))``;
4. on ``--resume`` restores model, method state, optimizer, scheduler, best weights, early-stopping
   state and history from ``RUN_DIR/last.pt``; then calls ``method.prepare(train_loader, val_loader)``
   (also on resume, *after* the method state is restored: a method skips work its state says is done);
5. runs epochs of ``method.training_loss`` → backward → (clip) → ``optimizer.step`` →
   ``method.after_optimizer_step(step)``, evaluates the student on val after every epoch, keeps the
   best weights by val balanced accuracy (ties: lower val loss), early-stops, and writes
   ``RUN_DIR/last.pt`` atomically after every epoch;
6. reloads the best weights, fits the calibration temperature on val, evaluates val and test, and
   writes ``student.pt`` + ``manifest.json`` (:func:`distill.artifacts.save_student`),
   ``metrics.json``, plots and logs.

Conventions: ``epoch`` passed to methods is 0-based; ``step`` is the 0-based index of the optimizer
step over the whole run (``training_loss`` gets the index of the step it is computing,
``after_optimizer_step`` the index of the step just taken). ``LossOutput.logs`` values may be floats
or 0-d tensors (tensors avoid a device sync per step). Exact resume: every epoch reseeds python /
numpy / torch and the loader from ``(run.seed, epoch, rank)``, so an interrupted and resumed CPU run
reproduces an uninterrupted one bit for bit.

Run directory: ``config.yaml``, ``last.pt``, ``student.pt`` + ``manifest.json`` (the artifact),
``metrics.json``, ``train_log.jsonl`` (one JSON record per epoch), ``train.log`` (the console log),
``curves.png``, ``confusion_matrix.png``, ``reliability.png``.

Validation loss (``val_loss``, the plateau schedule's default monitor and the tie-breaker of the best
epoch) is the plain, unweighted cross-entropy (NLL) of the val split. Preprocessing: mean/std come
from ``--weights`` (what the file expects), else from the teacher (a random-init student may as
well share it), else ImageNet's; when student and teacher preprocessing still differ (normalisation
or input size) the teacher's inputs are re-normalised and resized on the fly by a forward pre-hook.
"""
from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from distill import ddp
from distill.config import TrainConfig, config_from_dict, resume_differences
from distill.optim import build_optimizer, build_scheduler, cosine_factor  # noqa: F401  (re-exported)
from lesionlite.errors import LesionliteError
from lesionlite.preprocessing import IMAGENET_MEAN, IMAGENET_STD, PreprocessConfig

log = logging.getLogger("distill.train")

CHECKPOINT_NAME = "last.pt"
CHECKPOINT_FORMAT = "lesionlite-train-checkpoint"
CHECKPOINT_VERSION = 1
RUN_FILES = ("last.pt", "student.pt", "manifest.json", "metrics.json", "train_log.jsonl", "train.log",
             "curves.png", "confusion_matrix.png", "reliability.png", "config.yaml")


# ------------------------------------------------------------------------------------------------
# Result
# ------------------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    run_dir: Path
    method: str
    architecture: str
    metrics: dict[str, Any]  # flat scalars: val_*, test_* (uncalibrated and *_calibrated)
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    wall_time_s: float
    images_per_s: float
    temperature: float
    synthetic: bool
    history: list[dict[str, Any]] = field(default_factory=list)
    #: the out-of-distribution scores fitted on validation (lesionlite.ood), None when they could not be
    ood: dict[str, Any] | None = None

    def summary_row(self) -> dict[str, Any]:
        m = self.metrics
        return {
            "method": self.method, "model": self.architecture,
            "val_acc": m.get("val_accuracy"), "val_bal_acc": m.get("val_balanced_accuracy"),
            "test_acc": m.get("test_accuracy"), "test_bal_acc": m.get("test_balanced_accuracy"),
            "test_ece": m.get("test_ece"), "test_ece_cal": m.get("test_ece_calibrated"),
            "wall_s": self.wall_time_s, "run_dir": str(self.run_dir),
        }


# ------------------------------------------------------------------------------------------------
# Seeding / devices
# ------------------------------------------------------------------------------------------------
def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (stable across runs and platforms)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint64)[0] >> 1)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _worker_init(worker_id: int) -> None:
    s = torch.initial_seed() % (2**32)
    random.seed(s)
    np.random.seed(s)


def resolve_device(spec: str, local_rank: int = 0, distributed: bool = False) -> torch.device:
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise LesionliteError(f"--device {spec}: CUDA is not available on this machine; use --device cpu")
        if distributed:
            return torch.device("cuda", local_rank)
        dev = torch.device(spec)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise LesionliteError(f"--device {spec}: only {torch.cuda.device_count()} GPU(s) visible")
        return dev
    return torch.device("cpu")


def resolve_workers(workers: int | None, device: torch.device, threads: int | None) -> int:
    """``data.workers``, with None resolved: CUDA min(8, cores); CPU the cores left by the torch threads."""
    if workers is not None:
        return int(workers)
    cores = os.cpu_count() or 1
    if device.type == "cuda":
        return min(8, cores)
    return max(0, min(4, cores - (threads or torch.get_num_threads())))


# ------------------------------------------------------------------------------------------------
# Logging
# ------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _log_handlers(run_dir: Path | None, is_main: bool, append: bool) -> Iterator[None]:
    """Route the ``distill`` loggers to RUN_DIR/train.log (+ stdout when nothing else prints them)."""
    root_logger = logging.getLogger("distill")
    old_level = root_logger.level
    added: list[logging.Handler] = []
    if is_main:
        root_logger.setLevel(logging.INFO)
        if not root_logger.handlers and not logging.getLogger().handlers:
            h = logging.StreamHandler(sys.stdout)
            h.setFormatter(logging.Formatter("%(message)s"))
            added.append(h)
        if run_dir is not None:
            fh = logging.FileHandler(run_dir / "train.log", mode="a" if append else "w", encoding="utf-8")
            fh.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
            added.append(fh)
    else:
        root_logger.setLevel(logging.WARNING)
    for h in added:
        root_logger.addHandler(h)
    try:
        yield
    finally:
        for h in added:
            root_logger.removeHandler(h)
            h.close()
        root_logger.setLevel(old_level)


# ------------------------------------------------------------------------------------------------
# Checkpoint helpers (loadable with torch.load(weights_only=True))
# ------------------------------------------------------------------------------------------------
def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "python": [list(random.getstate()[1]), random.getstate()[0], random.getstate()[2]],
        "numpy": [np_state[0], torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    try:
        py = state["python"]
        random.setstate((py[1], tuple(py[0]), py[2]))
        npst = state["numpy"]
        np.random.set_state((npst[0], npst[1].numpy().astype(np.uint32), npst[2], npst[3], npst[4]))
        torch.set_rng_state(state["torch"])
        if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
    except Exception as exc:  # never fatal: every epoch reseeds anyway
        log.warning("could not restore RNG state from the checkpoint (%s); continuing", exc)


def _cpu_state(sd: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.detach().to("cpu", copy=True) if torch.is_tensor(v) else copy.deepcopy(v)) for k, v in sd.items()}


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    from lesionlite.atomic import atomic_path

    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise LesionliteError(f"cannot resume: {path} does not exist (no checkpoint in {path.parent})")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise LesionliteError(f"cannot resume: {path} is not a readable checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        raise LesionliteError(f"cannot resume: {path} is not a lesionlite training checkpoint")
    if int(ck.get("version", 0)) > CHECKPOINT_VERSION:
        raise LesionliteError(f"cannot resume: {path} was written by a newer lesionlite")
    return ck


def checkpoint_config(run_dir: str | Path) -> dict[str, Any]:
    """The config dict stored in ``RUN_DIR/last.pt`` (the base of a ``--resume``)."""
    return dict(load_checkpoint(Path(run_dir) / CHECKPOINT_NAME)["config"])


# ------------------------------------------------------------------------------------------------
# Teacher input adapter
# ------------------------------------------------------------------------------------------------
def _adapt_teacher_input(teacher: nn.Module, student_pre: PreprocessConfig, teacher_pre: PreprocessConfig) -> bool:
    """Make the teacher see its own preprocessing when the student's differs (mean/std/size).

    Installs a forward pre-hook on ``teacher.features`` (or the teacher itself) that undoes the
    student normalisation, applies the teacher's and resizes to the teacher's input size.
    Returns True when a hook was installed.
    """
    same_norm = (np.allclose(student_pre.mean, teacher_pre.mean) and np.allclose(student_pre.std, teacher_pre.std))
    same_size = student_pre.input_size == teacher_pre.input_size
    if same_norm and same_size:
        return False
    ms = torch.tensor(student_pre.mean).view(1, 3, 1, 1)
    ss = torch.tensor(student_pre.std).view(1, 3, 1, 1)
    mt = torch.tensor(teacher_pre.mean).view(1, 3, 1, 1)
    st = torch.tensor(teacher_pre.std).view(1, 3, 1, 1)
    size = teacher_pre.input_size

    def hook(_module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        x = args[0]
        if not same_norm:
            dt = x.dtype
            xf = x.float() * ss.to(x.device) + ms.to(x.device)
            x = ((xf - mt.to(x.device)) / st.to(x.device)).to(dt)
        if not same_size and x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return (x, *args[1:])

    target = getattr(teacher, "features", None)
    (target if isinstance(target, nn.Module) else teacher).register_forward_pre_hook(hook)
    return True


def load_teacher(cfg: TrainConfig, class_names: list[str], data_fingerprint: str,
                 device: torch.device) -> tuple[nn.Module, Any]:
    from distill.artifacts import load_student

    tdir = cfg.model.teacher
    if not tdir:
        raise LesionliteError(
            f"method {cfg.method_name!r} needs a teacher: pass --teacher RUN_DIR "
            "(the run directory of a trained model, e.g. one trained with --method scratch)"
        )
    teacher, tman = load_student(tdir, map_location="cpu")
    if tman.num_classes != len(class_names):
        raise LesionliteError(
            f"teacher {tdir} predicts {tman.num_classes} classes ({', '.join(tman.class_names)}) but dataset "
            f"{cfg.data.name!r} has {len(class_names)} ({', '.join(class_names)}); train the teacher on the same dataset"
        )
    if list(tman.class_names) != list(class_names):
        raise LesionliteError(
            f"teacher {tdir} classes {tman.class_names} differ from the dataset's {class_names} "
            "(names or order); the teacher's logits would be matched to the wrong classes"
        )
    tfp = (tman.data or {}).get("fingerprint")
    if tfp and tfp != data_fingerprint:
        log.warning("WARNING: teacher %s was trained on different data (fingerprint %s… vs %s…): if its training "
                    "split overlaps this run's val/test split, the reported metrics are optimistic",
                    tdir, str(tfp)[:12], data_fingerprint[:12])
    return teacher.to(device), tman


# ------------------------------------------------------------------------------------------------
# Evaluation
# ------------------------------------------------------------------------------------------------
def _autocast(device: torch.device, enabled: bool):
    if device.type == "cuda" and enabled:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


#: images whose BatchNorm input statistics unfold BN-folded ImageNet weights (model.folded_bn=recalibrate)
BN_CALIBRATION_IMAGES = 512


def _bn_calibration_batches(ds: Any, pre: PreprocessConfig, batch: int = 64) -> Iterator[torch.Tensor]:
    """The first :data:`BN_CALIBRATION_IMAGES` of a fixed permutation of ``ds``, eval transform, on CPU.

    Deterministic (same images on every rank and every run of the same split), so DDP ranks agree.
    """
    from distill.data.transforms import eval_transform

    tf = eval_transform(pre)
    order = np.random.default_rng(0).permutation(len(ds))[:BN_CALIBRATION_IMAGES]
    for i in range(0, len(order), batch):
        yield torch.stack([tf(ds[int(j)][0]) for j in order[i:i + batch]])


def validation_image_statistics(loader: Any, pre: PreprocessConfig, info: ddp.DistInfo) -> np.ndarray:
    """:func:`lesionlite.ood.image_statistics` of every evaluation image (dataset order, gathered over ranks):
    what ``serve`` computes from the same preprocessed tensor, so the two cannot drift."""
    from lesionlite.ood import image_statistics, unnormalize

    rows, idx_l = [], []
    for batch in loader:
        for x, i in zip(batch.images[:, 0].detach().cpu().numpy(), batch.indices.cpu().numpy()):
            rows.append(image_statistics(unnormalize(x, pre.mean, pre.std)))
            idx_l.append(int(i))
    stats = np.asarray(rows, dtype=np.float64).reshape(len(rows), -1)
    idx = np.asarray(idx_l, dtype=np.int64)
    if info.enabled:
        parts = [p for p in ddp.all_gather_objects((stats, idx), info) if len(p[1])]
        stats = np.concatenate([p[0] for p in parts])
        idx = np.concatenate([p[1] for p in parts])
    return stats[np.argsort(idx, kind="stable")]


def fit_ood(loader: Any, pre: PreprocessConfig, info: ddp.DistInfo, val_logits: np.ndarray,
            temperature: float) -> dict[str, Any] | None:
    """The out-of-distribution calibration stored in the manifest (None, with a warning, if it cannot be fitted)."""
    from lesionlite.ood import fit

    try:
        return fit(validation_image_statistics(loader, pre, info), val_logits, temperature)
    except (ValueError, np.linalg.LinAlgError) as exc:
        log.warning("WARNING: no out-of-distribution calibration (serve will not flag unlike images): %s", exc)
        return None


@torch.no_grad()
def predict(model: nn.Module, loader: Any, device: torch.device, amp: bool, info: ddp.DistInfo,
            channels_last: bool = False, desc: str = "eval", progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Logits (float32 [N, K], in dataset order) and labels of every sample, gathered over ranks."""
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    logits_l, labels_l, idx_l = [], [], []
    for batch in tqdm(loader, desc=desc, leave=False, disable=True if not (progress and info.is_main) else None,
                      dynamic_ncols=True):
        x = batch.images[:, 0].to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(device, amp):
            out = model(x)
        logits_l.append(out.float().cpu())
        labels_l.append(batch.labels)
        idx_l.append(batch.indices)
    model.train(was_training)
    logits = torch.cat(logits_l).numpy() if logits_l else np.zeros((0, 0), np.float32)
    labels = torch.cat(labels_l).numpy() if labels_l else np.zeros((0,), np.int64)
    idx = torch.cat(idx_l).numpy() if idx_l else np.zeros((0,), np.int64)
    if info.enabled:
        parts = ddp.all_gather_objects((logits, labels, idx), info)
        parts = [p for p in parts if p[0].size]
        logits = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        idx = np.concatenate([p[2] for p in parts])
    order = np.argsort(idx, kind="stable")
    return logits[order], labels[order]


# ------------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------------
class _LossModule(nn.Module):
    """``forward`` = ``method.training_loss`` so that DDP's gradient hooks see the call."""

    def __init__(self, method: nn.Module) -> None:
        super().__init__()
        self.method = method

    def forward(self, batch: Any, epoch: int, step: int):  # type: ignore[override]
        out = self.method.training_loss(batch, epoch, step)
        return out.loss, out.logs, out.logits


def _fmt(v: Any, nd: int = 4) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.{nd}f}"
    return str(v)


def _better(bal: float | None, loss: float, best_bal: float | None, best_loss: float) -> bool:
    b = -1.0 if bal is None else bal
    bb = -math.inf if best_bal is None else best_bal
    if b > bb + 1e-12:
        return True
    return abs(b - bb) <= 1e-12 and loss < best_loss - 1e-12


def prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool, is_main: bool) -> None:
    """Refuse to mix runs: an existing run needs --resume (continue) or --overwrite (start over)."""
    if not is_main:
        return
    if run_dir.exists() and not run_dir.is_dir():
        raise LesionliteError(f"--out {run_dir} exists and is not a directory")
    existing = [f for f in RUN_FILES if (run_dir / f).exists()]
    if resume:
        if not (run_dir / CHECKPOINT_NAME).is_file():
            raise LesionliteError(f"cannot resume: {run_dir / CHECKPOINT_NAME} does not exist")
        remove_orphan_temporaries(run_dir)
        return
    if existing and not overwrite:
        raise LesionliteError(
            f"{run_dir} already holds a run ({', '.join(existing[:3])}{' …' if len(existing) > 3 else ''}); "
            "pass --resume to continue it, --overwrite to start it over, or another --out"
        )
    if existing and overwrite:
        for f in RUN_FILES:
            with contextlib.suppress(FileNotFoundError):
                (run_dir / f).unlink()
    run_dir.mkdir(parents=True, exist_ok=True)
    remove_orphan_temporaries(run_dir)


def remove_orphan_temporaries(run_dir: Path) -> list[Path]:
    """Delete ``.<run file>.*.tmp`` left by a process killed mid-write (lesionlite.atomic's names).

    Only temporaries of this run's own files are touched (``.last.pt.x1y2.tmp``, ``.student.pt.….tmp``,
    …); one run directory has one writer, so at start nothing else can be writing them.
    """
    removed = []
    for name in RUN_FILES:
        for p in run_dir.glob(f".{name}.*.tmp"):
            with contextlib.suppress(OSError):
                p.unlink()  # RUN_FILES are files: their temporaries are files too
                removed.append(p)
    if removed:
        log.info("removed %d temporary file(s) left by an interrupted run: %s", len(removed),
                 ", ".join(p.name for p in removed))
    return removed


def preflight(cfg: TrainConfig) -> None:
    """Cheap checks before any data is loaded: architecture, method, teacher and weights paths."""
    from distill.methods.registry import get_method
    from distill.models import get_model_spec

    get_model_spec(cfg.model.arch)
    method_cls = get_method(cfg.method_name)
    if method_cls.needs_teacher:
        if not cfg.model.teacher:
            raise LesionliteError(
                f"method {cfg.method_name!r} needs a teacher: pass --teacher RUN_DIR "
                "(the run directory of a trained model, e.g. one trained with --method scratch)"
            )
        tdir = Path(cfg.model.teacher)
        if not tdir.exists():
            raise LesionliteError(f"teacher checkpoint not found: {tdir} does not exist")
        if not (tdir / "manifest.json").exists() and not (tdir.is_file() and (tdir.parent / "manifest.json").exists()):
            raise LesionliteError(f"teacher {tdir} is not a run directory (no manifest.json); pass the --out "
                                  "directory of a finished training run")
    if cfg.model.weights and not Path(cfg.model.weights).is_file():
        raise LesionliteError(f"weights file not found: {cfg.model.weights}")
    if cfg.data.root and not Path(cfg.data.root).expanduser().is_dir():
        raise LesionliteError(f"data root {cfg.data.root} does not exist or is not a directory")


def train(cfg: TrainConfig, resume: bool = False, overwrite: bool = False,
          on_epoch: Callable[[dict[str, Any]], None] | None = None) -> TrainResult:
    """Train ``cfg.method_name`` as configured; see the module docstring. Returns a :class:`TrainResult`.

    ``resume``: continue ``cfg.run.out/last.pt`` (the config must match the checkpoint's apart from
    :data:`distill.config.RESUME_MUTABLE` keys). ``overwrite``: delete an existing run's files first.
    ``on_epoch``: called with every epoch record (tests, notebooks).
    """
    preflight(cfg)
    use_cuda = resolve_device(cfg.run.device, distributed=False).type == "cuda"
    old_threads = torch.get_num_threads()
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    old_deterministic = torch.are_deterministic_algorithms_enabled()
    info = ddp.init_distributed(use_cuda)
    try:
        return _train(cfg, resume, overwrite, info, on_epoch)
    finally:
        ddp.cleanup(info)
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_deterministic)


def _train(cfg: TrainConfig, resume: bool, overwrite: bool, info: ddp.DistInfo,
           on_epoch: Callable[[dict[str, Any]], None] | None) -> TrainResult:
    from distill.data import load_dataset
    from distill.data.transforms import MultiViewDataset, collate_views, eval_transform, train_transform
    from distill.methods.base import Batch, MethodContext
    from distill.methods.registry import get_method
    from distill.models import build_model

    t_start = time.time()
    run_dir = Path(cfg.run.out)
    device = resolve_device(cfg.run.device, info.local_rank, info.enabled)
    prepare_run_dir(run_dir, resume, overwrite, info.is_main)
    ddp.barrier(info)

    ckpt: dict[str, Any] | None = None
    if resume:
        ckpt = load_checkpoint(run_dir / CHECKPOINT_NAME)
        saved = config_from_dict(ckpt["config"])
        diffs = resume_differences(saved, cfg)
        if diffs:
            raise LesionliteError(
                f"cannot resume {run_dir}: the config differs from the checkpoint's in {'; '.join(diffs)}; "
                "drop those changes or start a new run with another --out"
            )
        if cfg.schedule.name == "onecycle" and saved.run.epochs != cfg.run.epochs:
            raise LesionliteError("cannot change --epochs when resuming a onecycle schedule (its length is fixed)")
        done = int(ckpt["epoch"])
        if cfg.run.epochs < done:
            raise LesionliteError(
                f"cannot resume {run_dir} with --epochs {cfg.run.epochs}: it has already run {done} epochs; "
                f"pass --epochs {done} or more (or leave it out to keep {saved.run.epochs})")

    with _log_handlers(run_dir if info.is_main else None, info.is_main, append=resume):
        if info.is_main:
            cfg.save(run_dir / "config.yaml")
        method_cls = get_method(cfg.method_name)
        amp = cfg.run.amp and device.type == "cuda"
        channels_last = cfg.run.channels_last  # measured faster on CPU too (benchmarks/train_throughput.py)
        if cfg.run.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        elif device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            torch.set_float32_matmul_precision("high")  # TF32 for what autocast leaves in fp32

        # ---------------- data
        bundle = load_dataset(cfg.data.name, root=cfg.data.root, seed=cfg.data.split_seed,
                              synthetic_size=cfg.data.synthetic_size or cfg.data.image_size, **cfg.data.options)
        class_names = list(bundle.class_names)
        num_classes = len(class_names)
        for split in ("train", "val"):
            if len(bundle.split(split)) == 0:
                raise LesionliteError(f"dataset {bundle.name!r} has an empty {split} split")
        if ckpt is not None and ckpt.get("data_fingerprint") not in (None, bundle.fingerprint):
            raise LesionliteError(
                f"cannot resume {run_dir}: dataset {bundle.name!r} is not the one the run started on "
                f"(fingerprint {bundle.fingerprint[:12]}… vs {str(ckpt['data_fingerprint'])[:12]}… in the checkpoint)"
            )
        train_counts = bundle.train.class_counts()
        tag = " [SYNTHETIC DATA]" if bundle.synthetic else ""
        log.info("data: %s%s — %s | train %d / val %d / test %d | %d classes, train counts %s",
                 bundle.name, tag, bundle.source, len(bundle.train), len(bundle.val), len(bundle.test),
                 num_classes, dict(zip(class_names, train_counts)))
        missing = [c for c, n in zip(class_names, train_counts) if n == 0]
        if missing:
            log.warning("WARNING: classes with no training image: %s (weight 0, cannot be learned)", missing)

        # ---------------- student (+ preprocessing)
        seed_everything(cfg.run.seed)
        dropout_kw = {} if cfg.model.dropout is None else {"dropout": cfg.model.dropout}
        student = build_model(cfg.model.arch, num_classes=num_classes, **dropout_kw)
        mean, std, weights_note = IMAGENET_MEAN, IMAGENET_STD, "random init"
        weights_meta: dict[str, Any] | None = None
        if ckpt is not None:
            pre = PreprocessConfig.from_dict(ckpt["preprocessing"])
            weights_note = str(ckpt.get("weights_note", "restored"))
            weights_meta = ckpt.get("weights_meta")
        else:
            teacher_pre = None
            if method_cls.needs_teacher and cfg.model.teacher:
                from lesionlite.manifest import read_manifest

                with contextlib.suppress(LesionliteError):
                    teacher_pre = read_manifest(cfg.model.teacher).preprocessing
            if cfg.model.weights:
                from distill.weights import load_imagenet_weights

                winfo = load_imagenet_weights(student, cfg.model.weights) or {}
                mean = tuple(winfo.get("mean", IMAGENET_MEAN))
                std = tuple(winfo.get("std", IMAGENET_STD))
                weights_note = f"ImageNet weights {cfg.model.weights}"
                weights_meta = {k: winfo.get(k) for k in ("path", "sha256", "source", "normalization_source",
                                                          "bn_folded")}
            elif teacher_pre is not None:  # a random-init student may as well share the teacher's normalisation
                mean, std = tuple(teacher_pre.mean), tuple(teacher_pre.std)
            pre = PreprocessConfig(input_size=cfg.data.image_size, resize_size=cfg.data.resize_size,
                                   mean=tuple(float(v) for v in mean), std=tuple(float(v) for v in std))
        bn_is_folded = bool((weights_meta or {}).get("bn_folded"))
        if bn_is_folded and cfg.model.folded_bn == "recalibrate" and ckpt is None:
            from distill.weights import recalibrate_folded_bn

            n_bn = recalibrate_folded_bn(student, _bn_calibration_batches(bundle.train, pre))
            log.info("weights have BatchNorm folded into the convolutions: recalibrated %d BatchNorm layers on "
                     "%d training images (model.folded_bn=recalibrate)", n_bn, BN_CALIBRATION_IMAGES)
        student.frozen_bn = bn_is_folded and cfg.model.folded_bn == "freeze"
        if student.frozen_bn:
            log.info("weights have BatchNorm folded into the convolutions: BatchNorm kept in eval mode while "
                     "training (model.folded_bn=freeze)")
        elif bn_is_folded and cfg.model.folded_bn == "train":
            log.warning("WARNING: weights have BatchNorm folded into the convolutions and model.folded_bn=train: "
                        "batch statistics will re-normalise the pretrained features")
        log.info("student: %s (%s), %.2fM parameters, input %dpx, mean %s std %s",
                 cfg.model.arch, weights_note, sum(p.numel() for p in student.parameters()) / 1e6,
                 pre.input_size, [round(v, 4) for v in pre.mean], [round(v, 4) for v in pre.std])
        student.to(device)
        if channels_last:
            student.to(memory_format=torch.channels_last)

        # ---------------- teacher
        teacher, tman = None, None
        if method_cls.needs_teacher:
            teacher, tman = load_teacher(cfg, class_names, bundle.fingerprint, device)
            if channels_last:
                teacher.to(memory_format=torch.channels_last)
            if _adapt_teacher_input(teacher, pre, tman.preprocessing):
                log.info("teacher expects %dpx mean %s std %s: its inputs are re-normalised/resized on the fly",
                         tman.preprocessing.input_size, list(tman.preprocessing.mean), list(tman.preprocessing.std))
        elif cfg.model.teacher:
            log.warning("note: method %r does not use a teacher; --teacher %s is ignored", cfg.method_name,
                        cfg.model.teacher)

        # ---------------- loaders
        bs = cfg.optim.batch_size
        eval_bs = cfg.run.eval_batch_size or 2 * bs
        workers = resolve_workers(cfg.data.workers, device, cfg.run.threads)
        view_pre = _training_view_preprocessing(cfg, pre, tman)
        downscale_hook = None
        if view_pre.input_size != pre.input_size:
            downscale_hook = _install_student_downscale(student, pre.input_size)
            log.info("teacher sees its native %dpx: training views are made at %dpx and the student gets their "
                     "antialiased downscale to %dpx (model.teacher_input=native)", view_pre.input_size,
                     view_pre.input_size, pre.input_size)
        train_source, eval_sources = _cached_splits(cfg, bundle, pre, info, view_pre.input_size)
        train_ds = MultiViewDataset(train_source, train_transform(view_pre, cfg.data.augment),
                                    method_cls.num_views, method_cls.view_mode)
        sampler = torch.utils.data.DistributedSampler(train_ds, num_replicas=info.world_size, rank=info.rank,
                                                      shuffle=True, seed=cfg.run.seed, drop_last=False)
        shard = len(sampler)
        drop_last = shard >= bs  # never a 1-image tail batch (BatchNorm cannot train on it)
        loader_gen = torch.Generator()
        loader_kw: dict[str, Any] = dict(num_workers=workers, collate_fn=collate_views, worker_init_fn=_worker_init,
                                         pin_memory=False)
        if workers > 0:
            loader_kw["prefetch_factor"] = 4
        train_loader = torch.utils.data.DataLoader(train_ds, batch_size=min(bs, shard), sampler=sampler,
                                                   drop_last=drop_last, generator=loader_gen, **loader_kw)

        def eval_loader(split: str) -> torch.utils.data.DataLoader:
            mv = eval_sources.get(split) or MultiViewDataset(bundle.split(split), eval_transform(pre), 1, "independent")
            # cached eval tensors need no worker processes (nothing left to compute per item)
            kw = dict(loader_kw)
            if split in eval_sources:
                kw["num_workers"] = 0
                kw.pop("prefetch_factor", None)
            return torch.utils.data.DataLoader(mv, batch_size=eval_bs, sampler=ddp.ShardSampler(len(mv), info), **kw)

        val_loader = eval_loader("val")
        test_loader = eval_loader("test") if len(bundle.test) else None
        steps_per_epoch = len(train_loader)
        if cfg.run.max_steps_per_epoch:
            steps_per_epoch = min(steps_per_epoch, cfg.run.max_steps_per_epoch)
        if steps_per_epoch == 0:
            raise LesionliteError("the training split is too small for one batch")

        # ---------------- method
        ctx = MethodContext(num_classes=num_classes, class_counts=list(train_counts), num_train=len(bundle.train),
                            device=device, epochs=cfg.run.epochs, steps_per_epoch=steps_per_epoch)
        method = method_cls(student, teacher, cfg.method, ctx)
        method.to(device)
        if info.enabled and cfg.run.sync_bn:
            method = nn.SyncBatchNorm.convert_sync_batchnorm(method)
        params = [p for p in method.trainable_parameters()]
        optimizer = build_optimizer(cfg, method, params)
        scheduler, sched_when = build_scheduler(cfg, optimizer, steps_per_epoch)

        # ---------------- state
        start_epoch, global_step = 0, 0
        best_bal: float | None = None
        best_loss = math.inf
        best_epoch = 0
        best_state: dict[str, Any] | None = None
        bad_epochs = 0
        stopped_early = False
        history: list[dict[str, Any]] = []
        train_time, train_images = 0.0, 0
        prev_wall = 0.0
        if ckpt is not None:
            student.load_state_dict(ckpt["model"])
            if ckpt.get("method_state"):
                method.load_extra_state_dict(ckpt["method_state"])
            optimizer.load_state_dict(ckpt["optimizer"])
            if scheduler is not None and ckpt.get("scheduler") is not None:
                scheduler.load_state_dict(ckpt["scheduler"])
                if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
                    # recompute from this config's lambda (bit-identical when --epochs is unchanged;
                    # follows the longer schedule at once when --epochs was raised)
                    for g, base, fn in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
                        g["lr"] = base * fn(scheduler.last_epoch)
            start_epoch = int(ckpt["epoch"])
            global_step = int(ckpt["global_step"])
            b = ckpt.get("best") or {}
            best_bal, best_loss = b.get("balanced_accuracy"), float(b.get("val_loss", math.inf))
            best_epoch, best_state = int(b.get("epoch", 0)), b.get("state_dict")
            es = ckpt.get("early_stop") or {}
            bad_epochs, stopped_early = int(es.get("bad_epochs", 0)), bool(es.get("stopped", False))
            history = list(ckpt.get("history", []))
            tm = ckpt.get("timing") or {}
            train_time, train_images = float(tm.get("train_time_s", 0.0)), int(tm.get("train_images", 0))
            prev_wall = float(tm.get("wall_time_s", 0.0))
            _set_rng_state(ckpt.get("rng") or {})
            log.info("resumed %s at epoch %d/%d (step %d, best val bal-acc %s at epoch %d)", run_dir, start_epoch,
                     cfg.run.epochs, global_step, _fmt(best_bal), best_epoch)
            if info.is_main:  # the checkpoint's history is the truth: drop epochs logged after it was written
                from lesionlite.atomic import write_text_atomic

                write_text_atomic(run_dir / "train_log.jsonl", "".join(json.dumps(r) + "\n" for r in history))

        log.info("method %s | %s lr %g wd %g | schedule %s | batch %d×%d view(s)%s | %d epochs × %d steps | device %s%s",
                 cfg.method_name, cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay, cfg.schedule.name, bs,
                 method_cls.num_views, f" × {info.world_size} processes" if info.enabled else "", cfg.run.epochs,
                 steps_per_epoch, device, " (bf16 autocast)" if amp else "")

        # teacher sanity check: a wrong or weak teacher is the first thing to rule out
        teacher_val: dict[str, Any] | None = None
        if teacher is not None:
            from distill.metrics import classification_report, scalars

            tl, ty = predict(teacher, val_loader, device, amp, info, channels_last)
            teacher_val = scalars(classification_report(ty, tl, class_names=class_names), "val_")
            log.info("teacher %s (%s): val acc %s bal-acc %s", cfg.model.teacher, tman.architecture,
                     _fmt(teacher_val["val_accuracy"]), _fmt(teacher_val["val_balanced_accuracy"]))

        method.prepare(train_loader, val_loader)
        loss_module: nn.Module = _LossModule(method)
        if info.enabled:
            import warnings

            # Rank-local buffers (BN statistics, memory banks) must not be overwritten by rank 0's on
            # every forward: broadcast_buffers=False (its deprecation notice says to keep it for this).
            # Methods whose every trainable parameter gets a gradient each step may declare
            # ddp_find_unused_parameters = False (saves a graph traversal per step).
            find_unused = bool(getattr(method_cls, "ddp_find_unused_parameters", True))
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*broadcast_buffers.*", category=FutureWarning)
                loss_module = nn.parallel.DistributedDataParallel(
                    loss_module, device_ids=[device.index] if device.type == "cuda" else None,
                    broadcast_buffers=False, find_unused_parameters=find_unused,
                )

        # ---------------- epochs
        from tqdm.auto import tqdm

        from distill.metrics import classification_report, scalars

        epoch = start_epoch
        for epoch in range(start_epoch, cfg.run.epochs):
            if stopped_early:
                break
            ep_seed = derive_seed(cfg.run.seed, epoch, info.rank)
            seed_everything(ep_seed)
            loader_gen.manual_seed(ep_seed)
            sampler.set_epoch(epoch)
            method.train()
            lr_start = optimizer.param_groups[0]["lr"]  # the lr of the epoch's first step
            sums: dict[str, Any] = {}
            n_seen = 0
            correct: Any = 0
            has_logits = False
            t0 = time.time()
            bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.run.epochs}", leave=False,
                       disable=True if not (cfg.run.progress and info.is_main) else None, dynamic_ncols=True)
            nonfinite_at: int | None = None
            data_time = 0.0  # time spent waiting for the loader (torchvision's "data" meter)
            t_wait = time.perf_counter()
            for i, batch in enumerate(train_loader):
                data_time += time.perf_counter() - t_wait
                if i >= steps_per_epoch:
                    break
                batch = Batch(images=batch.images.to(device, non_blocking=True),
                              labels=batch.labels.to(device, non_blocking=True),
                              indices=batch.indices.to(device, non_blocking=True))
                nb = int(batch.labels.shape[0])
                with _autocast(device, amp):
                    loss, logs, logits = loss_module(batch, epoch, global_step)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.optim.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
                optimizer.step()
                if sched_when == "step":
                    scheduler.step()
                method.after_optimizer_step(global_step)
                global_step += 1
                # running sums stay on the device (no sync per step)
                ld = loss.detach().float() * nb
                sums["loss"] = sums.get("loss", 0) + ld
                for k, v in (logs or {}).items():
                    v = v.detach().float() if torch.is_tensor(v) else float(v)
                    sums[k] = sums.get(k, 0) + v * nb
                if logits is not None:
                    has_logits = True
                    correct = correct + (logits.detach().argmax(1) == batch.labels).sum()
                n_seen += nb
                bar.update(1)
                if (i % 20 == 0 or i == steps_per_epoch - 1) and bar.disable is False:
                    cur = float(sums["loss"]) / n_seen
                    bar.set_postfix(loss=f"{cur:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
                if not info.enabled and i % 50 == 0 and not torch.isfinite(loss.detach()).item():
                    nonfinite_at = global_step - 1
                    break
                t_wait = time.perf_counter()
            bar.close()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            ep_time = time.time() - t0
            keys = sorted(sums)
            local = [float(sums[k]) for k in keys] + [float(correct), float(n_seen), ep_time, data_time]
            tot = ddp.all_reduce_sum(local, info)
            n_all = max(1.0, tot[len(keys) + 1])
            train_logs = {k: tot[j] / n_all for j, k in enumerate(keys)}
            train_acc = tot[len(keys)] / n_all if has_logits else None
            train_time += ep_time
            train_images += int(tot[len(keys) + 1])
            if nonfinite_at is not None or not all(math.isfinite(v) for v in train_logs.values()):
                raise LesionliteError(
                    f"training diverged: the loss became non-finite in epoch {epoch + 1}"
                    f"{f' (step {nonfinite_at})' if nonfinite_at is not None else ''}; lower --lr, set "
                    f"--set optim.grad_clip=1.0, or resume from {run_dir / CHECKPOINT_NAME} (the last good epoch)"
                )

            # ---- validation
            vl, vy = predict(student, val_loader, device, amp, info, channels_last)
            vrep = classification_report(vy, vl, class_names=class_names)
            val_loss, val_bal = vrep["nll"], vrep["balanced_accuracy"]
            improved = _better(val_bal, val_loss, best_bal, best_loss)
            if improved:
                best_bal, best_loss, best_epoch = val_bal, val_loss, epoch + 1
                best_state = _cpu_state(method.student_state_for_export())
                bad_epochs = 0
            else:
                bad_epochs += 1
            lr_now = lr_start
            if sched_when == "epoch":
                mon = val_loss if cfg.schedule.plateau_monitor == "val_loss" else (val_bal or 0.0)
                scheduler.step(mon)
            if cfg.run.early_stop and bad_epochs >= cfg.run.early_stop:
                stopped_early = True
            ips = int(tot[len(keys) + 1]) / max(tot[len(keys) + 2] / info.world_size, 1e-9)  # all ranks' images / mean time
            data_s = tot[len(keys) + 3] / info.world_size
            compute_ips = int(tot[len(keys) + 1]) / max(tot[len(keys) + 2] / info.world_size - data_s, 1e-9)
            rec = {
                "epoch": epoch + 1, "step": global_step, "lr": lr_now,
                **{f"train_{k}": v for k, v in train_logs.items()}, "train_acc": train_acc,
                **scalars(vrep, "val_"), "val_loss": val_loss,
                "best": improved, "best_epoch": best_epoch, "time_s": ep_time, "images_per_s": ips,
                "data_time_s": data_s, "compute_images_per_s": compute_ips,
            }
            history.append(rec)
            terms = " ".join(f"{k} {_fmt(v)}" for k, v in train_logs.items() if k != "loss")
            log.info("epoch %d/%d  lr %.2e  loss %s%s  acc %s | val loss %s acc %s bal-acc %s f1 %s ece %s | %.1fs "
                     "(data %.0f%%) %.0f img/s%s",
                     epoch + 1, cfg.run.epochs, lr_now, _fmt(train_logs.get("loss")), f" ({terms})" if terms else "",
                     _fmt(train_acc, 3), _fmt(val_loss), _fmt(vrep["accuracy"], 3), _fmt(val_bal, 3),
                     _fmt(vrep["macro_f1"], 3), _fmt(vrep["ece"], 3), ep_time, 100 * data_s / max(ep_time, 1e-9), ips,
                     "  *best" if improved else "")
            if info.is_main:
                with open(run_dir / "train_log.jsonl", "a", encoding="utf-8") as fh:
                    fh.write(json.dumps(rec) + "\n")
                save_checkpoint(run_dir / CHECKPOINT_NAME, {
                    "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
                    "epoch": epoch + 1, "global_step": global_step,
                    "model": _cpu_state(student.state_dict()),
                    "method_state": _cpu_state(method.extra_state_dict()),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "config": cfg.to_dict(),
                    "preprocessing": pre.to_dict(),
                    "weights_note": weights_note,
                    "weights_meta": weights_meta,
                    "best": {"balanced_accuracy": best_bal, "val_loss": best_loss, "epoch": best_epoch,
                             "state_dict": best_state},
                    "early_stop": {"bad_epochs": bad_epochs, "stopped": stopped_early},
                    "history": history,
                    "rng": _rng_state(),
                    "timing": {"train_time_s": train_time, "train_images": train_images,
                               "wall_time_s": prev_wall + time.time() - t_start},
                    "data_fingerprint": bundle.fingerprint,
                })
            if on_epoch is not None:
                on_epoch(rec)
            if stopped_early:
                log.info("early stop: no better val balanced accuracy for %d epochs (best %s at epoch %d)",
                         bad_epochs, _fmt(best_bal), best_epoch)
                break
        ddp.barrier(info)

        # ---------------- final evaluation with the best weights
        if downscale_hook is not None:
            downscale_hook.remove()
        if best_state is None:
            raise LesionliteError("no epoch was run (run.epochs already reached?); nothing to evaluate")
        student.load_state_dict(best_state)
        from distill.calibration import calibrate

        vl, vy = predict(student, val_loader, device, amp, info, channels_last)
        cal = calibrate(vl, vy)
        temperature = cal.temperature
        ood = fit_ood(val_loader, pre, info, vl, temperature)
        val_rep = classification_report(vy, vl, class_names=class_names)
        val_rep_cal = classification_report(vy, vl, class_names=class_names, temperature=temperature)
        flat: dict[str, Any] = {**scalars(val_rep, "val_")}
        flat["val_ece_calibrated"], flat["val_nll_calibrated"] = val_rep_cal["ece"], val_rep_cal["nll"]
        test_rep = test_rep_cal = None
        tl = ty = None
        if test_loader is not None:
            tl, ty = predict(student, test_loader, device, amp, info, channels_last)
            test_rep = classification_report(ty, tl, class_names=class_names)
            test_rep_cal = classification_report(ty, tl, class_names=class_names, temperature=temperature)
            flat.update(scalars(test_rep, "test_"))
            flat["test_ece_calibrated"], flat["test_nll_calibrated"] = test_rep_cal["ece"], test_rep_cal["nll"]
        else:
            log.warning("WARNING: dataset %r has no test split; only validation metrics are reported", bundle.name)
        wall = prev_wall + time.time() - t_start
        ips = train_images / max(train_time, 1e-9)
        epochs_run = len(history)
        log.info("best epoch %d: val bal-acc %s | test acc %s bal-acc %s macro-F1 %s AUC %s | ECE %s → %s (T=%.3f)",
                 best_epoch, _fmt(flat.get("val_balanced_accuracy"), 3), _fmt(flat.get("test_accuracy"), 3),
                 _fmt(flat.get("test_balanced_accuracy"), 3), _fmt(flat.get("test_macro_f1"), 3),
                 _fmt(flat.get("test_macro_auc"), 3), _fmt(flat.get("test_ece"), 3),
                 _fmt(flat.get("test_ece_calibrated"), 3), temperature)

        result = TrainResult(run_dir=run_dir, method=cfg.method_name, architecture=cfg.model.arch, metrics=flat,
                             best_epoch=best_epoch, epochs_run=epochs_run, stopped_early=stopped_early,
                             wall_time_s=wall, images_per_s=ips, temperature=temperature,
                             synthetic=bool(bundle.synthetic), history=history, ood=ood)
        if info.is_main:
            _write_artifacts(cfg, result, student, pre, bundle, cal, val_rep, val_rep_cal, test_rep, test_rep_cal,
                             (vl, vy), (tl, ty), tman, teacher_val, weights_note, weights_meta)
        ddp.barrier(info)
        return result


def _training_view_preprocessing(cfg: TrainConfig, pre: PreprocessConfig, tman: Any) -> PreprocessConfig:
    """The preprocessing training views are made with: the student's, or (``model.teacher_input=native``
    and a teacher with a larger input) the student's normalisation at the teacher's input size."""
    if cfg.model.teacher_input != "native" or tman is None:
        return pre
    t_size = int(tman.preprocessing.input_size)
    if t_size <= pre.input_size:
        return pre
    return PreprocessConfig.from_dict({**pre.to_dict(), "input_size": t_size, "resize_size": None})


def _install_student_downscale(student: nn.Module, size: int) -> Any:
    """A pre-hook on the student's feature extractor that shrinks larger training views to ``size``.

    Antialiased bilinear, on the normalised tensor (normalisation is affine per channel, so this
    equals downscaling the pixels first). Inputs already at ``size`` (evaluation) pass untouched.
    Returns the hook handle (removed before the student is evaluated and saved).
    """
    def hook(_module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        x = args[0]
        if x.shape[-1] != size or x.shape[-2] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return (x, *args[1:])

    target = getattr(student, "features", None)
    return (target if isinstance(target, nn.Module) else student).register_forward_pre_hook(hook)


def _cached_splits(cfg: TrainConfig, bundle: Any, pre: PreprocessConfig,
                   info: ddp.DistInfo, view_size: int | None = None) -> tuple[Any, dict[str, Any]]:
    """The training source and the eval loaders' datasets, decoded once when ``data.cache`` is on.

    Returns ``(train_source, {split: dataset})``; without the cache the train source is the split
    itself and the dict is empty (the loaders then decode every epoch).
    """
    if not cfg.data.cache:
        return bundle.train, {}
    from distill.data.cache import CachedViewDataset, DecodedImageCache, TensorCache
    from distill.data.transforms import eval_transform

    t0 = time.time()
    side = cfg.data.cache_short_side or 2 * max(pre.input_size, view_size or 0)
    show = cfg.run.progress and info.is_main
    train_source = DecodedImageCache(bundle.train, side, progress=show, desc="decode train")
    evals: dict[str, Any] = {}
    nbytes = train_source.nbytes
    for split in ("val", "test"):
        if len(bundle.split(split)):
            tc = TensorCache(bundle.split(split), eval_transform(pre), progress=show, desc=f"preprocess {split}")
            evals[split] = CachedViewDataset(tc)
            nbytes += tc.nbytes
    log.info("data cache: %d training images decoded once (shorter side <= %d px) + val/test eval tensors, "
             "%.0f MB in RAM, %.1f s (data.cache=false turns it off)", len(train_source), side, nbytes / 1e6,
             time.time() - t0)
    return train_source, evals


def data_spec(cfg: TrainConfig, bundle: Any) -> str:
    """A spec with which ``load_dataset(spec, root, seed=split_seed, **options)`` rebuilds this data.

    The synthetic set depends on its image size, which the loader takes from ``synthetic:SIZE``.
    """
    spec = cfg.data.name
    if bundle.name == "synthetic" and ":" not in spec:
        spec = f"synthetic:{cfg.data.synthetic_size or cfg.data.image_size}"
    return spec


def _write_artifacts(cfg: TrainConfig, result: TrainResult, student: nn.Module, pre: PreprocessConfig, bundle: Any,
                     cal: Any, val_rep: dict, val_rep_cal: dict, test_rep: dict | None, test_rep_cal: dict | None,
                     val_xy: tuple, test_xy: tuple, tman: Any, teacher_val: dict | None, weights_note: str,
                     weights_meta: dict[str, Any] | None = None) -> None:
    from distill import reports
    from distill.artifacts import save_student
    from lesionlite.manifest import Manifest

    run_dir = result.run_dir
    data_info = {"name": bundle.name, "fingerprint": bundle.fingerprint, "synthetic": bool(bundle.synthetic),
                 "source": bundle.source, "spec": data_spec(cfg, bundle), "split_seed": cfg.data.split_seed,
                 "options": dict(cfg.data.options), "class_counts": {
                     s: bundle.split(s).class_counts() for s in ("train", "val", "test")}}
    extra: dict[str, Any] = {
        "method": cfg.method_name, "method_config": cfg.to_dict()["method"], "epochs": cfg.run.epochs,
        "epochs_run": result.epochs_run, "best_epoch": result.best_epoch, "stopped_early": result.stopped_early,
        "seed": cfg.run.seed, "wall_time_s": round(result.wall_time_s, 2),
        "images_per_s": round(result.images_per_s, 2), "optimizer": cfg.optim.name, "lr": cfg.optim.lr,
        "schedule": cfg.schedule.name, "batch_size": cfg.optim.batch_size, "weights": weights_note,
        "torch": torch.__version__,
    }
    if weights_meta:
        extra["weights_info"] = weights_meta
    if tman is not None:
        extra["teacher"] = {"run_dir": str(cfg.model.teacher), "architecture": tman.architecture,
                            "val_metrics": teacher_val}
    manifest = Manifest(
        kind="checkpoint", architecture=cfg.model.arch, class_names=list(bundle.class_names), preprocessing=pre,
        input={"layout": "NCHW", "dtype": "float32", "shape": [1, 3, pre.input_size, pre.input_size],
               "quantization": None},
        calibration={"temperature": float(result.temperature), **({"ood": result.ood} if result.ood else {})},
        metrics={k: v for k, v in result.metrics.items()} | {"best_epoch": result.best_epoch},
        data=data_info, extra=extra,
    )
    save_student(run_dir, student, manifest)

    title = f"{cfg.method_name} · {cfg.model.arch} · {bundle.name}" + (" · SYNTHETIC DATA" if bundle.synthetic else "")
    metrics_doc = {
        "synthetic": bool(bundle.synthetic),
        "note": ("SYNTHETIC DATA: generated images, not real dermoscopy; these numbers say nothing about "
                 "clinical performance") if bundle.synthetic else None,
        "title": title, "method": cfg.method_name, "architecture": cfg.model.arch,
        "data": bundle.summary() if hasattr(bundle, "summary") else data_info,
        "best_epoch": result.best_epoch, "epochs_run": result.epochs_run, "stopped_early": result.stopped_early,
        "calibration": cal.to_dict(),
        "summary": result.metrics,
        "val": val_rep, "val_calibrated": val_rep_cal, "test": test_rep, "test_calibrated": test_rep_cal,
        "teacher": extra.get("teacher"),
        "wall_time_s": result.wall_time_s, "images_per_s": result.images_per_s,
        "history": result.history,
    }
    reports.write_metrics_json(run_dir / "metrics.json", metrics_doc)
    if not cfg.run.plots:
        return
    try:
        reports.plot_training_curves(result.history, run_dir / "curves.png", title=title)
        rep, xy = (test_rep, test_xy) if test_rep is not None else (val_rep, val_xy)
        split = "test" if test_rep is not None else "val"
        reports.plot_confusion_matrix(np.asarray(rep["confusion_matrix"]), list(bundle.class_names),
                                      run_dir / "confusion_matrix.png", title=f"{title} · {split}")
        reports.plot_reliability(xy[1], xy[0], result.temperature, run_dir / "reliability.png",
                                 title=f"{title} · {split}")
    except Exception as exc:  # plots are a convenience; never lose a trained model over them
        log.warning("could not draw plots: %s: %s", type(exc).__name__, exc)
    log.info("wrote %s (student.pt, manifest.json, metrics.json, curves.png, confusion_matrix.png, reliability.png)",
             run_dir)
