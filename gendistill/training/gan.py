"""Training the small class-conditional GAN backbone (the embedded ``fashion-mnist-gan`` is made this way).

Hinge loss, a projection discriminator (Miyato & Koyama 2018) with spectral norm on every layer and a minibatch
standard-deviation feature (StyleGAN), Adam with beta1 = 0 for both nets, one D step per G step (both on the same
generator pass), and an exponential moving average of the generator's weights (the saved generator).

Against mode collapse (a first generator trained without these made nearly one image per class): the mapping MLP learns
at ``mapping_lr_mult`` times the generator's lr (StyleGAN's 0.01), so it cannot learn to ignore z; the discriminator
sees each fake batch's spread (minibatch std); and the generator's loss has a mode-seeking term (MSGAN, Mao et al.
2019): fakes come in pairs of the same class, and ``ms_weight / (|G(z1) - G(z2)| / |z1 - z2| + eps)`` is added (at
weight 1 it outweighed the adversarial loss and saturated the images, hence 0.1).

For class consistency (after one epoch with the projection term alone, no row of samples looked like its class): the
discriminator also has an auxiliary classifier head (AC-GAN, Odena et al. 2017) trained with cross-entropy on the real
images only, and the generator's loss adds ``ac_weight`` x that head's cross-entropy on the fakes.

Reproducible: weights, batch order and z all come from generators seeded by ``cfg.seed`` (spectral norm's start vectors
from a forked, seeded RNG).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm
from tqdm.auto import tqdm

from ..backbones.gan import GANBackbone
from ..backbones.gan_model import ConditionalStyleGenerator
from ..config import Checked, setting
from ..data import ImageDataset
from .base import TRAINERS, Trainer
from .common import EpochCheckpoint, ema_update


@dataclass
class GANConfig(Checked):
    # generator (saved in its config.json)
    z_dim: int = setting(64, min=1)
    embed_dim: int = setting(32, min=1)
    w_dim: int = setting(128, min=1)
    mapping_layers: int = setting(3, min=1)
    base_size: int = setting(7, min=1)
    channels: tuple[int, ...] = setting((96, 48, 24), min=1)
    # discriminator (training only)
    d_channels: tuple[int, ...] = setting((24, 48, 96), min=1)
    # training
    epochs: int = setting(4, min=1)
    max_steps: int = setting(0, min=0)  # > 0: stop after this many steps (smoke tests, timing)
    batch_size: int = setting(64, min=1)
    lr_g: float = setting(2e-4, above=0)
    lr_d: float = setting(2e-4, above=0)
    mapping_lr_mult: float = setting(0.01, above=0)  # the mapping MLP's lr relative to lr_g (StyleGAN)
    mbstd_group: int = setting(4, min=0)  # minibatch-std group size in the discriminator (0: off)
    ms_weight: float = setting(0.1, min=0)  # mode-seeking term of the generator's loss (0: off)
    ac_weight: float = setting(1.0, min=0)  # auxiliary-classifier cross-entropy (D on real images, G on fakes; 0: off)
    beta1: float = setting(0.0, min=0, max=1)
    beta2: float = setting(0.99, min=0, max=1)
    ema: float = setting(0.999, min=0, max=1)  # of the generator's weights; the EMA generator is the one saved
    seed: int = setting(0, min=0)


def minibatch_std(h: torch.Tensor, group: int) -> torch.Tensor:
    """``h`` with one more channel: the std over groups of ``group`` samples (StyleGAN's minibatch std), averaged over
    channels and positions, broadcast to every sample of its group. Groups take every ``N / group``-th sample."""
    n, _, height, width = h.shape
    g = min(group, n)
    while n % g:
        g -= 1
    std = (h.view(g, n // g, *h.shape[1:]).var(0, unbiased=False) + 1e-8).sqrt().mean((1, 2, 3))  # (n // g,)
    return torch.cat([h, std.repeat(g).view(n, 1, 1, 1).expand(n, 1, height, width)], dim=1)


def mode_seeking_loss(fake: torch.Tensor, z: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """MSGAN's term for pairs (i, i + N/2): ``1 / (mean |x_i - x_j| / mean |z_i - z_j| + eps)``, large when different z
    give the same image."""
    h = len(fake) // 2
    ratio = (fake[:h] - fake[h : 2 * h]).abs().mean() / (z[:h] - z[h : 2 * h]).abs().mean()
    return 1 / (ratio + eps)


class ProjectionDiscriminator(nn.Module):
    """Conv blocks (two 3x3 convs, leaky ReLU, 2x average pool between levels), then (``mbstd_group`` > 0) the
    minibatch-std channel and a 3x3 conv, sum pooling, then ``linear(h) + <embed(y), h>``; spectral norm on every layer.
    ``forward(x, y, logits=True)`` also returns the auxiliary classifier's logits ``classify(h)``."""

    def __init__(self, image_channels: int, num_classes: int, channels: tuple[int, ...], mbstd_group: int = 0):
        super().__init__()
        self.mbstd_group = mbstd_group
        layers, cin = [], image_channels
        for i, c in enumerate(channels):
            layers += [spectral_norm(nn.Conv2d(cin, c, 3, padding=1)), nn.LeakyReLU(0.2),
                       spectral_norm(nn.Conv2d(c, c, 3, padding=1)), nn.LeakyReLU(0.2)]
            if i < len(channels) - 1:
                layers.append(nn.AvgPool2d(2))
            cin = c
        self.features = nn.Sequential(*layers)
        self.std_conv = spectral_norm(nn.Conv2d(cin + 1, cin, 3, padding=1)) if mbstd_group > 0 else None
        self.linear = spectral_norm(nn.Linear(cin, 1))
        self.embed = spectral_norm(nn.Embedding(num_classes, cin))
        self.classify = spectral_norm(nn.Linear(cin, num_classes))

    def forward(self, x: torch.Tensor, labels: torch.Tensor, logits: bool = False):
        h = self.features(x)
        if self.std_conv is not None:
            h = F.leaky_relu(self.std_conv(minibatch_std(h, self.mbstd_group)), 0.2)
        h = h.sum((2, 3))
        score = self.linear(h).squeeze(1) + (self.embed(labels) * h).sum(1)
        return (score, self.classify(h)) if logits else score


def build_generator(image_shape, num_classes: int, cfg: GANConfig,
                    generator: torch.Generator) -> ConditionalStyleGenerator:
    c, h, w = image_shape
    if h != w:
        raise ValueError(f"the GAN makes square images; the dataset's are {h}x{w}")
    g = ConditionalStyleGenerator(num_classes=num_classes, image_channels=c, image_size=h, z_dim=cfg.z_dim,
                                  embed_dim=cfg.embed_dim, w_dim=cfg.w_dim, mapping_layers=cfg.mapping_layers,
                                  base_size=cfg.base_size, channels=tuple(cfg.channels))
    return g.reset_parameters(generator)


def build_discriminator(image_shape, num_classes: int, cfg: GANConfig, seed: int) -> ProjectionDiscriminator:
    # spectral norm draws its power-iteration vectors from the global RNG: build under a forked, seeded one
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ProjectionDiscriminator(image_shape[0], num_classes, tuple(cfg.d_channels), cfg.mbstd_group)


def train_gan(train: ImageDataset, cfg: GANConfig, device: torch.device | str = "cpu", log=print, progress: bool = True,
              checkpoint=None, resume: bool = False) -> GANBackbone:
    """Train ``cfg.epochs`` epochs (or ``cfg.max_steps`` steps) of hinge-loss GAN on ``train``; the EMA generator as a
    backbone. ``checkpoint``: a file for the per-epoch training state (``EpochCheckpoint``); ``resume`` continues from
    it."""
    gen = torch.Generator().manual_seed(cfg.seed)
    G = build_generator(train.image_shape, train.num_classes, cfg, gen).to(device).train()
    D = build_discriminator(train.image_shape, train.num_classes, cfg, cfg.seed + 1).to(device).train()
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    mapping = list(G.mapping_net.parameters())
    others = [p for p in G.parameters() if all(p is not q for q in mapping)]
    opt_g = torch.optim.Adam([{"params": others}, {"params": mapping, "lr": cfg.lr_g * cfg.mapping_lr_mult}],
                             lr=cfg.lr_g, betas=(cfg.beta1, cfg.beta2))
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr_d, betas=(cfg.beta1, cfg.beta2))
    per_epoch = len(train) // cfg.batch_size
    if per_epoch < 1:
        raise ValueError(f"--batch-size {cfg.batch_size} is larger than the {len(train)} training images; lower it")
    total = cfg.epochs * per_epoch if cfg.max_steps <= 0 else min(cfg.max_steps, cfg.epochs * per_epoch)
    ckpt = EpochCheckpoint(checkpoint, cfg, {"G": G, "D": D, "G_ema": G_ema, "opt_g": opt_g, "opt_d": opt_d}, gen,
                           resume)
    first, step = ckpt.load()
    bar = tqdm(total=total, initial=step, desc="train gan", dynamic_ncols=True, disable=not progress)
    start = time.time()
    for epoch in range(first, math.ceil(total / per_epoch)):
        order = torch.randperm(len(train), generator=gen)
        sums = torch.zeros(2)
        for i in range(per_epoch):
            if step >= total:
                break
            idx = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            x = train.float_images(idx).to(device) * 2 - 1
            y = train.labels[idx].to(device)
            # one generator pass per step: the discriminator sees it detached, then the generator's loss reuses it;
            # with the mode-seeking term the fakes come in same-class pairs (i, i + N/2)
            z = torch.randn((len(y), cfg.z_dim), generator=gen).to(device)
            y_fake = torch.cat([y[: len(y) // 2]] * 2 + [y[2 * (len(y) // 2):]]) if cfg.ms_weight > 0 else y
            fake = G(z, y_fake)
            real_score, real_logits = D(x, y, logits=True)
            d_loss = F.relu(1 - real_score).mean() + F.relu(1 + D(fake.detach(), y_fake)).mean()
            if cfg.ac_weight > 0:
                d_loss = d_loss + cfg.ac_weight * F.cross_entropy(real_logits, y)
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
            fake_score, fake_logits = D(fake, y_fake, logits=True)
            g_loss = -fake_score.mean()
            if cfg.ac_weight > 0:
                g_loss = g_loss + cfg.ac_weight * F.cross_entropy(fake_logits, y_fake)
            if cfg.ms_weight > 0:
                g_loss = g_loss + cfg.ms_weight * mode_seeking_loss(fake, z)
            opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
            opt_g.step()
            ema_update(G_ema, G, cfg.ema)
            step += 1
            sums += torch.tensor([d_loss.item(), g_loss.item()])
            bar.update(1)
            if step % 20 == 0 or step == total:
                bar.set_postfix(epoch=epoch, d=f"{d_loss.item():.3f}", g=f"{g_loss.item():.3f}")
        n = max(1, min(per_epoch, step - epoch * per_epoch))
        log(f"epoch {epoch}: mean D loss {sums[0] / n:.4f}, G loss {sums[1] / n:.4f} ({time.time() - start:.0f}s)")
        ckpt.save(epoch, step)
    bar.close()
    log(f"trained GAN for {step} steps in {time.time() - start:.0f}s; config {asdict(cfg)}")
    return GANBackbone(G_ema.cpu(), image_shape=train.image_shape, source="trained")


def _describe(backbone: GANBackbone, cfg: GANConfig) -> str:
    mb = sum(p.numel() * p.element_size() for p in backbone.generator.parameters()) / 2**20
    return (f"sha256 {backbone.weights_sha256()[:16]}, {mb:.2f} MB of weights, "
            f"latent spaces {', '.join(backbone.latent_spaces)}")


TRAINERS.register("gan")(Trainer(GANConfig, train_gan, "recipes/train_gan.py", _describe, samples=True))
