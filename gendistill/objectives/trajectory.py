"""Trajectory matching: MTT (Cazenavette et al. 2022), TESLA (Cui et al. 2023) and DATM (Guo et al. 2024).

Each step draws an expert and a start epoch t (from ``ctx.rank_generator`` only), starts a student network at the
expert's snapshot θ*_t, takes N = ``syn_steps`` SGD steps with the set's learnable lr α on minibatches of the synthetic
set (``batch_syn`` samples, augmented), and compares with the expert M = ``expert_epochs`` epochs later::

    L = ||θ_N - θ*_{t+M}||² / ||θ*_t - θ*_{t+M}||²

The student is a functional network (``torch.func.functional_call``) over one flat parameter vector, laid out as
the experts store it (``gendistill.experts``).

``mtt``: back-propagates through the unrolled N steps; the autograd graph, and memory, grow with N.

``tesla``: the same gradient with memory constant in N (bar one parameter vector per step). A forward pass without
a graph keeps each step's parameters θ_i, minibatch indices and augmentation draws; a reverse pass then recomputes
one step at a time and carries the adjoint λ = dL/dθ::

    λ_N = 2 (θ_N - θ*_{t+M}) / D,           D = ||θ*_t - θ*_{t+M}||²
    for i = N-1 .. 0, with g_i = ∇_θ ℓ(θ_i; A(x_Bi), y_Bi) and s_i = g_i · λ_{i+1}:
        dL/dx_Bi += -α ∂s_i/∂x_Bi      dL/dy_Bi += -α ∂s_i/∂y_Bi      dL/dα += -s_i
        λ_i = λ_{i+1} - α ∂s_i/∂θ_i    (a Hessian-vector product)

TESLA's paper code keeps λ_i = λ_N (it drops the Hessian-vector products, an approximation); we keep them, so the
gradient equals MTT's (tested to 1e-4) for the price of the double backward each step needs anyway. The loop calls
``backward`` on what an objective returns, so ``tesla`` returns a surrogate whose value is L and whose gradient with
respect to the set's latents (or images), lr and soft labels is the one computed here.

``datm``: MTT (or TESLA's reverse pass, ``unroll="constant"``) with DATM's difficulty alignment: start epochs drawn
from ``[min_start_epoch, upper)`` where ``upper`` grows linearly from ``max_start_epoch`` to ``max_start_epoch_final``
over the first ``expansion_end_step`` steps (sequential generation), steps whose loss exceeds ``threshold`` give zero
gradients (DATM skips those updates; an optimiser with momentum still coasts), and learnable soft labels.
:func:`init_soft_labels` prepares a set as DATM does: per class, real samples
that an expert classifies correctly, and label *logits* averaged over the experts that classify each sample correctly;
the logits become an ``nn.Parameter`` the loop optimises, the objective's cross-entropy uses ``softmax(logits)`` as
soft targets, and :func:`finish_soft_labels` turns them into the probabilities the set file stores.

Several processes: the loss is one trajectory's, not a sum over classes, so it does not split. Each process draws its
own expert, start epoch, minibatches and augmentation from its own generator (``ctx.rank_generator``; ``parallel =
"replicas"``) and the loop averages the gradients: P processes give the gradient of the mean loss of P independent
trajectory draws per step (a larger sample, not the 1-process gradient faster). With one process the draws come from
the shared generator, as they always did.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ..augment import get_augment, resolve_augment
from ..config import check_config, setting
from ..experts import Experts
from .base import OBJECTIVES, StepContext

UNROLLS = ("autograd", "constant")


def with_reverse_grads(loss: torch.Tensor, *pairs) -> torch.Tensor:
    """``loss``'s value, whose backward gives each tensor of ``pairs`` ``(tensor, grad)`` the gradient a constant-memory
    reverse pass computed for it; a pair whose grad is None, or whose tensor needs no gradient, is left out."""
    surrogate = sum(((t * g.to(t.dtype)).sum() for t, g in pairs if g is not None and t.requires_grad),
                    torch.zeros((), device=loss.device, dtype=loss.dtype))
    return loss.detach() + (surrogate - surrogate.detach())


class FlatNet:
    """A network evaluated at a flat parameter vector (views of it, so gradients reach the vector)."""

    def __init__(self, module: nn.Module):
        self.module = module
        self.names = [n for n, _ in module.named_parameters()]
        self.shapes = [p.shape for _, p in module.named_parameters()]
        self.sizes = [p.numel() for _, p in module.named_parameters()]
        self.num_params = sum(self.sizes)

    def __call__(self, flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        views = {n: v.view(s) for n, v, s in zip(self.names, flat.split(self.sizes), self.shapes)}
        return functional_call(self.module, views, (x,))


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against hard ids (N,) or target probabilities (N, K)."""
    return F.cross_entropy(logits.float(), targets if targets.ndim == 1 else targets.float())


@OBJECTIVES.register("mtt")
@dataclass
class TrajectoryMatching:
    parallel: ClassVar[str] = "replicas"  # each process draws its own trajectory; the gradients are averaged
    # it matches expert trajectories and draws no real batch (so --real-sampler has nothing to change)
    samples_real = False
    experts: Experts | None = None
    syn_steps: int = setting(20, min=1)
    expert_epochs: int = setting(2, min=1)
    max_start_epoch: int = setting(5, min=1)
    min_start_epoch: int = setting(0, min=0)
    # DATM: the upper bound of start epochs grows to this (None: fixed)
    max_start_epoch_final: int | None = setting(None, min=1)
    # DATM: distillation step at which the upper bound reaches max_start_epoch_final
    expansion_end_step: int = setting(0, min=0)
    batch_syn: int | None = setting(None, min=1)  # None: the whole set in every student step
    augment: str = "auto"  # "auto": DSA on images, the latent variant on latents (as the experts were trained)
    lr_teacher: float = setting(0.01, above=0)  # student lr when the set has no learnable lr
    # "autograd" (MTT: keep the unrolled graph) | "constant" (TESLA: constant memory)
    unroll: str = setting("autograd", choices=UNROLLS)
    label_logits: bool = False  # soft labels in the context are logits (DATM) rather than probabilities
    # DATM: a step whose loss exceeds this gives zero gradients
    threshold: float = setting(math.inf, min=0, infinite=True)

    def __post_init__(self):
        if self.experts is None:
            raise ValueError("trajectory matching needs expert trajectories: pass --experts DIR "
                             "(recipes/train_experts.py makes one)")
        check_config(self)
        final = self.max_start_epoch_final if self.max_start_epoch_final is not None else self.max_start_epoch
        if final < self.max_start_epoch:
            raise ValueError(f"max_start_epoch_final {final} is below max_start_epoch {self.max_start_epoch}; the "
                             "window only grows")
        self.experts.check_window(self.expert_epochs, final, self.min_start_epoch)
        space = self.experts.meta["space"]
        self._augment = get_augment(resolve_augment(self.augment, space))
        self._nets: dict = {}

    # -- pieces ------------------------------------------------------------------------------------------------
    def _net(self, ctx: StepContext) -> FlatNet:
        key = (tuple(ctx.in_shape), ctx.num_classes, str(ctx.device))
        if key not in self._nets:
            if (
                list(ctx.in_shape) != list(self.experts.meta["in_shape"])
                or ctx.num_classes != self.experts.meta["num_classes"]
            ):
                raise ValueError(f"the experts in {self.experts.directory} see inputs "
                                 f"{tuple(self.experts.meta['in_shape'])} with {self.experts.meta['num_classes']} "
                                 f"classes; this run matches {tuple(ctx.in_shape)} with {ctx.num_classes}")
            # the module only provides the structure: its weights are replaced by the flat vector, so any seed will do
            module = self.experts.net.build(ctx.in_shape, ctx.num_classes,
                                            torch.Generator().manual_seed(0)).to(ctx.device).train()
            net = FlatNet(module)
            if net.num_params != self.experts.num_params:
                raise ValueError(f"the experts have {self.experts.num_params} parameters, the network "
                                 f"{net.num_params}; retrain the experts")
            self._nets[key] = net
        return self._nets[key]

    def window(self, step: int) -> tuple[int, int]:
        """Start epochs are drawn from [low, high) at distillation step ``step``."""
        high = self.max_start_epoch
        if self.max_start_epoch_final is not None:
            grow = self.max_start_epoch_final - self.max_start_epoch
            frac = min(1.0, step / self.expansion_end_step) if self.expansion_end_step > 0 else 1.0
            high = min(self.max_start_epoch_final, self.max_start_epoch + int(grow * frac))
        return self.min_start_epoch, high

    def plan(self, n: int, ctx: StepContext) -> tuple[int, int, list]:
        """Every random choice of one step, drawn in a fixed order from this process's generator: expert, start,
        batches."""
        g = ctx.rank_generator
        expert = int(torch.randint(self.experts.num_experts, (1,), generator=g))
        low, high = self.window(ctx.step)
        start = int(torch.randint(low, high, (1,), generator=g))
        batch = min(self.batch_syn or n, n)
        steps, chunks = [], []
        for _ in range(self.syn_steps):
            if not chunks:  # a fresh permutation whenever the previous one is used up (MTT)
                chunks = list(torch.randperm(n, generator=g).split(batch))
            idx = chunks.pop()
            steps.append((idx.to(ctx.device), self._augment.make_params(len(idx), g, ctx.device)))
        return expert, start, steps

    def _inputs(self, x: torch.Tensor, params, ctx: StepContext) -> torch.Tensor:
        return self._augment.apply(ctx.transform(x), params)

    def _targets(self, soft: torch.Tensor | None, hard: torch.Tensor) -> torch.Tensor:
        if soft is None:
            return hard
        return soft.float().softmax(1) if self.label_logits else soft

    # -- the step --------------------------------------------------------------------------------------------------
    def __call__(self, syn, syn_labels, real, ctx: StepContext) -> torch.Tensor:
        net = self._net(ctx)
        lr = ctx.syn_lr if ctx.syn_lr is not None else torch.tensor(self.lr_teacher, device=ctx.device)
        if not math.isfinite(float(lr.detach())):
            raise FloatingPointError(f"the learned lr is {float(lr.detach())} at step {ctx.step}; lower --lr-lr and "
                                     "restart from the last checkpoint")
        expert, start, steps = self.plan(len(syn), ctx)
        theta0 = self.experts.snapshot(expert, start).to(ctx.device)
        target = self.experts.snapshot(expert, start + self.expert_epochs).to(ctx.device)
        if self.unroll == "autograd":
            loss = self._unrolled(net, syn, syn_labels, ctx.soft_labels, lr, theta0, target, steps, ctx)
            if float(loss.detach()) > self.threshold:
                return loss.detach() + (syn * 0).sum()  # DATM: skip the update (zero gradients)
            return loss
        return self._constant_memory(net, syn, syn_labels, ctx.soft_labels, lr, theta0, target, steps, ctx)

    def _unrolled(self, net, syn, hard, soft, lr, theta0, target, steps, ctx) -> torch.Tensor:
        """MTT: the whole unroll stays in the autograd graph."""
        targets = self._targets(soft, hard)
        theta = theta0.clone().requires_grad_(True)
        for idx, params in steps:
            ce = soft_cross_entropy(net(theta, self._inputs(syn[idx], params, ctx)), targets[idx])
            (g,) = torch.autograd.grad(ce, theta, create_graph=True)
            theta = theta - lr * g
        return ((theta - target) ** 2).sum() / ((theta0 - target) ** 2).sum()

    def _constant_memory(self, net, syn, hard, soft, lr, theta0, target, steps, ctx) -> torch.Tensor:
        """TESLA: forward without a graph, then the exact reverse pass one step at a time (see the module docstring)."""
        alpha = lr.detach().float()
        x = syn.detach()
        soft_d = soft.detach() if soft is not None else None
        learn_soft = soft is not None and soft.requires_grad
        with torch.no_grad():
            targets = self._targets(soft_d, hard)
        thetas = [theta0]
        for idx, params in steps:
            theta = thetas[-1].detach().requires_grad_(True)
            with torch.enable_grad():
                ce = soft_cross_entropy(net(theta, self._inputs(x[idx], params, ctx)), targets[idx])
                (g,) = torch.autograd.grad(ce, theta)
            thetas.append(theta.detach() - alpha * g)
        theta_n = thetas.pop()
        dist = ((theta0 - target) ** 2).sum()
        loss = ((theta_n - target) ** 2).sum() / dist
        if float(loss) > self.threshold:
            return loss + (syn * 0).sum()  # DATM: skip the update (zero gradients)

        lam = 2 * (theta_n - target) / dist
        grad_x = torch.zeros_like(x, dtype=torch.float32)
        grad_soft = torch.zeros_like(soft_d, dtype=torch.float32) if learn_soft else None
        grad_lr = torch.zeros((), device=x.device)
        for i in reversed(range(len(steps))):
            idx, params = steps[i]
            theta = thetas[i].detach().requires_grad_(True)
            xb = x[idx].clone().requires_grad_(True)
            wrt = [theta, xb]
            with torch.enable_grad():
                if learn_soft:
                    yb = soft_d[idx].clone().requires_grad_(True)
                    wrt.append(yb)
                    tb = self._targets(yb, hard[idx])
                else:
                    tb = targets[idx]
                ce = soft_cross_entropy(net(theta, self._inputs(xb, params, ctx)), tb)
                (g,) = torch.autograd.grad(ce, theta, create_graph=True)
                s = (g * lam).sum()
                grads = torch.autograd.grad(s, wrt, allow_unused=True)
            if grads[1] is not None:
                grad_x.index_add_(0, idx, -alpha * grads[1].float())
            if learn_soft and grads[2] is not None:
                grad_soft.index_add_(0, idx, -alpha * grads[2].float())
            grad_lr -= s.detach()
            lam = lam - alpha * grads[0].detach()
            thetas[i] = None  # free as we go

        return with_reverse_grads(loss, (syn, grad_x), (lr, grad_lr), (soft, grad_soft))


@OBJECTIVES.register("tesla")
@dataclass
class TESLA(TrajectoryMatching):
    unroll: str = "constant"


@OBJECTIVES.register("datm")
@dataclass
class DATM(TrajectoryMatching):
    max_start_epoch: int = 3
    max_start_epoch_final: int | None = 6
    expansion_end_step: int = 300
    label_logits: bool = True
    threshold: float = 1.0


# ------------------------------------------------------------------------------------------ DATM's soft labels


@torch.no_grad()
def expert_logits(experts: Experts, x: torch.Tensor, epoch: int = -1, expert: int | None = None,
                  batch: int = 256) -> torch.Tensor:
    """Logits (E, N, K) of every expert (or (1, N, K) of one) at ``epoch`` for match-space inputs ``x``."""
    meta = experts.meta
    module = experts.net.build(tuple(meta["in_shape"]), meta["num_classes"],
                               torch.Generator().manual_seed(0)).to(x.device).eval()
    net = FlatNet(module)
    which = range(experts.num_experts) if expert is None else [expert]
    out = []
    for e in which:
        theta = experts.snapshot(e, epoch).to(x.device)
        if len(x) == 0:
            out.append(x.new_zeros(0, meta["num_classes"]))
            continue
        out.append(torch.cat([net(theta, x[i : i + batch]).float() for i in range(0, len(x), batch)]))
    return torch.stack(out)


def init_soft_labels(syn, experts: Experts, to_input, candidates=None, generator: torch.Generator | None = None,
                     epoch: int = -1, batch: int = 256) -> dict:
    """DATM's initialisation: correctly classified real samples, label logits averaged over the experts that agree.

    ``to_input`` maps latents to what the experts see (identity in latent space; decode + normalise in pixel space).
    ``candidates`` (the real train latents, a ``LatentSplit``) are scanned per class in random order with expert 0 at
    ``epoch`` until ``ipc`` correctly classified ones are found; a class with too few falls back to its most confident
    samples. Without ``candidates`` the set's latents stay as they are. Then each sample's logits are the mean over the
    experts that classify it correctly (over all experts if none does); ``syn.labels`` becomes an ``nn.Parameter`` of
    these logits. Returns counts for the log.
    """
    if syn.soft:
        raise ValueError("the set already has soft labels; DATM initialises them from hard class labels")
    hard = syn.labels.clone()
    device = syn.latents.device
    fallback = 0
    if candidates is not None:
        for c in range(syn.num_classes):
            rows = torch.nonzero(hard == c).flatten()
            pool = candidates.class_indices(c)
            pool = pool[torch.randperm(len(pool), generator=generator)]
            chosen, scores = [], []
            for i in range(0, len(pool), batch):
                z = candidates.latents[pool[i : i + batch]].to(device)
                logits = expert_logits(experts, to_input(z), epoch, expert=0)[0]
                ok = torch.nonzero(logits.argmax(1) == c).flatten().cpu()
                chosen += pool[i : i + batch][ok].tolist()[: len(rows) - len(chosen)]
                scores.append((logits.softmax(1)[:, c].cpu(), pool[i : i + batch]))
                if len(chosen) >= len(rows):
                    break
            if len(chosen) < len(rows):  # too few correct ones: the most confident of the rest
                p = torch.cat([s for s, _ in scores])
                ids = torch.cat([i for _, i in scores])
                rest = [int(j) for j in ids[p.argsort(descending=True)] if int(j) not in chosen]
                fallback += len(rows) - len(chosen)
                chosen += rest[: len(rows) - len(chosen)]
            syn.latents.data[rows] = candidates.latents[torch.tensor(chosen, dtype=torch.long)].to(
                device, syn.latents.dtype
            )
    logits = expert_logits(experts, to_input(syn.latents.detach()), epoch)  # (E, N, K)
    correct = (logits.argmax(2) == hard.to(logits.device)).float().unsqueeze(2)  # (E, N, 1)
    agree = correct.sum(0)
    mean = torch.where(agree > 0, (logits * correct).sum(0) / agree.clamp(min=1), logits.mean(0))
    syn.labels = nn.Parameter(mean.to(device))
    return {"correct_by_any_expert": int((agree > 0).sum()), "samples": len(hard), "fallback": fallback,
            "argmax_matches_class": int((mean.argmax(1).cpu() == hard.cpu()).sum())}


def finish_soft_labels(syn) -> None:
    """Learned label logits -> probabilities (the set file's soft labels), as a buffer again."""
    if isinstance(syn.labels, nn.Parameter):
        probs = syn.labels.detach().float().softmax(1)
        del syn.labels
        syn.register_buffer("labels", probs)


def match_space_inputs(backbone, space: str, dataset_meta: dict):
    """Latents -> what the experts see: the latents themselves, or decoded and normalised images."""
    from ..backbones import effective_match_space
    from ..data import normalize

    if effective_match_space(backbone.kind, space) == "latent":
        return lambda z: z
    mean, std = dataset_meta["mean"], dataset_meta["std"]
    return lambda z: normalize(backbone.decode(z).float(), mean, std)
