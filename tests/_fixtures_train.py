"""One optimizer step of a distillation method, taken as ``distill.train``'s loop takes it (tests of methods)."""
from __future__ import annotations

from typing import Any


def train_step(method: Any, optimizer: Any, batch: Any, epoch: int, step: int) -> Any:
    """Loss, backward, optimizer step and the method's after-step hook (EMA, banks); returns the LossOutput."""
    out = method.training_loss(batch, epoch, step)
    optimizer.zero_grad()
    out.loss.backward()
    optimizer.step()
    method.after_optimizer_step(step)
    return out
