"""AlexNet, VGG-11, ResNet-18 and an MLP: AlexNet, VGG and ResNet in the small-input variants the dataset-distillation
field evaluates across.

The maths follows the DC reference code (VICO-UoE/DatasetCondensation ``networks.py``, used by DC/DSA/DM/MTT for their
cross-architecture tables); shapes are computed from the input instead of assumed to be 32x32:

- ``alexnet``: conv5(128) -> pool -> conv5(192) -> pool -> conv3(256) -> conv3(192) -> conv3(192) -> pool, ReLU, 2x2
  max pooling, no norm: 192*4*4 = 3072 features on 28/32 px inputs.
- ``vgg11``: VGG-11's eight conv3x3 -> instance norm -> ReLU and five 2x2 max pools: 512*1*1 features on 28/32 px.
- ``resnet18`` / ``resnet18bn``: a conv3x3(64) stem, then four stages of two BasicBlocks (64, 128, 256, 512 channels;
  stride 2 from the second stage), instance norm or batch norm, then global average pooling (the reference's
  ``avg_pool2d(4)`` of its 4x4 map) to 512 features.

The ConvNet's conventions hold here too: the first conv of a 1x28x28 input pads 2 more (28 -> 32) in alexnet and vgg11
as in the reference; a pool or stride-2 stage is skipped once the map is smaller than 2x2, so a 4x7x7 latent works
(alexnet: 192 features, vgg11 and resnet18: 512). Two rules for layers that run on a 1x1 map (only latents get there):
instance norm becomes a layer norm over the channels (an instance norm of one pixel zeroes every feature; the ConvNet
drops the norm instead, but it has one such layer where VGG-11 has six and with no norm their signal fades), and in
alexnet and vgg11 a kxk conv becomes 1x1, the same function (only its centre tap ever sees the map) with no dead
weights and the right fan-in for the init.
``width`` scales every layer's channels by width/128, so NetConfig's default (the ConvNet's 128) gives the reference
nets and ``width=8`` a tiny copy; ``norm`` and ``act`` apply as for the ConvNet. Depth and pooling are the
reference's: a non-default ``depth`` or ``pool`` raises rather than being ignored.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import nn

from .layers import FeatureNet, _act, _norm
from .registry import NETS, NetConfig

REFERENCE_WIDTH = 128  # NetConfig's default width: the zoo's channel counts are scaled by width / REFERENCE_WIDTH

# (channels, kernel, 2x2 max pool after it)
ALEXNET = ((128, 5, True), (192, 5, True), (256, 3, False), (192, 3, False), (192, 3, True))
VGG11 = ((64, 3, True), (128, 3, True), (256, 3, False), (256, 3, True),
         (512, 3, False), (512, 3, True), (512, 3, False), (512, 3, True))
# (channels, stride of its first block), two BasicBlocks each
RESNET18 = ((64, 1), (128, 2), (256, 2), (512, 2))


def _channels(c: int, cfg: NetConfig) -> int:
    return max(1, round(c * cfg.width / REFERENCE_WIDTH))


def _norm_kind(cfg: NetConfig, h: int, w: int) -> str:
    """``cfg.norm``, but a 1x1 map is normalised over its channels, not per channel (each value minus itself)."""
    return "layernorm" if cfg.norm == "instancenorm" and h * w == 1 else cfg.norm


def _config(name: str, defaults: dict, overrides: dict) -> NetConfig:
    cfg = replace(NetConfig(**defaults), **overrides)
    for field in ("depth", "pool"):
        value, default = getattr(cfg, field), getattr(NetConfig(), field)
        if value != default:
            raise ValueError(f"{name} has the reference's fixed depth and pooling, so {field}={value!r} "
                             f"does not apply; leave {field} at its default {default!r} or use the convnet")
    return cfg


class PlainNet(FeatureNet):
    """conv -> norm -> act layers, some followed by a 2x2 max pool, then a linear classifier (AlexNet, VGG)."""

    def __init__(self, in_shape, num_classes: int, cfg: NetConfig, layers):
        super().__init__()
        c, h, w = in_shape
        grow = 2 if (c, h, w) == (1, 28, 28) else 0  # the reference's 28 -> 32 on the first conv of MNIST-family nets
        modules = []
        for i, (channels, k, pool) in enumerate(layers):
            k = 1 if h == w == 1 else k  # on a 1x1 map a conv sees only its centre tap; a 1x1 conv is the same function
            channels, pad = _channels(channels, cfg), k // 2 + (grow if i == 0 else 0)
            h, w = h + 2 * pad - k + 1, w + 2 * pad - k + 1
            modules += [nn.Conv2d(c, channels, k, padding=pad), _norm(_norm_kind(cfg, h, w), channels), _act(cfg.act)]
            c = channels
            if pool and min(h, w) >= 2:
                modules.append(nn.MaxPool2d(2, 2))
                h, w = h // 2, w // 2
        self._set_head(nn.Sequential(*modules), c * h * w, num_classes)


class BasicBlock(nn.Module):
    """conv3x3(stride) -> norm -> act -> conv3x3 -> norm, plus the (projected) input, -> act."""

    def __init__(self, c_in: int, c_out: int, stride: int, norm: str, act: str):
        super().__init__()
        bias = norm == "none"  # a conv followed by a norm needs no bias
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=bias)
        self.norm1, self.act1 = _norm(norm, c_out), _act(act)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=bias)
        self.norm2, self.act2 = _norm(norm, c_out), _act(act)
        self.shortcut = nn.Identity() if stride == 1 and c_in == c_out else \
            nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=bias), _norm(norm, c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.norm1(self.conv1(x)))
        return self.act2(self.norm2(self.conv2(out)) + self.shortcut(x))


class ResNet(FeatureNet):
    def __init__(self, in_shape, num_classes: int, cfg: NetConfig, stages=RESNET18, blocks_per_stage: int = 2):
        super().__init__()
        c, h, w = in_shape
        width, norm = _channels(stages[0][0], cfg), _norm_kind(cfg, h, w)
        modules = [nn.Conv2d(c, width, 3, 1, 1, bias=norm == "none"), _norm(norm, width), _act(cfg.act)]
        c = width
        for channels, stride in stages:
            channels = _channels(channels, cfg)
            for b in range(blocks_per_stage):
                s = stride if b == 0 and min(h, w) >= 2 else 1
                h, w = (h - 1) // s + 1, (w - 1) // s + 1  # conv3x3, padding 1 (and the 1x1 shortcut) with stride s
                modules.append(BasicBlock(c, channels, s, _norm_kind(cfg, h, w), cfg.act))
                c = channels
        self._set_head(nn.Sequential(*modules, nn.AdaptiveAvgPool2d(1), nn.Flatten()), c, num_classes)


@NETS.register("alexnet")
def alexnet(in_shape, num_classes, **overrides):
    return PlainNet(in_shape, num_classes, _config("alexnet", dict(norm="none"), overrides), ALEXNET)


@NETS.register("vgg11")
def vgg11(in_shape, num_classes, **overrides):
    return PlainNet(in_shape, num_classes, _config("vgg11", dict(norm="instancenorm"), overrides), VGG11)


@NETS.register("resnet18")
def resnet18(in_shape, num_classes, **overrides):
    return ResNet(in_shape, num_classes, _config("resnet18", dict(norm="instancenorm"), overrides))


@NETS.register("resnet18bn")
def resnet18bn(in_shape, num_classes, **overrides):
    return ResNet(in_shape, num_classes, _config("resnet18bn", dict(norm="batchnorm"), overrides))


class MLP(FeatureNet):
    def __init__(self, in_shape, num_classes: int, cfg: NetConfig):
        super().__init__()
        d = math.prod(in_shape)
        self._set_head(nn.Sequential(nn.Flatten(), nn.Linear(d, 128), _act(cfg.act), nn.Linear(128, 128),
                                     _act(cfg.act)), 128, num_classes)


@NETS.register("mlp")
def mlp(in_shape, num_classes, **overrides):
    return MLP(in_shape, num_classes, replace(NetConfig(), **overrides))
