"""Training a small diffusers ``AutoencoderKL`` for a dataset (the embedded default is made this way)."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from ..backbones.vae import VAEBackbone
from ..config import Checked, setting
from ..data import ImageDataset
from .base import TRAINERS, Trainer
from .common import EpochCheckpoint


@dataclass
class AutoencoderConfig(Checked):
    block_out_channels: tuple[int, ...] = setting((16, 32, 64), min=1)
    latent_channels: int = setting(4, min=1)
    layers_per_block: int = setting(1, min=1)
    norm_num_groups: int = setting(16, min=1)
    epochs: int = setting(6, min=1)
    batch_size: int = setting(128, min=1)
    lr: float = setting(2e-3, above=0)
    kl_weight: float = setting(1e-6, min=0)
    seed: int = setting(0, min=0)


def build_autoencoder(image_shape, cfg: AutoencoderConfig):
    from diffusers import AutoencoderKL

    c, h, w = image_shape
    n = len(cfg.block_out_channels)
    return AutoencoderKL(
        in_channels=c, out_channels=c,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(cfg.block_out_channels), layers_per_block=cfg.layers_per_block,
        latent_channels=cfg.latent_channels, norm_num_groups=cfg.norm_num_groups, sample_size=h,
        mid_block_add_attention=False, scaling_factor=1.0,
    )


def train_autoencoder(train: ImageDataset, cfg: AutoencoderConfig, device: torch.device | str = "cpu", log=print,
                      checkpoint=None, resume: bool = False) -> VAEBackbone:
    """L1 reconstruction + a small KL term, Adam with cosine decay; ``scaling_factor`` = 1 / std of the latents.
    ``checkpoint``: a file for the per-epoch training state (``EpochCheckpoint``); ``resume`` continues from it."""
    gen = torch.Generator().manual_seed(cfg.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        vae = build_autoencoder(train.image_shape, cfg)
    vae.to(device).train()
    opt = torch.optim.Adam(vae.parameters(), lr=cfg.lr)
    per_epoch = math.ceil(len(train) / cfg.batch_size)
    total = cfg.epochs * per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    ckpt = EpochCheckpoint(checkpoint, cfg, {"vae": vae, "opt": opt, "sched": sched}, gen, resume)
    first, done = ckpt.load()
    bar = tqdm(total=total, initial=done, desc="train autoencoder", dynamic_ncols=True)
    start = time.time()
    for epoch in range(first, cfg.epochs):
        order = torch.randperm(len(train), generator=gen)
        for i in range(per_epoch):
            x = train.float_images(order[i * cfg.batch_size : (i + 1) * cfg.batch_size]).to(device) * 2 - 1
            post = vae.encode(x).latent_dist
            z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen).to(device)
            rec = vae.decode(z).sample
            loss = (rec - x).abs().mean() + cfg.kl_weight * post.kl().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{loss.item():.4f}")
        ckpt.save(epoch, (epoch + 1) * per_epoch)
    bar.close()
    vae.eval()
    with torch.no_grad():
        idx = torch.randperm(len(train), generator=gen)[:2048]
        z = torch.cat([vae.encode(train.float_images(idx[i : i + 256]).to(device) * 2 - 1).latent_dist.mean
                       for i in range(0, len(idx), 256)])
    vae.register_to_config(scaling_factor=float(1.0 / z.std()))
    log(f"trained autoencoder in {time.time() - start:.0f}s; scaling_factor={vae.config.scaling_factor:.4f}; "
        f"config {asdict(cfg)}")
    return VAEBackbone(vae.cpu(), image_shape=train.image_shape, source="trained")


def _describe(backbone: VAEBackbone, cfg: AutoencoderConfig) -> str:
    return f"sha256 {backbone.weights_sha256()[:16]}, latent shape {backbone.latent_shape}"


TRAINERS.register("vae")(Trainer(AutoencoderConfig, train_autoencoder, "recipes/train_autoencoder.py", _describe))
