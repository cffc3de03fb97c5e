"""The network registry: names to builders, :class:`NetConfig` (the settings every builder takes) and the functions
that build a net by name, its weights drawn from a ``torch.Generator`` only.

Builders register themselves in :mod:`.convnet` and :mod:`.zoo`; importing :mod:`gendistill.nets` imports both,
so the registry is complete whichever name a caller imports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
from torch import nn

from ..registry import Registry

NETS: Registry = Registry("network")


@dataclass
class NetConfig:
    """The ConvNet's settings; the zoo's nets scale their channels by width/128 and refuse another depth or pool."""

    width: int = 128
    depth: int = 3
    norm: str = "instancenorm"
    act: str = "relu"
    pool: str = "avgpooling"


# "prefix:model" names build a network of another library (``tv:resnet18``, ``timm:...``): prefix -> builder maker
EXTERNAL: Registry = Registry("network library prefix")


def list_nets() -> list[str]:
    """The registered names (``prefix:NAME`` builds another library's model besides them, see ``EXTERNAL``)."""
    return NETS.names()


def get_builder(name: str):
    """The builder of a registered name, or of ``prefix:model`` (another library's model, see ``EXTERNAL``)."""
    if ":" in name:
        prefix, model = name.split(":", 1)
        return EXTERNAL.get(prefix)(model)
    return NETS.get(name)


def builds_own_weights(builder):
    """Mark a builder whose modules initialise themselves in their constructors (transformers' ViT, torchvision models):
    ``fresh_net`` builds it under a forked global RNG seeded from the generator, so its weights come from the generator
    alone and the caller's global RNG state is left as it was."""
    builder.builds_own_weights = True
    return builder


def get_net(name: str, in_shape: tuple[int, int, int], num_classes: int, **overrides) -> nn.Module:
    """A network for (C, H, W) inputs; ``overrides`` replace :class:`NetConfig` fields (``depth=2, width=8``)."""
    builder = get_builder(name)
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
    if getattr(get_builder(name), "builds_own_weights", False):
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return get_net(name, in_shape, num_classes, **overrides)
    return init_weights(get_net(name, in_shape, num_classes, **overrides), generator)
