"""A small class-conditional style-based generator, in diffusers layout (``ModelMixin`` + ``ConfigMixin``).

Mapping: ``v = [z, embed(class)]`` (the z-space input) -> MLP -> ``w``. Synthesis: a learned constant
(``channels[0]``, ``base_size``, ``base_size``) -> ``len(channels)`` blocks, the first at ``base_size`` and each later
one upsampling by 2 (``base_size * 2 ** (blocks - 1) == image_size``); every block is two 3x3 modulated convolutions
(StyleGAN2 modulation + demodulation) driven by that block's own w, so ``w+`` (one w per block) is meaningful; a 1x1
convolution makes the image. Output in [-1, 1] (linear, not clamped). No noise inputs: the generator is deterministic.

Weights are initialised from a ``torch.Generator`` (:meth:`reset_parameters`), never from the global RNG.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

ACT_GAIN = math.sqrt(2.0)


def _act(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.2) * ACT_GAIN


class ModulatedConv(nn.Module):
    """A conv whose input channels are scaled per sample by ``affine(w)``; with ``demodulate`` each output channel is
    renormalised to unit expected variance (StyleGAN2, the non-fused form: scale the activations, not the weights)."""

    def __init__(self, cin: int, cout: int, w_dim: int, kernel: int = 3, demodulate: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(cout, cin, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(cout))
        self.affine = nn.Linear(w_dim, cin)
        self.demodulate = demodulate
        self.padding = kernel // 2

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        s = self.affine(w)  # (N, cin)
        out = F.conv2d(x * s[:, :, None, None], self.weight, padding=self.padding)
        if self.demodulate:
            d = torch.rsqrt((s * s) @ self.weight.pow(2).sum((2, 3)).t() + 1e-8)  # (N, cout)
            out = out * d[:, :, None, None]
        return out + self.bias[None, :, None, None]


class SynthesisBlock(nn.Module):
    def __init__(self, cin: int, cout: int, w_dim: int, upsample: bool):
        super().__init__()
        self.upsample = upsample
        self.conv1 = ModulatedConv(cin, cout, w_dim)
        self.conv2 = ModulatedConv(cout, cout, w_dim)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if self.upsample:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        return _act(self.conv2(_act(self.conv1(x, w)), w))


class ConditionalStyleGenerator(ModelMixin, ConfigMixin):
    """Class-conditional generator: ``forward(z, labels)`` -> images in [-1, 1]."""

    @register_to_config
    def __init__(self, num_classes: int = 10, image_channels: int = 1, image_size: int = 28, z_dim: int = 64,
                 embed_dim: int = 32, w_dim: int = 128, mapping_layers: int = 3, base_size: int = 7,
                 channels: tuple[int, ...] = (96, 48, 24)):
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if not channels:
            raise ValueError("channels must name at least one synthesis block, e.g. (96, 48, 24)")
        if base_size * 2 ** (len(channels) - 1) != image_size:
            raise ValueError(f"base_size {base_size} doubled {len(channels) - 1} times is "
                             f"{base_size * 2 ** (len(channels) - 1)}, not image_size {image_size}; change base_size "
                             "or the number of channels")
        self.embed = nn.Embedding(num_classes, embed_dim)
        layers, d = [], z_dim + embed_dim
        for _ in range(mapping_layers):
            layers.append(nn.Linear(d, w_dim))
            d = w_dim
        self.mapping_net = nn.ModuleList(layers)
        self.const = nn.Parameter(torch.empty(channels[0], base_size, base_size))
        self.blocks = nn.ModuleList(SynthesisBlock(channels[max(i - 1, 0)], c, w_dim, upsample=i > 0)
                                    for i, c in enumerate(channels))
        self.to_image = nn.Conv2d(channels[-1], image_channels, 1)
        if self.const.device.type != "meta":  # from_pretrained builds on the meta device, then loads the weights
            self.reset_parameters(torch.Generator().manual_seed(0))

    # -- initialisation -------------------------------------------------------------------------------------
    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator) -> ConditionalStyleGenerator:
        """Fresh weights drawn from ``generator`` only: N(0, 1/fan_in) weights, zero biases, modulation biases 1."""
        def normal(p, std):
            p.copy_(torch.randn(p.shape, generator=generator) * std)

        normal(self.embed.weight, 1.0)
        for lin in self.mapping_net:
            normal(lin.weight, 1 / math.sqrt(lin.in_features))
            lin.bias.zero_()
        normal(self.const, 1.0)
        for m in self.modules():
            if isinstance(m, ModulatedConv):
                normal(m.weight, 1 / math.sqrt(m.weight[0].numel()))
                m.bias.zero_()
                normal(m.affine.weight, 1 / math.sqrt(m.affine.in_features))
                m.affine.bias.fill_(1.0)
        normal(self.to_image.weight, 1 / math.sqrt(self.to_image.weight[0].numel()))
        self.to_image.bias.zero_()
        return self

    # -- structure ---------------------------------------------------------------------------------------------
    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def block_shape(self, k: int) -> tuple[int, int, int]:
        """The shape (C, H, W) of the activation after synthesis block ``k``."""
        cfg = self.config
        size = cfg.base_size * 2 ** k
        return (int(cfg.channels[k]), size, size)

    # -- mapping -------------------------------------------------------------------------------------------------
    def mapping_input(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``[z, embed(labels)]``: the z-space latent (a label-free input to the mapping MLP)."""
        return torch.cat([z, self.embed(labels.to(z.device)).to(z.dtype)], dim=1)

    def map_input(self, v: torch.Tensor) -> torch.Tensor:
        for lin in self.mapping_net:
            v = F.leaky_relu(lin(v), 0.2)
        return v

    def mapping(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.map_input(self.mapping_input(z, labels))

    # -- synthesis -------------------------------------------------------------------------------------------------
    def synthesis(self, ws: torch.Tensor, start: int = 0, x: torch.Tensor | None = None, stop: int
                  | None = None) -> torch.Tensor:
        """Run blocks ``start`` .. ``stop - 1`` (default: to the end, then the image layer) with ``ws`` (N, blocks
        run, w_dim); ``x`` enters block ``start`` (None: the learned constant). With ``stop`` the activation is
        returned."""
        end = self.num_blocks if stop is None else stop
        if ws.shape[1] != end - start:
            raise ValueError(f"synthesis of blocks {start}..{end - 1} needs {end - start} ws, got {ws.shape[1]}")
        if x is None:
            if start != 0:
                raise ValueError("synthesis from a block after the first needs that block's input activation")
            x = self.const.unsqueeze(0).expand(len(ws), -1, -1, -1).to(ws.dtype)
        for i, k in enumerate(range(start, end)):
            x = self.blocks[k](x, ws[:, i])
        return x if stop is not None else self.to_image(x)

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        w = self.mapping(z, labels)
        return self.synthesis(w.unsqueeze(1).expand(-1, self.num_blocks, -1))
