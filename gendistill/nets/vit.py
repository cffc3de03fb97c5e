"""A small Vision Transformer for cross-architecture evaluation, built from transformers (``ViTConfig`` +
``ViTForImageClassification``), trained from scratch (never pretrained).

Sizes follow :class:`NetConfig`: ``width`` is the hidden size (128 by default), ``depth`` the number of transformer
layers (3), with ``width // 32`` attention heads (at least 1), an MLP of twice the width, GELU and no dropout. The patch
size is the largest of 7, 4, 2, 1 that divides the input and leaves at least 36 patches: 4 on 28x28 and 32x32 images (49
and 64 patches), 2 on 14x14 latents, 1 on a 4x7x7 latent. ``embed`` is the [CLS] token after the final layer norm, the
feature the classifier reads. transformers is imported when the first ViT is built.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from .registry import NETS, NetConfig, builds_own_weights

PATCHES = (7, 4, 2, 1)
MIN_TOKENS = 36


def patch_size(height: int, width: int) -> int:
    for p in PATCHES:
        if height % p == 0 and width % p == 0 and (height // p) * (width // p) >= MIN_TOKENS:
            return p
    return 1


class ViTNet(nn.Module):
    def __init__(self, in_shape, num_classes: int, cfg: NetConfig):
        super().__init__()
        from transformers import ViTConfig, ViTForImageClassification

        c, h, w = in_shape
        if h != w:
            raise ValueError(f"vit takes square inputs, got {h}x{w}")
        for field in ("pool", "norm", "act"):
            if getattr(cfg, field) != getattr(NetConfig(), field):
                raise ValueError(f"vit has its own {field} (layer norm, GELU, no pooling): leave {field} at its "
                                 "default or use the convnet")
        self.config = ViTConfig(image_size=h, patch_size=patch_size(h, w), num_channels=c, hidden_size=cfg.width,
                                num_hidden_layers=cfg.depth, num_attention_heads=max(1, cfg.width // 32),
                                intermediate_size=2 * cfg.width, hidden_act="gelu",
                                num_labels=num_classes, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        if cfg.width % self.config.num_attention_heads:
            raise ValueError(f"vit: width {cfg.width} is not a multiple of its {self.config.num_attention_heads} heads")
        self.model = ViTForImageClassification(self.config)
        self.feature_dim = cfg.width

    @property
    def classifier(self) -> nn.Linear:
        return self.model.classifier

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.vit(pixel_values=x).last_hidden_state[:, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.classifier(self.embed(x))


@NETS.register("vit")
@builds_own_weights
def vit(in_shape, num_classes, **overrides):
    return ViTNet(in_shape, num_classes, replace(NetConfig(), **overrides))
