"""``scratch``: train the student alone with class-weighted cross-entropy (the no-distillation baseline).

Class weights (shared with :mod:`distill.methods.kd`)
----------------------------------------------------
``w_c ∝ N / N_c`` (N training images, N_c of class c), normalised so that the weights average to 1
over the *training samples*: ``w_c = N / (K⁺ · N_c)`` with K⁺ the number of classes present in the
training set, hence ``Σ_c N_c · w_c / N = 1``. A class with no training image gets weight 0. The
loss of a batch is ``mean_i w_{y_i} · CE_i`` (divided by the batch size, *not* by the sum of the
batch's weights as ``F.cross_entropy(weight=…)`` does): its expectation over batches is then exactly
the class-balanced risk ``(1/K⁺) Σ_c E[CE | y = c]`` and its scale does not jump with the class mix
of each batch. With balanced classes every weight is 1 and the loss is plain cross-entropy.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from distill.methods.base import Batch, DistillMethod, LossOutput
from distill.methods.registry import register_method
from lesionlite.errors import LesionliteError


def class_weights(counts: Sequence[int]) -> torch.Tensor:
    """``w_c = N / (K⁺ · N_c)`` for classes present in training, 0 for absent ones (float32)."""
    c = torch.as_tensor(list(counts), dtype=torch.float64)
    if c.numel() == 0 or (c < 0).any() or c.sum() <= 0:
        raise LesionliteError(f"cannot weight classes from training counts {list(counts)}")
    present = c > 0
    k = present.sum()
    w = torch.where(present, c.sum() / (k * c.clamp_min(1)), torch.zeros_like(c))
    return w.float()


def weighted_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None,
                           label_smoothing: float = 0.0) -> torch.Tensor:
    """``mean_i w_{y_i} · CE(logits_i, y_i)`` in float32 (plain mean CE when ``weights`` is None)."""
    per = F.cross_entropy(logits.float(), labels, reduction="none", label_smoothing=label_smoothing)
    if weights is None:
        return per.mean()
    return (per * weights.to(per.device)[labels]).mean()


def class_weight_buffer(counts: Sequence[int], cfg: ScratchConfig) -> torch.Tensor | None:
    """The cross-entropy weights a method registers as a buffer: :func:`class_weights` or None (plain CE)."""
    return class_weights(counts) if cfg.class_weighted else None


@dataclass
class ScratchConfig:
    #: weight the cross-entropy by w_c = N / (K⁺ N_c) (see the module docstring)
    class_weighted: bool = True
    #: label smoothing of the cross-entropy (0 = off)
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.label_smoothing < 1.0:
            raise LesionliteError(f"method.label_smoothing must be in [0, 1), got {self.label_smoothing}")


@register_method("scratch")
class Scratch(DistillMethod):
    """Student alone, class-weighted cross-entropy (no teacher)."""

    name = "scratch"
    config_cls = ScratchConfig
    ddp_find_unused_parameters = False  # every student parameter gets a gradient each step (one view, no teacher)

    def __init__(self, student, teacher, cfg: ScratchConfig, ctx) -> None:
        super().__init__(student, None, cfg, ctx)
        # Derived from the data, so not checkpointed (persistent=False); moves with .to(device).
        self.register_buffer("class_weight", class_weight_buffer(ctx.class_counts, cfg), persistent=False)

    def training_loss(self, batch: Batch, epoch: int, step: int) -> LossOutput:
        logits = self.student(batch.images[:, 0])
        loss = weighted_cross_entropy(logits, batch.labels, self.class_weight, self.cfg.label_smoothing)
        return LossOutput(loss=loss, logs={"ce": loss.detach()}, logits=logits.detach())
