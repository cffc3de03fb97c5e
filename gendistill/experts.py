"""Expert trajectories for trajectory matching (MTT, TESLA, DATM): train, store, describe, load and validate.

An expert is a network of the objective's architecture trained on the real data of the match space (cached
latents, or normalised images) with plain SGD (MTT's ``buffer.py``: lr 0.01, momentum 0, weight decay 0) and the
space's augmentation. Its trajectory is one flattened-parameter snapshot per epoch, epoch 0 (the initialisation)
included, in ``named_parameters()`` order.

Layout of an experts directory::

    DIR/experts.json                 what they are: space, backbone sha256, dataset, net config, parameter layout,
                                     training settings (epochs, lr, augmentation, number of experts)
    DIR/expert_0000.safetensors      tensor ``trajectory`` (epochs + 1, num_params) float32; metadata: accuracies
    DIR/expert_0001.safetensors      ...

Every file is written atomically; training skips experts already on disk, so re-running a stopped job continues
it. :func:`load_experts` checks a directory against the run that wants it (space, backbone, net, shapes) and
reads snapshots lazily (two rows of one file per distillation step).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from tqdm.auto import tqdm

from . import __version__
from .augment import get_augment, resolve_augment
from .backbones import Backbone, effective_match_space
from .config import Checked, setting
from .data import ImageDataset, normalize
from .errors import first_line
from .io import save_safetensors, write_json
from .nets import fresh_net
from .nets.registry import get_builder

EXPERTS_FORMAT = "1"
DESCRIPTION = "experts.json"
SPACES = ("latent", "pixel")


@dataclass
class NetSpec(Checked):
    """The network an expert is (and the trajectory objective's student): registry name and size."""

    name: str = setting("convnet", check=get_builder)
    depth: int = setting(3, min=1)
    width: int = setting(128, min=1)

    def build(self, in_shape, num_classes: int, generator: torch.Generator) -> torch.nn.Module:
        return fresh_net(self.name, in_shape, num_classes, generator, depth=self.depth, width=self.width)


@dataclass
class ExpertConfig(Checked):
    num_experts: int = setting(5, min=1)
    epochs: int = setting(8, min=1)
    lr: float = setting(0.01, above=0)  # MTT's lr_teacher
    momentum: float = setting(0.0, min=0, max=1)
    weight_decay: float = setting(0.0, min=0)
    batch: int = setting(256, min=1)
    augment: str = "auto"  # "auto": DSA on images, the latent variant on latents (as the objectives)
    seed: int = setting(0, min=0)


def param_layout(net: torch.nn.Module) -> list[list]:
    return [[name, list(p.shape)] for name, p in net.named_parameters()]


def flatten_params(net: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()]).float().cpu()


def expert_file(directory: str | Path, i: int) -> Path:
    return Path(directory) / f"expert_{i:04d}.safetensors"


# ------------------------------------------------------------------------------------------- description


def identity(space: str, backbone: Backbone, dataset: dict, net: NetSpec, in_shape, num_classes: int) -> dict:
    """What a run needs its experts to have been trained with (the part of experts.json a loader checks)."""
    if space not in SPACES:
        raise ValueError(f"unknown expert space {space!r}; use latent or pixel")
    b = backbone.describe()
    return {
        "space": space,
        # pixel-space experts see images: any backbone's decoded images can be matched against them
        "backbone": {k: b[k] for k in ("kind", "source", "sha256", "latent_shape")} if space == "latent"
        else {"kind": "pixel"}, "dataset": {"name": dataset.get("name"), "num_classes": int(num_classes)},
        "net": asdict(net),
        "in_shape": [int(s) for s in in_shape],
        "num_classes": int(num_classes),
    }


def describe(ident: dict, layout: list, cfg: ExpertConfig, dataset_fingerprint: str | None = None) -> dict:
    """The experts.json record."""
    space = ident["space"]
    return {
        "format": EXPERTS_FORMAT,
        "kind": "gendistill.experts",
        **ident,
        "dataset": {**ident["dataset"], "fingerprint": dataset_fingerprint},
        "num_params": int(sum(math.prod(s) for _, s in layout)),
        "layout": layout,
        "training": {**asdict(cfg), "augment": resolve_augment(cfg.augment, space), "optimizer": "sgd",
                     "snapshots": "per epoch, epoch 0 included"},
        "package_version": __version__,
    }


def default_experts_dir(root: str | Path, description: dict) -> Path:
    """A cache directory keyed by everything that makes experts differ (backbone hash, space, net, training)."""
    keyed = {k: v for k, v in description.items() if k != "package_version"}
    key = hashlib.sha256(json.dumps(keyed, sort_keys=True, default=str).encode()).hexdigest()[:16]
    sha = description["backbone"].get("sha256", "pixel")[:16] if description["space"] == "latent" else "pixel"
    return Path(root) / f"{description['dataset']['name']}-{description['space']}-{sha}-{key}"


def experts_cache_root(cache_dir: str | Path | None = None) -> Path:
    """``<cache>/experts``: under --cache-dir, else under $GENDISTILL_CACHE, else ~/.cache/gendistill/experts."""
    from .cache import CACHE_ENV

    if cache_dir:
        return Path(cache_dir) / "experts"
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]) / "experts"
    return Path.home() / ".cache" / "gendistill" / "experts"


def read_description(directory: str | Path) -> dict:
    directory = Path(directory)
    path = directory / DESCRIPTION
    if not directory.is_dir():
        raise FileNotFoundError(f"experts directory {str(directory)!r} does not exist; make it with "
                                f"recipes/train_experts.py --output {directory}")
    if not path.is_file():
        raise FileNotFoundError(f"{str(directory)!r} has no {DESCRIPTION}; it is not an experts directory (make one "
                                "with recipes/train_experts.py)")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise ValueError(f"{str(path)!r} is not valid JSON; re-create the experts directory") from None
    if not isinstance(meta, dict) or meta.get("kind") != "gendistill.experts":
        raise ValueError(f"{str(path)!r} is not a gendistill experts description; re-create the experts directory")
    if meta.get("format") != EXPERTS_FORMAT:
        raise ValueError(f"{str(path)!r} has experts format {meta.get('format')!r}; this gendistill reads "
                         f"{EXPERTS_FORMAT!r}; retrain the experts")
    _check_description(path, meta)
    return meta


def _check_description(path: Path, meta: dict) -> None:
    """The fields a reader uses have their types: a hand-edited or damaged experts.json is one line naming the field."""
    def bad(field: str, what: str):
        return ValueError(f"{str(path)!r}: {field} must be {what}, got {meta.get(field)!r:.60}; re-create the "
                          "experts directory")

    for field in ("backbone", "dataset", "net", "training"):
        if not isinstance(meta.get(field), dict):
            raise bad(field, "a JSON object")
    if meta.get("space") not in SPACES:
        raise bad("space", f"one of {', '.join(SPACES)}")
    for field in ("num_params", "num_classes"):
        if not isinstance(meta.get(field), int) or isinstance(meta.get(field), bool) or meta[field] < 1:
            raise bad(field, "a positive integer")
    shape = meta.get("in_shape")
    if not isinstance(shape, list) or not shape or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                                                           for v in shape):
        raise bad("in_shape", "a list of positive integers")
    try:
        NetSpec(**meta["net"])
        ExpertConfig(**{f.name: meta["training"][f.name] for f in fields(ExpertConfig) if f.name in meta["training"]})
    except (TypeError, ValueError) as e:
        raise ValueError(f"{str(path)!r}: net or training settings are not valid ({first_line(e)}); re-create the "
                         "experts directory") from None
    if "num_experts" not in meta["training"] or "epochs" not in meta["training"]:
        raise bad("training", "an object with num_experts and epochs")


# ---------------------------------------------------------------------------------------------- training


def expert_inputs(space: str, backbone: Backbone, dataset: ImageDataset,
                  cached: Callable[[Backbone, ImageDataset], object]) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, labels) of a split as the experts and the objective see them: latents, or normalised images."""
    if space == "latent":
        split = cached(backbone, dataset)
        return split.latents, split.labels
    return normalize(dataset.float_images(), dataset.mean, dataset.std), dataset.labels.clone()


def _complete(path: Path, shape: tuple[int, int]) -> bool:
    try:
        with safe_open(str(path), framework="pt") as f:
            return tuple(f.get_slice("trajectory").get_shape()) == shape
    except (SafetensorError, OSError, ValueError, RuntimeError, KeyError):
        return False


@torch.no_grad()
def _accuracy(net, x: torch.Tensor, y: torch.Tensor, device, batch: int = 1000) -> float:
    net.eval()
    correct = sum(int((net(x[i : i + batch].to(device)).argmax(1).cpu() == y[i : i + batch]).sum())
                  for i in range(0, len(x), batch))
    net.train()
    return correct / max(1, len(x))


def prepare_directory(directory: str | Path, ident: dict, cfg: ExpertConfig, dataset_fingerprint: str | None = None,
                      write: bool = True) -> dict:
    """experts.json for these settings; an existing directory made with other settings is an error."""
    directory = Path(directory)
    net_spec = NetSpec(**ident["net"])
    layout = param_layout(net_spec.build(tuple(ident["in_shape"]), ident["num_classes"],
                                         torch.Generator().manual_seed(0)))
    meta = describe(ident, layout, cfg, dataset_fingerprint)
    if (directory / DESCRIPTION).exists():
        old = read_description(directory)
        diff = sorted(k for k in set(old) | set(meta) if k not in ("package_version", "training")
                      and old.get(k) != meta.get(k))
        diff += sorted(f"training.{k}" for k in set(old["training"]) | set(meta["training"])
                       if k != "num_experts" and old["training"].get(k) != meta["training"].get(k))
        if diff:
            raise ValueError(f"{str(directory)!r} holds experts made with other settings ({', '.join(diff[:4])} "
                             "differ); use a new --output or the same settings")
    if write:
        directory.mkdir(parents=True, exist_ok=True)
        write_json(meta, directory / DESCRIPTION)  # num_experts may grow on a re-run
    return meta


def train_experts(directory: str | Path, ident: dict, cfg: ExpertConfig, x: torch.Tensor, y: torch.Tensor,
                  test: tuple[torch.Tensor, torch.Tensor] | None = None, device=None, dataset_fingerprint: str
                  | None = None, rank: int = 0, world: int = 1, progress: bool = True, log=print) -> Path:
    """Train ``cfg.num_experts`` experts on ``x`` (match-space inputs) / ``y`` into ``directory``; skips finished ones.

    ``ident`` comes from :func:`identity`. With ``world`` processes, process ``rank`` trains experts rank, rank+world,
    ...
    """
    if cfg.num_experts < 1 or cfg.epochs < 1:
        raise ValueError(f"--num-experts and --epochs must be at least 1 (got {cfg.num_experts} and {cfg.epochs})")
    if not (cfg.lr > 0 and math.isfinite(cfg.lr)):
        raise ValueError(f"--lr must be a positive number, got {cfg.lr}")
    device = device or torch.device("cpu")
    directory = Path(directory)
    net_spec = NetSpec(**ident["net"])
    in_shape, num_classes = tuple(ident["in_shape"]), ident["num_classes"]
    if tuple(x.shape[1:]) != in_shape:
        raise ValueError(f"expert inputs have shape {tuple(x.shape[1:])}, the description says {in_shape}")
    meta = prepare_directory(directory, ident, cfg, dataset_fingerprint, write=rank == 0)

    shape = (cfg.epochs + 1, meta["num_params"])
    todo = [i for i in range(rank, cfg.num_experts, world) if not _complete(expert_file(directory, i), shape)]
    done = len(range(rank, cfg.num_experts, world)) - len(todo)
    if done:
        log(f"{done} expert(s) already in {directory}; training the other {len(todo)}")
    augment = get_augment(resolve_augment(cfg.augment, ident["space"]))
    bar = tqdm(total=len(todo) * cfg.epochs, desc=f"experts ({ident['space']} space)", disable=not progress,
               dynamic_ncols=True)
    y = y.long()
    for i in todo:
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + i)  # per expert: independent of which ones are skipped
        net = net_spec.build(in_shape, num_classes, g).to(device)
        net.train()
        opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        snapshots, train_acc = [flatten_params(net)], []
        for epoch in range(cfg.epochs):
            order = torch.randperm(len(x), generator=g)
            correct, total, loss_sum = 0, 0, 0.0
            for b in range(0, len(order), cfg.batch):
                idx = order[b : b + cfg.batch]
                xb, yb = x[idx].to(device), y[idx].to(device)
                out = net(augment.apply(xb, augment.make_params(len(xb), g, device)))
                loss = F.cross_entropy(out, yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                correct += int((out.argmax(1) == yb).sum())
                total += len(idx)
                loss_sum += float(loss.detach()) * len(idx)
            if not math.isfinite(loss_sum):
                raise FloatingPointError(f"expert {i} diverged (loss {loss_sum}) in epoch {epoch + 1}; lower --lr")
            snapshots.append(flatten_params(net))
            train_acc.append(round(correct / total, 4))
            bar.update(1)
            bar.set_postfix(expert=i, epoch=epoch + 1, loss=f"{loss_sum / total:.3f}", acc=f"{train_acc[-1]:.3f}")
        info = {"expert": str(i), "seed": str(cfg.seed), "train_acc": json.dumps(train_acc)}
        if test is not None:
            info["test_acc"] = f"{_accuracy(net, test[0], test[1].long(), device):.4f}"
        save_safetensors({"trajectory": torch.stack(snapshots)}, expert_file(directory, i), info)
    bar.close()
    return directory


# ----------------------------------------------------------------------------------------------- loading


class Experts:
    """A validated experts directory; snapshots are read lazily from the safetensors shards."""

    def __init__(self, directory: str | Path, meta: dict):
        self.directory = Path(directory)
        self.meta = meta

    @property
    def num_experts(self) -> int:
        return int(self.meta["training"]["num_experts"])

    @property
    def epochs(self) -> int:
        return int(self.meta["training"]["epochs"])

    @property
    def num_params(self) -> int:
        return int(self.meta["num_params"])

    @property
    def net(self) -> NetSpec:
        return NetSpec(**self.meta["net"])

    def snapshot(self, expert: int, epoch: int) -> torch.Tensor:
        """Flat parameters (num_params,) of ``expert`` after ``epoch`` epochs (0: its initialisation)."""
        if not (0 <= expert < self.num_experts and -self.epochs - 1 <= epoch <= self.epochs):
            raise ValueError(f"no snapshot for expert {expert}, epoch {epoch}: {self.num_experts} experts x "
                             f"{self.epochs} epochs stored")
        path = expert_file(self.directory, expert)
        try:
            with safe_open(str(path), framework="pt") as f:
                return f.get_slice("trajectory")[epoch % (self.epochs + 1)].float()
        except (SafetensorError, OSError, RuntimeError, KeyError) as e:
            raise ValueError(f"{str(path)!r} is not a readable expert file ({first_line(e)}); "
                             f"re-run recipes/train_experts.py --output {self.directory}") from None

    def check_window(self, expert_epochs: int, max_start_epoch: int, min_start_epoch: int = 0) -> None:
        """Start epochs are drawn from [min_start_epoch, max_start_epoch); targets lie expert_epochs later."""
        if expert_epochs < 1 or min_start_epoch < 0 or max_start_epoch <= min_start_epoch:
            raise ValueError("need expert_epochs >= 1 and 0 <= min_start_epoch < max_start_epoch (got "
                             f"{expert_epochs}, {min_start_epoch}, {max_start_epoch})")
        if max_start_epoch + expert_epochs > self.epochs:
            raise ValueError(f"max_start_epoch {max_start_epoch} + expert_epochs {expert_epochs} is beyond the "
                             f"{self.epochs} epochs stored in {self.directory}; lower them or train longer experts "
                             "(recipes/train_experts.py --epochs)")


def load_experts(directory: str | Path, expect: dict | None = None) -> Experts:
    """Read and check an experts directory; ``expect`` (from :func:`identity`) is what the current run needs."""
    meta = read_description(directory)
    if expect is not None:
        checks = [("space", meta.get("space"), expect["space"], "--space"),
                  ("backbone", meta.get("backbone", {}).get("sha256"), expect["backbone"].get("sha256"), "--backbone"),
                  ("net", meta.get("net"), expect["net"], "--net/--depth/--width"),
                  ("input shape", meta.get("in_shape"), expect["in_shape"], "--space/--backbone"),
                  ("number of classes", meta.get("num_classes"), expect["num_classes"], "--dataset"),
                  ("dataset", meta.get("dataset", {}).get("name"), expect["dataset"]["name"], "--dataset")]
        for what, have, want, flag in checks:
            if what == "backbone" and expect["space"] != "latent":
                continue
            if have != want:
                show = {"backbone": lambda v: str(v)[:16],
                        "net": lambda v: f"{v.get('name')} depth {v.get('depth')} width {v.get('width')}"
                        if isinstance(v, dict) else repr(v),
                        }.get(what, repr)
                raise ValueError(f"experts in {str(directory)!r} were trained with {what} {show(have)}, this run needs "
                                 f"{show(want)}; train matching experts (recipes/train_experts.py with the same "
                                 f"{flag}) or omit --experts")
    experts = Experts(directory, meta)
    for i in range(experts.num_experts):
        if not expert_file(directory, i).is_file():
            raise FileNotFoundError(f"{str(expert_file(directory, i))!r} is missing ({experts.num_experts} experts "
                                    f"described); re-run recipes/train_experts.py --output {directory} to finish them")
    return experts


def summary(directory: str | Path) -> dict:
    """experts.json plus what is on disk (for ``gendistill info DIR``)."""
    meta = read_description(directory)
    files = []
    for i in range(int(meta["training"]["num_experts"])):
        path = expert_file(directory, i)
        row = {"file": path.name, "present": path.is_file()}
        if row["present"]:
            row["bytes"] = os.path.getsize(path)
            try:
                with safe_open(str(path), framework="pt") as f:
                    row.update({k: v for k, v in (f.metadata() or {}).items() if k in ("test_acc",)})
                    row["final_train_acc"] = json.loads((f.metadata() or {}).get("train_acc", "[null]"))[-1]
            except (SafetensorError, OSError, ValueError):
                row["readable"] = False
        files.append(row)
    return {**meta, "directory": str(directory), "files": files, "complete": sum(r["present"] for r in files)}


def build_experts(directory: str | Path | None, space: str, backbone: Backbone, train: ImageDataset, net: NetSpec,
                  cfg: ExpertConfig, cache_dir: str | Path | None = None, test: ImageDataset | None = None,
                  accelerator=None, log=print, shard: tuple[int, int] | None = None) -> Path:
    """Train (or finish) the experts of a run into ``directory`` (default: the cache, keyed by what they depend on).

    The experts are split over the processes of a distributed launch, or by ``shard`` = (i, n): this call trains
    experts i, i+n, ... (independent processes, e.g. one per CPU core, can share one directory); each expert is its own
    file, written by the process that trains it. In a distributed launch, rank 0 encodes the latent cache the experts
    train on (``main_process_first``) and writes experts.json; the others wait, then read.
    """
    from .cache import cached_latents

    space = effective_match_space(backbone.kind, space)  # the pixel backbone's latents are the images
    device = accelerator.device if accelerator is not None else torch.device("cpu")
    in_shape = tuple(backbone.latent_shape if space == "latent" else train.image_shape)
    ident = identity(space, backbone, train.meta(), net, in_shape, train.num_classes)
    fingerprint = train.fingerprint()
    if directory is None:
        layout = param_layout(net.build(in_shape, train.num_classes, torch.Generator().manual_seed(0)))
        directory = default_experts_dir(experts_cache_root(cache_dir), describe(ident, layout, cfg, fingerprint))
    cached = lambda b, d: cached_latents(b, d, cache_dir, device=device, log=log)  # noqa: E731
    # only rank 0 writes the latent cache
    with accelerator.main_process_first() if accelerator is not None else nullcontext():
        x, y = expert_inputs(space, backbone, train, cached)
        test_xy = expert_inputs(space, backbone, test, cached) if test is not None else None
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator is not None else (0, 1)
    if shard is not None:
        if world > 1:
            raise ValueError("--shard splits the experts over independent processes; do not combine it with a "
                             "distributed launch")
        rank, world = shard
        prepare_directory(directory, ident, cfg, fingerprint)  # every shard writes the same experts.json (atomically)
        train_experts(directory, ident, cfg, x, y, test_xy, device, fingerprint, rank, world, progress=True, log=log)
        return Path(directory)
    if world > 1:  # rank 0 writes experts.json before the others read it; then every process trains its share
        if accelerator.is_main_process:
            prepare_directory(directory, ident, cfg, fingerprint)
        accelerator.wait_for_everyone()
    progress = accelerator.is_local_main_process if accelerator is not None else True
    train_experts(directory, ident, cfg, x, y, test_xy, device, fingerprint, rank, world, progress=progress, log=log)
    if world > 1:
        accelerator.wait_for_everyone()
    return Path(directory)
