"""The pieces every registered net is made of: norm, activation and pooling layers by name, and :class:`FeatureNet`
(flattened ``features``, the embedding distribution matching uses, then one linear ``classifier``)."""

from __future__ import annotations

import torch
from torch import nn


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "instancenorm":
        return nn.GroupNorm(channels, channels, affine=True)
    if kind == "batchnorm":
        return nn.BatchNorm2d(channels)
    if kind == "layernorm":
        return nn.GroupNorm(1, channels, affine=True)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; use instancenorm, batchnorm, layernorm or none")


def _act(kind: str) -> nn.Module:
    acts = {"relu": nn.ReLU, "leakyrelu": lambda: nn.LeakyReLU(0.01), "sigmoid": nn.Sigmoid}
    if kind not in acts:
        raise ValueError(f"unknown activation {kind!r}; use {', '.join(acts)}")
    return acts[kind]()


def _pool(kind: str) -> nn.Module:
    pools = {"avgpooling": lambda: nn.AvgPool2d(2, 2), "maxpooling": lambda: nn.MaxPool2d(2, 2)}
    if kind not in pools:
        raise ValueError(f"unknown pooling {kind!r}; use {', '.join(pools)}")
    return pools[kind]()


class FeatureNet(nn.Module):
    """``features`` (flattened: the embedding DM matches) then one linear ``classifier``; every registered net is
    one."""

    def _set_head(self, features: nn.Module, feature_dim: int, num_classes: int) -> None:
        self.features, self.feature_dim = features, feature_dim
        self.classifier = nn.Linear(feature_dim, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))
