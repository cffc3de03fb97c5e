"""Gradient matching (DC, or DSA with siamese augmentation) in the latent space of a pretrained backbone.

    gendistill distill dc                                   # DC, Fashion-MNIST, IPC 10, shipped VAE
    gendistill distill dsa                                  # DSA (augmentation: geometric ops on latents)
    gendistill distill dc --match-space pixel               # GLaD-style decode-through
    gendistill distill dc --backbone pixel                  # classic pixel-space DC / DSA
    gendistill distill dc --resume                          # continue the run in --output
    accelerate launch -m gendistill distill dsa             # (or recipes/latent_dc.py --method dsa) on every device

Every step is one matching step (one update of the set); a new proxy net is drawn every --outer-loop steps and
trained for --inner-loop epochs on the set between two of them (see gendistill/objectives/gradient.py). With no
--outer-loop / --inner-loop the reference's values for the IPC are used (IPC 1: 1/1, 10: 10/50, 50: 50/10).
Writes set.safetensors, grid.png, loss.png and eval.json into --output (default outputs/<run-name>).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from gendistill.cli import run_guarded
from gendistill.config import objective_kwargs, parse_config, setting, with_objective
from gendistill.objectives import get_objective
from gendistill.objectives.gradient import reference_loops
from gendistill.pipeline import RecipeConfig, run_recipe

METHODS = ("dc", "dsa")


@dataclass
class LatentDCConfig(with_objective(RecipeConfig, "dc")):
    """The recipe's settings; DC's own (augment, dis_metric, net_lr, ...) come from the objective's dataclass (dsa has
    the same)."""

    method: str = setting("dc", choices=METHODS)  # dc | dsa
    steps: int = 1000  # matching steps: 100 outer iterations at IPC 10 (the reference runs 1000)
    lr: float = 0.01  # Adam on the latents (unit-variance VAE latents; the reference: SGD 0.1, momentum 0.5, on pixels)
    outer_loop: int | None = None  # matching steps per proxy net; None: the reference's value for --ipc
    inner_loop: int | None = None  # net-training epochs between matching steps; None: the reference's value


def run(cfg: LatentDCConfig) -> dict | None:
    """Distil with ``cfg``; writes the outputs into ``cfg.output`` and returns the eval result (None if skipped)."""
    return run_recipe(cfg, cfg.method, setup=lambda pieces, accelerator: setup(cfg, pieces))


def setup(cfg: LatentDCConfig, pieces):
    """The objective, once the set exists (--ipc-budget decides the IPC, and the reference's loops follow it)."""
    outer, inner = reference_loops(cfg.ipc)
    cfg.outer_loop = outer if cfg.outer_loop is None else cfg.outer_loop  # resolved values go into the set's config
    cfg.inner_loop = inner if cfg.inner_loop is None else cfg.inner_loop
    pieces.syn.run_meta["config"].update(outer_loop=cfg.outer_loop, inner_loop=cfg.inner_loop)
    return get_objective(cfg.method, **objective_kwargs(cfg, cfg.method))


def main(argv=None) -> int:
    run(parse_config(LatentDCConfig, argv, __doc__))
    return 0


if __name__ == "__main__":
    sys.exit(run_guarded(main))
