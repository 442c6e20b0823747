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
import json
import logging
import math
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from distill import ddp, reports
from distill.artifacts import save_student
from distill.calibration import CalibrationResult, calibrate
from distill.config import TrainConfig
from distill.data.base import DatasetBundle
from distill.methods.base import Batch, missing_teacher_error
from distill.methods.registry import get_method
from distill.metrics import classification_report, scalars
from distill.models import get_model_spec
from distill.run_setup import Run, build_run
from distill.runtime import (
    autocast,
    derive_seed,
    resolve_device,
    seed_everything,
)
from distill.train_state import (
    CHECKPOINT_NAME,
    TrainState,
    checkpoint_payload,
    cpu_state,
    restore,
    resumable_checkpoint,
    save_checkpoint,
)
from lesionlite.errors import LesionliteError
from lesionlite.fmt import fmt_value
from lesionlite.manifest import Manifest, portable_text, weights_spec
from lesionlite.ood import fit, image_statistics, unnormalize
from lesionlite.preprocessing import PreprocessConfig

log = logging.getLogger("distill.train")

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
# Evaluation
# ------------------------------------------------------------------------------------------------
def validation_image_statistics(loader: Any, pre: PreprocessConfig, info: ddp.DistInfo) -> np.ndarray:
    """:func:`lesionlite.ood.image_statistics` of every evaluation image (dataset order, gathered over ranks):
    what ``serve`` computes from the same preprocessed tensor, so the two cannot drift."""

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

    try:
        return fit(validation_image_statistics(loader, pre, info), val_logits, temperature)
    except (ValueError, np.linalg.LinAlgError) as exc:
        log.warning("WARNING: no out-of-distribution calibration (serve will not flag unlike images): %s", exc)
        return None


@torch.no_grad()
def predict(model: nn.Module, loader: Any, device: torch.device, amp: bool, info: ddp.DistInfo,
            channels_last: bool = False, desc: str = "eval", progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Logits (float32 [N, K], in dataset order) and labels of every sample, gathered over ranks."""

    was_training = model.training
    model.eval()
    logits_l, labels_l, idx_l = [], [], []
    for batch in tqdm(loader, desc=desc, leave=False, disable=True if not (progress and info.is_main) else None,
                      dynamic_ncols=True):
        x = batch.images[:, 0].to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp):
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
    return fmt_value(v, nd, missing="n/a")


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

    get_model_spec(cfg.model.arch)
    method_cls = get_method(cfg.method_name)
    if method_cls.needs_teacher:
        if not cfg.model.teacher:
            raise missing_teacher_error(cfg.method_name)
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
    """The run, step by step: build_run, restore, (train_one_epoch, evaluate, write_checkpoint)*, finalize."""
    session_start = time.time()
    run_dir = Path(cfg.run.out)
    device = resolve_device(cfg.run.device, info.local_rank, info.enabled)
    prepare_run_dir(run_dir, resume, overwrite, info.is_main)
    ddp.barrier(info)
    ckpt = resumable_checkpoint(cfg, run_dir) if resume else None

    with _log_handlers(run_dir if info.is_main else None, info.is_main, append=resume):
        if info.is_main:
            cfg.save(run_dir / "config.yaml")
        run = build_run(cfg, info, device, run_dir, ckpt)
        state = restore(run, ckpt)
        del ckpt
        _log_plan(run)
        teacher_val = check_teacher(run)
        run.method.prepare(run.loaders.train, run.loaders.val)
        loss_module = wrap_loss(run)
        for epoch in range(state.epoch, cfg.run.epochs):
            if state.stopped_early:
                break
            stats = train_one_epoch(run, loss_module, state, epoch)
            rec = evaluate(run, state, epoch, stats)
            if info.is_main:
                write_checkpoint(run, state, rec, session_start)
            if on_epoch is not None:
                on_epoch(rec)
            if state.stopped_early:
                log.info("early stop: no better val balanced accuracy for %d epochs (best %s at epoch %d)",
                         state.bad_epochs, _fmt(state.best_bal), state.best_epoch)
                break
        ddp.barrier(info)
        result = finalize(run, state, teacher_val, session_start)
        ddp.barrier(info)
        return result


def _log_plan(run: Run) -> None:
    cfg, info = run.cfg, run.info
    log.info("method %s | %s lr %g wd %g | schedule %s | batch %d×%d view(s)%s | %d epochs × %d steps | device %s%s",
             cfg.method_name, cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay, cfg.schedule.name,
             cfg.optim.batch_size, run.method_cls.num_views, f" × {info.world_size} processes" if info.enabled else "",
             cfg.run.epochs, run.loaders.steps_per_epoch, run.device, " (bf16 autocast)" if run.amp else "")


def check_teacher(run: Run) -> dict[str, Any] | None:
    """The teacher's val metrics at the student's input: a wrong or weak teacher is the first thing to rule out.

    With ``model.teacher_input=native`` the teacher is distilled at its own (larger) input, so this
    figure (the student-sized val image upscaled to the teacher) understates it; the log line says
    so and quotes the teacher's own val figure from its manifest beside it.
    """
    if run.teacher is None:
        return None

    tl, ty = predict(run.teacher, run.loaders.val, run.device, run.amp, run.info, run.channels_last)
    teacher_val = scalars(classification_report(ty, tl, class_names=run.class_names), "val_")
    teacher_val["measured_at_input_px"] = run.pre.input_size
    native = run.loaders.downscale_hook is not None
    own = (run.tman.metrics or {}).get("val_balanced_accuracy")
    log.info("teacher %s (%s): val acc %s bal-acc %s%s", run.cfg.model.teacher, run.tman.architecture,
             _fmt(teacher_val["val_accuracy"]), _fmt(teacher_val["val_balanced_accuracy"]),
             f" at the student's {run.pre.input_size}px (distilled at its native "
             f"{run.tman.preprocessing.input_size}px, where its manifest says val bal-acc {_fmt(own)})" if native else "")
    return teacher_val


def wrap_loss(run: Run) -> nn.Module:
    """``method.training_loss`` as a module, wrapped in DDP when distributed."""
    loss_module: nn.Module = _LossModule(run.method)
    if not run.info.enabled:
        return loss_module

    # Rank-local buffers (BN statistics, memory banks) must not be overwritten by rank 0's on
    # every forward: broadcast_buffers=False (its deprecation notice says to keep it for this).
    # Methods whose every trainable parameter gets a gradient each step may declare
    # ddp_find_unused_parameters = False (saves a graph traversal per step).
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*broadcast_buffers.*", category=FutureWarning)
        return nn.parallel.DistributedDataParallel(
            loss_module, device_ids=[run.device.index] if run.device.type == "cuda" else None,
            broadcast_buffers=False, find_unused_parameters=bool(run.method_cls.ddp_find_unused_parameters),
        )


@dataclass
class EpochStats:
    """One training epoch, reduced over ranks."""

    logs: dict[str, float]  # mean per image of the loss and every logged term
    accuracy: float | None  # training accuracy when the method returns logits
    time_s: float  # this process's epoch time
    mean_time_s: float  # mean over ranks (the images/s figures divide all ranks' images by it)
    images: int
    data_time_s: float  # mean over ranks of the time spent waiting for the loader
    lr: float  # the lr of the epoch's first step


def train_one_epoch(run: Run, loss_module: nn.Module, state: TrainState, epoch: int) -> EpochStats:
    """One pass over ``steps_per_epoch`` batches, reseeded from ``(seed, epoch, rank)`` (exact resume)."""

    cfg, info, ld = run.cfg, run.info, run.loaders
    ep_seed = derive_seed(cfg.run.seed, epoch, info.rank)
    seed_everything(ep_seed)
    ld.generator.manual_seed(ep_seed)
    ld.sampler.set_epoch(epoch)
    run.method.train()
    lr_start = run.optimizer.param_groups[0]["lr"]
    acc = _EpochAccumulator()
    t0 = time.time()
    bar = tqdm(total=ld.steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.run.epochs}", leave=False,
               disable=True if not (cfg.run.progress and info.is_main) else None, dynamic_ncols=True)
    nonfinite_at: int | None = None
    data_time = 0.0  # time spent waiting for the loader (torchvision's "data" meter)
    t_wait = time.perf_counter()
    for i, batch in enumerate(ld.train):
        data_time += time.perf_counter() - t_wait
        if i >= ld.steps_per_epoch:
            break
        loss = _train_step(run, loss_module, batch, epoch, state, acc)
        bar.update(1)
        if (i % 20 == 0 or i == ld.steps_per_epoch - 1) and bar.disable is False:
            bar.set_postfix(loss=f"{acc.mean_loss():.4f}", lr=f"{run.optimizer.param_groups[0]['lr']:.2e}")
        if not info.enabled and i % 50 == 0 and not torch.isfinite(loss).item():
            nonfinite_at = state.global_step - 1
            break
        t_wait = time.perf_counter()
    bar.close()
    if run.device.type == "cuda":
        torch.cuda.synchronize(run.device)
    stats = acc.reduce(time.time() - t0, data_time, lr_start, info)
    state.train_time += stats.time_s
    state.train_images += stats.images
    if nonfinite_at is not None or not all(math.isfinite(v) for v in stats.logs.values()):
        raise LesionliteError(
            f"training diverged: the loss became non-finite in epoch {epoch + 1}"
            f"{f' (step {nonfinite_at})' if nonfinite_at is not None else ''}; lower --lr, set "
            f"--set optim.grad_clip=1.0, or resume from {run.run_dir / CHECKPOINT_NAME} (the last good epoch)"
        )
    return stats


def _train_step(run: Run, loss_module: nn.Module, batch: Any, epoch: int, state: TrainState,
                acc: _EpochAccumulator) -> torch.Tensor:
    """Forward, backward, (clip), optimizer and per-step scheduler; returns the detached loss."""

    device = run.device
    batch = Batch(images=batch.images.to(device, non_blocking=True), labels=batch.labels.to(device, non_blocking=True),
                  indices=batch.indices.to(device, non_blocking=True))
    with autocast(device, run.amp):
        loss, logs, logits = loss_module(batch, epoch, state.global_step)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if run.cfg.optim.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(run.params, run.cfg.optim.grad_clip)
    run.optimizer.step()
    if run.sched_when == "step":
        run.scheduler.step()
    run.method.after_optimizer_step(state.global_step)
    state.global_step += 1
    acc.add(loss.detach(), logs, logits, batch.labels)
    return loss.detach()


class _EpochAccumulator:
    """Per-image running sums of the loss and logged terms, kept on the device (no sync per step)."""

    def __init__(self) -> None:
        self.sums: dict[str, Any] = {}
        self.n = 0
        self.correct: Any = 0
        self.has_logits = False

    def add(self, loss: torch.Tensor, logs: dict[str, Any] | None, logits: torch.Tensor | None,
            labels: torch.Tensor) -> None:
        nb = int(labels.shape[0])
        self.sums["loss"] = self.sums.get("loss", 0) + loss.float() * nb
        for k, v in (logs or {}).items():
            v = v.detach().float() if torch.is_tensor(v) else float(v)
            self.sums[k] = self.sums.get(k, 0) + v * nb
        if logits is not None:
            self.has_logits = True
            self.correct = self.correct + (logits.detach().argmax(1) == labels).sum()
        self.n += nb

    def mean_loss(self) -> float:
        return float(self.sums["loss"]) / max(1, self.n)

    def reduce(self, time_s: float, data_time_s: float, lr: float, info: ddp.DistInfo) -> EpochStats:
        keys = sorted(self.sums)
        local = [float(self.sums[k]) for k in keys] + [float(self.correct), float(self.n), time_s, data_time_s]
        tot = ddp.all_reduce_sum(local, info)
        k = len(keys)
        n_all = max(1.0, tot[k + 1])
        return EpochStats(logs={key: tot[j] / n_all for j, key in enumerate(keys)},
                          accuracy=tot[k] / n_all if self.has_logits else None, time_s=time_s,
                          mean_time_s=tot[k + 2] / info.world_size, images=int(tot[k + 1]),
                          data_time_s=tot[k + 3] / info.world_size, lr=lr)


def evaluate(run: Run, state: TrainState, epoch: int, stats: EpochStats) -> dict[str, Any]:
    """Validate the student, keep the best weights, step a plateau schedule, decide early stopping,
    and return (and log) the epoch's record."""

    cfg, info = run.cfg, run.info
    vl, vy = predict(run.student, run.loaders.val, run.device, run.amp, info, run.channels_last)
    vrep = classification_report(vy, vl, class_names=run.class_names)
    val_loss, val_bal = vrep["nll"], vrep["balanced_accuracy"]
    improved = _better(val_bal, val_loss, state.best_bal, state.best_loss)
    if improved:
        state.best_bal, state.best_loss, state.best_epoch = val_bal, val_loss, epoch + 1
        state.best_state = cpu_state(run.method.student_state_for_export())
        state.bad_epochs = 0
    else:
        state.bad_epochs += 1
    if run.sched_when == "epoch":
        run.scheduler.step(val_loss if cfg.schedule.plateau_monitor == "val_loss" else (val_bal or 0.0))
    if cfg.run.early_stop and state.bad_epochs >= cfg.run.early_stop:
        state.stopped_early = True
    state.epoch = epoch + 1
    mean_time = max(stats.mean_time_s, 1e-9)
    rec = {
        "epoch": epoch + 1, "step": state.global_step, "lr": stats.lr,
        **{f"train_{k}": v for k, v in stats.logs.items()}, "train_acc": stats.accuracy,
        **scalars(vrep, "val_"), "val_loss": val_loss,
        "best": improved, "best_epoch": state.best_epoch, "time_s": stats.time_s,
        "images_per_s": stats.images / mean_time, "data_time_s": stats.data_time_s,
        "compute_images_per_s": stats.images / max(mean_time - stats.data_time_s, 1e-9),
    }
    state.history.append(rec)
    terms = " ".join(f"{k} {_fmt(v)}" for k, v in stats.logs.items() if k != "loss")
    log.info("epoch %d/%d  lr %.2e  loss %s%s  acc %s | val loss %s acc %s bal-acc %s f1 %s ece %s | %.1fs "
             "(data %.0f%%) %.0f img/s%s",
             epoch + 1, cfg.run.epochs, stats.lr, _fmt(stats.logs.get("loss")), f" ({terms})" if terms else "",
             _fmt(stats.accuracy, 3), _fmt(val_loss), _fmt(vrep["accuracy"], 3), _fmt(val_bal, 3),
             _fmt(vrep["macro_f1"], 3), _fmt(vrep["ece"], 3), stats.time_s,
             100 * stats.data_time_s / max(stats.time_s, 1e-9), rec["images_per_s"], "  *best" if improved else "")
    return rec


def write_checkpoint(run: Run, state: TrainState, rec: dict[str, Any], session_start: float) -> None:
    """Append the epoch's record to ``train_log.jsonl`` and write ``last.pt`` atomically (main process)."""
    with open(run.run_dir / "train_log.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps(rec) + "\n")
    save_checkpoint(run.run_dir / CHECKPOINT_NAME, checkpoint_payload(run, state, session_start))


def finalize(run: Run, state: TrainState, teacher_val: dict[str, Any] | None, session_start: float) -> TrainResult:
    """Reload the best weights, fit the temperature and the OOD scores on val, evaluate val and test,
    and write the artifact, metrics and plots (main process)."""

    if run.loaders.downscale_hook is not None:
        run.loaders.downscale_hook.remove()
    if state.best_state is None:
        raise LesionliteError("no epoch was run (run.epochs already reached?); nothing to evaluate")
    run.student.load_state_dict(state.best_state)
    vl, vy = predict(run.student, run.loaders.val, run.device, run.amp, run.info, run.channels_last)
    cal = calibrate(vl, vy)
    ood = fit_ood(run.loaders.val, run.pre, run.info, vl, cal.temperature)
    evals = _final_reports(run, (vl, vy), cal.temperature)
    flat = evals.pop("flat")
    log.info("best epoch %d: val bal-acc %s | test acc %s bal-acc %s macro-F1 %s AUC %s | ECE %s → %s (T=%.3f)",
             state.best_epoch, _fmt(flat.get("val_balanced_accuracy"), 3), _fmt(flat.get("test_accuracy"), 3),
             _fmt(flat.get("test_balanced_accuracy"), 3), _fmt(flat.get("test_macro_f1"), 3),
             _fmt(flat.get("test_macro_auc"), 3), _fmt(flat.get("test_ece"), 3),
             _fmt(flat.get("test_ece_calibrated"), 3), cal.temperature)
    cfg = run.cfg
    result = TrainResult(run_dir=run.run_dir, method=cfg.method_name, architecture=cfg.model.arch, metrics=flat,
                         best_epoch=state.best_epoch, epochs_run=len(state.history),
                         stopped_early=state.stopped_early, wall_time_s=state.prev_wall + time.time() - session_start,
                         images_per_s=state.train_images / max(state.train_time, 1e-9), temperature=cal.temperature,
                         synthetic=bool(run.bundle.synthetic), history=state.history, ood=ood)
    if run.info.is_main:
        _write_artifacts(run, result, cal, evals, (vl, vy), teacher_val)
    return result


def _final_reports(run: Run, val_xy: tuple[np.ndarray, np.ndarray], temperature: float) -> dict[str, Any]:
    """Val and test classification reports, raw and at ``temperature``, and their flat scalars."""

    names = run.class_names
    vl, vy = val_xy
    out: dict[str, Any] = {"val": classification_report(vy, vl, class_names=names),
                           "val_cal": classification_report(vy, vl, class_names=names, temperature=temperature),
                           "test": None, "test_cal": None, "test_xy": (None, None)}
    flat: dict[str, Any] = {**scalars(out["val"], "val_")}
    flat["val_ece_calibrated"], flat["val_nll_calibrated"] = out["val_cal"]["ece"], out["val_cal"]["nll"]
    if run.loaders.test is not None:
        tl, ty = predict(run.student, run.loaders.test, run.device, run.amp, run.info, run.channels_last)
        out["test"] = classification_report(ty, tl, class_names=names)
        out["test_cal"] = classification_report(ty, tl, class_names=names, temperature=temperature)
        out["test_xy"] = (tl, ty)
        flat.update(scalars(out["test"], "test_"))
        flat["test_ece_calibrated"], flat["test_nll_calibrated"] = out["test_cal"]["ece"], out["test_cal"]["nll"]
    else:
        log.warning("WARNING: dataset %r has no test split; only validation metrics are reported", run.bundle.name)
    out["flat"] = flat
    return out


def data_spec(cfg: TrainConfig, bundle: DatasetBundle) -> str:
    """A spec with which ``load_dataset(spec, root, seed=split_seed, **options)`` rebuilds this data.

    The synthetic set depends on its image size, which the loader takes from ``synthetic:SIZE``.
    """
    spec = cfg.data.name
    if bundle.name == "synthetic" and ":" not in spec:
        spec = f"synthetic:{cfg.data.synthetic_size or cfg.data.image_size}"
    return spec


def _write_artifacts(run: Run, result: TrainResult, cal: CalibrationResult, evals: dict[str, Any], val_xy: tuple,
                     teacher_val: dict | None) -> None:
    """The student, its manifest, metrics.json and the plots (``evals``: :func:`_final_reports`' dict)."""
    cfg, student, pre, bundle, tman = run.cfg, run.student, run.pre, run.bundle, run.tman
    val_rep, val_rep_cal, test_rep, test_rep_cal = evals["val"], evals["val_cal"], evals["test"], evals["test_cal"]
    test_xy = evals["test_xy"]
    run_dir = result.run_dir
    data_info = {"name": bundle.name, "fingerprint": bundle.fingerprint, "synthetic": bool(bundle.synthetic),
                 "description": portable_text(bundle.source), "spec": data_spec(cfg, bundle),
                 "split_seed": cfg.data.split_seed,
                 "options": dict(cfg.data.options), "class_counts": {
                     s: bundle.split(s).class_counts() for s in ("train", "val", "test")}}
    extra: dict[str, Any] = {
        "method": cfg.method_name, "method_config": cfg.to_dict()["method"], "epochs": cfg.run.epochs,
        "epochs_run": result.epochs_run, "best_epoch": result.best_epoch, "stopped_early": result.stopped_early,
        "seed": cfg.run.seed, "wall_time_s": round(result.wall_time_s, 2),
        "images_per_s": round(result.images_per_s, 2), "optimizer": cfg.optim.name, "lr": cfg.optim.lr,
        "schedule": cfg.schedule.name, "batch_size": cfg.optim.batch_size, "weights": portable_text(run.weights_note),
        "torch": torch.__version__,
    }
    if tman is not None:
        extra["teacher"] = {"run_dir": str(cfg.model.teacher), "architecture": tman.architecture,
                            "val_metrics": teacher_val}
    manifest = Manifest(
        kind="checkpoint", architecture=cfg.model.arch, class_names=list(bundle.class_names), preprocessing=pre,
        input={"layout": "NCHW", "dtype": "float32", "shape": [1, 3, pre.input_size, pre.input_size],
               "quantization": None},
        output={"dtype": "float32", "shape": [1, len(bundle.class_names)], "quantization": None, "kind": "logits"},
        precision="fp32", parameters=sum(p.numel() for p in student.parameters()),
        weights=weights_spec(run.weights_meta) if run.weights_meta else None,
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
