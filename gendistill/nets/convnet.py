"""The field's ConvNet (``convnet``, and ``convnet-bn`` with batch norm).

The ConvNet of DC/DSA/DM/MTT: ``depth`` blocks of conv3x3(width) -> norm -> ReLU -> 2x2
pool, then a linear classifier. "instancenorm" is ``GroupNorm(width, width)`` as in the reference code. A pooling
stage is skipped once the feature map is smaller than 2x2, so latent-shaped inputs (4x7x7) work with depth 3
(7 -> 3 -> 1); a block working on a 1x1 map gets no instance norm, which there would zero every feature.
Every net exposes ``embed(x)`` (flattened features, used by distribution matching) and ``feature_dim``.
As in the DC reference, the first conv of a 1x28x28 net pads by 3 (28 -> 32), so ConvNet-3 pools 32->16->8->4
and its feature is 128*4*4 = 2048, the published Fashion-MNIST/MNIST ConvNet-3.
``alexnet``, ``vgg11``, ``resnet18``, ``resnet18bn`` and ``mlp`` (cross-architecture evaluation) live in :mod:`.zoo`.
"""

from __future__ import annotations

from dataclasses import replace

from torch import nn

from .layers import FeatureNet, _act, _norm, _pool
from .registry import NETS, NetConfig


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


@NETS.register("convnet")
def convnet(in_shape, num_classes, **overrides):
    return ConvNet(in_shape, num_classes, replace(NetConfig(), **overrides))


@NETS.register("convnet-bn")
def convnet_bn(in_shape, num_classes, **overrides):
    return ConvNet(in_shape, num_classes, replace(NetConfig(norm="batchnorm"), **overrides))
