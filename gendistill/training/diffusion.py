"""Training the small class-conditional latent diffusion model (the embedded ``fashion-mnist-ldm`` is made this way).

DDPM training with epsilon prediction on the cached latents of a VAE backbone (the latent cache, keyed by the VAE's
hash): uniform timesteps, MSE on the noise, the class replaced by the null class with probability ``class_dropout``
(classifier-free guidance), AdamW with a linear warm-up, and an exponential moving average of the UNet's weights (the
saved UNet). Reproducible: weights, batch order, timesteps, noise and class dropout all come from ``cfg.seed``.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..backbones.diffusion import DiffusionBackbone, run_unet, soft_class_unet
from ..cache import cached_latents
from ..config import Checked, setting
from ..data import ImageDataset
from .base import TRAINERS, Trainer
from .common import EpochCheckpoint, ema_update


@dataclass
class DiffusionConfig(Checked):
    vae: str = "fashion-mnist-vae"  # the VAE backbone whose latents are modelled (a shipped name or a directory)
    # UNet (saved in unet/config.json): one level per entry; attention 1 puts self-attention in that level's blocks
    block_out_channels: tuple[int, ...] = setting((32, 64, 64), min=1)
    attention: tuple[int, ...] = setting((0, 1, 1), choices=(0, 1))
    layers_per_block: int = setting(1, min=1)
    norm_num_groups: int = setting(8, min=1)
    attention_head_dim: int = setting(32, min=1)
    # noise schedule (scheduler/scheduler_config.json): Stable Diffusion's scaled-linear betas
    num_train_timesteps: int = setting(1000, min=2)
    beta_start: float = setting(0.00085, above=0, max=1)
    beta_end: float = setting(0.012, above=0, max=1)
    # training
    epochs: int = setting(10, min=1)  # 4680 steps of 128: ~39 min at 0.5 s/step (1 thread on a loaded 2-core machine)
    max_steps: int = setting(0, min=0)  # > 0: stop after this many steps (smoke tests, timing)
    batch_size: int = setting(128, min=1)
    lr: float = setting(1e-3, above=0)
    warmup_steps: int = setting(200, min=0)
    weight_decay: float = setting(0.0, min=0)
    # probability of training on the null class (classifier-free guidance)
    class_dropout: float = setting(0.1, min=0, max=1)
    ema: float = setting(0.999, min=0, max=1)  # of the UNet's weights; the EMA UNet is the one saved
    seed: int = setting(0, min=0)


def build_unet(latent_shape, num_classes: int, cfg: DiffusionConfig, seed: int) -> nn.Module:
    """A class-conditional ``UNet2DModel`` (``num_classes + 1`` class embeddings: the last is the null class) for
    latents of ``latent_shape``, its weights drawn under a forked RNG seeded with ``seed``."""
    from diffusers import UNet2DModel

    levels = len(cfg.block_out_channels)
    if len(cfg.attention) != levels:
        raise ValueError(f"--attention needs one 0/1 per level: {levels} levels (--block-out-channels) but "
                         f"{len(cfg.attention)} values")
    if any(c % cfg.norm_num_groups for c in cfg.block_out_channels):
        raise ValueError("every --block-out-channels value must be a multiple of --norm-num-groups "
                         f"{cfg.norm_num_groups}")
    c, h, w = latent_shape
    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in cfg.attention)
    up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.attention))
    multiple = 2 ** (levels - 1)
    with torch.random.fork_rng(devices=[]):  # diffusers initialises from the global RNG: seed a forked one
        torch.manual_seed(seed)
        unet = UNet2DModel(sample_size=(math.ceil(h / multiple) * multiple, math.ceil(w / multiple) * multiple),
                           in_channels=c, out_channels=c, block_out_channels=tuple(cfg.block_out_channels),
                           layers_per_block=cfg.layers_per_block, down_block_types=down, up_block_types=up,
                           norm_num_groups=cfg.norm_num_groups, attention_head_dim=cfg.attention_head_dim,
                           num_class_embeds=num_classes + 1)
    return soft_class_unet(unet)


def build_scheduler(cfg: DiffusionConfig):
    from diffusers import DDIMScheduler

    return DDIMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_start=cfg.beta_start, beta_end=cfg.beta_end,
                         beta_schedule="scaled_linear", prediction_type="epsilon", clip_sample=False,
                         set_alpha_to_one=True, timestep_spacing="trailing")


def diffusion_loss(unet: nn.Module, z0: torch.Tensor, labels: torch.Tensor, alpha_bars: torch.Tensor,
                   cfg: DiffusionConfig, generator: torch.Generator, null_class: int) -> torch.Tensor:
    """DDPM's simple loss: the MSE between the noise and the UNet's prediction of it at uniform random timesteps, with
    each label replaced by ``null_class`` with probability ``cfg.class_dropout``."""
    n, device = len(z0), z0.device
    t = torch.randint(0, cfg.num_train_timesteps, (n,), generator=generator)
    noise = torch.randn(z0.shape, generator=generator).to(device)
    drop = torch.rand(n, generator=generator) < cfg.class_dropout
    labels = torch.where(drop.to(device), torch.full_like(labels, null_class), labels)
    a = alpha_bars[t].to(device).view(-1, 1, 1, 1)
    xt = a.sqrt() * z0 + (1 - a).sqrt() * noise
    return F.mse_loss(run_unet(unet, xt, t.to(device), class_labels=labels), noise)


def train_diffusion(train: ImageDataset, cfg: DiffusionConfig, device: torch.device | str = "cpu", cache_dir=None,
                    log=print, progress: bool = True, checkpoint=None, resume: bool = False) -> DiffusionBackbone:
    """Train ``cfg.epochs`` epochs (or ``cfg.max_steps`` steps) of latent diffusion on ``train`` encoded by ``cfg.vae``;
    the EMA UNet with a DDIM scheduler as a backbone. ``checkpoint``: a file for the per-epoch training state
    (``EpochCheckpoint``); ``resume`` continues from it."""
    from ..backbones import load_backbone

    vae = load_backbone(cfg.vae, image_shape=train.image_shape)
    if vae.kind != "vae":
        raise ValueError(f"--vae {cfg.vae!r} is a {vae.kind} backbone; "
                         "latent diffusion models the latents of a vae backbone")
    real = cached_latents(vae.to(device), train, cache_dir, device=device, log=log)
    gen = torch.Generator().manual_seed(cfg.seed)
    unet = build_unet(vae.latent_shape, train.num_classes, cfg, cfg.seed).to(device).train()
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    scheduler = build_scheduler(cfg)
    alpha_bars = scheduler.alphas_cumprod.float()
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    warmup = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, cfg.warmup_steps)))
    per_epoch = len(real.labels) // cfg.batch_size
    if per_epoch < 1:
        raise ValueError(f"--batch-size {cfg.batch_size} is larger than the {len(real.labels)} training "
                         "latents; lower it")
    total = cfg.epochs * per_epoch if cfg.max_steps <= 0 else min(cfg.max_steps, cfg.epochs * per_epoch)
    ckpt = EpochCheckpoint(checkpoint, cfg, {"unet": unet, "ema": ema, "opt": opt, "warmup": warmup}, gen, resume)
    first, step = ckpt.load()
    bar = tqdm(total=total, initial=step, desc="train latent diffusion", dynamic_ncols=True, disable=not progress)
    start = time.time()
    for epoch in range(first, math.ceil(total / per_epoch)):
        order = torch.randperm(len(real.labels), generator=gen)
        loss_sum = 0.0
        for i in range(per_epoch):
            if step >= total:
                break
            idx = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            loss = diffusion_loss(unet, real.latents[idx].to(device), real.labels[idx].to(device), alpha_bars, cfg, gen,
                                  null_class=train.num_classes)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            warmup.step()
            ema_update(ema, unet, cfg.ema)
            step += 1
            loss_sum += loss.item()
            bar.update(1)
            if step % 20 == 0 or step == total:
                bar.set_postfix(epoch=epoch, loss=f"{loss.item():.4f}")
        n = max(1, min(per_epoch, step - epoch * per_epoch))
        log(f"epoch {epoch}: mean loss {loss_sum / n:.4f} ({time.time() - start:.0f}s)")
        ckpt.save(epoch, step)
    bar.close()
    log(f"trained latent diffusion for {step} steps in {time.time() - start:.0f}s; config {asdict(cfg)}")
    return DiffusionBackbone(ema.cpu(), scheduler, vae.cpu(), train.classes, source="trained", vae_pointer=cfg.vae)


def _describe(backbone: DiffusionBackbone, cfg: DiffusionConfig) -> str:
    mb = sum(p.numel() * p.element_size() for p in backbone.unet.parameters()) / 2**20
    return (f"sha256 {backbone.weights_sha256()[:16]}, UNet {mb:.2f} MB, noise latent {backbone.noise_shape}, "
            f"VAE {cfg.vae} sha256 {backbone.vae.weights_sha256()[:16]}")


TRAINERS.register("diffusion")(Trainer(DiffusionConfig, train_diffusion, "recipes/train_diffusion.py", _describe,
                                       samples=True, cache=True))
