"""Parameter count and multiply-accumulate count (MACs) of the PyTorch model, at export time.

MACs are counted with forward hooks on one batch-1 forward pass (no extra library): for every
``nn.Conv2d`` ``out_elements × (in_channels / groups) × kH × kW``, for every ``nn.Linear``
``out_elements × in_features``. BatchNorm (folded into convolutions by every exporter), activations,
pooling and additions are not counted, which is the usual convention (thop / fvcore / the MobileNetV2
paper's 300M MACs). The numbers are written into each artifact's manifest (``extra.params``,
``extra.macs``) so `serve` and `mobile_benchmarks` read them without torch.
"""
from __future__ import annotations

from typing import Any


def count_params(model: Any) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def count_macs(model: Any, input_size: int) -> int:
    import torch
    from torch import nn

    total = 0

    def conv_hook(mod: nn.Conv2d, _inp: Any, out: torch.Tensor) -> None:
        nonlocal total
        kh, kw = mod.kernel_size
        total += out.numel() * (mod.in_channels // mod.groups) * kh * kw

    def linear_hook(mod: nn.Linear, _inp: Any, out: torch.Tensor) -> None:
        nonlocal total
        total += out.numel() * mod.in_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, input_size, input_size))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return int(total)


def model_stats(model: Any, input_size: int) -> dict[str, Any]:
    return {
        "params": count_params(model),
        "macs": count_macs(model, input_size),
        "macs_method": "torch forward hooks on Conv2d/Linear, batch 1",
    }
