"""The one distillation loop for every objective, run by Accelerate.

Match spaces: ``latent`` (the objective sees latents; real latents come from the cache) and ``pixel``
(GLaD-style decode-through: latents are decoded without grad, the objective gives d(loss)/d(image), and
``backbone.decode_vjp`` pushes it back into the latents in chunks). With the pixel backbone both are the same.

Randomness comes from two generators kept in the checkpoint, both identical on every process: ``shared`` (nets,
augmentation) and ``data`` (real batches, drawn for every class each step). Several processes (``accelerate launch``)
share a step as the objective's ``parallel`` says (see ``gendistill.objectives``): class-separable objectives split the
classes and the gradients are summed, which is the 1-process gradient; the others ("replicas": trajectory matching)
compute the whole loss on each process with a per-process generator derived from (seed, rank, step), and the gradients
are averaged. Loss, gradients, a finiteness flag and the interrupt flag travel in one all-reduce per step, so every
process takes the same decision (raise, stop, step) at the same step; the set is identical on every process.

``syn_batch`` K > 0 matches only K latents per class per step (drawn anew each step from the shared generator, as
DM/IDM draw real batches, so every process draws the same): only those are decoded, matched and pushed back through
the decoder, and only they move in that step (the other rows get their values back after the optimiser step), so a
step of a set with hundreds of latents per class costs what a step with K does. ``latent_steps`` N (with
``match_space="pixel"``) runs the first N steps in the latent match space (against ``real_latents``, the cached
latents) and the rest decode-through: cheap steps first, the decoder's view last.

``quantise_aware`` matches what the set file will hold: each step the objective sees the latents quantised to the
set's storage dtype (int8, int4, float16, bfloat16) and read back, and the gradient at those passes straight to the
float32 latents (a straight-through estimator), so the optimisation sees the rounding the saved set will have.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import shutil
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.tracking import GeneralTracker
from tqdm.auto import tqdm

from .backbones import Backbone, effective_match_space
from .cache import LatentSplit
from .config import Checked, setting
from .data import normalize
from .errors import first_line
from .io import fsync_path, replace_dir, write_json
from .metric import METRICS, channel_mix, decoder_metric
from .objectives import Objective, RealBatches, StepContext
from .state import load_state, save_state
from .storage import FITTED_DTYPES, get_codec
from .synthetic import SyntheticSet

MATCH_SPACES = ("latent", "pixel")
PARALLEL_MODES = ("classes", "replicas")  # how an objective's work splits over processes (gendistill.objectives)
OPTIMIZERS = ("adam", "sgd")


@dataclass
class DistillConfig(Checked):
    steps: int = setting(1000, min=0)  # 0: the initialisation itself (a baseline)
    lr: float = setting(0.05, above=0)  # learning rate of the latents
    optimizer: str = setting("adam", choices=OPTIMIZERS)
    # constant | cosine (every group's lr falls to 0 over `steps`; a function of the step, so resume is exact)
    lr_schedule: str = setting("constant", choices=lambda: LR_SCHEDULES)
    momentum: float = setting(0.5, min=0, max=1)  # sgd only
    # real samples per class per step (in total, whatever the number of processes)
    batch_real: int = setting(256, min=1)
    match_space: str = setting("latent", choices=MATCH_SPACES)
    vjp_chunk: int = setting(64, min=1)  # latents per decode_vjp chunk (pixel match space)
    # latents per class matched per step (0: all); the rest keep their values that step
    syn_batch: int = setting(0, min=0)
    # pixel match space: the first N steps match latents (cheap), the rest decode-through
    latent_steps: int = setting(0, min=0)
    # match the latents as the set's storage dtype will hold them (straight-through gradient); needs a --latent-dtype
    quantise_aware: bool = False
    # latent match space: what the objective sees of a latent. identity: the latent; decoder: M z, M the square root
    # of the decoder's metric on the latent channels (gendistill.metric), so channels weigh what they move in the image
    latent_metric: str = setting("identity", choices=METRICS)
    checkpoint_every: int = setting(0, min=0)  # 0: only when interrupted and at the end
    log_every: int = setting(10, min=1)
    seed: int = setting(0, min=0)
    # learnable extras, trained beside the latents when the set has them (trajectory matching, DATM):
    lr_lr: float = setting(1e-5, above=0)  # learning rate of the set's learnable eval lr (``syn.lr``), if it has one
    # learning rate of learnable soft labels (``syn.labels`` as an nn.Parameter)
    lr_labels: float = setting(2.0, above=0)


LR_SCHEDULES = ("constant", "cosine")


def lr_factor(name: str):
    """``factor(step, steps)`` scaling the base learning rates at ``step`` (0-based) of ``steps``."""
    if name == "constant":
        return lambda step, steps: 1.0
    if name == "cosine":  # Loshchilov & Hutter's cosine decay without restarts, reaching 0 after the last step
        return lambda step, steps: 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps))
    raise ValueError(f"unknown lr schedule {name!r}; use one of {', '.join(LR_SCHEDULES)}")


class Interrupted(KeyboardInterrupt):
    """A run stopped by Ctrl-C or SIGTERM after its checkpoint was written: the one line to print, and the exit code."""

    def __init__(self, step: int, path: Path, signum: int = signal.SIGINT, main: bool = True):
        super().__init__(f"interrupted at step {step}; checkpoint saved in {path}; continue with --resume")
        self.step, self.path, self.signum, self.main = step, Path(path), int(signum), main

    def moved(self, old: Path, new: Path) -> Interrupted:
        """The same interrupt, its checkpoint now under ``new`` instead of ``old`` (a staged --overwrite run put in
        place)."""
        return Interrupted(self.step, Path(new) / self.path.relative_to(old), self.signum, self.main)


STOP_SIGNALS = tuple(s for s in (signal.SIGINT, getattr(signal, "SIGTERM", None)) if s is not None)


@contextmanager
def deferred_interrupt():
    """Hold a first Ctrl-C or SIGTERM until the running step has finished (``flag["set"]``, the signal's number); a
    second one interrupts at once.

    A checkpoint taken in the middle of a step would hold generators that step had already advanced, so the resumed
    run would differ from an uninterrupted one; the loop checks the flag between steps instead. SIGTERM is what job
    schedulers (and ``kill``) send before they kill a process: it is handled exactly like the first Ctrl-C.
    """
    flag = {"set": 0}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if flag["set"]:
            raise KeyboardInterrupt
        flag["set"] = signum

    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


class TrainState:
    """Step, loss history and generator states: everything besides the set and optimiser a resume needs."""

    def __init__(self, seed: int):
        self.step = 0
        self.losses: list[float] = []
        self.shared = torch.Generator().manual_seed(seed)  # nets, augmentation: the same on every process
        self.data = torch.Generator().manual_seed(seed * 1000 + 1)  # real batches: the same on every process
        self.seconds = 0.0  # time in the loop, summed over every segment of a resumed run
        self._since: float | None = None

    def start_clock(self) -> None:
        self._since = time.time()

    def clock(self) -> float:
        return self.seconds + (time.time() - self._since if self._since is not None else 0.0)

    def stop_clock(self) -> None:
        self.seconds, self._since = self.clock(), None

    def state_dict(self) -> dict:
        return {"step": self.step, "losses": list(self.losses), "shared": self.shared.get_state(),
                "data": self.data.get_state(), "seconds": self.clock()}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.losses = int(state["step"]), list(state["losses"])
        self.seconds = float(state.get("seconds", 0.0))  # older checkpoints kept no clock: their time is not counted
        self.shared.set_state(state["shared"])
        self.data.set_state(state["data"])


class CSVTracker(GeneralTracker):
    """Loss (and any logged scalar) per step appended to ``<dir>/log.csv``."""

    name = "csv"
    requires_logging_directory = True

    def __init__(self, logging_dir: str):
        super().__init__()
        self.path = Path(logging_dir) / "log.csv"

    @property
    def tracker(self):
        return self.path

    def log(self, values: dict, step: int | None = None, **kwargs):
        new = not self.path.exists()
        with self.path.open("a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(["step", *values])
            w.writerow([step, *values.values()])


def make_accelerator(mixed_precision: str | None = None, log_with: str | None = None, output: str | Path | None = None,
                     cpu: bool = False) -> Accelerator:
    if mixed_precision not in (None, "no", "fp16", "bf16"):
        raise ValueError(f"unknown mixed precision {mixed_precision!r}; use no, fp16 or bf16")
    trackers = None
    if log_with:
        trackers = [CSVTracker(str(output)) if name == "csv" else name for name in log_with.split(",")]
    return Accelerator(mixed_precision=mixed_precision, log_with=trackers, project_dir=str(output) if output else None,
                       cpu=cpu)


# ---------------------------------------------------------------------------------------------- checkpoints


def checkpoint_root(workdir: str | Path) -> Path:
    return Path(workdir) / "checkpoints"


def latest_checkpoint(workdir: str | Path) -> Path | None:
    """The newest ``checkpoints/step_*`` directory (each appears only once complete: a damaged one is reported on
    load)."""
    found = sorted(p for p in checkpoint_root(workdir).glob("step_*") if p.is_dir())
    return found[-1] if found else None


# A checkpoint directory ``checkpoints/step_NNNNNNN`` (docs/safety.md) holds, never pickled (gendistill.state: tensors
# in safetensors, everything else as JSON in its metadata):
#   config.json           the run's fingerprint (settings that must match on --resume)
#   shared.safetensors    what every process shares, written once by rank 0: the set, the optimiser, step, losses,
#                         seconds, the shared generator and the number of processes
#   rank_R.safetensors    what is each process's own: its data generator and the objective's state
SHARED = "shared.safetensors"


def _rank_file(rank: int) -> str:
    return f"rank_{rank}.safetensors"


def _stateful(objective) -> bool:
    return hasattr(objective, "state_dict") and hasattr(objective, "load_state_dict")


def _checkpoint_parts(syn: SyntheticSet, opt, state: TrainState, objective, num_processes: int) -> tuple[dict, dict]:
    """(shared, per-rank) state dicts of a run."""
    train = state.state_dict()
    own = {"train": {"data": train.pop("data")}}
    if _stateful(objective):
        own["objective"] = objective.state_dict()
    return {"set": syn.state_dict(), "optimizer": opt.state_dict(), "train": train, "num_processes": num_processes}, own


def all_processes_ok(accelerator: Accelerator, ok: bool) -> bool:
    """True when ``ok`` on every process (a collective: every process must call it)."""
    if accelerator.num_processes == 1:
        return ok
    failed = accelerator.reduce(torch.tensor([0.0 if ok else 1.0], device=accelerator.device), reduction="sum")
    return float(failed.sum()) == 0


def _save_checkpoint(accelerator: Accelerator, workdir: Path, state: TrainState, fingerprint: dict,
                     parts: dict) -> Path:
    """Write ``checkpoints/step_<step>`` and only then remove the older ones; returns its path.

    Every process writes its own part into a temporary directory; rank 0 writes the shared part and, once every
    process has succeeded, renames it into place (a checkpoint directory exists only once complete, every file
    flushed to disk). A failure (a full disk) removes the partial directory and raises a one-line ``OSError``: the
    previous checkpoint is untouched.
    """
    root = checkpoint_root(workdir)
    final = root / f"step_{state.step:07d}"
    tmp = root / f".tmp_step_{state.step:07d}"
    shared, own = _checkpoint_parts(state=state, num_processes=accelerator.num_processes, **parts)
    error: OSError | None = None
    if accelerator.is_main_process:
        try:
            root.mkdir(parents=True, exist_ok=True)
            for stale in root.glob(".tmp_step_*"):  # left by a run killed while writing (the output is locked: ours)
                shutil.rmtree(stale, ignore_errors=True)
            tmp.mkdir()
        except OSError as e:
            error = e
    if all_processes_ok(accelerator, error is None):  # the directory exists before any process writes into it
        try:
            save_state(own, tmp / _rank_file(accelerator.process_index))
            if accelerator.is_main_process:
                save_state(shared, tmp / SHARED)
                write_json(json.loads(json.dumps(fingerprint, default=str)), tmp / "config.json")
        except OSError as e:
            error = e
    if not all_processes_ok(accelerator, error is None):
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        previous = latest_checkpoint(workdir)
        kept = f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint exists"
        reason = (
            (error.strerror or first_line(error)) if error is not None else "another process could not write its part"
        )
        raise OSError(f"could not write the checkpoint of step {state.step} in {root} ({reason}); {kept}; "
                      "free some space and continue with --resume") from None
    if accelerator.is_main_process:
        fsync_path(tmp)
        replace_dir(tmp, final)  # an interrupt at a checkpointed step replaces that step's checkpoint crash-safely
        for old in root.glob("step_*"):
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
        fsync_path(root)
    accelerator.wait_for_everyone()
    return final


def _fresh(path: Path) -> str:
    return f"delete the checkpoint {path} or start fresh with --overwrite"


NEUTRAL_DEFAULTS = (None, False, 0)


def _check_fingerprint(path: Path, fingerprint: dict) -> None:
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{str(path / 'config.json')!r} is missing; {_fresh(path)}")
    try:
        saved = json.loads((path / "config.json").read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"{str(path / 'config.json')!r} is not readable JSON ({first_line(e)}); "
                         f"{_fresh(path)}") from None
    if not isinstance(saved, dict):
        raise ValueError(f"{str(path / 'config.json')!r} is not a run fingerprint; {_fresh(path)}")
    current = json.loads(json.dumps(fingerprint, default=str))
    # a setting added since the checkpoint was written, at its neutral default (off, 0, none), changes nothing
    diff = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k)
                  and not (k not in saved and current.get(k) in NEUTRAL_DEFAULTS))
    if diff:
        pairs = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in diff[:4])
        raise ValueError(f"checkpoint {path} was made with a different config ({pairs}); rerun with the same settings "
                         "or a new --output")


def _load_checkpoint(path: Path, accelerator: Accelerator, state: TrainState, syn: SyntheticSet, opt,
                     objective) -> None:
    """Restore a run from ``_save_checkpoint``'s files: safetensors and JSON only; pickle files are never opened."""
    if not (path / SHARED).exists() and (any(path.glob("*.pkl")) or any(path.glob("*.bin"))):
        raise ValueError(f"checkpoint {path} is in the older pickle format (accelerate save_state), which is "
                         f"never loaded: a pickle can run code; {_fresh(path)}")
    try:
        shared = load_state(path / SHARED, "checkpoint file")
        saved = shared.get("num_processes") if isinstance(shared, dict) else None
        if saved == accelerator.num_processes:
            own = load_state(path / _rank_file(accelerator.process_index), "checkpoint file")
            syn.load_state_dict(shared["set"])
            opt.load_state_dict(shared["optimizer"])
            state.load_state_dict({**shared["train"], **own["train"]})
            if _stateful(objective):
                objective.load_state_dict(own["objective"])
    except (ValueError, FileNotFoundError, KeyError, TypeError, RuntimeError, IndexError, AttributeError) as e:
        text = f"it lacks {first_line(e)}" if isinstance(e, KeyError) else first_line(e)
        raise ValueError(f"cannot resume from {path}: {text}; {_fresh(path)}") from None
    if saved != accelerator.num_processes:
        raise ValueError(f"checkpoint {path} was written by {saved} process(es) and this run has "
                         f"{accelerator.num_processes}; resume with accelerate launch --num_processes {saved}")


# ------------------------------------------------------------------------------------------------ the loop


def local_generator(seed: int, rank: int, step: int) -> torch.Generator:
    """Process ``rank``'s own randomness at ``step`` ("replicas" objectives with several processes): a function of
    (seed, rank, step) alone, so no per-process state needs checkpointing and a resumed run draws what it would have."""
    digest = hashlib.sha256(f"gendistill-local/{seed}/{rank}/{step}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def _decode_rows(backbone: Backbone, latents: torch.Tensor, rows: torch.Tensor | None, chunk: int) -> torch.Tensor:
    """Images of ``latents`` (float32, no grad); with ``rows``, only those rows are decoded, the others stay zero."""
    src = latents if rows is None else latents[rows]
    parts = [backbone.decode(src[i : i + chunk]) for i in range(0, len(src), chunk)]
    decoded = torch.cat(parts).float() if parts else None
    if rows is None:
        return decoded
    images = torch.zeros(len(latents), *backbone.image_shape, device=latents.device)
    if decoded is not None:
        images[rows] = decoded
    return images


def syn_rows(hard_labels: torch.Tensor, num_classes: int, per_class: int,
             generator: torch.Generator) -> torch.Tensor | None:
    """Indices of ``per_class`` random latents of each class (sorted), or None when every class has no more than that
    (or ``per_class`` is 0): the rows a subsampled step matches."""
    by_class = [torch.nonzero(hard_labels == c).flatten() for c in range(num_classes)]
    if per_class <= 0 or all(len(idx) <= per_class for idx in by_class):
        return None
    picked = [idx[torch.randperm(len(idx), generator=generator)[:per_class]] for idx in by_class]
    return torch.cat(picked).sort().values


def cached_metric(backbone: Backbone, real: LatentSplit) -> torch.Tensor:
    """``decoder_metric`` of ``backbone`` at ``real``'s latents, computed once per (backbone, split) pair: a run that
    continues in segments (a resume in the same process, ``benchmarks/time_to_accuracy.py``) pays for it once."""
    if real.space != "latent":
        raise ValueError("--latent-metric decoder needs cached latents of a backbone with a decoder (vae); drop "
                         "--latent-metric")
    memo = real.__dict__.setdefault("_decoder_metrics", {})
    key = (id(backbone), backbone.weights_sha256())
    if key not in memo:
        memo[key] = decoder_metric(backbone, real.latents)
    return memo[key]


def as_stored(codec, latents: torch.Tensor) -> torch.Tensor:
    """The latents as a set file of ``codec``'s dtype holds them, read back to float32 (no gradient)."""
    with torch.no_grad():
        return codec.decode(codec.encode(latents.detach().float())).to(latents.device)


def distill(syn: SyntheticSet, objective: Objective, backbone: Backbone, real: LatentSplit, cfg: DistillConfig,
            accelerator: Accelerator, dataset_meta: dict, workdir: str | Path | None = None, resume: bool = False,
            fingerprint: dict | None = None, real_latents: LatentSplit | None = None) -> TrainState:
    """Optimise ``syn.latents`` for ``cfg.steps`` steps of ``objective`` against ``real`` (latents or images);
    ``real_latents`` (the cached latents) is what the first ``cfg.latent_steps`` steps match against."""
    if cfg.match_space not in MATCH_SPACES:
        raise ValueError(f"unknown match space {cfg.match_space!r}; use one of {', '.join(MATCH_SPACES)}")
    if cfg.syn_batch < 0:
        raise ValueError(f"--syn-batch must be 0 (all latents) or a number of latents per class, got {cfg.syn_batch}")
    if cfg.quantise_aware and syn.latent_dtype == "float32":
        raise ValueError("--quantise-aware matches the latents as their storage dtype holds them, but the set is "
                         "stored as float32; give --latent-dtype int8, int4, float16 or bfloat16, or drop "
                         "--quantise-aware")
    if cfg.quantise_aware and syn.latent_dtype in FITTED_DTYPES:
        raise ValueError(f"--quantise-aware does not support --latent-dtype {syn.latent_dtype}: its codebook or "
                         "levels are fitted to the whole set when it is saved; use int8 or int4, or drop "
                         "--quantise-aware")
    stored = get_codec(syn.latent_dtype) if cfg.quantise_aware else None
    device = accelerator.device
    space = effective_match_space(backbone.kind, cfg.match_space)
    mean, std = dataset_meta["mean"], dataset_meta["std"]
    reals = {space: real}
    if cfg.latent_steps < 0:
        raise ValueError(f"--latent-steps must be 0 or more, got {cfg.latent_steps}")
    if cfg.latent_steps:
        if space != "pixel" or backbone.kind == "pixel" or real_latents is None or real_latents.space != "latent":
            raise ValueError("--latent-steps warms up in the latent match space before decode-through: it needs "
                             "--match-space pixel and a backbone with a latent cache (vae); drop --latent-steps")
        reals["latent"] = real_latents
    if cfg.latent_metric != "identity" and "latent" not in reals:
        raise ValueError(f"--latent-metric {cfg.latent_metric} shapes what latent-space matching sees, but this run "
                         f"matches in {space} space only; use --match-space latent (or --latent-steps), or drop "
                         "--latent-metric")
    setups = {}  # match space -> (decode-through?, the objective's input shape, its transform, the real split)
    for name, part in reals.items():
        if name == "pixel":
            transform = lambda x: normalize(x, mean, std)  # noqa: E731
        elif cfg.latent_metric == "decoder":
            transform = channel_mix(cached_metric(backbone, part))
        else:
            transform = lambda x: x  # noqa: E731
        setups[name] = (name == "pixel" and backbone.kind != "pixel",
                        tuple(backbone.image_shape if name == "pixel" else backbone.latent_shape), transform, part)
    final_space = space
    parallel = getattr(objective, "parallel", "replicas")
    if parallel not in PARALLEL_MODES:
        raise ValueError(f"objective {type(objective).__name__} has parallel={parallel!r}; use one of "
                         f"{', '.join(PARALLEL_MODES)}")
    world, rank = accelerator.num_processes, accelerator.process_index
    split = world > 1 and parallel == "classes"  # this process matches classes rank, rank + world, ...
    classes = tuple(range(rank, syn.num_classes, world)) if split else None

    backbone.to(device)
    syn.to(device)
    groups = [{"params": [syn.latents], "lr": cfg.lr}]
    if syn.lr is not None and syn.lr.requires_grad:
        groups.append({"params": [syn.lr], "lr": cfg.lr_lr})
    if isinstance(syn.labels, torch.nn.Parameter):
        groups.append({"params": [syn.labels], "lr": cfg.lr_labels})
    learnables = [p for g in groups for p in g["params"]]
    if cfg.optimizer == "adam":
        opt = torch.optim.Adam(groups, lr=cfg.lr)
    elif cfg.optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    else:
        raise ValueError(f"unknown optimizer {cfg.optimizer!r}; use adam or sgd")
    schedule = lr_factor(cfg.lr_schedule)
    base_lrs = [g["lr"] for g in opt.param_groups]
    opt = accelerator.prepare_optimizer(opt)
    state = TrainState(cfg.seed)
    parts = {"syn": syn, "opt": opt, "objective": objective}  # stateful objectives (DC's inner-loop net) resume exactly
    fingerprint = dict(fingerprint or asdict(cfg))

    if resume:
        if workdir is None or latest_checkpoint(workdir) is None:
            raise FileNotFoundError(f"--resume: no checkpoint under {workdir}/checkpoints; run without "
                                    "--resume to start")
        ckpt = latest_checkpoint(workdir)
        _check_fingerprint(ckpt, fingerprint)
        _load_checkpoint(ckpt, accelerator, state, **parts)
        accelerator.print(f"resumed from {ckpt} at step {state.step}")

    labels = syn.hard_labels.to(device)
    cpu_labels = syn.hard_labels.cpu()
    own = torch.tensor(classes, dtype=labels.dtype, device=device) if split else None
    latent_loss = getattr(objective, "latent_loss", None)
    last_good = latest_checkpoint(workdir) if workdir else None
    bar = tqdm(total=cfg.steps, initial=state.step, desc=f"distill ({space} space)", dynamic_ncols=True,
               disable=not accelerator.is_local_main_process)
    state.start_clock()
    step_start = {"shared": state.shared.get_state(), "data": state.data.get_state()}
    stop_signum = 0  # a stop signal (Ctrl-C, SIGTERM) the processes agreed to stop on after a complete step

    try:
        with deferred_interrupt() as interrupted:
            while state.step < cfg.steps:
                space = "latent" if state.step < cfg.latent_steps else final_space
                decode_through, in_shape, transform, real = setups[space]
                local = local_generator(cfg.seed, rank, state.step) if world > 1 and not split else None
                picked = syn_rows(cpu_labels, syn.num_classes, cfg.syn_batch, state.shared)  # the same on every process
                picked = None if picked is None else picked.to(device)
                step_labels = labels if picked is None else labels[picked]
                soft = None if not syn.soft else (syn.labels if picked is None else syn.labels[picked])
                mine = torch.isin(step_labels, own).nonzero().flatten() if split else None
                # pixel space: what to decode
                decode_rows = mine if split and not getattr(objective, "whole_set", False) else None
                ctx = StepContext(state.step, state.shared, in_shape, syn.num_classes, device, space=space,
                                  transform=transform, syn_lr=syn.lr, soft_labels=soft, classes=classes,
                                  processes=world, local_generator=local)
                real_batch = RealBatches(real, cfg.batch_real, state.data, device)
                opt.zero_grad(set_to_none=True)
                if decode_through:
                    with torch.no_grad(), accelerator.autocast():
                        z = syn.latents.detach() if stored is None else as_stored(stored, syn.latents)
                        z = z if picked is None else z[picked]
                        images = _decode_rows(backbone, z, decode_rows, cfg.vjp_chunk)
                    images.requires_grad_(True)
                    with accelerator.autocast():
                        loss = objective(images, step_labels, real_batch, ctx)
                    if loss.requires_grad:  # a process with no class of its own has nothing to differentiate
                        accelerator.backward(loss)
                    if images.grad is not None:
                        rows = mine if split else slice(None)  # other processes' rows have no gradient here
                        grad = torch.zeros_like(z, dtype=torch.float32)
                        with accelerator.autocast():
                            if len(z[rows]):
                                grad[rows] = backbone.decode_vjp(z[rows], images.grad[rows], cfg.vjp_chunk).float()
                        if picked is not None:
                            grad = torch.zeros_like(syn.latents, dtype=torch.float32).index_copy_(0, picked, grad)
                        syn.latents.grad = grad
                else:
                    x = syn.latents
                    if stored is not None:  # straight through: the value the file holds, the gradient of the latents
                        x = x + (as_stored(stored, x) - x.detach())
                    with accelerator.autocast():
                        loss = objective(x if picked is None else x[picked], step_labels, real_batch, ctx)
                    if loss.requires_grad:
                        accelerator.backward(loss)
                if split:
                    real_batch.draw()  # the data generator advances alike on every process
                loss = loss.detach().float()
                nonfinite = not math.isfinite(float(loss))
                agreed = interrupted["set"]
                # one all-reduce: gradients, loss, how many processes saw a non-finite loss or each stop signal
                if world > 1:
                    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in learnables]
                    flags = torch.tensor([float(nonfinite)] + [float(interrupted["set"] == s) for s in STOP_SIGNALS],
                                         device=device)
                    flat = accelerator.reduce(torch.cat([g.detach().reshape(-1).float() for g in grads]
                                                        + [loss.reshape(1), flags]), reduction="sum")
                    # classes: the sum is the 1-process gradient; replicas: the mean
                    scale = 1.0 if split else 1.0 / world
                    offset = 0
                    for p, g in zip(learnables, grads):
                        p.grad = (flat[offset : offset + g.numel()].view_as(p) * scale).to(p.dtype)
                        offset += g.numel()
                    loss = flat[offset] * scale
                    nonfinite = bool(flat[offset + 1] > 0)
                    # SIGTERM first
                    agreed = max((s for i, s in enumerate(STOP_SIGNALS) if flat[offset + 2 + i] > 0), default=0)
                # a term on the latents themselves (IT-GAN: stay near the inversions), alike everywhere
                if latent_loss is not None:
                    with accelerator.autocast():
                        extra = latent_loss(syn.latents, labels, ctx)
                    accelerator.backward(extra)  # adds to the latents' gradient from the match
                    loss = loss + extra.detach().float()
                value = float(loss)
                if nonfinite or not math.isfinite(value):  # the same decision on every process
                    where = f"; the last good checkpoint is {last_good}" if last_good else ""
                    raise FloatingPointError(f"loss became {value} at step {state.step}{where}; lower --lr or use "
                                             "--mixed-precision no")
                for group, base in zip(opt.param_groups, base_lrs):
                    group["lr"] = base * schedule(state.step, cfg.steps)
                if picked is not None:  # only the matched rows move: the others get back their values after the step
                    resting = torch.ones(len(syn), dtype=torch.bool, device=device).index_fill_(0, picked, False)
                    before = syn.latents.detach()[resting].clone()
                opt.step()
                if picked is not None:
                    with torch.no_grad():
                        syn.latents[resting] = before
                if not torch.isfinite(syn.latents.detach()).all():  # before a checkpoint or the set could keep them
                    raise FloatingPointError(f"the latents became non-finite (NaN or inf) at step {state.step}"
                                             f"{f'; the last good checkpoint is {last_good}' if last_good else ''}; "
                                             "lower --lr")
                # a student lr must stay positive
                if syn.lr is not None and not (math.isfinite(float(syn.lr.detach())) and float(syn.lr.detach()) > 0):
                    where = f"; the last good checkpoint is {last_good}" if last_good else ""
                    raise FloatingPointError(f"the learned lr became {float(syn.lr.detach())} at step "
                                             f"{state.step}{where}; lower --lr-lr")
                state.step += 1
                state.losses.append(value)
                bar.update(1)
                if state.step % cfg.log_every == 0 or state.step == cfg.steps:
                    bar.set_postfix(loss=f"{value:.4g}")
                    accelerator.log({"loss": value}, step=state.step)
                if (
                    workdir
                    and cfg.checkpoint_every
                    and state.step % cfg.checkpoint_every == 0
                    and state.step < cfg.steps
                ):
                    last_good = _save_checkpoint(accelerator, Path(workdir), state, fingerprint, parts)
                step_start.update(shared=state.shared.get_state(), data=state.data.get_state())
                # one process: a signal during the checkpoint counts too
                stop_signum = agreed if world > 1 else interrupted["set"]
                if stop_signum:
                    # the step is complete on every process: the checkpoint below resumes exactly
                    raise KeyboardInterrupt
    except KeyboardInterrupt:
        if workdir and world > 1 and not stop_signum:  # a second Ctrl-C mid-step: the processes are not at one point
            stopped = KeyboardInterrupt(f"interrupted in the middle of step {state.step} on {world} processes: no "
                                        "checkpoint taken"
                                        + (f"; continue from {last_good} with --resume" if last_good else ""))
            stopped.main = accelerator.is_main_process  # one line, from rank 0 (gendistill.cli.run_guarded)
            raise stopped from None
        if workdir:
            state.shared.set_state(step_start["shared"])  # a second Ctrl-C lands mid-step: go back to the step's start
            state.data.set_state(step_start["data"])
            path = _save_checkpoint(accelerator, Path(workdir), state, fingerprint, parts)
            raise Interrupted(state.step, path, stop_signum or interrupted["set"] or signal.SIGINT,
                              accelerator.is_main_process) from None
        raise
    finally:
        bar.close()
    if workdir:
        _save_checkpoint(accelerator, Path(workdir), state, fingerprint, parts)
    state.stop_clock()
    return state
