"""IT-GAN (Zhao & Bilen 2022): informative training samples from a GAN's latent space.

    python recipes/train_gan.py --output gendistill/assets/backbones/fashion-mnist-gan   # the GAN (shipped)
    gendistill distill itgan                                    # Fashion-MNIST, IPC 10, w+
    gendistill distill itgan --latent-space f1 --ipc 1
    accelerate launch -m gendistill distill itgan               # (or recipes/itgan.py) on every device

Starts from the inversions of random real images (--init real), then optimises the latents with DM on the decoded
images + a classification loss from a ConvNet trained on the real data + a term keeping each latent near its
inversion (gendistill/objectives/itgan.py). Writes set.safetensors, grid.png, loss.png and eval.json into --output.
"""

from __future__ import annotations

import sys
from contextlib import nullcontext
from dataclasses import dataclass

from gendistill.cli import run_guarded
from gendistill.config import objective_kwargs, parse_config, setting, with_objective
from gendistill.evaluate import reference_classifier
from gendistill.objectives import get_objective
from gendistill.pipeline import RecipeConfig, run_recipe


@dataclass
class ITGANConfig(with_objective(RecipeConfig, "itgan", "dm")):
    """The recipe's settings; IT-GAN's weights and its DM term's settings come from the objectives."""

    backbone: str = "fashion-mnist-gan"
    latent_space: str | None = "w+"
    match_space: str = "pixel"  # decode-through: a GAN has no latent cache
    init: str = "real"  # inversions of random real images, IT-GAN's start
    steps: int = 500
    lr: float = 0.01  # Adam on the latents
    classifier_epochs: int = setting(2, min=1)  # of the real-data ConvNet
    # safetensors of its weights: loaded if it exists, else trained and written (recipes/eval_gan.py's too)
    classifier: str | None = None
    batch_real: int = 64  # real images per class per step, as recipes/latent_dm.py (the DM term is the same)
    kernel: str = "gaussian"  # of the DM term: M3D's MMD, as recipes/latent_dm.py; "linear" is DM's mean gap
    eval_runs: int = 2


def setup(cfg: ITGANConfig, pieces, accelerator):
    """The real-data classifier and the anchors (the set's latents as initialised: the inversions)."""
    # rank 0 trains and writes it; the others read it
    with accelerator.main_process_first() if cfg.classifier else nullcontext():
        classifier = reference_classifier(pieces.train, accelerator.device, cfg.classifier,
                                          epochs=cfg.classifier_epochs, seed=cfg.seed,
                                          progress=accelerator.is_local_main_process)
    return get_objective("itgan", classifier=classifier, anchors=pieces.syn.latents.detach().clone(),
                         **objective_kwargs(cfg, "itgan", "dm"))


def run(cfg: ITGANConfig) -> dict | None:
    """Distil with ``cfg``; writes the outputs into ``cfg.output`` and returns the eval result (None if skipped)."""
    return run_recipe(cfg, "itgan", setup=lambda pieces, accelerator: setup(cfg, pieces, accelerator))


def main(argv=None) -> int:
    run(parse_config(ITGANConfig, argv, __doc__))
    return 0


if __name__ == "__main__":
    sys.exit(run_guarded(main))
