"""Kernel ridge regression (meta-learning's closed-form inner loop): KIP (Nguyen et al. 2021) and FRePo (Zhou et al.
2022).

Both fit a kernel ridge regressor on the synthetic set and score it on a real batch::

    K_ss = k(X_s, X_s),  K_ts = k(X_t, X_s),  lam = jitter * tr(K_ss) / N
    pred = K_ts (K_ss + lam I)^-1 Y_s,          loss = mean_t || pred_t - Y_t ||^2

with Y the one-hot labels centred by 1/K (a regressor without bias predicts 0, "no class", far from the support). The
solve is a Cholesky factorisation in float64 (``torch.linalg.cholesky_ex`` + ``torch.cholesky_solve``), differentiable
in X_s and Y_s. ``jitter`` is relative to the mean diagonal of K_ss; a factorisation that fails (the kernel matrix is
not positive definite at that jitter, e.g. fewer features than synthetic samples) raises a one-line error naming the
fix. The absolute ridge of the last step is kept in ``last_ridge`` for the run's record.

Every kernel here is a feature kernel k(x, x') = <phi(x), phi(x')>:

``kip`` with ``kernel="nngp"`` (the default): a **random-feature approximation of the NNGP kernel** of the ConvNet
(the random-feature route of RFAD, Loo et al. 2022): phi concatenates the embeddings of ``num_models`` freshly
initialised ConvNets (drawn anew every step from ``ctx.generator``), each scaled by 1/sqrt(models * feature dim).
``kernel="ntk"``: the **finite-width empirical NTK** of one fresh ConvNet, phi(x) = d(sum of logits)/d(theta) /
sqrt(#params) (per-sample gradients by ``torch.func``; the logit-sum approximation of the multi-output NTK). The
infinite-width kernels of the KIP paper (neural-tangents) are not implemented: they need that library and a GPU.

``frepo``: phi is the embedding (the features before the linear head) of a net drawn from a pool of ``pool_size``
nets that keep training **on the synthetic set** (one SGD step per distillation step for the drawn net, cross-entropy
on the set's labels; a net that has taken ``max_online_steps`` steps is replaced by a fresh one). FRePo updates the
set and then the net; here the drawn net takes its step first, on the set as the previous step left it, then scores
it (the same alternation, and the net's parameters are not changed while the step's graph needs them). The pool (nets,
optimisers, counters) is the objective's checkpointed state.

Label learning (``--learn-labels`` in the recipe): the set's labels are logits (an ``nn.Parameter`` the loop trains, as
DATM's); Y_s = softmax(logits) - 1/K, and the file stores the probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..augment import get_augment
from ..nets import fresh_net, get_net
from .base import OBJECTIVES, StepContext

KERNELS = ("nngp", "ntk")


def _like(net: nn.Module, x: torch.Tensor) -> nn.Module:
    """``net`` on ``x``'s device, in float64 when ``x`` is (the gradient checks run in float64)."""
    return net.to(x.device, torch.float64) if x.dtype == torch.float64 else net.to(x.device)


def centred_one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    return F.one_hot(labels, num_classes).double() - 1.0 / num_classes


def krr_predict(k_ts: torch.Tensor, k_ss: torch.Tensor, y_s: torch.Tensor, jitter: float) -> tuple[torch.Tensor, float]:
    """``K_ts (K_ss + lam I)^-1 Y_s`` in float64 by Cholesky, lam = jitter * mean diagonal of K_ss; returns (pred,
    lam)."""
    k_ss, k_ts, y_s = k_ss.double(), k_ts.double(), y_s.double()
    n = len(k_ss)
    if not bool(torch.isfinite(k_ss.detach()).all()):
        raise FloatingPointError("the synthetic set's kernel matrix has non-finite entries; lower --lr or restart from "
                                 "the last checkpoint")
    lam = float(jitter) * k_ss.diagonal().mean().clamp_min(1e-30)  # in the graph: the loss is a function of X_s alone
    chol, info = torch.linalg.cholesky_ex(k_ss + lam * torch.eye(n, dtype=k_ss.dtype, device=k_ss.device))
    if int(info) > 0:
        raise ValueError(f"the synthetic set's {n}x{n} kernel matrix is not positive definite at jitter {jitter:g} "
                         f"(Cholesky failed at row {int(info)}); raise --jitter (e.g. to {max(jitter * 100, 1e-6):g})")
    return k_ts @ torch.cholesky_solve(y_s, chol), float(lam.detach())


def krr_loss(phi_t: torch.Tensor, y_t: torch.Tensor, phi_s: torch.Tensor, y_s: torch.Tensor,
             jitter: float) -> tuple[torch.Tensor, float]:
    """Mean squared error of the feature-kernel ridge regressor fit on (phi_s, y_s), on (phi_t, y_t)."""
    phi_s, phi_t = phi_s.double(), phi_t.double()
    pred, lam = krr_predict(phi_t @ phi_s.T, phi_s @ phi_s.T, y_s, jitter)
    return ((pred - y_t.double()) ** 2).sum(1).mean(), lam


@dataclass
class _KRR:
    """What KIP and FRePo share: the real batch, the targets, the solve. Subclasses give ``features``."""

    net: str = "convnet"
    depth: int = 3
    width: int = 128
    pool: str = "avgpooling"
    augment: str = "none"  # "auto": DSA on images, the latent variant on latents (the same draw for real and synthetic)
    jitter: float = 1e-6  # ridge, relative to the mean diagonal of K_ss
    label_logits: bool = True  # learned labels in the context are logits (softmax gives the targets)

    def __post_init__(self):
        if not self.jitter >= 0:
            raise ValueError(f"--jitter must be >= 0, got {self.jitter}")
        self._augments = {space: get_augment(self.augment if self.augment != "auto"
                                             else ("dsa" if space == "pixel" else "latent"))
                          for space in ("pixel", "latent")}
        self.last_ridge = 0.0

    def _net_kw(self) -> dict:
        return dict(depth=self.depth, width=self.width, pool=self.pool)

    def features(self, x: torch.Tensor, ctx: StepContext, real: bool) -> torch.Tensor:
        raise NotImplementedError

    def prepare(self, syn: torch.Tensor, syn_labels: torch.Tensor, ctx: StepContext) -> None:
        """Called once per step before any ``features`` call (draw the step's nets)."""

    def targets(self, syn_labels: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        soft = ctx.soft_labels
        if soft is None:
            return centred_one_hot(syn_labels, ctx.num_classes)
        probs = soft.double().softmax(1) if (self.label_logits and isinstance(soft, nn.Parameter)) else soft.double()
        return probs.double() - 1.0 / ctx.num_classes

    def __call__(self, syn, syn_labels, real, ctx: StepContext) -> torch.Tensor:
        self.prepare(syn, syn_labels, ctx)
        reals = [real(c) for c in range(ctx.num_classes)]
        x_real = torch.cat(reals)
        y_real = centred_one_hot(torch.cat([torch.full((len(r),), c, dtype=torch.long) for c, r in enumerate(reals)]),
                                 ctx.num_classes).to(x_real.device)
        augment = self._augments[ctx.space]
        params = augment.make_params(max(len(x_real), len(syn)), ctx.generator, ctx.device)
        with torch.no_grad():  # the real side is a constant
            phi_t = self.features(augment.apply(ctx.transform(x_real), params), ctx, real=True).detach()
        phi_s = self.features(augment.apply(ctx.transform(syn), params), ctx, real=False)
        loss, self.last_ridge = krr_loss(phi_t, y_real, phi_s, self.targets(syn_labels, ctx).to(phi_s.device),
                                         self.jitter)
        return loss if syn.dtype == torch.float64 else loss.float()


@OBJECTIVES.register("kip")
@dataclass
class KIP(_KRR):
    kernel: str = "nngp"  # nngp: random features of fresh ConvNets; ntk: empirical NTK of one fresh ConvNet
    num_models: int = 4  # nngp: fresh nets per step whose embeddings are concatenated

    def __post_init__(self):
        super().__post_init__()
        if self.kernel not in KERNELS:
            raise ValueError(f"unknown kernel {self.kernel!r}; use {' or '.join(KERNELS)} (--kernel)")
        if int(self.num_models) < 1:
            raise ValueError(f"--num-models must be >= 1, got {self.num_models}")
        self._nets: list[nn.Module] = []

    def prepare(self, syn, syn_labels, ctx: StepContext) -> None:
        count = self.num_models if self.kernel == "nngp" else 1
        self._nets = [_like(fresh_net(self.net, ctx.in_shape, ctx.num_classes, ctx.generator, **self._net_kw()),
                            syn).requires_grad_(False)
                      for _ in range(count)]

    def features(self, x, ctx, real):
        if self.kernel == "nngp":
            embs = [net.embed(x) for net in self._nets]
            return torch.cat([e / (len(embs) * e.shape[1]) ** 0.5 for e in embs], 1)
        return ntk_features(self._nets[0], x)


def ntk_features(net: nn.Module, x: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """Per-sample d(sum of logits)/d(theta) / sqrt(#params): the empirical NTK's features (differentiable in ``x``)."""
    from torch.func import functional_call, grad, vmap

    params = {k: v.detach() for k, v in net.named_parameters()}
    count = sum(p.numel() for p in params.values())

    def scalar(p, xi):
        return functional_call(net, p, (xi.unsqueeze(0),)).sum()

    per_sample = vmap(grad(scalar), in_dims=(None, 0))
    out = []
    for i in range(0, len(x), chunk):
        g = per_sample(params, x[i : i + chunk])
        out.append(torch.cat([v.reshape(len(v), -1) for v in g.values()], 1))
    return torch.cat(out) / count ** 0.5


@OBJECTIVES.register("frepo")
@dataclass
class FRePo(_KRR):
    pool_size: int = 10  # nets in the online pool
    max_online_steps: int = 100  # a net that has trained this many steps on the set is replaced by a fresh one
    online_lr: float = 0.01  # SGD (momentum 0.9) of the pool's nets on the synthetic set

    def __post_init__(self):
        super().__post_init__()
        for name in ("pool_size", "max_online_steps"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}; set --{name.replace('_', '-')} "
                                 "to 1 or more")
        if not self.online_lr > 0:
            raise ValueError(f"--online-lr must be > 0, got {self.online_lr}")
        self._pool: list[dict] = []  # {"net", "opt", "steps"}
        self._pending: list[dict] | None = None
        self._net: nn.Module | None = None

    # -- state: nets, optimisers and counters (tensors and plain values only) ------------------------------------------
    def state_dict(self) -> dict:
        return {"pool": [{"net": e["net"].state_dict(), "opt": e["opt"].state_dict(), "steps": e["steps"]}
                         for e in self._pool]}

    def load_state_dict(self, state: dict) -> None:
        self._pool, self._pending = [], list(state.get("pool", []))

    def _entry(self, ctx: StepContext, generator: torch.Generator | None, like: torch.Tensor) -> dict:
        net = fresh_net(self.net, ctx.in_shape, ctx.num_classes, generator,
                        **self._net_kw()) if generator is not None else \
            get_net(self.net, ctx.in_shape, ctx.num_classes, **self._net_kw())
        net = _like(net, like)
        return {"net": net, "opt": torch.optim.SGD(net.parameters(), lr=self.online_lr, momentum=0.9), "steps": 0}

    def prepare(self, syn, syn_labels, ctx: StepContext) -> None:
        if self._pending is not None:
            for saved in self._pending:
                entry = self._entry(ctx, None, syn)
                entry["net"].load_state_dict(saved["net"])
                entry["opt"].load_state_dict(saved["opt"])
                entry["steps"] = int(saved["steps"])
                self._pool.append(entry)
            self._pending = None
        while len(self._pool) < self.pool_size:
            self._pool.append(self._entry(ctx, ctx.generator, syn))
        i = int(torch.randint(len(self._pool), (1,), generator=ctx.generator))
        if self._pool[i]["steps"] >= self.max_online_steps:
            self._pool[i] = self._entry(ctx, ctx.generator, syn)
        entry = self._pool[i]
        net = entry["net"].requires_grad_(True).train()
        augment = self._augments[ctx.space]
        with torch.no_grad():
            # probabilities (or one-hot)
            targets = (self.targets(syn_labels, ctx) + 1.0 / ctx.num_classes).to(syn.dtype)
        x = augment.apply(ctx.transform(syn.detach()), augment.make_params(len(syn), ctx.generator, ctx.device))
        entry["opt"].zero_grad(set_to_none=True)
        F.cross_entropy(net(x), targets.to(x.device)).backward()
        entry["opt"].step()
        entry["steps"] += 1
        self._net = net.requires_grad_(False)

    def features(self, x, ctx, real):
        return self._net.embed(x)
