"""Optimizers and learning-rate schedules of the training loop.

* :func:`build_optimizer`: SGD (momentum, Nesterov), Adam or AdamW over the method's trainable
  parameters, in two groups: weight decay on weights, none on biases and normalisation parameters
  (1-D tensors) when ``optim.no_decay_bias_norm`` (timm's convention).
* :func:`build_scheduler`: ``cosine`` (per step: linear warm-up from ``lr × warmup_start_ratio``
  over ``warmup_epochs``, then cosine to ``lr × min_lr_ratio``), ``onecycle`` (per step,
  ``torch.optim.lr_scheduler.OneCycleLR``; momentum/beta1 cycled), ``plateau`` (per epoch,
  ``ReduceLROnPlateau`` on the val loss or the val balanced accuracy) or ``none``.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from distill.config import TrainConfig
from lesionlite.errors import LesionliteError


def build_optimizer(cfg: TrainConfig, module: nn.Module, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    o = cfg.optim
    names = {id(p): n for n, p in module.named_parameters()}
    decay, no_decay = [], []
    for p in params:
        if o.no_decay_bias_norm and (p.ndim <= 1 or names.get(id(p), "").endswith(".bias")):
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [g for g in ({"params": decay, "weight_decay": o.weight_decay},
                          {"params": no_decay, "weight_decay": 0.0}) if g["params"]]
    if not groups:
        raise LesionliteError("the method has no trainable parameters")
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov and o.momentum > 0)
    if o.name == "adam":
        return torch.optim.Adam(groups, lr=o.lr, betas=tuple(o.betas))
    return torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas))


def cosine_factor(step: int, total: int, warmup: int, warmup_start: float, min_ratio: float) -> float:
    """LR multiplier: linear warm-up from ``warmup_start`` to 1, then cosine to ``min_ratio``."""
    if warmup > 0 and step < warmup:
        return warmup_start + (1.0 - warmup_start) * step / warmup
    span = max(1, total - warmup)
    t = min(1.0, (step - warmup) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))


def build_scheduler(cfg: TrainConfig, opt: torch.optim.Optimizer, steps_per_epoch: int) -> tuple[Any, str]:
    """(scheduler or None, when it steps: "step" | "epoch" | "none")."""
    s = cfg.schedule
    total = cfg.run.epochs * steps_per_epoch
    if s.name == "cosine":
        warm = int(round(s.warmup_epochs * steps_per_epoch))
        def factor(step: int) -> float:
            return cosine_factor(step, total, warm, s.warmup_start_ratio, s.min_lr_ratio)

        return torch.optim.lr_scheduler.LambdaLR(opt, factor), "step"
    if s.name == "onecycle":
        cycle_momentum = cfg.optim.name != "sgd" or cfg.optim.momentum > 0
        return torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=cfg.optim.lr, total_steps=max(1, total), pct_start=s.pct_start,
            div_factor=s.div_factor, final_div_factor=s.final_div_factor, cycle_momentum=cycle_momentum,
        ), "step"
    if s.name == "plateau":
        mode = "min" if s.plateau_monitor == "val_loss" else "max"
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode=mode, factor=s.plateau_factor, patience=s.plateau_patience, min_lr=s.plateau_min_lr,
        ), "epoch"
    return None, "none"
