"""Decoupled SRe2L: squeeze (train a BatchNorm teacher), recover (latents whose decoded images match the teacher's
BatchNorm statistics and class), relabel (the teacher's soft labels on augmented crops, stored in the set).

    accelerate launch recipes/sre2l.py                               # through the shipped VAE, teacher on real images
    accelerate launch recipes/sre2l.py --teacher-data decoded        # the teacher learns the VAE's reconstructions
    accelerate launch recipes/sre2l.py --match-space latent          # teacher and recover on the VAE's latents
    accelerate launch recipes/sre2l.py --backbone pixel              # classic pixel-space SRe2L
    accelerate launch recipes/sre2l.py --teacher outputs/x/teacher   # reuse a teacher (the squeeze step is skipped)
    accelerate launch recipes/sre2l.py --resume                      # continue the run in --output

Without --teacher, the teacher is trained once into <output>/teacher (teacher.safetensors + config.json) and reused by
--resume. The set records the teacher's directory and hash (run.teacher) and the relabel settings (run.relabel).
The maths: gendistill/objectives/sre2l.py and gendistill/sre2l.py. Writes set.safetensors, grid.png, loss.png,
eval.json into --output (default outputs/<run-name>).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from gendistill.backbones import effective_match_space
from gendistill.cache import LatentSplit, cached_latents, image_split
from gendistill.cli import run_guarded
from gendistill.config import parse_config
from gendistill.data import normalize
from gendistill.objectives import get_objective
from gendistill.objectives.sre2l import sre2l_augment
from gendistill.objectives.trajectory import match_space_inputs
from gendistill.pipeline import RecipeConfig, run_name, run_recipe
from gendistill.sre2l import TeacherConfig, ensure_teacher, relabel


@dataclass
class SRe2LConfig(RecipeConfig):
    match_space: str = "pixel"  # decode-through: the teacher judges decoded images
    init: str = "kmeans"
    steps: int = 300  # recover steps
    lr: float = 0.01  # Adam on the latents
    batch_real: int = 1  # recover reads no real data
    teacher: str | None = None  # a teacher directory (skips the squeeze); None: <output>/teacher, trained if absent
    teacher_net: str = "convnet-bn"
    teacher_depth: int = 3
    teacher_width: int = 64
    teacher_epochs: int = 2
    teacher_lr: float = 0.01
    teacher_data: str = "real"  # real | decoded (pixel match space: the backbone's reconstructions of the train split)
    bn_weight: float = 0.01  # weight of the BatchNorm statistics term
    first_bn_multiplier: float = 10.0
    augment: str = "auto"  # crop + scale + flip on images, the latent variant on latents
    relabel_views: int = 10  # augmented crops whose teacher softmax is averaged into each soft label
    relabel_temperature: float = 1.0
    eval_runs: int = 2


def _teacher_data(cfg, pieces, space, accelerator):
    """Lazy train and test splits in the match space (images in [0, 1], or latents)."""
    backbone = pieces.backbone

    def train():
        if space == "latent":
            return pieces.real_latents
        if cfg.teacher_data == "decoded" and backbone.kind != "pixel":
            z = pieces.real_latents
            with torch.no_grad():
                images = torch.cat(
                    [
                        backbone.decode(z.latents[i : i + 256].to(accelerator.device)).float().clamp(0, 1).cpu()
                        for i in range(0, len(z.labels), 256)
                    ]
                )
            return LatentSplit(images, z.labels, z.num_classes, "pixel")
        return pieces.real if pieces.real.space == "pixel" else image_split(pieces.train)

    def test():
        if space == "latent":
            return cached_latents(backbone, pieces.test, cfg.cache_dir, device=accelerator.device,
                                  log=accelerator.print)
        return image_split(pieces.test)

    return train, test


def setup(cfg, pieces, accelerator, made):
    space = effective_match_space(pieces.backbone.kind, cfg.match_space)
    meta = pieces.train.meta()
    transform = (lambda x: normalize(x, meta["mean"], meta["std"])) if space == "pixel" else (lambda x: x)
    in_shape = pieces.backbone.image_shape if space == "pixel" else pieces.backbone.latent_shape
    tcfg = TeacherConfig(net=cfg.teacher_net, depth=cfg.teacher_depth, width=cfg.teacher_width,
                         epochs=cfg.teacher_epochs, lr=cfg.teacher_lr, data=cfg.teacher_data, seed=cfg.seed)
    directory = Path(cfg.teacher or Path(cfg.output) / "teacher")
    train, test = _teacher_data(cfg, pieces, space, accelerator)
    with accelerator.main_process_first():  # one process trains it, the others load it
        teacher, tmeta = ensure_teacher(directory, cfg.teacher is not None, tcfg, space, in_shape,
                                        pieces.train.num_classes, meta, pieces.backbone, train, test, transform,
                                        sre2l_augment("auto", space), accelerator.device, log=accelerator.print)
    pieces.syn.run_meta["teacher"] = {"directory": str(directory), "sha256": tmeta["sha256"], "net": tmeta["net"],
                                      "width": tmeta["width"], "space": space, "data": tmeta["training"]["data"],
                                      "test_accuracy": tmeta.get("test_accuracy")}
    made.update(teacher=teacher, space=space)
    return get_objective("sre2l", teacher=teacher, teacher_space=space, bn_weight=cfg.bn_weight,
                         first_bn_multiplier=cfg.first_bn_multiplier, augment=cfg.augment)


def finish(cfg, pieces, made):
    syn, backbone, teacher = pieces.syn, pieces.backbone, made["teacher"]
    to_input = match_space_inputs(backbone, made["space"], pieces.train.meta())
    with torch.no_grad():
        inputs = to_input(syn.latents.detach())
    teacher.to(inputs.device)
    labels = relabel(inputs, teacher, sre2l_augment(cfg.augment, made["space"]), cfg.relabel_views,
                     cfg.relabel_temperature, torch.Generator().manual_seed(cfg.seed))
    hard = syn.hard_labels.clone()
    del syn.labels
    syn.register_buffer("labels", labels.to(syn.latents.device))
    syn.run_meta["relabel"] = {"views": cfg.relabel_views, "temperature": cfg.relabel_temperature,
                               "augment": cfg.augment,
                               "argmax_matches_class": int((labels.argmax(1).cpu() == hard.cpu()).sum()),
                               "samples": len(hard), "label_bytes": labels.numel() * 4}


def main(argv=None) -> int:
    cfg = parse_config(SRe2LConfig, argv, __doc__)
    cfg.output = cfg.output or str(Path("outputs") / run_name("sre2l", cfg))  # the teacher's default home is inside it
    made: dict = {}
    run_recipe(cfg, "sre2l", setup=lambda pieces, accelerator: setup(cfg, pieces, accelerator, made),
               finish=lambda pieces: finish(cfg, pieces, made))
    return 0


if __name__ == "__main__":
    sys.exit(run_guarded(main))
