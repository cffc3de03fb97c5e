"""Gradient matching: DC (Zhao et al. 2021) and DSA (Zhao & Bilen 2021).

loss = sum_c D(grad_theta CE(net(A(x_real_c)), c), grad_theta CE(net(A(x_syn_c)), c)): the proxy net's parameter
gradients on a real batch and on the synthetic images of class c should agree. The real gradient is a constant (no
graph); the synthetic one keeps its graph (``create_graph``) so the loss reaches ``syn``. ``A`` is DSA's siamese
augmentation (``dsa``) or the identity (``dc``); as in the reference, one draw of its parameters is shared by every
sample of both batches of a class, so both gradients are taken under the very same transform.

D (``dis_metric``): ``layerwise`` (the paper's distance, the reference's ``"ours"``): for each weight tensor, reshaped
to (output nodes, rest), the sum over output nodes of 1 - cosine; 1-d tensors (biases, norm scales) count 0.
``mse``: squared L2 of all gradients concatenated. ``cos``: 1 - cosine of all gradients concatenated.

Schedule. The reference runs, per outer iteration, ``outer_loop`` matching steps on one fresh net, and between two
of them trains that net for ``inner_loop`` epochs on the (detached) synthetic set, SGD lr 0.01 (``lr_net``).
Mapped onto the loop's one call per step: **each call is one matching step** (one update of the set), and
 - calls 0, outer_loop, 2*outer_loop, ... draw a new net (and its SGD optimiser) from ``ctx.generator``;
 - every other call first trains the current net for ``inner_loop`` epochs on the set as it is now (updated by the
   previous step), then matches: the reference's order exactly, with no training after an outer iteration's last step.
So the reference's ``Iteration`` outer iterations are ``Iteration * outer_loop`` steps of our loop. The net, its
optimiser and the call counter are the objective's state (``state_dict``), so a resumed run equals an uninterrupted one.
Every process draws the same nets and augmentations from the shared generator and trains its net on the same set,
so the nets stay identical across ranks with no communication. Several processes split the classes (``parallel =
"classes"``): each matches its own, the loop sums the gradients (the 1-process gradient); the inner loop trains on the
whole set, so it runs on every process (repeated, not split). With BatchNorm nets the statistics come from the first
``bn_real`` samples of each class's real batch of the step. Labels are the hard class ids (soft labels unused).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..augment import Augment, get_augment, resolve_augment
from ..config import check_config, setting
from ..nets import fresh_net, get_net
from .base import OBJECTIVES, StepContext, real_count

# the reference's ``get_loops(ipc)``: (outer_loop, inner_loop), tuned for images per class 1 ... 50
REFERENCE_LOOPS = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}


def reference_loops(ipc: int) -> tuple[int, int]:
    """The reference's (outer_loop, inner_loop) for ``ipc``; other values take those of the nearest tabulated IPC."""
    return REFERENCE_LOOPS[min(REFERENCE_LOOPS, key=lambda k: (abs(k - ipc), k))]


def layerwise_distance(g_real: torch.Tensor, g_syn: torch.Tensor) -> torch.Tensor:
    """Sum over output nodes (rows of the gradient reshaped to (out, -1)) of 1 - cosine; 0 for 1-d tensors."""
    if g_real.dim() <= 1:  # biases, norm scales: the reference leaves them out
        return g_syn.new_zeros(())
    r, s = g_real.reshape(len(g_real), -1), g_syn.reshape(len(g_syn), -1)
    cos = (r * s).sum(-1) / (r.norm(dim=-1) * s.norm(dim=-1) + 1e-6)
    return (1 - cos).sum()


def _flat(grads: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in grads])


def _layerwise(gw_real, gw_syn):
    return sum((layerwise_distance(r, s) for r, s in zip(gw_real, gw_syn)), gw_syn[0].new_zeros(()))


def _mse(gw_real, gw_syn):
    return ((_flat(gw_syn) - _flat(gw_real)) ** 2).sum()


def _cos(gw_real, gw_syn):
    r, s = _flat(gw_real), _flat(gw_syn)
    return 1 - (r * s).sum() / (r.norm() * s.norm() + 1e-6)


DISTANCES: dict[str, Callable[[Sequence[torch.Tensor], Sequence[torch.Tensor]], torch.Tensor]] = {
    "layerwise": _layerwise, "mse": _mse, "cos": _cos}
ALIASES = {"ours": "layerwise"}  # the reference's name


def gradient_distance(gw_real: Sequence[torch.Tensor], gw_syn: Sequence[torch.Tensor],
                      metric: str = "layerwise") -> torch.Tensor:
    """D(real gradients, synthetic gradients), computed in float32, for lists of per-parameter gradients."""
    metric = ALIASES.get(metric, metric)
    if metric not in DISTANCES:
        raise ValueError(f"unknown gradient distance {metric!r}; use one of {', '.join(DISTANCES)}")
    return DISTANCES[metric]([g.float() for g in gw_real], [g.float() for g in gw_syn])


def batchwise_params(augment: Augment, batch: int, generator: torch.Generator, device) -> dict:
    """One draw of augmentation params repeated for ``batch`` samples (DSA's batch mode for gradient matching)."""
    one = augment.make_params(1, generator, device)
    return {k: v if isinstance(v, str) else v.expand(batch, *v.shape[1:]) for k, v in one.items()}


@OBJECTIVES.register("dc")
@dataclass
class GradientMatching:
    siamese: ClassVar[bool] = False  # what augment="auto" means: no augmentation (DC)
    parallel: ClassVar[str] = "classes"  # several processes split the classes (gendistill.objectives)
    net: str = "convnet"
    depth: int = setting(3, min=1)
    width: int = setting(128, min=1)
    augment: str = "auto"  # "auto": none for DC; for DSA its image ops on images, the latent variant on latents
    # layerwise (the reference's "ours") | mse | cos
    dis_metric: str = setting("layerwise", choices=lambda: (*DISTANCES, *ALIASES))
    outer_loop: int = setting(10, min=1)  # matching steps per proxy net (the reference's value for IPC 10)
    inner_loop: int = setting(50, min=0)  # epochs of net training on the synthetic set between two matching steps
    net_lr: float = setting(0.01, above=0)  # SGD lr of the inner loop (the reference's lr_net)
    net_momentum: float = setting(0.0, min=0, max=1)  # the reference's current code: plain SGD
    batch_train: int = setting(256, min=1)  # minibatch of the inner loop; the set is one batch up to this size
    # real samples per class that set BatchNorm statistics before matching (BN nets only)
    bn_real: int = setting(16, min=1)

    def __post_init__(self):
        check_config(self)
        self.dis_metric = ALIASES.get(self.dis_metric, self.dis_metric)
        self._augments = {space: get_augment(resolve_augment(self.augment, space, self.siamese))
                          for space in ("pixel", "latent")}
        self.calls = 0
        self._net: nn.Module | None = None
        self._opt: torch.optim.Optimizer | None = None
        self._pending: dict | None = None  # a loaded state, applied once the call's context says where the net lives

    @property
    def whole_set(self) -> bool:
        """The inner loop trains on every synthetic sample (so every process needs the whole set decoded)."""
        return self.outer_loop > 1 and self.inner_loop > 0

    # -- state ---------------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"calls": self.calls, "net": None if self._net is None else self._net.state_dict(),
                "opt": None if self._opt is None else self._opt.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.calls = int(state["calls"])
        self._net = self._opt = None
        self._pending = state if state.get("net") is not None else None

    # -- the proxy net -------------------------------------------------------------------------------------------------
    def _build(self, ctx: StepContext, generator: torch.Generator | None) -> None:
        kw = dict(depth=self.depth, width=self.width)
        net = fresh_net(self.net, ctx.in_shape, ctx.num_classes, generator, **kw) if generator is not None else \
            get_net(self.net, ctx.in_shape, ctx.num_classes, **kw)
        self._net = net.to(ctx.device).train()
        self._opt = torch.optim.SGD(self._net.parameters(), lr=self.net_lr, momentum=self.net_momentum)

    def _restore(self, ctx: StepContext) -> None:
        self._build(ctx, None)
        self._net.load_state_dict(self._pending["net"])
        self._opt.load_state_dict(self._pending["opt"])
        self._pending = None

    def _train_net(self, syn: torch.Tensor, labels: torch.Tensor, ctx: StepContext) -> None:
        """``inner_loop`` epochs of SGD on the synthetic set (detached, augmented per sample when DSA is on)."""
        net, augment, x_all = self._net, self._augments[ctx.space], ctx.transform(syn.detach())
        net.train()
        for _ in range(self.inner_loop):
            order = torch.randperm(len(x_all), generator=ctx.generator).to(x_all.device)
            for i in range(0, len(order), self.batch_train):
                idx = order[i : i + self.batch_train]
                x = augment.apply(x_all[idx], augment.make_params(len(idx), ctx.generator, ctx.device))
                self._opt.zero_grad(set_to_none=True)
                F.cross_entropy(net(x), labels[idx]).backward()
                self._opt.step()

    def _freeze_batchnorm(self, real: Callable[[int], torch.Tensor], ctx: StepContext) -> None:
        """BN nets: running statistics from a real batch, then frozen (a class's few synthetic samples are too few)."""
        bns = [m for m in self._net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not bns:
            return
        self._net.train()
        with torch.no_grad():
            self._net(ctx.transform(torch.cat([real(c)[: self.bn_real] for c in range(ctx.num_classes)])))
        for m in bns:
            m.eval()

    # -- one matching step ---------------------------------------------------------------------------------------------
    def __call__(self, syn, syn_labels, real, ctx: StepContext) -> torch.Tensor:
        if self._pending is not None:
            self._restore(ctx)
        if self._net is None or self.calls % self.outer_loop == 0:
            self._build(ctx, ctx.generator)  # a new outer iteration: a fresh net
        else:
            self._train_net(syn, syn_labels, ctx)  # the net follows the set between matching steps
        self._freeze_batchnorm(real, ctx)
        net, augment = self._net, self._augments[ctx.space]
        params = [p for p in net.parameters() if p.requires_grad]
        loss = syn.new_zeros((), dtype=torch.float32)
        for c in range(ctx.num_classes):
            x_syn = syn[syn_labels == c]
            if len(x_syn) == 0:
                continue
            # drawn for every class
            aug = batchwise_params(augment, max(real_count(real, c), len(x_syn)), ctx.generator, ctx.device)
            if not ctx.matches(c):
                continue  # another process matches this class
            x_real = real(c)
            y_real = torch.full((len(x_real),), c, dtype=torch.long, device=x_real.device)
            loss_real = F.cross_entropy(net(augment.apply(ctx.transform(x_real), aug)), y_real)
            gw_real = [g.detach() for g in torch.autograd.grad(loss_real, params)]  # a constant: no graph kept
            loss_syn = F.cross_entropy(net(augment.apply(ctx.transform(x_syn), aug)), syn_labels[syn_labels == c])
            gw_syn = torch.autograd.grad(loss_syn, params, create_graph=True)  # keeps the path back to syn
            loss = loss + gradient_distance(gw_real, gw_syn, self.dis_metric)
        self.calls += 1
        return loss


@OBJECTIVES.register("dsa")
@dataclass
class SiameseGradientMatching(GradientMatching):
    """DSA: gradient matching with differentiable siamese augmentation (DSA's ops on images, geometric ones on
    latents)."""

    siamese: ClassVar[bool] = True
