"""Distribution matching in the latent space of a pretrained backbone (DM + LatentDD).

    accelerate launch recipes/latent_dm.py                      # Fashion-MNIST, IPC 10, shipped VAE
    accelerate launch recipes/latent_dm.py --match-space pixel  # GLaD-style decode-through
    accelerate launch recipes/latent_dm.py --backbone pixel     # classic pixel-space DM
    accelerate launch recipes/latent_dm.py --resume             # continue the run in --output

Writes set.safetensors, grid.png, loss.png and eval.json into --output (default outputs/<run-name>).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from gendistill.cli import run_guarded
from gendistill.config import parse_config
from gendistill.objectives import get_objective
from gendistill.pipeline import run_recipe


@dataclass
class LatentDMConfig:
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    download: bool = False
    backbone: str = "fashion-mnist-vae"
    match_space: str = "latent"
    ipc: int = 10
    init: str = "real"
    steps: int = 2000
    lr: float = 0.05
    optimizer: str = "adam"
    batch_real: int = 256
    net: str = "convnet"
    depth: int = 3
    width: int = 128
    pool: str = "avgpooling"
    augment: str = "auto"
    vjp_chunk: int = 64
    seed: int = 0
    output: str | None = None
    checkpoint_every: int = 500
    resume: bool = False
    mixed_precision: str | None = None  # None: what `accelerate launch` says
    log_with: str | None = None  # csv, tensorboard, wandb (comma-separated)
    cache_dir: str | None = None
    eval_epochs: int = 300
    eval_runs: int = 3


def main(argv=None) -> int:
    cfg = parse_config(LatentDMConfig, argv, __doc__)
    run_recipe(cfg, "dm", get_objective("dm", net=cfg.net, depth=cfg.depth, width=cfg.width, pool=cfg.pool, augment=cfg.augment))
    return 0


if __name__ == "__main__":
    sys.exit(run_guarded(main))
