"""Model registry: architecture name → builder returning a :class:`LesionClassifier`.

Adding an architecture touches one file: decorate a builder with ``@register_model(name, ...)`` in any
module of :mod:`distill.models` (:class:`lesionlite.registry.Registry` imports them all).
Each builder returns ``features`` = the backbone up to the last feature map (state-dict keys
``features.*``, stable across versions so export can rebuild by name) plus the shared head
(``classifier.*``). ``weights_layout`` / ``source_prefix`` / ``head_prefixes`` tell
:mod:`distill.weights` how an ImageNet state dict of the upstream model maps onto ``features.*``.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from distill.models.base import LesionClassifier
from lesionlite.errors import LesionliteError, require
from lesionlite.registry import Registry


@dataclass(frozen=True)
class ModelSpec:
    name: str
    builder: Callable[..., LesionClassifier]
    feature_dim: int
    description: str = ""
    #: Layout of upstream ImageNet weights ("torchvision", "timm") or None when there are none.
    weights_layout: str | None = None
    #: Prefix of backbone keys in the upstream state dict ("features." for torchvision MobileNetV2,
    #: "" for ResNet/timm); the backbone key ``source_prefix + rest`` maps to ``features.rest``.
    source_prefix: str = ""
    #: Upstream head keys dropped on load (the 1000-class classifier).
    head_prefixes: tuple[str, ...] = ()
    #: The resolution the upstream weights were trained at (informational).
    default_input_size: int = 224


#: every architecture; a module of :mod:`distill.models` adds one with ``@register_model``
MODELS: Registry[ModelSpec] = Registry("model", "distill.models")


def register_model(name: str, feature_dim: int, description: str = "", weights_layout: str | None = None,
                   source_prefix: str = "", head_prefixes: tuple[str, ...] = (),
                   default_input_size: int = 224) -> Callable:
    def deco(fn: Callable[..., LesionClassifier]) -> Callable[..., LesionClassifier]:
        MODELS.add(name, ModelSpec(name, fn, feature_dim, description, weights_layout, source_prefix,
                                   tuple(head_prefixes), default_input_size))
        return fn

    return deco


def list_models() -> list[str]:
    return MODELS.names()


def get_model_spec(name: str) -> ModelSpec:
    return MODELS.get(name)


def build_model(name: str, num_classes: int, dropout: float = 0.2, **kwargs) -> LesionClassifier:
    """Build a randomly initialised classifier (load ImageNet weights separately)."""
    if num_classes < 2:
        raise LesionliteError(f"num_classes must be at least 2, got {num_classes}")
    spec = get_model_spec(name)
    model = spec.builder(num_classes=num_classes, dropout=dropout, **kwargs)
    model.arch = name
    return model


@register_model("tiny_cnn", feature_dim=32, description="4-layer CNN for tests and the CPU demo")
def tiny_cnn(num_classes: int, dropout: float = 0.0) -> LesionClassifier:
    def block(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False),
                             nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))

    features = nn.Sequential(block(3, 8), block(8, 16), block(16, 32), block(32, 32))
    return LesionClassifier(features, 32, num_classes, dropout=dropout, arch="tiny_cnn")


@register_model("mobilenet_v2", feature_dim=1280, description="torchvision MobileNetV2 (features[18]: 1280x7x7)",
                weights_layout="torchvision", source_prefix="features.", head_prefixes=("classifier.",))
def mobilenet_v2(num_classes: int, dropout: float = 0.2) -> LesionClassifier:
    from torchvision.models import mobilenet_v2 as tv_mobilenet_v2

    tv = tv_mobilenet_v2(weights=None)
    return LesionClassifier(tv.features, 1280, num_classes, dropout=dropout, arch="mobilenet_v2")


def _resnet(name: str, num_classes: int, dropout: float, feature_dim: int) -> LesionClassifier:
    from torchvision import models

    tv = getattr(models, name)(weights=None)
    parts = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
    features = nn.Sequential(OrderedDict((p, getattr(tv, p)) for p in parts))
    return LesionClassifier(features, feature_dim, num_classes, dropout=dropout, arch=name)


@register_model("resnet18", feature_dim=512, description="torchvision ResNet-18 (layer4: 512x7x7)",
                weights_layout="torchvision", source_prefix="", head_prefixes=("fc.",))
def resnet18(num_classes: int, dropout: float = 0.2) -> LesionClassifier:
    return _resnet("resnet18", num_classes, dropout, 512)


@register_model("resnet50", feature_dim=2048, description="torchvision ResNet-50 (layer4: 2048x7x7)",
                weights_layout="torchvision", source_prefix="", head_prefixes=("fc.",))
def resnet50(num_classes: int, dropout: float = 0.2) -> LesionClassifier:
    return _resnet("resnet50", num_classes, dropout, 2048)


@register_model("densenet121", feature_dim=1024,
                description="torchvision DenseNet-121 (features + final ReLU: 1024x7x7)",
                weights_layout="torchvision", source_prefix="features.", head_prefixes=("classifier.",))
def densenet121(num_classes: int, dropout: float = 0.2) -> LesionClassifier:
    from torchvision.models import densenet121 as tv_densenet121

    tv = tv_densenet121(weights=None)
    # torchvision applies F.relu after features (norm5); here it is the `final_activation`.
    return LesionClassifier(tv.features, 1024, num_classes, dropout=dropout, arch="densenet121",
                            final_activation=nn.ReLU(inplace=False))


@register_model("efficientnet_b0", feature_dim=1280, description="torchvision EfficientNet-B0 (features[8]: 1280x7x7)",
                weights_layout="torchvision", source_prefix="features.", head_prefixes=("classifier.",))
def efficientnet_b0(num_classes: int, dropout: float = 0.2) -> LesionClassifier:
    from torchvision.models import efficientnet_b0 as tv_efficientnet_b0

    tv = tv_efficientnet_b0(weights=None)
    return LesionClassifier(tv.features, 1280, num_classes, dropout=dropout, arch="efficientnet_b0")


def _efficientnet_lite(n: int, num_classes: int, dropout: float) -> LesionClassifier:
    timm = require("timm", "distill", f"the efficientnet_lite{n} model")
    # num_classes=0 + global_pool="" makes the timm model return forward_features(x) (the last
    # 1280-channel map, after conv_head/bn2/ReLU6); drop_rate=0 keeps timm's own head dropout
    # off the feature map. Keys are timm's (conv_stem.*, blocks.*, conv_head.*, bn2.*) under features.
    body = timm.create_model(f"tf_efficientnet_lite{n}", pretrained=False, num_classes=0, global_pool="",
                             drop_rate=0.0)
    return LesionClassifier(body, 1280, num_classes, dropout=dropout, arch=f"efficientnet_lite{n}")


@register_model("efficientnet_lite0", feature_dim=1280, description="timm tf_efficientnet_lite0 (1280 features, 224 px)",
                weights_layout="timm", source_prefix="", head_prefixes=("classifier.",), default_input_size=224)
def efficientnet_lite0(num_classes: int, dropout: float = 0.2) -> LesionClassifier:
    return _efficientnet_lite(0, num_classes, dropout)


@register_model("efficientnet_lite1", feature_dim=1280, description="timm tf_efficientnet_lite1 (1280 features, 240 px)",
                weights_layout="timm", source_prefix="", head_prefixes=("classifier.",), default_input_size=240)
def efficientnet_lite1(num_classes: int, dropout: float = 0.2) -> LesionClassifier:
    return _efficientnet_lite(1, num_classes, dropout)


@register_model("efficientnet_lite2", feature_dim=1280, description="timm tf_efficientnet_lite2 (1280 features, 260 px)",
                weights_layout="timm", source_prefix="", head_prefixes=("classifier.",), default_input_size=260)
def efficientnet_lite2(num_classes: int, dropout: float = 0.2) -> LesionClassifier:
    return _efficientnet_lite(2, num_classes, dropout)
