"""The field's standard evaluation protocol, as one function with its settings saved next to every result.

Train ``runs`` fresh networks from scratch on the (decoded) synthetic images: SGD (lr 0.01, momentum 0.9,
weight decay 5e-4), batch 256, lr x0.1 at half the epochs, DSA augmentation, cross-entropy on hard or soft
labels; test each on the real test split; report mean and std of the accuracies.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .augment import get_augment
from .config import Checked, setting
from .data import ImageDataset, normalize
from .nets import fresh_net, get_builder

PROTOCOL = "gendistill-standard-v1"


@dataclass
class EvalConfig(Checked):
    arch: str = setting("convnet", check=get_builder)
    epochs: int = setting(1000, min=1)  # as in the DM paper; the demo uses fewer and says so
    runs: int = setting(5, min=1)
    lr: float = setting(0.01, above=0)
    momentum: float = setting(0.9, min=0, max=1)
    weight_decay: float = setting(5e-4, min=0)
    batch: int = setting(256, min=1)
    augment: str = "dsa"
    seed: int = setting(0, min=0)
    test_batch: int = setting(1000, min=1)
    # torch.compile the network's training step (the same maths, fused kernels: 1.19x faster a step at one CPU thread,
    # benchmarks/eval_compile.py); it costs a compile per network (2-13 s measured) and a C compiler, so it is opt-in
    compile: bool = False


def last_batch(n: int, batch: int = EvalConfig.batch) -> int:
    """Images in the last step of an epoch over ``n`` images: the protocol keeps a partial batch, and a small one
    (256 k + 4 images) costs accuracy (docs/protocol.md)."""
    return (n - 1) % batch + 1 if n else 0


class RunCheckpoint:
    """One network's training state in ``path``: written at the end of an epoch once ``every`` seconds have passed since
    the last write (0: every epoch), read back when an interrupted evaluation continues. Safetensors, no pickle."""

    def __init__(self, path: str | Path, every: float = 60.0):
        self.path, self.every = Path(path), float(every)
        self._last = time.monotonic()
        self._loaded = None  # read once: the evaluation reports the epoch, then training continues from it

    def due(self) -> bool:
        return time.monotonic() - self._last >= self.every

    def save(self, state: dict) -> None:
        from .state import save_state

        save_state(state, self.path)
        self._last, self._loaded = time.monotonic(), None

    def load(self) -> dict | None:
        from .state import load_state

        if self._loaded is not None:
            return self._loaded
        if not self.path.exists():
            return None
        state = load_state(self.path, "evaluation state")
        if not (isinstance(state, dict) and {"epoch", "net", "optimizer", "generator"} <= set(state)):
            raise ValueError(f"{str(self.path)!r} is not a network's evaluation state; remove it to train that network "
                             "from the start")
        self._loaded = state
        return state


class EvalState:
    """Where an evaluation keeps its progress, so that an interrupted one continues where it stopped: each network's
    training state (:class:`RunCheckpoint`) and, once tested, its accuracy. A file belongs to one network of one
    computation (the images, labels, settings, lr and test split, hashed into its name): files of other computations
    in the same folder are never read, so a changed setting starts afresh instead of mixing runs."""

    def __init__(self, directory: str | Path, key: dict, every: float = 60.0):
        self.dir, self.every = Path(directory), float(every)
        self.key = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        self.runs: set[tuple[str, int]] = set()  # the networks an evaluation asked for: clear() removes their files

    @classmethod
    def of(cls, directory: str | Path, images: torch.Tensor, labels: torch.Tensor, test: ImageDataset, cfg: EvalConfig,
           lr: float | None = None, every: float = 60.0) -> EvalState:
        """The progress folder of evaluating ``images`` with ``cfg`` (and ``lr``) on ``test``: pass it to
        :func:`evaluate`, and :meth:`clear` it once the result is written."""
        return cls(directory, state_key(images, labels, test, cfg, lr), every)

    def _stem(self, arch: str, run: int) -> Path:
        from .io import safe_name

        return self.dir / f"{safe_name(arch)}-run{run}-{self.key}"

    def done(self, arch: str, run: int) -> float | None:
        path = self._stem(arch, run).with_suffix(".json")
        if not path.exists():
            return None
        try:
            acc = json.loads(path.read_text())["accuracy"]
        except (ValueError, KeyError, TypeError):
            acc = None
        if not (isinstance(acc, (int, float)) and 0 <= acc <= 1):
            raise ValueError(f"{str(path)!r} does not hold a network's accuracy; remove it to train that network again")
        return float(acc)

    def checkpoint(self, arch: str, run: int) -> RunCheckpoint:
        self.dir.mkdir(parents=True, exist_ok=True)
        return RunCheckpoint(self._stem(arch, run).with_suffix(".safetensors"), self.every)

    def mark_done(self, arch: str, run: int, accuracy: float) -> None:
        from .io import write_json

        path = self._stem(arch, run)
        write_json({"accuracy": accuracy}, path.with_suffix(".json"))
        path.with_suffix(".safetensors").unlink(missing_ok=True)

    def clear(self) -> None:
        """Remove the files of the networks evaluated (call it once the result is written) and the folder, if nothing
        else is left in it."""
        for arch, run in self.runs:
            for suffix in (".json", ".safetensors"):
                self._stem(arch, run).with_suffix(suffix).unlink(missing_ok=True)
        try:
            self.dir.rmdir()
        except OSError:  # missing, or it holds another computation's progress: left as it is
            pass


def time_left(done: int, seconds: float, left: int) -> str:
    """`` (35.2 s an epoch, 2 h 42 min left)`` after ``done`` epochs in ``seconds``, ``left`` epochs to go; ``""``
    before the first epoch ends or after the last."""
    if done <= 0 or left <= 0:
        return ""
    pace = seconds / done
    rest = round(pace * left)
    h, m, sec = rest // 3600, rest // 60 % 60, rest % 60
    when = f"{h} h {m} min" if h else f"{m} min" if m else f"{sec} s"
    return f" ({pace:.1f} s an epoch, {when} left)"


class Pace:
    """Called with each finished epoch of an ``epochs``-epoch network: the time left at the pace since this object was
    made (a continued network counts from the epoch it continued at)."""

    def __init__(self, epochs: int):
        self.epochs, self.start, self.first = epochs, time.monotonic(), None

    def __call__(self, epoch: int) -> str:
        if self.first is None:
            self.first = epoch - 1
        return time_left(epoch - self.first, time.monotonic() - self.start, self.epochs - epoch)


def _sha256(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def state_key(images: torch.Tensor, labels: torch.Tensor, test: ImageDataset, cfg: EvalConfig,
              lr: float | None) -> dict:
    """What one network's training depends on (``cfg.runs`` does not: adding runs keeps the finished ones)."""
    settings = {k: v for k, v in asdict(cfg).items() if k != "runs"}
    return {"protocol": PROTOCOL, "settings": settings, "lr": lr, "images": _sha256(images.float()),
            "labels": _sha256(labels), "test": [test.name, len(test)], "torch": torch.__version__}


def _loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y.float() if y.ndim == 2 else y)


@torch.no_grad()
def test_accuracy(net: torch.nn.Module, test: ImageDataset, mean, std, device, batch: int = 1000) -> float:
    net.eval()
    correct = 0
    for i in range(0, len(test), batch):
        x = normalize(test.float_images(slice(i, i + batch)).to(device), mean, std)
        correct += (net(x).argmax(1).cpu() == test.labels[i : i + batch]).sum().item()
    return correct / len(test)


def train_epoch(net: torch.nn.Module, opt: torch.optim.Optimizer, x_all: torch.Tensor, y_all: torch.Tensor, batch: int,
                augment, generator: torch.Generator) -> None:
    """One epoch of the protocol: the normalised images shuffled, batches of ``batch`` (the last partial one kept),
    each augmented, then one SGD step on cross-entropy."""
    order = torch.randperm(len(x_all), generator=generator).to(x_all.device)
    for i in range(0, len(order), batch):
        b = order[i : i + batch]
        x = augment(x_all[b], generator)
        loss = _loss(net(x), y_all[b])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def train_and_test(images: torch.Tensor, labels: torch.Tensor, test: ImageDataset, cfg: EvalConfig,
                   generator: torch.Generator, device, mean, std, lr: float | None = None, arch: str
                   | None = None, checkpoint: RunCheckpoint | None = None, on_epoch=None) -> float:
    """One fresh network trained on ``images`` (N, C, H, W) in [0, 1]; its accuracy on ``test``.

    ``checkpoint``: the network's state is saved there at the end of an epoch when it is due, and training continues
    from the state found there; the continued network is the one an uninterrupted run trains, bit for bit (the same
    threads and device). ``on_epoch(done)`` is called after each epoch (a progress bar's hook)."""
    num_classes = test.num_classes
    net = fresh_net(arch or cfg.arch, tuple(images.shape[1:]), num_classes, generator).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=lr or cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[cfg.epochs // 2], gamma=0.1)
    start = 0
    saved = checkpoint.load() if checkpoint is not None else None
    if saved is not None:
        start = saved["epoch"]
        if not (isinstance(start, int) and 0 < start < cfg.epochs):
            raise ValueError(f"{str(checkpoint.path)!r} holds epoch {start!r} of a {cfg.epochs}-epoch run; remove it "
                             "to train that network from the start")
        try:
            net.load_state_dict(saved["net"])
            opt.load_state_dict(saved["optimizer"])
            generator.set_state(saved["generator"])
        except (RuntimeError, KeyError, TypeError, ValueError) as e:
            reason = str(e).splitlines()[0][:120]
            raise ValueError(f"{str(checkpoint.path)!r} is not the state of this network ({reason}); remove it to "
                             "train that network from the start") from None
        sched.last_epoch = start  # the lr itself comes back with the optimiser's state
    augment = get_augment(cfg.augment)
    x_all, y_all = normalize(images.to(device), mean, std), labels.to(device)
    net.train()
    # static shapes: an epoch has at most two batch sizes (full and last), each compiled once; the state saved is
    # the plain network's, so a checkpoint does not depend on the flag's wrapper
    step_net = torch.compile(net, dynamic=False) if cfg.compile else net
    for epoch in range(start, cfg.epochs):
        train_epoch(step_net, opt, x_all, y_all, cfg.batch, augment, generator)
        sched.step()
        if on_epoch is not None:
            on_epoch(epoch + 1)
        if checkpoint is not None and epoch + 1 < cfg.epochs and checkpoint.due():
            checkpoint.save({"epoch": epoch + 1, "net": net.state_dict(), "optimizer": opt.state_dict(),
                             "generator": generator.get_state()})
    return test_accuracy(net, test, mean, std, device, cfg.test_batch)


def evaluate(images: torch.Tensor, labels: torch.Tensor, test: ImageDataset, cfg: EvalConfig | None = None,
             device=None, lr: float | None = None, archs: list[str] | None = None, progress: bool = True,
             accelerator=None, state: EvalState | None = None) -> dict:
    """The standard protocol: mean and std test accuracy of ``cfg.runs`` fresh nets per architecture.

    ``state`` (:meth:`EvalState.of`): keep the progress there, so that the same call after an interruption continues
    it; ``result["continued"]`` then lists what was taken up (``from_epoch`` = ``cfg.epochs`` for a network already
    tested). The caller clears it once the result is written.

    With an ``accelerator`` of several processes (every one calls this with the same set), process r trains runs
    r, r + P, ... and the accuracies are gathered: every process returns the whole result, equal to one process's,
    since run i's network is seeded by (seed, i) alone. Writing it is the caller's business (rank 0's).
    """
    cfg = cfg or EvalConfig()
    device = device or (accelerator.device if accelerator is not None else torch.device("cpu"))
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator is not None else (0, 1)
    if images.ndim != 4 or tuple(images.shape[1:]) != tuple(test.image_shape):
        raise ValueError(f"images of shape {tuple(images.shape[1:])} do not match the {test.name} test split "
                         f"{test.image_shape}")
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    for arch in archs or [cfg.arch]:
        get_builder(arch)  # an unknown name raises now, not after the archs before it have trained
    mean, std = test.mean, test.std
    result = {"protocol": PROTOCOL, "settings": asdict(cfg), "dataset": test.name, "num_images": len(images),
              "soft_labels": labels.ndim == 2, "lr_used": lr or cfg.lr,
              "last_batch": last_batch(len(images), cfg.batch), "archs": {}}
    continued = []
    start = time.time()
    for arch in archs or [cfg.arch]:
        mine, taken_up = {}, []
        bar = tqdm(range(rank, cfg.runs, world), desc=f"evaluate {arch}", disable=not progress, dynamic_ncols=True,
                   leave=False)
        if state is not None:  # every process's networks: the main process clears them all
            state.runs.update((arch, run) for run in range(cfg.runs))
        for run in bar:
            acc = state.done(arch, run) if state else None
            if acc is not None:
                taken_up.append({"arch": arch, "run": run, "from_epoch": cfg.epochs})
            else:
                ck = state.checkpoint(arch, run) if state else None
                if ck is not None and ck.path.exists():
                    taken_up.append({"arch": arch, "run": run, "from_epoch": ck.load()["epoch"]})
                    if progress:
                        tqdm.write(f"evaluate {arch}: network {run} continues from epoch {taken_up[-1]['from_epoch']} "
                                   f"of {cfg.epochs} ({ck.path})", file=sys.stderr)
                g = torch.Generator().manual_seed(cfg.seed * 1000 + run)
                done = " ".join(f"{100 * a:.2f}" for a in mine.values())
                pace = Pace(cfg.epochs)

                def shown(epoch, bar=bar, before=f"accs={done} " if done else "", pace=pace):
                    # a network can take hours on a CPU: its epochs, and the time left at this process's pace
                    bar.set_postfix_str(f"{before}epoch {epoch}/{cfg.epochs}{pace(epoch)}")

                acc = train_and_test(images, labels, test, cfg, g, device, mean, std, lr=lr, arch=arch, checkpoint=ck,
                                     on_epoch=shown if progress else None)
                if state:
                    state.mark_done(arch, run, acc)
            mine[run] = acc
            bar.set_postfix(accs=" ".join(f"{100 * a:.2f}" for a in mine.values()))
        if world > 1:
            from accelerate.utils import gather_object

            mine = dict(gather_object(list(mine.items())))
            taken_up = [c for part in gather_object([taken_up]) for c in part]
        continued += taken_up
        accs = [mine[run] for run in range(cfg.runs)]
        result["archs"][arch] = {"accs": accs, "mean": statistics.fmean(accs), "std": statistics.pstdev(accs)}
    first = result["archs"][(archs or [cfg.arch])[0]]
    result.update(mean=first["mean"], std=first["std"], seconds=round(time.time() - start, 1))
    if continued:
        result["continued"] = sorted(continued, key=lambda c: (c["arch"], c["run"]))
    return result


def train_reference_classifier(train: ImageDataset, device=None, epochs: int = 2, arch: str = "convnet", seed: int = 0,
                               batch: int = 256, lr: float = 0.01, progress: bool = True) -> torch.nn.Module:
    """One fixed classifier trained on the whole real train split (used to judge reconstructions and samples)."""
    device = device or torch.device("cpu")
    g = torch.Generator().manual_seed(seed)
    net = fresh_net(arch, train.image_shape, train.num_classes, g).to(device)
    steps = epochs * ((len(train) + batch - 1) // batch)
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr * 5, total_steps=steps)
    bar = tqdm(total=steps, desc=f"reference {arch}", disable=not progress, dynamic_ncols=True, leave=False)
    net.train()
    for _ in range(epochs):
        order = torch.randperm(len(train), generator=g)
        for i in range(0, len(order), batch):
            b = order[i : i + batch]
            x = normalize(train.float_images(b).to(device), train.mean, train.std)
            loss = F.cross_entropy(net(x), train.labels[b].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
    bar.close()
    return net.eval()


def reference_classifier(train: ImageDataset, device=None, path: str | Path | None = None, epochs: int = 2,
                         seed: int = 0, progress: bool = True) -> torch.nn.Module:
    """The reference ConvNet of ``train_reference_classifier``, loaded from ``path`` (safetensors) if it exists, else
    trained and, with a ``path``, written there atomically, so recipes that judge or steer with it train it once."""
    from safetensors.torch import load_file, save_file

    from .io import atomic_path

    path = Path(path) if path else None
    if path is not None and path.is_file():
        net = fresh_net("convnet", train.image_shape, train.num_classes, torch.Generator().manual_seed(seed))
        try:
            net.load_state_dict(load_file(str(path)))
        except Exception as e:  # a truncated file, or weights of another net or dataset
            raise ValueError(f"--classifier {str(path)!r} is not a ConvNet for {train.name} ({type(e).__name__}); "
                             "delete it to train a fresh one") from None
        return net.to(device or "cpu").eval()
    net = train_reference_classifier(train, device, epochs=epochs, seed=seed, progress=progress)
    if path is not None:
        with atomic_path(path) as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, str(tmp))
    return net


@torch.no_grad()
def classify(net: torch.nn.Module, images: torch.Tensor, mean, std, device=None, batch: int = 1000) -> torch.Tensor:
    """Predicted class ids for images (N, C, H, W) in [0, 1]."""
    device = device or torch.device("cpu")
    return torch.cat([net(normalize(images[i : i + batch].to(device), mean, std)).argmax(1).cpu()
                      for i in range(0, len(images), batch)])


@torch.no_grad()
def reconstruct(backbone, images: torch.Tensor, device=None, batch: int = 500, codec=None) -> torch.Tensor:
    """decode(encode(x)) in [0, 1] on the CPU, in batches: how much of an image a backbone's latent keeps. With a
    storage ``codec`` (``gendistill.storage.get_codec``), the codes of all the images are stored as one set of that
    dtype would be (its scales or codebook fitted to all of them) and read back before decoding."""
    device = device or images.device
    if codec is None or codec.name == "float32":
        return torch.cat([backbone.decode(backbone.encode(images[i : i + batch].to(device))).float().clamp(0, 1).cpu()
                          for i in range(0, len(images), batch)])
    codes = torch.cat([backbone.encode(images[i : i + batch].to(device)).float().cpu()
                       for i in range(0, len(images), batch)])
    codes = codec.decode(codec.encode(codes))
    return torch.cat([backbone.decode(codes[i : i + batch].to(device)).float().clamp(0, 1).cpu()
                      for i in range(0, len(codes), batch)])


def within_class_spread(images: torch.Tensor, labels: torch.Tensor, per_class: int = 200) -> list[float]:
    """Per class, the mean RMS pixel distance between two different images of that class (the first ``per_class``
    of it): near 0 when a generator gives one image per class, about the real data's figure when it does not."""
    out = []
    for c in labels.unique(sorted=True).tolist():
        x = images[labels == c][:per_class].flatten(1).float()
        n = len(x)
        if n < 2:
            out.append(float("nan"))
            continue
        d = torch.cdist(x, x) / x.shape[1] ** 0.5
        out.append((d.sum() / (n * (n - 1))).item())
    return out


def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean per-image PSNR (dB) of images in [0, 1]."""
    mse = ((x.float() - y.float()) ** 2).flatten(1).mean(1)
    return (10 * torch.log10(1.0 / mse.clamp_min(1e-10))).mean().item()
