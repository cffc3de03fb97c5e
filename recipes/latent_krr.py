"""Kernel ridge regression distillation (KIP, FRePo) in the latent space of a pretrained backbone, or on pixels.

    accelerate launch recipes/latent_krr.py                           # KIP, random-feature NNGP kernel, through the VAE
    accelerate launch recipes/latent_krr.py --method frepo            # FRePo: features of a pool of nets trained online
    accelerate launch recipes/latent_krr.py --kernel ntk --width 16   # KIP with a finite-width empirical NTK
    accelerate launch recipes/latent_krr.py --backbone pixel          # classic pixel-space KIP / FRePo
    accelerate launch recipes/latent_krr.py --learn-labels            # learn the labels too (stored as probabilities)
    accelerate launch recipes/latent_krr.py --resume                  # continue the run in --output

Each step fits a kernel ridge regressor on the (decoded) set and scores it on a real batch (--batch-real per class);
the loss's gradient reaches the latents, through the decoder in the pixel match space. The ridge is --jitter times
the mean diagonal of the set's kernel matrix; the last step's absolute value is recorded in the set (run.krr). The
maths and the kernels: gendistill/objectives/krr.py. Writes set.safetensors, grid.png, loss.png and eval.json.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from gendistill.cli import run_guarded
from gendistill.config import parse_config
from gendistill.objectives import get_objective
from gendistill.objectives.trajectory import finish_soft_labels
from gendistill.pipeline import LabelLearning, RecipeConfig, learnable_labels, run_recipe

METHODS = ("kip", "frepo")


@dataclass
class LatentKRRConfig(LabelLearning, RecipeConfig):
    method: str = "kip"  # kip | frepo
    match_space: str = "pixel"  # decode-through: the kernel sees decoded images
    init: str = "kmeans"
    steps: int = 300
    lr: float = 0.01  # Adam on the latents
    batch_real: int = 30  # real samples per class in the regression's target batch
    width: int = 32  # of the feature ConvNets (evaluation always uses the protocol's width 128)
    pool: str = "avgpooling"
    augment: str = "none"  # none | auto (DSA on images, the latent variant on latents; one draw for both sides)
    jitter: float = 1e-6  # ridge relative to the mean diagonal of the set's kernel matrix
    kernel: str = "nngp"  # kip: nngp (random features of fresh ConvNets) | ntk (empirical NTK of one fresh ConvNet)
    num_models: int = 2  # kip nngp: fresh ConvNets per step
    pool_size: int = 10  # frepo: nets in the online pool
    max_online_steps: int = 100  # frepo: steps a pool net trains on the set before it is replaced
    online_lr: float = 0.01  # frepo: SGD lr of the pool's nets
    eval_runs: int = 2


def setup(cfg, pieces, accelerator):
    common = dict(net=cfg.net, depth=cfg.depth, width=cfg.width, pool=cfg.pool, augment=cfg.augment, jitter=cfg.jitter)
    if cfg.method == "kip":
        objective = get_objective("kip", kernel=cfg.kernel, num_models=cfg.num_models, **common)
    else:
        objective = get_objective("frepo", pool_size=cfg.pool_size, max_online_steps=cfg.max_online_steps,
                                  online_lr=cfg.online_lr, **common)
    learnable_labels(cfg, pieces.syn)  # --learn-labels
    return objective


def finish(cfg, objective, pieces):
    finish_soft_labels(pieces.syn)
    pieces.syn.run_meta["krr"] = {"jitter": cfg.jitter, "last_ridge": objective.last_ridge,
                                  "solve": "cholesky, float64", "kernel": cfg.kernel if cfg.method == "kip"
                                  else "frepo-features"}


def main(argv=None) -> int:
    cfg = parse_config(LatentKRRConfig, argv, __doc__)
    if cfg.method not in METHODS:
        raise ValueError(f"unknown --method {cfg.method!r}; use one of {', '.join(METHODS)}")
    made = {}

    def build(pieces, accelerator):
        made["objective"] = setup(cfg, pieces, accelerator)
        return made["objective"]

    run_recipe(cfg, cfg.method, setup=build, finish=lambda pieces: finish(cfg, made["objective"], pieces))
    return 0


if __name__ == "__main__":
    sys.exit(run_guarded(main))
