"""Proxy and evaluation networks behind a registry.

``convnet`` is the field's ConvNet (DC/DSA/DM/MTT): ``depth`` blocks of conv3x3(width) -> norm -> ReLU -> 2x2
pool, then a linear classifier. "instancenorm" is ``GroupNorm(width, width)`` as in the reference code. A pooling
stage is skipped once the feature map is smaller than 2x2, so latent-shaped inputs (4x7x7) work with depth 3
(7 -> 3 -> 1); a block working on a 1x1 map gets no instance norm, which there would zero every feature.
Every net exposes ``embed(x)`` (flattened features, used by distribution matching) and ``feature_dim``.
As in the DC reference, the first conv of a 1x28x28 net pads by 3 (28 -> 32), so ConvNet-3 pools 32->16->8->4
and its feature is 128*4*4 = 2048, the published Fashion-MNIST/MNIST ConvNet-3.
``alexnet``, ``vgg11``, ``resnet18`` and ``resnet18bn`` (cross-architecture evaluation) live in :mod:`.netzoo`, which
this module imports so that the registry is complete whichever of the two is imported first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import torch
from torch import nn

from .registry import Registry

NETS: Registry = Registry("network")


@dataclass
class NetConfig:
    """The ConvNet's settings; the zoo's nets scale their channels by width/128 and refuse another depth or pool."""

    width: int = 128
    depth: int = 3
    norm: str = "instancenorm"
    act: str = "relu"
    pool: str = "avgpooling"


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
    """``features`` (flattened: the embedding DM matches) then one linear ``classifier``; every registered net is one."""

    def _set_head(self, features: nn.Module, feature_dim: int, num_classes: int) -> None:
        self.features, self.feature_dim = features, feature_dim
        self.classifier = nn.Linear(feature_dim, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


class ConvNet(FeatureNet):
    def __init__(self, in_shape, num_classes: int, cfg: NetConfig):
        super().__init__()
        c, h, w = in_shape
        layers = []
        # DC's convention for 1-channel 28x28 images (MNIST family): the first conv pads by 3 (28 -> 32), so depth 3
        # gives 4x4 features as in the published Fashion-MNIST/MNIST ConvNet-3
        first_pad = 3 if (c, h, w) == (1, 28, 28) else 1
        for d in range(cfg.depth):
            pad = first_pad if d == 0 else 1
            h, w = h + 2 * pad - 2, w + 2 * pad - 2
            # instance norm of a 1x1 map subtracts each value from itself: the block's output would not depend on
            # its input (a 4x7x7 latent reaches 1x1 in block 3), so a block running at 1x1 has no instance norm
            norm = "none" if cfg.norm == "instancenorm" and h * w == 1 else cfg.norm
            layers += [nn.Conv2d(c, cfg.width, 3, padding=pad), _norm(norm, cfg.width), _act(cfg.act)]
            c = cfg.width
            if cfg.pool != "none" and min(h, w) >= 2:
                layers.append(_pool(cfg.pool))
                h, w = h // 2, w // 2
        self._set_head(nn.Sequential(*layers), c * h * w, num_classes)


class MLP(FeatureNet):
    def __init__(self, in_shape, num_classes: int, cfg: NetConfig):
        super().__init__()
        d = math.prod(in_shape)
        self._set_head(nn.Sequential(nn.Flatten(), nn.Linear(d, 128), _act(cfg.act), nn.Linear(128, 128), _act(cfg.act)), 128, num_classes)


@NETS.register("convnet")
def convnet(in_shape, num_classes, **overrides):
    return ConvNet(in_shape, num_classes, replace(NetConfig(), **overrides))


@NETS.register("convnet-bn")
def convnet_bn(in_shape, num_classes, **overrides):
    return ConvNet(in_shape, num_classes, replace(NetConfig(norm="batchnorm"), **overrides))


@NETS.register("mlp")
def mlp(in_shape, num_classes, **overrides):
    return MLP(in_shape, num_classes, replace(NetConfig(), **overrides))


def list_nets() -> list[str]:
    return NETS.names()


def get_net(name: str, in_shape: tuple[int, int, int], num_classes: int, **overrides) -> nn.Module:
    """A network for (C, H, W) inputs; ``overrides`` replace :class:`NetConfig` fields (``depth=2, width=8``)."""
    builder = NETS.get(name)
    in_shape = tuple(int(d) for d in in_shape)
    if len(in_shape) != 3 or min(in_shape) < 1:
        raise ValueError(f"in_shape must be (channels, height, width) with positive sizes, got {in_shape}")
    unknown = sorted(set(overrides) - {f.name for f in fields(NetConfig)})
    if unknown:
        raise ValueError(f"unknown network setting(s) {', '.join(unknown)}; NetConfig has: "
                         f"{', '.join(f.name for f in fields(NetConfig))}")
    return builder(in_shape, num_classes, **overrides)


@torch.no_grad()
def init_weights(net: nn.Module, generator: torch.Generator) -> nn.Module:
    """PyTorch's default init (uniform +-1/sqrt(fan_in) for conv/linear weights and biases), drawn from ``generator``.

    A module with parameters of another kind raises: left alone, its weights would come from the global RNG.
    """
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            bound = 1.0 / math.sqrt(m.weight[0].numel())
            m.weight.copy_(torch.empty(m.weight.shape).uniform_(-bound, bound, generator=generator))
            if m.bias is not None:
                m.bias.copy_(torch.empty(m.bias.shape).uniform_(-bound, bound, generator=generator))
        elif isinstance(m, (nn.GroupNorm, nn.BatchNorm2d)) and m.affine:
            m.weight.fill_(1.0)
            m.bias.zero_()
            if isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()
        elif next(m.parameters(recurse=False), None) is not None:
            raise ValueError(f"init_weights does not know how to initialise {type(m).__name__}; add it there so that "
                             "the net's weights come from the generator")
    return net


def fresh_net(name: str, in_shape, num_classes: int, generator: torch.Generator, **overrides) -> nn.Module:
    """A newly initialised network whose weights come only from ``generator`` (reproducible, no global seed)."""
    return init_weights(get_net(name, in_shape, num_classes, **overrides), generator)


from . import netzoo  # noqa: E402,F401  (registers alexnet, vgg11, resnet18, resnet18bn)
