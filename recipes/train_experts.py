"""Train expert trajectories for trajectory matching (MTT / TESLA / DATM) and store them in --output.

    python recipes/train_experts.py --output experts/fmnist-latent                 # shipped VAE latents
    python recipes/train_experts.py --space pixel --output experts/fmnist-pixel    # normalised images
    OMP_NUM_THREADS=1 python recipes/train_experts.py --output DIR --shard 0/2 &    # two independent processes
    OMP_NUM_THREADS=1 python recipes/train_experts.py --output DIR --shard 1/2      #   share the experts (1 core each)

Each expert is a fresh network (the objective's --net/--depth/--width) trained with SGD (lr 0.01, no momentum,
no weight decay, as MTT's buffer.py) and the space's augmentation; one parameter snapshot per epoch (epoch 0
included) goes into DIR/expert_NNNN.safetensors, the settings into DIR/experts.json. Re-running continues a
stopped job (finished experts are skipped). `gendistill info DIR` describes the result. On a busy CPU one thread per
process (OMP_NUM_THREADS=1) is much faster than oversubscribed threads for these small convolutions.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, fields

from gendistill.backbones import load_backbone
from gendistill.cli import run_guarded
from gendistill.config import Checked, parse_config, setting
from gendistill.data import DataConfig, load_split
from gendistill.distill import make_accelerator
from gendistill.experts import SPACES, ExpertConfig, NetSpec, build_experts
from gendistill.nets.registry import get_builder


@dataclass
class TrainExpertsConfig(DataConfig, Checked):
    """Built, it checks its fields and those of the pieces they feed (``ExpertConfig``, ``NetSpec``)."""

    output: str | None = None
    backbone: str = "fashion-mnist-vae"
    space: str = setting("latent", choices=SPACES)  # latent: the backbone's cached latents; pixel: normalised images
    net: str = setting("convnet", check=get_builder)
    depth: int = 3
    width: int = 128
    num_experts: int = 5
    # 5 x 8 on Fashion-MNIST latents: 40 epochs x 27.5 s (one epoch measured, 1 thread, shared cores) = ~18 min
    epochs: int = 8
    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 0.0
    batch: int = 256
    augment: str = "auto"
    seed: int = 0
    test: bool = True  # test accuracy of each finished expert, stored in its file
    shard: str | None = None  # "i/n": train experts i, i+n, ... (run n processes on one --output)
    cache_dir: str | None = None

    def __post_init__(self):
        super().__post_init__()
        self.expert_config()
        self.net_spec()

    def expert_config(self) -> ExpertConfig:
        return ExpertConfig(**{f.name: getattr(self, f.name) for f in fields(ExpertConfig)})

    def net_spec(self) -> NetSpec:
        return NetSpec(self.net, self.depth, self.width)


def main(argv=None) -> int:
    cfg = parse_config(TrainExpertsConfig, argv, __doc__)
    if not cfg.output:
        raise ValueError("--output DIR is required (the experts directory to write or continue)")
    shard = None
    if cfg.shard:
        parts = cfg.shard.split("/")
        if len(parts) != 2 or not all(p.isdigit() for p in parts) or int(parts[0]) >= int(parts[1]):
            raise ValueError(f"--shard {cfg.shard!r} must be i/n with 0 <= i < n, e.g. 0/2")
        shard = (int(parts[0]), int(parts[1]))
    accelerator = make_accelerator(None)
    train = load_split(cfg, "train")
    test = load_split(cfg, "test") if cfg.test else None
    backbone = load_backbone(cfg.backbone if cfg.space == "latent" else "pixel",
                             image_shape=train.image_shape).to(accelerator.device)
    ecfg = cfg.expert_config()
    out = build_experts(cfg.output, cfg.space, backbone, train, cfg.net_spec(), ecfg, cfg.cache_dir, test,
                        accelerator, log=accelerator.print, shard=shard)
    done = f" (shard {cfg.shard})" if shard else ""
    accelerator.print(f"experts in {out}{done}: {ecfg.num_experts} x {ecfg.epochs} epochs ({cfg.space} space); "
                      f"`gendistill info {out}` describes them")
    return 0


if __name__ == "__main__":
    sys.exit(run_guarded(main))
