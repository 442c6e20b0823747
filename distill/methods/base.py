"""The contract between the shared training loop and a distillation method plug-in.

A method is an ``nn.Module`` that owns everything training-only (teacher, projection heads,
regressors, memory banks, EMA copies). The loop owns the student, the optimizer, the schedule,
checkpoints and evaluation. Only ``student.state_dict()`` is ever exported, so nothing a method
adds can leak into a deployed model.

Adding a method touches one file: subclass :class:`DistillMethod`, decorate it with
``@register_method("name")`` (see :mod:`distill.methods.registry`) and give it a config dataclass.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from lesionlite.errors import LesionliteError


@dataclass
class Batch:
    """One training batch as the loop hands it to a method.

    images:  float tensor [B, V, C, H, W]; V = ``method.num_views`` views of each image,
             already preprocessed/normalised and augmented per ``method.view_mode``.
    labels:  long tensor [B]
    indices: long tensor [B], each sample's index in the training set (for memory banks).
    """

    images: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor


@dataclass
class LossOutput:
    """Total loss to back-propagate plus detached scalars for logs/curves (one entry per term)."""

    loss: torch.Tensor
    logs: dict[str, float] = field(default_factory=dict)
    #: Student logits on the un-augmented/first view, [B, num_classes] (for running train accuracy).
    logits: torch.Tensor | None = None


@dataclass
class MethodContext:
    """What a method may know about the data and run, given by the loop at construction."""

    num_classes: int
    class_counts: list[int]  # training-set count per class (for class-weighted CE)
    num_train: int  # training-set size (memory-bank rows)
    device: torch.device
    epochs: int
    steps_per_epoch: int


def missing_teacher_error(method_name: str) -> LesionliteError:
    """The one message for a teacher-based method run without ``--teacher`` (preflight, the loop, the methods)."""
    return LesionliteError(f"method {method_name!r} needs a teacher: pass --teacher RUN_DIR (the run directory of "
                           "a trained model, e.g. one trained with --method scratch)")


class DistillMethod(nn.Module):
    """Base class of every method plug-in (scratch, kd, ssdkd, udcd, udcd-code).

    Class attributes tell the loop what the method needs:
    - ``num_views``: how many views per image the data pipeline must produce;
    - ``view_mode``: "independent" = each view independently augmented;
      "rotations" = view k is ``rot90(image, k)`` then independently augmented (k = 0..V-1);
    - ``needs_teacher``: the loop loads a frozen teacher from ``--teacher`` and passes it in;
    - ``config_cls``: the dataclass of the method's ``method.*`` settings (None: it has none);
    - ``default_overrides``: config defaults the method changes (``{"optim.lr": 0.01}``), applied
      below the user's config file, flags and ``--set``;
    - ``ddp_find_unused_parameters``: False when every trainable parameter gets a gradient at every
      step (DDP then skips a graph traversal per step).
    """

    name: ClassVar[str] = "base"
    num_views: ClassVar[int] = 1
    view_mode: ClassVar[Literal["independent", "rotations"]] = "independent"
    needs_teacher: ClassVar[bool] = False
    config_cls: ClassVar[type | None] = None
    default_overrides: ClassVar[dict[str, Any]] = {}
    ddp_find_unused_parameters: ClassVar[bool] = True

    def __init__(self, student: nn.Module, teacher: nn.Module | None, cfg: Any, ctx: MethodContext) -> None:
        super().__init__()
        self.student = student
        # Stored outside the module tree on purpose: the teacher is frozen, never optimised,
        # never saved with the method state and never exported.
        object.__setattr__(self, "teacher", teacher)
        if teacher is not None:
            teacher.eval()
            for p in teacher.parameters():
                p.requires_grad_(False)
        self.cfg = cfg
        self.ctx = ctx

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """Student parameters plus any training-only heads the method optimises."""
        return (p for p in self.parameters() if p.requires_grad)

    def prepare(self, train_loader: Any, val_loader: Any) -> None:
        """Optional work before student training (e.g. SSD-KD's teacher projection head stage)."""

    def training_loss(self, batch: Batch, epoch: int, step: int) -> LossOutput:
        raise NotImplementedError

    def student_state_for_export(self) -> dict[str, Any]:
        """The student weights the run's artifact (``student.pt``) keeps; by default, as trained.

        (QAT overrides it to round the weights onto the int8 grid it trained with.)
        """
        return self.student.state_dict()

    def after_optimizer_step(self, step: int) -> None:
        """Optional hook after each optimizer step (e.g. UDCD's EMA teacher update)."""

    def train(self, mode: bool = True) -> DistillMethod:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # a frozen teacher always runs in eval mode (BN statistics fixed)
        return self

    def extra_state_dict(self) -> dict[str, Any]:
        """Method state to checkpoint for resume (heads, banks, EMA); never exported."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("student.")}

    def load_extra_state_dict(self, state: dict[str, Any]) -> None:
        missing, unexpected = self.load_state_dict(state, strict=False)
        unexpected = [k for k in unexpected if not k.startswith("student.")]
        if unexpected:
            raise RuntimeError(f"unexpected method state keys: {unexpected[:5]}")
