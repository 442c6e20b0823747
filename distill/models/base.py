"""The classifier interface every registered architecture implements.

A model's plain ``forward(x)`` returns logits only, so that export traces exactly the deployed
graph. Distillation asks for intermediate features with ``forward_all(x)``, which returns the last
feature map, the pooled vector and the logits from ONE forward pass (no hooks that accumulate).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn


class ModelOutput(NamedTuple):
    logits: torch.Tensor  # [B, num_classes]
    feature_map: torch.Tensor  # [B, C, h, w], last conv stage (e.g. MobileNetV2 features[18])
    pooled: torch.Tensor  # [B, C], global-average-pooled feature_map (before dropout/classifier)


class LesionClassifier(nn.Module):
    """Backbone (→ feature map) + global average pool + dropout + linear head.

    Subclasses/builders provide ``features`` (an nn.Module mapping images to the last feature
    map) and set ``feature_dim``; the head is shared so that every architecture exposes the same
    ``forward_all`` contract.
    """

    def __init__(self, features: nn.Module, feature_dim: int, num_classes: int, dropout: float = 0.2,
                 arch: str = "", final_activation: nn.Module | None = None) -> None:
        super().__init__()
        self.arch = arch
        self.features = features
        self.final_activation = final_activation if final_activation is not None else nn.Identity()
        self.feature_dim = feature_dim
        self.num_classes = num_classes
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(feature_dim, num_classes)
        #: keep every BatchNorm in eval mode (running statistics) even while training; see ``train``
        self.frozen_bn = False

    def train(self, mode: bool = True) -> LesionClassifier:
        """``nn.Module.train``, except that BatchNorm layers stay in eval mode when ``frozen_bn`` is set.

        Needed to fine-tune weights whose BatchNorm was folded into the convolutions (see
        :func:`distill.weights.bn_folded`); their γ/β stay trainable, only the statistics are fixed.
        """
        super().train(mode)
        if mode and self.frozen_bn:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def forward_all(self, x: torch.Tensor) -> ModelOutput:
        fmap = self.final_activation(self.features(x))
        pooled = torch.flatten(self.pool(fmap), 1)
        logits = self.classifier(self.dropout(pooled))
        return ModelOutput(logits, fmap, pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_all(x).logits
