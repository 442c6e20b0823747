"""Prepare a float model for int8 post-training quantization: fold BatchNorm, snap weights, correct biases.

Why: on fine-tuned MobileNetV2 students the int8 exports lost 5–6 points of balanced accuracy, and
int8 *weights alone* already lost 4 (``benchmarks/int8_sensitivity.py``). Per-layer measurement put
almost all of it on a few channels whose input is (nearly) constant — dead ReLU6 channels of the stem
feeding the first depthwise convolution, with a BatchNorm gain of 10–16 learned by AdamW on top. For
such a channel, rounding the weights changes ``Σw · c``, a constant, so the layer's output is shifted
by a bias error that the following layers carry to the logits. This is the case *empirical bias
correction* (Nagel et al., "Data-Free Quantization", ICCV 2019; also AIMET, TensorRT) exists for:

1. fold every Conv→BatchNorm2d pair (``torch.fx`` pattern fusion, the data flow not the module order;
   models FX cannot trace are used unfolded);
2. in forward order, for each Conv2d / Linear: round its weight onto the int8 grid every backend here
   uses (:mod:`lesionlite.int8_grid`) and subtract from its bias the mean output shift this causes on
   calibration images, measured with the already-corrected layers upstream.

The returned float model's weights already lie on the int8 grid (the quantizers re-derive the same
scale from the same max, so they round nothing further) and its biases absorb the rounding's mean
effect. The original model is not touched: fp32/fp16 artifacts and the parity reference use it.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from lesionlite.int8_grid import snap_to_int8_grid

log = logging.getLogger(__name__)

#: calibration images used to measure the mean shifts (a mean over images × positions converges fast)
DEFAULT_SAMPLES = 64


@dataclass
class Int8PrepReport:
    """What the preparation did, for the export manifest."""

    folded_batchnorms: int
    corrected_layers: int
    samples: int
    max_abs_shift: float
    fold_note: str

    def as_dict(self) -> dict[str, Any]:
        return {"method": "BatchNorm folding + int8 weight snapping + empirical bias correction",
                "folded_batchnorms": self.folded_batchnorms, "corrected_layers": self.corrected_layers,
                "samples": self.samples, "max_abs_bias_shift": round(self.max_abs_shift, 6),
                "fold_note": self.fold_note}


def fold_batchnorm(model: Any) -> tuple[Any, int, str]:
    """A copy of ``model`` (eval mode) with Conv2d→BatchNorm2d pairs folded; returns (model, pairs, note)."""
    import torch
    from torch.fx.experimental.optimization import fuse

    def count_bn(m: Any) -> int:
        return sum(type(x) is torch.nn.BatchNorm2d for x in m.modules())

    before = count_bn(model)
    try:
        folded = fuse(copy.deepcopy(model).eval(), inplace=True)
    except Exception as exc:  # models with data-dependent control flow cannot be traced
        note = f"not folded: torch.fx could not trace the model ({type(exc).__name__})"
        log.info("int8 preparation: %s", note)
        return copy.deepcopy(model).eval(), 0, note
    folded.eval()
    pairs = before - count_bn(folded)
    return folded, pairs, "torch.fx.experimental.optimization.fuse (Conv2d→BatchNorm2d by data flow)"


def prepare_for_int8(model: Any, calib: np.ndarray, samples: int = DEFAULT_SAMPLES) -> tuple[Any, Int8PrepReport]:
    """The int8-ready float copy of ``model`` and a report; ``calib`` is NCHW float32 preprocessed images."""
    import torch
    import torch.nn.functional as F

    if len(calib) == 0:
        raise ValueError("int8 preparation needs at least one calibration image")
    prepared, folded, note = fold_batchnorm(model)
    layers = [m for m in prepared.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    done: set[int] = set()
    shifts: list[float] = []

    def correct(mod: Any, inputs: tuple[Any, ...], output: Any) -> Any:
        if id(mod) in done:  # a module called twice in one forward is corrected once, on its first call
            return output
        done.add(id(mod))
        x = inputs[0]
        w_float = mod.weight.detach().clone()
        w_int8 = snap_to_int8_grid(w_float)
        if isinstance(mod, torch.nn.Conv2d):  # channels on dim 1 (N, C, H, W)
            delta = mod._conv_forward(x, w_int8 - w_float, None)
            shift = delta.mean(dim=(0, 2, 3))
            applied = shift.view(1, -1, 1, 1)
        else:  # Linear: channels on the last dim
            delta = F.linear(x, w_int8 - w_float)
            shift = delta.reshape(-1, delta.shape[-1]).mean(0)
            applied = shift
        mod.weight.copy_(w_int8)
        if mod.bias is None:
            mod.bias = torch.nn.Parameter(torch.zeros(w_float.shape[0], dtype=w_float.dtype), requires_grad=False)
        mod.bias.sub_(shift)
        shifts.append(float(shift.abs().max()) if shift.numel() else 0.0)
        # downstream layers see this layer's corrected int8-weight output, as they will after quantization
        return output + delta - applied

    handles = [m.register_forward_hook(correct) for m in layers]
    n = min(samples, len(calib))
    try:
        with torch.no_grad():
            prepared(torch.from_numpy(np.ascontiguousarray(calib[:n], dtype=np.float32)))
    finally:
        for h in handles:
            h.remove()
    report = Int8PrepReport(folded_batchnorms=folded, corrected_layers=len(done), samples=n,
                            max_abs_shift=max(shifts, default=0.0), fold_note=note)
    log.info("int8 preparation: folded %d BatchNorm layers, corrected %d layers on %d images (largest shift %.4g)",
             folded, len(done), n, report.max_abs_shift)
    return prepared.eval(), report
