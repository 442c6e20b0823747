"""What a training run carries from epoch to epoch (:class:`TrainState`) and how it is checkpointed.

``last.pt`` holds the model, method state, optimizer, scheduler, best weights, early-stopping
state, history, RNG states and timing, loadable with ``torch.load(weights_only=True)``.
:func:`restore` turns it back into the live objects of a :class:`~distill.run_setup.Run` and a
:class:`TrainState`; :func:`checkpoint_payload` is its inverse.
"""
from __future__ import annotations

import copy
import json
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from distill.config import TrainConfig, config_from_dict, resume_differences
from lesionlite.atomic import atomic_path, write_text_atomic
from lesionlite.errors import LesionliteError

if TYPE_CHECKING:
    from distill.run_setup import Run

log = logging.getLogger("distill.train")

CHECKPOINT_NAME = "last.pt"
CHECKPOINT_FORMAT = "lesionlite-train-checkpoint"
CHECKPOINT_VERSION = 1


@dataclass
class TrainState:
    """The loop's progress: epochs done, the best epoch so far and its weights, early stopping, timing."""

    epoch: int = 0  # epochs finished
    global_step: int = 0
    best_bal: float | None = None
    best_loss: float = math.inf
    best_epoch: int = 0
    best_state: dict[str, Any] | None = None
    bad_epochs: int = 0
    stopped_early: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)
    train_time: float = 0.0  # seconds inside training epochs (all of this run's sessions)
    train_images: int = 0
    prev_wall: float = 0.0  # wall time of the sessions before this one (resume)


# ------------------------------------------------------------------------------------------------ files
def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
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


def resumable_checkpoint(cfg: TrainConfig, run_dir: Path) -> dict[str, Any]:
    """``RUN_DIR/last.pt``, after checking that ``cfg`` may continue it (else a clear error)."""
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
    return ckpt


# ------------------------------------------------------------------------------------------------ state
def cpu_state(sd: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.detach().to("cpu", copy=True) if torch.is_tensor(v) else copy.deepcopy(v)) for k, v in sd.items()}


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "python": [list(random.getstate()[1]), random.getstate()[0], random.getstate()[2]],
        "numpy": [np_state[0], torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
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


def restore(run: Run, ckpt: dict[str, Any] | None) -> TrainState:
    """A fresh :class:`TrainState`, or the checkpoint's with the run's live objects loaded from it."""
    if ckpt is None:
        return TrainState()
    run.student.load_state_dict(ckpt["model"])
    if ckpt.get("method_state"):
        run.method.load_extra_state_dict(ckpt["method_state"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    scheduler = run.scheduler
    if scheduler is not None and ckpt.get("scheduler") is not None:
        scheduler.load_state_dict(ckpt["scheduler"])
        if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
            # recompute from this config's lambda (bit-identical when --epochs is unchanged;
            # follows the longer schedule at once when --epochs was raised)
            for g, base, fn in zip(run.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
                g["lr"] = base * fn(scheduler.last_epoch)
    b = ckpt.get("best") or {}
    es = ckpt.get("early_stop") or {}
    tm = ckpt.get("timing") or {}
    state = TrainState(
        epoch=int(ckpt["epoch"]), global_step=int(ckpt["global_step"]),
        best_bal=b.get("balanced_accuracy"), best_loss=float(b.get("val_loss", math.inf)),
        best_epoch=int(b.get("epoch", 0)), best_state=b.get("state_dict"),
        bad_epochs=int(es.get("bad_epochs", 0)), stopped_early=bool(es.get("stopped", False)),
        history=list(ckpt.get("history", [])), train_time=float(tm.get("train_time_s", 0.0)),
        train_images=int(tm.get("train_images", 0)), prev_wall=float(tm.get("wall_time_s", 0.0)),
    )
    set_rng_state(ckpt.get("rng") or {})
    best = "n/a" if state.best_bal is None else f"{state.best_bal:.4f}"
    log.info("resumed %s at epoch %d/%d (step %d, best val bal-acc %s at epoch %d)", run.run_dir, state.epoch,
             run.cfg.run.epochs, state.global_step, best, state.best_epoch)
    if run.info.is_main:  # the checkpoint's history is the truth: drop epochs logged after it was written

        write_text_atomic(run.run_dir / "train_log.jsonl", "".join(json.dumps(r) + "\n" for r in state.history))
    return state


def checkpoint_payload(run: Run, state: TrainState, session_start: float) -> dict[str, Any]:
    """Everything :func:`restore` needs to continue after ``state.epoch`` epochs."""
    return {
        "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
        "epoch": state.epoch, "global_step": state.global_step,
        "model": cpu_state(run.student.state_dict()),
        "method_state": cpu_state(run.method.extra_state_dict()),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict() if run.scheduler is not None else None,
        "config": run.cfg.to_dict(),
        "preprocessing": run.pre.to_dict(),
        "weights_note": run.weights_note,
        "weights_meta": run.weights_meta,
        "best": {"balanced_accuracy": state.best_bal, "val_loss": state.best_loss, "epoch": state.best_epoch,
                 "state_dict": state.best_state},
        "early_stop": {"bad_epochs": state.bad_epochs, "stopped": state.stopped_early},
        "history": state.history,
        "rng": rng_state(),
        "timing": {"train_time_s": state.train_time, "train_images": state.train_images,
                   "wall_time_s": state.prev_wall + time.time() - session_start},
        "data_fingerprint": run.bundle.fingerprint,
    }
