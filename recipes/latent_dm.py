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
from pathlib import Path

from gendistill.cli import run_guarded
from gendistill.config import parse_config
from gendistill.distill import make_accelerator
from gendistill.objectives import get_objective
from gendistill.pipeline import build, run_distill, run_name, write_outputs


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
    outdir = Path(cfg.output or Path("outputs") / run_name("dm", cfg))
    outdir.mkdir(parents=True, exist_ok=True)
    accelerator = make_accelerator(cfg.mixed_precision, cfg.log_with, outdir)
    if cfg.log_with:
        accelerator.init_trackers("latent_dm", config={k: v for k, v in vars(cfg).items() if v is not None})
    pieces = build(cfg, "dm", accelerator)
    objective = get_objective("dm", net=cfg.net, depth=cfg.depth, width=cfg.width, augment=cfg.augment)
    state = run_distill(cfg, pieces, objective, accelerator, outdir)
    result = write_outputs(cfg, pieces, state, accelerator, outdir)
    accelerator.end_training()
    if result is not None:
        print(f"dm {cfg.dataset} ipc {cfg.ipc} ({cfg.match_space} space): test accuracy {100 * result['mean']:.2f} +- {100 * result['std']:.2f} % "
              f"over {cfg.eval_runs} ConvNets, {cfg.eval_epochs} epochs -> {outdir}/eval.json")
    return 0


if __name__ == "__main__":
    sys.exit(run_guarded(main))
