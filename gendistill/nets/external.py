"""Escape hatches to other libraries' architectures, never pretrained: ``tv:NAME`` builds torchvision's
``models.get_model(NAME, weights=None, num_classes=K)`` and ``timm:NAME`` (only when timm is installed) timm's
``create_model(NAME, pretrained=False, num_classes=K, in_chans=C)``.

A torchvision model is adapted to the input: its first convolution is rebuilt for the input's channels (same kernel,
stride, padding). Its other settings are the library's (``tv:resnet18`` keeps the ImageNet stem, so a 28x28 image
is 1x1 after layer4; the ``resnet18`` of the registry is the field's small-input variant). A model whose shapes
cannot take the input (``tv:vit_b_16`` wants 224x224) is refused when built, with the library's reason. Weights
come from the library's own initialisation under a forked RNG seeded from the caller's generator
(``builds_own_weights``). NetConfig overrides do not apply to these models and are refused.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import first_line
from .registry import EXTERNAL, builds_own_weights


class ExternalNet(nn.Module):
    """Another library's classifier: ``forward`` only (distribution matching's ``embed`` needs a registered net)."""

    def __init__(self, model: nn.Module, name: str):
        super().__init__()
        self.model, self.name = model, name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        raise ValueError(f"{self.name} is another library's model without an embedding; match with a registered net")


def _first_conv_for(model: nn.Module, channels: int) -> None:
    for parent in model.modules():
        for key, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                if child.in_channels != channels:
                    setattr(parent, key, nn.Conv2d(channels, child.out_channels, child.kernel_size, child.stride,
                                                   child.padding, child.dilation, child.groups, child.bias is not None,
                                                   child.padding_mode))
                return


def _check_runs(net: nn.Module, name: str, in_shape) -> nn.Module:
    was = net.training
    net.eval()
    try:
        with torch.no_grad():
            net(torch.zeros(1, *in_shape))
    except (RuntimeError, ValueError, AssertionError, IndexError) as e:
        raise ValueError(f"{name} does not run on inputs of shape {tuple(in_shape)} ({first_line(e)}); choose "
                         "another model") from None
    net.train(was)
    return net


def _no_overrides(name: str, overrides: dict) -> None:
    if overrides:
        raise ValueError(f"{name} is built by its library: network settings ({', '.join(sorted(overrides))}) "
                         "do not apply")


@EXTERNAL.register("tv")
def torchvision_model(model: str):
    @builds_own_weights
    def build(in_shape, num_classes, **overrides):
        import torchvision

        name = f"tv:{model}"
        _no_overrides(name, overrides)
        if model not in torchvision.models.list_models():
            raise ValueError(f"torchvision has no model {model!r}; see torchvision.models.list_models() (e.g. "
                             "tv:resnet18)")
        try:
            net = torchvision.models.get_model(model, weights=None, num_classes=num_classes)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{name} cannot be built for {num_classes} classes ({first_line(e)})") from None
        _first_conv_for(net, int(in_shape[0]))
        return _check_runs(ExternalNet(net, name), name, in_shape)

    return build


@EXTERNAL.register("timm")
def timm_model(model: str):
    @builds_own_weights
    def build(in_shape, num_classes, **overrides):
        try:
            import timm
        except ImportError:
            raise ValueError("timm is not installed (it is optional): pip install timm, or use tv:NAME "
                             "(torchvision)") from None
        name = f"timm:{model}"
        _no_overrides(name, overrides)
        try:
            net = timm.create_model(model, pretrained=False, num_classes=num_classes, in_chans=int(in_shape[0]))
        except (RuntimeError, ValueError, TypeError) as e:
            raise ValueError(f"{name} cannot be built ({first_line(e)})") from None
        return _check_runs(ExternalNet(net, name), name, in_shape)

    return build
