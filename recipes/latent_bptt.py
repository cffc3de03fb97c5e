"""Back-propagation through inner training (BPTT, RaT-BPTT) in the latent space of a pretrained backbone, or on pixels.

    accelerate launch recipes/latent_bptt.py                                 # BPTT, 20 unrolled steps, through the VAE
    accelerate launch recipes/latent_bptt.py --method ratbptt                # random length in [10, 40], last 10 steps
    accelerate launch recipes/latent_bptt.py --unroll constant --inner-steps 100  # the exact gradient, constant memory
    accelerate launch recipes/latent_bptt.py --backbone pixel                # classic pixel-space BPTT
    accelerate launch recipes/latent_bptt.py --learn-labels                  # learn the labels too (soft, stored)
    accelerate launch recipes/latent_bptt.py --resume                        # continue the run in --output

Each step trains a fresh ConvNet for --inner-steps SGD steps on the (decoded) set with the set's learnable lr, scores it
on a real batch (--batch-real per class) and back-propagates through the unroll (RaT-BPTT: through its last --window
steps) to the latents and the lr. An autograd unroll that would not fit in memory is refused with the fix
(--unroll constant, a --window, a smaller --batch-syn). The maths: gendistill/objectives/bptt.py.
Learns the latents and the set's eval lr (saved as ``lr``, used by `gendistill eval`), and with --learn-labels the
labels (saved as probabilities). Writes set.safetensors, grid.png, loss.png and eval.json into --output (default
outputs/<run-name>).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import torch

from gendistill.cli import run_guarded
from gendistill.config import parse_config
from gendistill.objectives import get_objective
from gendistill.objectives.trajectory import finish_soft_labels
from gendistill.pipeline import LabelLearning, RecipeConfig, learnable_labels, run_recipe

METHODS = ("bptt", "ratbptt")
OBJECTIVE_KEYS = ("inner_steps", "window", "batch_syn", "augment", "unroll", "memory_budget_gb")


@dataclass
class LatentBPTTConfig(LabelLearning, RecipeConfig):
    method: str = "bptt"  # bptt | ratbptt
    match_space: str = "pixel"  # decode-through: the inner nets train on decoded images
    init: str = "kmeans"
    steps: int = 200
    width: int = 32  # of the inner ConvNet (evaluation always uses the protocol's width 128)
    lr: float = 0.01  # of the latents (Adam)
    batch_real: int = 32  # real samples per class that score the trained net
    lr_lr: float = 1e-4  # of the learned inner / eval lr
    # the learned lr's start (with the inner momentum 0.9: 0.03 trains a pixel ConvNet best in 10-20 steps)
    syn_lr_init: float = 0.03
    inner_steps: int | None = None  # None: the method's default (bptt 20, ratbptt 40)
    window: int | None = None  # None: bptt all steps, ratbptt 10
    batch_syn: int | None = None  # None: the whole set in every inner step
    augment: str | None = None  # None: auto (DSA on images, the latent variant on latents)
    unroll: str | None = None  # autograd (default) | constant
    memory_budget_gb: float | None = None  # None: 90% of the memory available at the start
    inner_momentum: float = 0.9  # of the inner SGD (the evaluation protocol's); 0: Wang et al.'s plain SGD


def setup(cfg, pieces, accelerator):
    knobs = {k: getattr(cfg, k) for k in OBJECTIVE_KEYS if getattr(cfg, k) is not None}
    objective = get_objective(cfg.method, net=cfg.net, depth=cfg.depth, width=cfg.width, momentum=cfg.inner_momentum,
                              **knobs)
    pieces.syn.lr = torch.nn.Parameter(torch.tensor(float(cfg.syn_lr_init)))
    learnable_labels(cfg, pieces.syn)  # --learn-labels: the unroll trains on soft targets that L's gradient reaches
    return objective


def main(argv=None) -> int:
    cfg = parse_config(LatentBPTTConfig, argv, __doc__)
    if cfg.method not in METHODS:
        raise ValueError(f"unknown --method {cfg.method!r}; use one of {', '.join(METHODS)}")
    if not (cfg.syn_lr_init > 0 and math.isfinite(cfg.syn_lr_init)):
        raise ValueError(f"--syn-lr-init must be a positive number, got {cfg.syn_lr_init}")
    run_recipe(cfg, cfg.method, setup=lambda pieces, accelerator: setup(cfg, pieces, accelerator),
               finish=lambda pieces: finish_soft_labels(pieces.syn))
    return 0


if __name__ == "__main__":
    sys.exit(run_guarded(main))
