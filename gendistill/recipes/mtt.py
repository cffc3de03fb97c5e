"""Trajectory matching (MTT, TESLA's constant-memory gradient, DATM) in the latent space of a pretrained backbone.

    python recipes/train_experts.py --space pixel --width 32 --num-experts 4 --output experts/fmnist-pixel-w32
    gendistill distill mtt --experts experts/fmnist-pixel-w32     # (or let this recipe train the
    gendistill distill tesla                                      #  default experts into the cache)
    gendistill distill datm                                       # + difficulty window, soft labels
    gendistill distill mtt --match-space latent --width 128 --optimizer sgd --lr 1000   # experts on latents
    accelerate launch -m gendistill distill mtt                   # (or recipes/latent_mtt.py) on every device

The defaults are the configuration measured best here (docs/results.md, section 2): GLaD-style decode-through
(``--match-space pixel``: the VAE's latents are learned, the experts and the student are ConvNet-3 of width 32 on
decoded images), Adam lr 0.01 on the latents from k-means centres. Experts trained on the latents themselves give
trajectories that do not transfer to networks trained on the decoded images (71.9% at IPC 10, below random real images).

Learns the latents, the set's eval lr (saved as ``lr``, used by `gendistill eval`) and, for DATM, soft labels (saved
as probabilities). Writes set.safetensors, grid.png, loss.png and eval.json into --output (default outputs/<run-name>).
Objective settings left unset (None) take the method's defaults (gendistill/objectives/trajectory.py).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch

from gendistill.backbones import effective_match_space
from gendistill.cli import run_guarded
from gendistill.config import objective_kwargs, parse_config, setting, with_objective
from gendistill.experts import ExpertConfig, NetSpec, build_experts, identity, load_experts
from gendistill.objectives import get_objective
from gendistill.objectives.trajectory import finish_soft_labels, init_soft_labels, match_space_inputs
from gendistill.pipeline import RecipeConfig, run_recipe

METHODS = ("mtt", "tesla", "datm")


@dataclass
class LatentMTTConfig(with_objective(RecipeConfig, "mtt", unset=True, exclude=("lr_teacher", "label_logits"))):
    """The recipe's settings; the objective's (syn_steps, expert_epochs, ..., threshold) come from its dataclass, unset
    (None) so that --method's own defaults apply (mtt, tesla and datm differ). The recipe always learns the set's lr
    (so lr_teacher never applies) and label_logits follows --method (datm's soft labels are logits)."""

    method: str = setting("mtt", choices=METHODS)  # mtt | tesla | datm
    experts: str | None = None  # experts directory; None: default experts, trained once into the cache
    match_space: str = "pixel"  # decode-through: experts and student see decoded images (latent: they see latents)
    init: str = "kmeans"
    steps: int = 200
    width: int = 32  # of the experts' and the student's ConvNet (evaluation always uses the protocol's width 128)
    lr: float = 0.01  # of the latents (Adam); MTT's own choice, SGD lr 1000 momentum 0.5, suits latent-space experts
    optimizer: str = "adam"
    momentum: float = 0.5  # --optimizer sgd only
    lr_lr: float = 1e-5  # of the learned eval lr
    syn_lr_init: float = setting(0.01, above=0)  # the learned eval lr starts at the experts' lr
    lr_labels: float = 2.0  # of DATM's soft-label logits
    label_epoch: int = -1  # expert snapshot that initialises DATM's soft labels (-1: the last)
    num_experts: int = setting(4, min=1)  # default experts (no --experts)
    expert_train_epochs: int = setting(8, min=1)
    checkpoint_every: int = 200


def setup(cfg, pieces, accelerator):
    """Experts for this run (given, or trained once into the cache), the learnable lr and, for DATM, soft labels."""
    backbone, train, syn = pieces.backbone, pieces.train, pieces.syn
    space = effective_match_space(backbone.kind, cfg.match_space)
    net = NetSpec(cfg.net, cfg.depth, cfg.width)
    in_shape = backbone.image_shape if space == "pixel" else backbone.latent_shape
    directory = cfg.experts or build_experts(None, space, backbone, train, net,
                                             ExpertConfig(cfg.num_experts, cfg.expert_train_epochs), cfg.cache_dir,
                                             pieces.test, accelerator, log=accelerator.print)
    experts = load_experts(directory, expect=identity(space, backbone, train.meta(), net, in_shape, train.num_classes))
    objective = get_objective(cfg.method, experts=experts, **objective_kwargs(cfg, cfg.method, drop_none=True))
    syn.lr = torch.nn.Parameter(torch.tensor(float(cfg.syn_lr_init)))
    t = experts.meta["training"]
    syn.run_meta["experts"] = {"directory": str(directory), "space": space, "num_experts": t["num_experts"],
                               "epochs": t["epochs"], "lr": t["lr"]}
    if cfg.method == "datm":
        # candidates must be latents: a backbone without a latent cache (gan) keeps the set's own initialisation
        candidates = pieces.real_latents if pieces.real_latents.space == "latent" else None
        with torch.no_grad():
            info = init_soft_labels(syn, experts, match_space_inputs(backbone, space, train.meta()), candidates,
                                    torch.Generator().manual_seed(cfg.seed), cfg.label_epoch)
        accelerator.print(f"datm: soft labels from expert logits; {info['correct_by_any_expert']}/{info['samples']} "
                          f"samples correctly classified, {info['fallback']} filled with the most confident")
    return objective


def run(cfg: LatentMTTConfig) -> dict | None:
    """Distil with ``cfg``; writes the outputs into ``cfg.output`` and returns the eval result (None if skipped)."""
    return run_recipe(cfg, cfg.method, setup=lambda pieces, accelerator: setup(cfg, pieces, accelerator),
                      finish=lambda pieces: finish_soft_labels(pieces.syn))


def main(argv=None) -> int:
    run(parse_config(LatentMTTConfig, argv, __doc__))
    return 0


if __name__ == "__main__":
    sys.exit(run_guarded(main))
