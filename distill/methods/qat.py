"""``qat``: quantization-aware fine-tuning of a trained run, distilled from its own float model.

Why: post-training int8 of the fine-tuned MobileNetV2 students lost 1–3 points of balanced accuracy
even after export's BatchNorm folding and bias correction (``benchmarks/int8_sensitivity.py``); what
remained was the per-tensor int8 activations. Quantization-aware training lets the network adapt to
the rounding it will meet on the device (Jacob et al., CVPR 2018; Krishnamoorthi, 2018).

    lesionlite distill --method qat --teacher RUN_DIR --model ARCH_OF_RUN --epochs 2 --lr 1e-4

The ``--teacher`` run is both the starting point and the teacher: the student is a copy of it, and
the loss distils from the frozen float original (the usual QAT recipe: the float model's soft labels
guide the quantized copy back to it)::

    loss = α · T² · KL(softmax(t/T) ‖ softmax(s/T)) + (1 − α) · CE_w(s, y)

What the student simulates, matching export's int8 recipe (onnxruntime QDQ / ai-edge-quantizer
``static_wi8_ai8``):

* BatchNorm is folded into the convolutions first (each Conv2d→BatchNorm2d pair found by ``torch.fx``
  data flow; the BatchNorm becomes the identity carrying the folded bias and stays in eval mode), so
  the weights that are fake-quantized are the weights the exported graph has;
* every Conv2d / Linear weight is fake-quantized per output channel, symmetric
  (:mod:`lesionlite.int8_grid`), with the straight-through estimator;
* every Conv2d / Linear input is fake-quantized per tensor, asymmetric int8 [-128, 127], on a range
  that includes 0, initialised from min/max over calibration batches and then followed by an EMA
  (``act_momentum``) of the batch min/max while training; fixed in evaluation.

Validation and the test metrics of the run are therefore those of the simulated int8 model. The
checkpoint (``student.pt``) holds weights already on the int8 grid with an identity BatchNorm, so
export's quantizers round nothing further; export still folds and calibrates as usual.
Training-only state (activation ranges) lives in the method, never in the exported student.
"""
from __future__ import annotations

import logging
import types
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from distill.methods.kd import KD, KDConfig
from distill.methods.registry import register_method
from lesionlite.errors import LesionliteError
from lesionlite.int8_grid import snap_to_int8_grid

log = logging.getLogger(__name__)


@dataclass
class QATConfig(KDConfig):
    """KD's options (defaults: T = 1, α = 0.5 for self-distillation) plus the activation observers'."""

    temperature: float = 1.0
    alpha: float = 0.5
    #: EMA factor of the activation min/max while training (0 freezes the calibrated ranges)
    act_momentum: float = 0.01
    #: training batches whose min/max initialise the activation ranges before the first step
    calibration_batches: int = 8

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.act_momentum <= 1.0:
            raise LesionliteError(f"method.act_momentum must be in [0, 1], got {self.act_momentum}")
        if self.calibration_batches < 1:
            raise LesionliteError(f"method.calibration_batches must be at least 1, got {self.calibration_batches}")


def fold_batchnorm_into_identity(model: nn.Module) -> int:
    """Fold each Conv2d→BatchNorm2d pair in place; the BatchNorm becomes ``x + β'``. Returns the pair count.

    The module tree (and so the checkpoint format) is unchanged: γ = 1, running mean 0, running var
    ``1 − ε`` (so ``1/√(var + ε)`` is exactly 1), and β' = β + (b − μ)·γ/σ carries the folded bias.
    """

    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as exc:
        raise LesionliteError(f"qat: cannot trace {type(model).__name__} with torch.fx to find Conv→BatchNorm "
                              f"pairs ({type(exc).__name__}: {exc})") from None
    modules = dict(model.named_modules())
    pairs = 0
    with torch.no_grad():
        for node in graph.nodes:
            if node.op != "call_module" or type(modules.get(node.target)) is not nn.BatchNorm2d:
                continue
            src = node.args[0]
            if (not isinstance(src, torch.fx.Node) or src.op != "call_module"
                    or type(modules.get(src.target)) is not nn.Conv2d or len(src.users) != 1):
                continue
            conv, bn = modules[src.target], modules[node.target]
            gain = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            conv.weight.mul_(gain.view(-1, 1, 1, 1))
            conv_bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.bias)
            bn.bias.copy_(bn.bias + (conv_bias - bn.running_mean) * gain)
            if conv.bias is not None:
                conv.bias.zero_()
            bn.weight.fill_(1.0)
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0 - bn.eps)
            bn.weight.requires_grad_(False)
            pairs += 1
    return pairs


class ActivationRange(nn.Module):
    """Per-tensor asymmetric int8 fake quantization of one layer's input, with its observed range."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("lo", torch.zeros(()))
        self.register_buffer("hi", torch.zeros(()))
        self.register_buffer("seen", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def observe(self, x: torch.Tensor, momentum: float | None) -> None:
        """Widen to the batch's range (``momentum`` None: calibration) or move towards it by EMA."""
        lo, hi = x.detach().min().float().clamp(max=0.0), x.detach().max().float().clamp(min=0.0)
        if momentum is None or not bool(self.seen):
            self.lo.copy_(torch.minimum(self.lo, lo) if bool(self.seen) else lo)
            self.hi.copy_(torch.maximum(self.hi, hi) if bool(self.seen) else hi)
            self.seen.fill_(True)
        else:
            self.lo.lerp_(lo, momentum)
            self.hi.lerp_(hi, momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not bool(self.seen):
            return x
        scale = ((self.hi - self.lo) / 255.0).clamp_min(1e-8)
        zero = (-128 - torch.round(self.lo / scale)).clamp(-128, 127).to(torch.int32)
        return torch.fake_quantize_per_tensor_affine(x.float(), scale.float(), zero, -128, 127).to(x.dtype)


def _ste_int8_weight(w: torch.Tensor) -> torch.Tensor:
    """Weights on the int8 grid in the forward pass, identity gradient in the backward (STE)."""
    return w + (snap_to_int8_grid(w.detach()) - w).detach()


@register_method("qat")
class QAT(KD):
    """Fine-tune a trained run with int8 fake quantization, distilled from its float self (KD's loss)."""

    name = "qat"
    config_cls: ClassVar[type] = QATConfig
    num_views = 1
    ddp_find_unused_parameters = False
    needs_teacher = True

    def __init__(self, student: nn.Module, teacher: nn.Module | None, cfg: QATConfig, ctx: Any) -> None:
        if teacher is None:
            raise LesionliteError("method 'qat' fine-tunes a trained run: pass it as --teacher RUN_DIR")
        super().__init__(student, teacher, cfg, ctx)  # KD: frozen teacher, class weights, the loss
        try:
            student.load_state_dict(teacher.state_dict())
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise LesionliteError("method 'qat' starts from the --teacher run itself: pass --model with that run's "
                                  f"architecture ({first})") from None
        self.folded = fold_batchnorm_into_identity(student)
        student.frozen_bn = True  # identity BatchNorm stays in eval mode (see LesionClassifier.train)
        self._layers = [m for m in student.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        self.act_ranges = nn.ModuleList(ActivationRange() for _ in self._layers)
        self._calibrating = False
        for layer, act in zip(self._layers, self.act_ranges):
            layer.forward = types.MethodType(self._quantized_forward(act), layer)
        log.info("qat: student initialised from the teacher run (the 'random init' above is replaced), %d BatchNorm "
                 "layers folded, %d layers with int8 weights and inputs simulated", self.folded, len(self._layers))

    def _quantized_forward(self, act: ActivationRange):
        method = self

        def forward(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
            if method._calibrating:  # float forward, widening the observed range
                act.observe(x, None)
                xq, wq = x, layer.weight
            else:
                if layer.training:
                    act.observe(x, method.cfg.act_momentum)
                xq, wq = act(x), _ste_int8_weight(layer.weight)
            if isinstance(layer, nn.Conv2d):
                return layer._conv_forward(xq, wq, layer.bias)
            return F.linear(xq, wq, layer.bias)

        return forward

    @torch.no_grad()
    def prepare(self, train_loader: Any, val_loader: Any) -> None:
        """Initialise every activation range from min/max over the first training batches (float forward)."""
        if all(bool(a.seen) for a in self.act_ranges):
            return  # resumed: ranges restored from the checkpoint
        was_training = self.student.training
        self.student.eval()
        self._calibrating = True
        try:
            for i, batch in enumerate(train_loader):
                if i >= self.cfg.calibration_batches:
                    break
                self.student(batch.images[:, 0].to(self.ctx.device))
        finally:
            self._calibrating = False
            self.student.train(was_training)

    def student_state_for_export(self) -> dict[str, Any]:
        """The student with every Conv2d/Linear weight rounded onto the int8 grid it was trained on."""
        state = self.student.state_dict()
        for name, module in self.student.named_modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                key = f"{name}.weight" if name else "weight"
                state[key] = snap_to_int8_grid(state[key])
        return state
