"""The steps every distillation recipe shares: build the pieces from names, distil, write the outputs."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import torch
from accelerate import Accelerator

from . import __version__
from .backbones import Backbone, backbone_options, effective_match_space, load_backbone
from .cache import LatentSplit, cached_latents, image_split
from .config import Checked, check_config, setting
from .data import DataConfig, ImageDataset, load_split
from .distill import DistillConfig, Interrupted, TrainState, all_processes_ok, distill, make_accelerator
from .evaluate import EvalConfig, EvalState, evaluate
from .experts import NetSpec
from .io import write_json
from .metric import METRICS
from .nets.registry import get_builder
from .objectives import Objective
from .outputs import RunOutput, staging_path
from .plots import image_grid, loss_plot, save_png
from .sampler import SAMPLERS
from .storage import FITTED_DTYPES, check_ipc_args, get_codec, resolve_ipc
from .synthetic import INITS, SyntheticSet, set_backbone_options

# keys that may change between an interrupted run and its resume
RESUME_FREE = {"steps", "resume", "overwrite", "eval_epochs", "eval_runs", "eval_compile", "checkpoint_every",
               "log_with", "output", "mixed_precision", "cache_dir"}


def run_name(method: str, cfg) -> str:
    backbone = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(cfg.backbone).name)
    space = f"-{cfg.latent_space.replace('+', 'p')}" if getattr(cfg, "latent_space", None) else ""
    size = f"budget{cfg.ipc_budget:g}" if getattr(cfg, "ipc_budget", None) is not None else f"ipc{cfg.ipc}"
    dtype = getattr(cfg, "latent_dtype", "float32")
    size += "" if dtype == "float32" else f"-{dtype}"
    return f"{method}-{cfg.dataset}-{size}-{backbone}{space}-{cfg.match_space}"


@dataclasses.dataclass
class RecipeConfig(DataConfig, Checked):
    """The settings every distillation recipe shares (after the dataset's); a recipe subclasses it, adds its method's
    fields (:func:`~gendistill.config.with_objective`) and may give any field another default (redeclaring it keeps
    its place and its limits). Built, it checks its own fields' limits and those of the pieces it feeds: the loop's
    (``DistillConfig``: steps, lr, batch_real, ...) and the matching net's (``NetSpec``: net, depth, width)."""

    backbone: str = "fashion-mnist-vae"
    latent_space: str | None = None  # gan backbones: z, w, w+, f<k> (None: the backbone's default, w+)
    decode_steps: int | None = None  # diffusion backbones / init models: DDIM steps of decode (None: 10)
    invert_to: int | None = None  # diffusion: the timestep of the noise latents (None: the last one, full noise)
    guidance_scale: float | None = None  # diffusion: classifier-free guidance scale in [0, 30] (None: 1, no guidance)
    prompt_template: str | None = None  # text-conditioned diffusion: class name -> prompt (None: "a photo of a {name}")
    # --init diffusion / diffusion-prototype: the model (None: the backbone if diffusion, else fashion-mnist-ldm)
    init_model: str | None = None
    match_space: str = "latent"  # latent | pixel (decode-through; required by backbones without a latent cache: gan)
    ipc: int | None = setting(None, min=1)  # latents per class, count-matched (None: 10, or what --ipc-budget allows)
    # storage-matched: as many latents per class as fit in B float32 images per class
    ipc_budget: float | None = setting(None, above=0)
    # storage dtype of the saved latents: float32 | float16 | bfloat16 | int8 | int4 (optimised in float32)
    latent_dtype: str = setting("float32", check=get_codec)
    quantise_aware: bool = False  # match the latents as --latent-dtype will store them (straight-through gradient)
    syn_batch: int = 0  # latents per class matched (and decoded) per step, drawn anew each step; 0: all of them
    latent_steps: int = 0  # --match-space pixel: the first N steps match latents (cheap), the rest decode-through
    # latent-space matching sees the latents through the decoder's channel metric (decoder) or as they are (identity)
    latent_metric: str = setting("identity", choices=METRICS)
    init: str = setting("real", choices=lambda: INITS.names())
    steps: int = 1000
    lr: float = 0.05  # of the latents
    optimizer: str = "adam"
    lr_schedule: str = "constant"  # constant | cosine (decays the latents' lr to 0 over --steps)
    batch_real: int = 256
    # uniform | dream (real batches from k-means sub-clusters of each class, gendistill.sampler)
    real_sampler: str = setting("uniform", choices=lambda: SAMPLERS.names())
    dream_clusters: int = setting(0, min=0)  # dream: sub-clusters per class (0: as many as batch_real, DREAM's setting)
    net: str = setting("convnet", check=get_builder)  # a registered network, tv:NAME or timm:NAME
    depth: int = 3
    width: int = 128
    vjp_chunk: int = 64
    seed: int = 0
    output: str | None = None
    checkpoint_every: int = 500
    resume: bool = False  # continue the interrupted run in --output from its checkpoint
    overwrite: bool = False  # replace what --output holds, once the new run is complete (docs/safety.md)
    mixed_precision: str | None = None  # None: what `accelerate launch` says
    log_with: str | None = None  # csv, tensorboard, wandb (comma-separated)
    cache_dir: str | None = None
    eval_epochs: int = setting(300, min=1)
    eval_runs: int = setting(3, min=0)  # 0: no evaluation
    eval_compile: bool = False  # torch.compile the evaluation networks' training step (gendistill eval --compile)

    def __post_init__(self):
        check_config(self)  # its own fields' types and limits, then the pieces it feeds:
        check_ipc_args(self.ipc, self.ipc_budget)
        if self.ipc is None and self.ipc_budget is None:
            self.ipc = DEFAULT_IPC
        if self.quantise_aware and self.latent_dtype == "float32":
            raise ValueError("--quantise-aware matches the latents as their storage dtype holds them; give "
                             "--latent-dtype int8, int4, float16 or bfloat16, or drop --quantise-aware")
        if self.quantise_aware and self.latent_dtype in FITTED_DTYPES:
            raise ValueError(f"--quantise-aware does not support --latent-dtype {self.latent_dtype}: its codebook or "
                             "levels are fitted to the whole set when it is saved; use int8 or int4, or drop "
                             "--quantise-aware")
        distill_config(self)  # the loop's (DistillConfig: steps, lr, batch_real, ...)
        NetSpec(self.net, self.depth, self.width)  # the matching net's


DEFAULT_IPC = 10


@dataclasses.dataclass
class LabelLearning:
    """Fields a recipe's config mixes in (listed before ``RecipeConfig``) to learn the labels: one row of label logits
    per sample (``label_init`` on the true class, 0 elsewhere) trained beside the latents with Adam at ``lr_labels``
    and saved as softmax probabilities, the set file's soft labels (:func:`learnable_labels`,
    :func:`~gendistill.objectives.trajectory.finish_soft_labels`)."""

    learn_labels: bool = False  # learn label logits beside the latents (stored as softmax probabilities)
    label_init: float = setting(5.0, above=0)  # initial logit of the true class (the others 0)
    lr_labels: float = setting(0.01, above=0)  # Adam lr of the label logits


def learnable_labels(cfg, syn: SyntheticSet) -> None:
    """With ``cfg.learn_labels``, the set's hard labels become learnable logits (see :class:`LabelLearning`)."""
    if getattr(cfg, "learn_labels", False):
        hard = syn.labels
        syn.labels = torch.nn.Parameter(torch.nn.functional.one_hot(hard, syn.num_classes).float() * cfg.label_init)


@dataclasses.dataclass
class Pieces:
    train: ImageDataset
    test: ImageDataset
    backbone: Backbone
    # the train split in the backbone's latent space (cached); its images if the backbone has no cache
    real_latents: LatentSplit
    real: LatentSplit  # what the objective is matched against: latents or images, by match space
    syn: SyntheticSet


def build(cfg, method: str, accelerator: Accelerator) -> Pieces:
    """Dataset, backbone, latent cache and an initialised set from a recipe config's names."""
    train, test = load_split(cfg, "train"), load_split(cfg, "test")
    options = backbone_options(cfg)  # diffusion settings: for the backbone, or for --init diffusion's model
    backbone = load_backbone(cfg.backbone, image_shape=train.image_shape,
                             latent_space=getattr(cfg, "latent_space", None),
                             options=set_backbone_options(cfg.backbone, cfg.init, options), class_names=train.classes)
    if tuple(backbone.image_shape) != tuple(train.image_shape):
        raise ValueError(f"backbone {cfg.backbone!r} is for images of shape {backbone.image_shape}, {cfg.dataset} has "
                         f"{train.image_shape}; train one with recipes/train_autoencoder.py (or recipes/train_gan.py)")
    pixel_space = effective_match_space(backbone.kind, cfg.match_space) == "pixel"
    if not backbone.cheap_encode and not pixel_space:
        raise ValueError(f"backbone {cfg.backbone!r} is a {backbone.kind}: its encode ({backbone.kind} inversion) is "
                         "too slow to cache the train split for latent-space matching; add --match-space pixel "
                         "(decode-through)")
    backbone.to(accelerator.device)
    images = image_split(train) if pixel_space or not backbone.cheap_encode else None
    if backbone.cheap_encode:
        with accelerator.main_process_first():
            real_latents = cached_latents(backbone, train, cfg.cache_dir, device=accelerator.device,
                                          log=accelerator.print)
    else:  # nothing is encoded up front: initialisers invert just the images they pick
        real_latents = images
    real = images if pixel_space else real_latents
    cfg.ipc = resolve_ipc(cfg.ipc, cfg.ipc_budget, backbone.latent_shape, train.image_shape, train.num_classes,
                          cfg.latent_dtype)
    if cfg.ipc_budget is not None:
        accelerator.print(f"--ipc-budget {cfg.ipc_budget:g}: {cfg.ipc} {cfg.latent_dtype} latents of "
                          f"{tuple(backbone.latent_shape)} per class")
    gen = torch.Generator().manual_seed(cfg.seed)
    run = {"method": method, "ipc": cfg.ipc, "ipc_budget": cfg.ipc_budget, "latent_dtype": cfg.latent_dtype,
           "steps": cfg.steps, "seed": cfg.seed, "package_version": __version__,
           "config": dataclasses.asdict(cfg)}
    syn = SyntheticSet.initialise(cfg.init, real_latents, cfg.ipc, backbone, train.meta(), gen, run=run,
                                  init_model=getattr(cfg, "init_model", None), model_options=options,
                                  latent_dtype=cfg.latent_dtype)
    return Pieces(train, test, backbone, real_latents, real, syn)


def distill_config(cfg) -> DistillConfig:
    names = {f.name for f in dataclasses.fields(DistillConfig)}
    return DistillConfig(**{k: v for k, v in dataclasses.asdict(cfg).items() if k in names})


def run_distill(cfg, pieces: Pieces, objective: Objective, accelerator: Accelerator, outdir: Path) -> TrainState:
    fingerprint = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in RESUME_FREE}
    if getattr(cfg, "lr_schedule", "constant") != "constant":
        # a decaying lr is a function of the step count: it cannot be extended on resume
        fingerprint["steps"] = cfg.steps
    fingerprint["backbone_sha256"] = pieces.backbone.weights_sha256()
    return distill(pieces.syn, objective, pieces.backbone, sampled_real(cfg, pieces, objective), distill_config(cfg),
                   accelerator, pieces.train.meta(), workdir=outdir, resume=cfg.resume, fingerprint=fingerprint,
                   real_latents=pieces.real_latents)


def sampled_real(cfg, pieces: Pieces, objective: Objective) -> LatentSplit:
    """The real split the loop draws batches from, as ``cfg.real_sampler`` draws it (gendistill.sampler)."""
    from .sampler import real_sampler

    name = getattr(cfg, "real_sampler", "uniform")
    if name != "uniform" and not getattr(objective, "samples_real", True):
        raise ValueError(f"--real-sampler {name} changes how real batches are drawn, but "
                         f"{type(objective).__name__} matches expert trajectories and draws none; leave "
                         "--real-sampler uniform")
    return real_sampler(name, pieces.real, cfg.batch_real, torch.Generator().manual_seed(cfg.seed),
                        getattr(cfg, "dream_clusters", 0))


def write_outputs(cfg, pieces: Pieces, state: TrainState, accelerator: Accelerator, outdir: Path, final: Path
                  | None = None) -> dict | None:
    """set.safetensors, grid.png, loss.png and (unless --eval-runs 0) eval.json in ``outdir``; returns the eval result
    (on rank 0). Only rank 0 writes; with several processes the evaluation networks are spread over them (``evaluate``).

    ``final``: where ``outdir``'s content will be once the run is complete (a staged --overwrite run), for the paths
    the result and the messages name (default ``outdir``)."""
    final = Path(final or outdir)
    syn, backbone = pieces.syn, pieces.backbone
    main = accelerator.is_main_process
    evaluating = cfg.eval_runs > 0
    if not (main or evaluating):
        return None
    syn.round_trip_()  # what is evaluated is what the file holds (float16, bfloat16, int8, int4, vq latents)
    images = syn.decode(backbone)  # the set is identical on every process
    if main:
        syn.save(outdir / "set.safetensors", run={"steps_done": state.step, "distill_seconds": round(state.seconds, 1)})
        save_png(image_grid(images, syn.labels.cpu(), syn.num_classes), outdir / "grid.png")
        save_png(loss_plot(state.losses, title=f"{syn.run_meta.get('method', '')} loss"), outdir / "loss.png")
    if not evaluating:
        accelerator.print(f"wrote {final}/set.safetensors (evaluation skipped: --eval-runs 0)")
        return None
    ecfg = EvalConfig(epochs=cfg.eval_epochs, runs=cfg.eval_runs, seed=cfg.seed, compile=cfg.eval_compile)
    lr = float(syn.lr.detach()) if syn.lr is not None else None
    images = images.cpu() if accelerator.device.type == "cpu" else images
    # an evaluation stopped part-way continues under --resume (the networks already tested are not trained again)
    state = EvalState.of(outdir / "eval.json.partial", images, syn.labels, pieces.test, ecfg, lr)
    result = evaluate(images, syn.labels, pieces.test, ecfg, lr=lr, progress=accelerator.is_local_main_process,
                      accelerator=accelerator, state=state)
    if not main:
        return None
    result["set"] = str(final / "set.safetensors")
    write_json(result, outdir / "eval.json")
    state.clear()
    accelerator.print(json.dumps({k: result[k] for k in ("mean", "std", "seconds")}))
    return result


# the config fields that name files or folders a run reads: --output may be none of them, nor hold one
INPUT_FIELDS = ("backbone", "init_model", "data_dir", "cache_dir", "experts")


def run_recipe(cfg, method: str, objective: Objective | None = None, setup=None, finish=None) -> dict | None:
    """A distillation recipe's whole body: output dir, accelerator, build, distil, write; returns the eval result.

    ``setup(pieces, accelerator) -> Objective`` builds the objective once the pieces exist (trajectory matching needs
    experts for the run's backbone and space, and prepares the set); ``finish(pieces)`` runs before the outputs are
    written. The output folder is claimed for the run (docs/safety.md): locked against a second run, refused if it holds
    something unless --resume or --overwrite, and with --overwrite replaced only once the new run is complete.
    """
    outdir = Path(cfg.output or Path("outputs") / run_name(method, cfg))
    inputs = [(f"--{name.replace('_', '-')}", getattr(cfg, name, None)) for name in INPUT_FIELDS]
    overwrite = getattr(cfg, "overwrite", False)
    workdir = staging_path(outdir) if overwrite else outdir
    accelerator = make_accelerator(cfg.mixed_precision, cfg.log_with, workdir)
    with RunOutput(outdir, overwrite=overwrite, resume=cfg.resume, inputs=inputs, main=accelerator.is_main_process,
                   agree=lambda ok: all_processes_ok(accelerator, ok)) as out:
        if cfg.log_with:
            accelerator.init_trackers(f"latent_{method}", config={k: v for k, v in vars(cfg).items() if v is not None})
        pieces = build(cfg, method, accelerator)
        if setup is not None:
            objective = setup(pieces, accelerator)
        try:
            state = run_distill(cfg, pieces, objective, accelerator, out.workdir)
        except Interrupted as e:
            if not overwrite:
                raise
            out.commit()  # the new run can be resumed from --output now: the old content goes, as --overwrite asked
            raise e.moved(out.workdir, outdir) from None
        if finish is not None:
            finish(pieces)
        result = write_outputs(cfg, pieces, state, accelerator, out.workdir, final=outdir)
        accelerator.end_training()
        out.commit()
    if result is not None:
        lr = f", learned lr {float(pieces.syn.lr.detach()):.4g}" if pieces.syn.lr is not None else ""
        space = effective_match_space(pieces.backbone.kind, cfg.match_space)
        budget = (
            f" (budget {pieces.syn.ledger()['budget_ipc']:.3g}, {cfg.latent_dtype})"
            if cfg.ipc_budget is not None
            else ""
        )
        print(f"{method} {cfg.dataset} ipc {cfg.ipc}{budget} ({space} space): test accuracy "
              f"{100 * result['mean']:.2f} +- {100 * result['std']:.2f} % over {cfg.eval_runs} ConvNets, "
              f"{cfg.eval_epochs} epochs{lr} -> {outdir}/eval.json")
    return result
