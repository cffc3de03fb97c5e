"""The backbone trainers behind one registry, and the one entry point every trainer shares.

A :class:`Trainer` names a backbone kind's config dataclass and training function; :func:`train_backbone` parses the
flags (the dataset, ``--output``, ``--resume`` and one flag per config field), trains with a per-epoch checkpoint
beside the output, writes the backbone directory and says what it wrote. ``recipes/train_*.py`` and
``gendistill train-backbone --kind KIND`` both call it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..registry import Registry

TRAINERS: Registry = Registry("backbone trainer")


@dataclass(frozen=True)
class Trainer:
    config: type  # the dataclass of the trainer's settings (one flag per field)
    train: Callable  # (dataset, cfg, device=, checkpoint=, resume=, **extra) -> Backbone
    recipe: str  # the recipe that makes this kind of backbone, recorded in gendistill.json
    describe: Callable  # (backbone, cfg) -> the summary printed after saving
    samples: bool = False  # a generator: writes samples.png (--samples-per-class)
    cache: bool = False  # reads a latent cache (--cache-dir)


def get_trainer(kind: str) -> Trainer:
    return TRAINERS.get(kind)


def train_backbone(kind: str, argv: list[str] | None = None, description: str | None = None, prog: str
                   | None = None) -> int:
    """Train a backbone of ``kind`` as ``argv`` says and write it to ``--output`` (diffusers layout); returns 0.

    Interrupted runs leave ``OUTPUT.ckpt`` (written after every epoch) and continue with ``--resume``. A non-empty
    ``--output`` is refused unless ``--overwrite`` (replaced once the new backbone is complete) or ``--resume``, and
    the output is locked against a second run (docs/safety.md)."""
    from accelerate import Accelerator

    from ..config import backbone_training_parser, checked_type, config_from_args
    from ..data import load_split
    from ..outputs import claim_backbone_output
    from .common import checkpoint_path, resumable, save_trained

    trainer = get_trainer(kind)
    p = backbone_training_parser(trainer.config, description, prog=prog)
    if trainer.cache:
        p.add_argument("--cache-dir", default=None, help="latent cache root (default ~/.cache/gendistill/latents)")
    if trainer.samples:
        p.add_argument("--samples-per-class", type=checked_type(int, min=1), default=10, help="rows of samples.png")
    args = p.parse_args(argv)
    cfg = config_from_args(trainer.config, args)
    ckpt = checkpoint_path(args.output)
    train = load_split(args, "train")
    extra = {"cache_dir": args.cache_dir} if trainer.cache else {}
    with claim_backbone_output(args), resumable(ckpt):  # refuse a non-empty --output unless --overwrite; lock it
        backbone = trainer.train(train, cfg, device=Accelerator().device, checkpoint=ckpt, resume=args.resume, **extra)
        samples = args.samples_per_class if trainer.samples else 0
        save_trained(backbone, train, cfg, args.output, trainer.recipe, samples_per_class=samples,
                     seed=getattr(cfg, "seed", 0))
    print(f"saved {args.output} ({trainer.describe(backbone, cfg)})")
    return 0
