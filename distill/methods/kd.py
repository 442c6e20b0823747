"""``kd``: Hinton et al. (2015) knowledge distillation from a frozen teacher.

    loss = α · T² · KL(softmax(t/T) ‖ softmax(s/T)) + (1 − α) · CE_w(s, y)

``s``/``t`` are student/teacher logits, the KL is averaged over the batch (``batchmean``), the T²
factor keeps the soft-target gradients on the scale of the hard-label ones, and ``CE_w`` is the
class-weighted cross-entropy of :mod:`distill.methods.scratch` (``w_c = N / (K⁺ N_c)``, batch mean),
or plain cross-entropy with ``class_weighted: false``. The teacher runs in eval mode without
gradients; it is loaded by the training loop from ``--teacher RUN_DIR``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from distill.methods.base import Batch, DistillMethod, LossOutput, missing_teacher_error
from distill.methods.registry import register_method
from distill.methods.scratch import ScratchConfig, class_weight_buffer, weighted_cross_entropy
from lesionlite.errors import LesionliteError


def kd_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
          sample_weights: torch.Tensor | None = None) -> torch.Tensor:
    """``T² · KL(softmax(t/T) ‖ softmax(s/T))``, batch mean, computed in float32.

    ``sample_weights`` (one per row): the weighted mean ``Σ wᵢ KLᵢ / Σ wᵢ`` instead — with the class
    weights of the rows' labels this balances the distillation term over classes the way the
    class-weighted cross-entropy is balanced (PyTorch's weighted CE divides by Σ wᵢ too).
    """
    t = float(temperature)
    log_ps = F.log_softmax(student_logits.float() / t, dim=1)
    log_pt = F.log_softmax(teacher_logits.float() / t, dim=1)
    if sample_weights is None:
        return F.kl_div(log_ps, log_pt, reduction="batchmean", log_target=True) * (t * t)
    per_row = F.kl_div(log_ps, log_pt, reduction="none", log_target=True).sum(1)
    w = sample_weights.float()
    return (w * per_row).sum() / w.sum().clamp_min(1e-12) * (t * t)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
            temperature: float, alpha: float, weights: torch.Tensor | None = None,
            label_smoothing: float = 0.0, kl_class_weighted: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, kl term, ce term) of the Hinton loss (``kl_class_weighted``: the KL term weighted per
    row by ``weights[label]``, as the cross-entropy is)."""
    row_w = weights[labels] if kl_class_weighted and weights is not None else None
    kl = kd_kl(student_logits, teacher_logits, temperature, row_w)
    ce = weighted_cross_entropy(student_logits, labels, weights, label_smoothing)
    return alpha * kl + (1.0 - alpha) * ce, kl, ce


@dataclass
class KDConfig(ScratchConfig):
    """Scratch's cross-entropy options (``class_weighted``, ``label_smoothing``) plus the KL term's."""

    #: softmax temperature of both distributions in the KL term
    temperature: float = 4.0
    #: weight of the KL term; (1 - alpha) weighs the cross-entropy
    alpha: float = 0.9
    #: weigh the KL term per image by its class weight, as the cross-entropy is (``class_weighted``);
    #: Hinton's term is unweighted, which lets the majority class dominate what is distilled
    kl_class_weighted: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.temperature > 0:
            raise LesionliteError(f"method.temperature must be positive, got {self.temperature}")
        if not 0.0 <= self.alpha <= 1.0:
            raise LesionliteError(f"method.alpha must be in [0, 1], got {self.alpha}")
        if self.kl_class_weighted and not self.class_weighted:
            raise LesionliteError("method.kl_class_weighted=true weighs the KL term with the cross-entropy's class "
                                  "weights; it needs method.class_weighted=true")


@register_method("kd")
class KD(DistillMethod):
    """Hinton KD: α·T²·KL(teacher ‖ student) + (1−α)·class-weighted CE; frozen teacher."""

    name = "kd"
    config_cls = KDConfig
    ddp_find_unused_parameters = False  # every student parameter gets a gradient each step
    needs_teacher = True

    def __init__(self, student, teacher, cfg: KDConfig, ctx) -> None:
        if teacher is None:
            raise missing_teacher_error(self.name)
        super().__init__(student, teacher, cfg, ctx)
        self.register_buffer("class_weight", class_weight_buffer(ctx.class_counts, cfg), persistent=False)

    def training_loss(self, batch: Batch, epoch: int, step: int) -> LossOutput:
        x = batch.images[:, 0]
        with torch.no_grad():
            t_logits = self.teacher(x)
        s_logits = self.student(x)
        loss, kl, ce = kd_loss(s_logits, t_logits, batch.labels, self.cfg.temperature, self.cfg.alpha,
                               self.class_weight, self.cfg.label_smoothing, self.cfg.kl_class_weighted)
        return LossOutput(loss=loss, logs={"kd": kl.detach(), "ce": ce.detach()}, logits=s_logits.detach())
