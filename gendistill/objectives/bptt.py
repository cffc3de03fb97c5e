"""Back-propagation through the inner training: BPTT (Wang et al. 2018) and RaT-BPTT (Feng et al. 2024).

Each step starts a fresh network θ_0 (drawn from ``ctx.generator``), trains it for N steps of SGD with momentum μ on
minibatches of the synthetic set (``batch_syn`` samples, augmented) with the set's learnable lr α, and scores it on a
real batch::

    v_{i+1} = μ v_i + ∇_θ CE(f(θ_i; A(x_Bi)), y_Bi),   θ_{i+1} = θ_i - α v_{i+1},   L = CE(f(θ_N; x_real), y_real)

μ defaults to the evaluation protocol's 0.9, so the learned α is the lr `gendistill eval` trains with (``momentum=0``
is Wang et al.'s plain SGD: on the VAE's latents a fresh ConvNet then barely leaves chance level in 20 steps at
α = 0.01, and the loss has no gradient to give).

and L's gradient reaches the synthetic samples (and α, and learned soft labels) through the unroll. The network is
functional over one flat parameter vector (``FlatNet``, as in trajectory matching).

``bptt``: N = ``inner_steps``, the gradient flows through every step (Wang et al.'s random-init variant).
``ratbptt``: each step draws N uniformly from [``window``, ``inner_steps``]; the first N - ``window`` steps run without
a graph and the gradient flows through the last ``window`` steps only (random truncation). With ``window`` >=
``inner_steps`` it is BPTT exactly (tested).

``unroll="autograd"`` keeps the window's graph: memory grows with the window. Before the first step the objective
estimates it (activations of one forward/backward per sample x batch x window, plus two parameter vectors per step)
and refuses, with the fix, an unroll that does not fit ``memory_budget_gb`` (default: 90% of the memory available
now: free GPU memory, or MemAvailable on the CPU). ``unroll="constant"`` computes the same gradient in the memory of
one step: a forward pass without a graph keeps θ_i and every random draw, then a reverse pass recomputes one step at a
time and carries the adjoints of the state (θ, v) (TESLA's constant-memory pass, Hessian-vector products kept, extended
to momentum; see ``_constant``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..augment import get_augment
from ..nets import fresh_net
from .base import OBJECTIVES, StepContext
from .trajectory import FlatNet, with_reverse_grads

UNROLLS = ("autograd", "constant")
# forward activations + what backward and the double-backward graph keep, per sample (measured: 95 MiB/step
ACTIVATION_COPIES = 2
# for a width-32 ConvNet-3 on 100 images of 28x28, estimated 107)
PARAM_COPIES = 3  # θ_i, g_i and the velocity v_i kept per unrolled step


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against hard ids (N,) or probabilities (N, K), in float32 at least (float64 stays float64)."""
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    return F.cross_entropy(logits.to(dtype), targets if targets.ndim == 1 else targets.to(dtype))


def available_memory(device: torch.device) -> int | None:
    """Bytes free now on ``device`` (CUDA: free memory; CPU: MemAvailable), None when unknown."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    meminfo = Path("/proc/meminfo")
    if device.type == "cpu" and meminfo.exists():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return None


def activation_numel(module: nn.Module, in_shape, device, dtype=torch.float32) -> int:
    """Numbers every leaf module outputs for one input of ``in_shape`` (what a forward pass keeps for backward)."""
    total = [0]
    hooks = [m.register_forward_hook(lambda m, i, o: total.__setitem__(0, total[0] + o.numel()))
             for m in module.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            module(torch.zeros(1, *in_shape, device=device, dtype=dtype))
    finally:
        for h in hooks:
            h.remove()
    return total[0]


def unroll_step_bytes(module: nn.Module, in_shape, batch: int, num_params: int, device, element: int = 4) -> int:
    """Estimated bytes one step of an autograd unroll keeps alive until the backward pass."""
    acts = activation_numel(module, in_shape, device)
    return element * (ACTIVATION_COPIES * acts * batch + PARAM_COPIES * num_params)


@OBJECTIVES.register("bptt")
@dataclass
class BPTT:
    net: str = "convnet"
    depth: int = 3
    width: int = 32
    pool: str = "avgpooling"
    inner_steps: int = 20  # N (bptt); the longest unroll (ratbptt)
    window: int | None = None  # steps the gradient flows through, at the end of the unroll (None: all)
    random_length: bool = False  # draw N uniformly from [window, inner_steps] each step (RaT-BPTT)
    batch_syn: int | None = None  # minibatch of an inner step (None: the whole set)
    augment: str = "auto"  # "auto": DSA on images, the latent variant on latents
    unroll: str = "autograd"  # autograd | constant
    lr_inner: float = 0.01  # inner lr when the set has no learnable lr
    # of the inner SGD: the evaluation protocol's, so the learned lr is the one evaluation uses (0: plain SGD)
    momentum: float = 0.9
    memory_budget_gb: float | None = None  # None: 90% of the memory available when the run starts
    label_logits: bool = True  # learned soft labels in the context are logits (softmax gives the targets)

    def __post_init__(self):
        if self.unroll not in UNROLLS:
            raise ValueError(f"unknown unroll {self.unroll!r}; use {' or '.join(UNROLLS)} (--unroll)")
        if int(self.inner_steps) < 1:
            raise ValueError(f"--inner-steps must be >= 1, got {self.inner_steps}")
        if self.window is not None and int(self.window) < 1:
            raise ValueError(f"--window must be >= 1, got {self.window}")
        if self.batch_syn is not None and int(self.batch_syn) < 1:
            raise ValueError(f"--batch-syn must be >= 1, got {self.batch_syn}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"--momentum must be in [0, 1), got {self.momentum}")
        if self.memory_budget_gb is not None and not self.memory_budget_gb > 0:
            raise ValueError(f"--memory-budget-gb must be > 0, got {self.memory_budget_gb}")
        self._augments = {space: get_augment(self.augment if self.augment != "auto"
                                             else ("dsa" if space == "pixel" else "latent"))
                          for space in ("pixel", "latent")}
        self._flat: dict = {}
        self._checked: set = set()

    @property
    def window_len(self) -> int:
        return min(int(self.window or self.inner_steps), int(self.inner_steps))

    # -- pieces ---------------------------------------------------------------------------------------------------
    def _fresh(self, ctx: StepContext, dtype) -> tuple[FlatNet, torch.Tensor]:
        module = fresh_net(self.net, ctx.in_shape, ctx.num_classes, ctx.generator, depth=self.depth, width=self.width,
                           pool=self.pool)
        if any(True for _ in module.buffers()):
            raise ValueError(f"--net {self.net} has buffers (BatchNorm running statistics), which a functional "
                             "unroll does not carry; use a net without them (convnet with instancenorm, the default)")
        key = (tuple(ctx.in_shape), ctx.num_classes, str(ctx.device))
        if key not in self._flat:
            self._flat[key] = FlatNet(module.to(ctx.device))
        theta0 = torch.cat([p.detach().reshape(-1) for p in module.parameters()]).to(ctx.device, dtype)
        return self._flat[key], theta0

    def plan(self, n: int, ctx: StepContext) -> tuple[int, list]:
        """Unroll length and every inner step's (indices, augmentation draw), from ``ctx.generator`` after the net."""
        g = ctx.generator
        length = self.inner_steps
        if self.random_length and self.window_len < self.inner_steps:
            length = int(torch.randint(self.window_len, self.inner_steps + 1, (1,), generator=g))
        batch = min(self.batch_syn or n, n)
        steps, chunks = [], []
        for _ in range(length):
            if not chunks:
                chunks = list(torch.randperm(n, generator=g).split(batch))
            idx = chunks.pop()
            steps.append((idx.to(ctx.device), self._augments[ctx.space].make_params(len(idx), g, ctx.device)))
        return length, steps

    def check_memory(self, net: FlatNet, ctx: StepContext, batch: int) -> None:
        """Refuse, with the fix, an unroll whose estimated memory exceeds the budget (once per input shape)."""
        key = (tuple(ctx.in_shape), batch, str(ctx.device))
        if key in self._checked:
            return
        budget = self.memory_budget_gb * 2**30 if self.memory_budget_gb is not None else None
        if budget is None:
            free = available_memory(ctx.device)
            budget = 0.9 * free if free is not None else None
        if budget is not None:
            per_step = unroll_step_bytes(net.module, ctx.in_shape, batch, net.num_params, ctx.device)
            if self.unroll == "autograd":
                need, fits = per_step * self.window_len, int(budget // per_step)
                if need > budget:
                    raise ValueError(f"an autograd unroll of {self.window_len} steps (batch {batch}) needs about "
                                     f"{need / 2**30:.2f} GiB, more than the {budget / 2**30:.2f} GiB available; use "
                                     "--unroll constant (the same gradient in the memory of one step), a --window of "
                                     f"at most {fits} (RaT-BPTT) or a smaller --batch-syn")
            else:
                need = per_step + 4 * net.num_params * (2 * self.window_len + 1)
                if need > budget:
                    raise ValueError(f"even the constant-memory unroll needs about {need / 2**30:.2f} GiB (one step of "
                                     f"batch {batch} and {2 * self.window_len} parameter vectors), more than the "
                                     f"{budget / 2**30:.2f} GiB available; lower --batch-syn, --window or the "
                                     "net's --width")
        self._checked.add(key)

    @staticmethod
    def _targets(soft: torch.Tensor | None, hard: torch.Tensor, logits: bool) -> torch.Tensor:
        if soft is None:
            return hard
        return soft.softmax(1) if logits else soft

    def _inputs(self, x, params, ctx):
        return self._augments[ctx.space].apply(ctx.transform(x), params)

    # -- the step ------------------------------------------------------------------------------------------------------
    def __call__(self, syn, syn_labels, real, ctx: StepContext) -> torch.Tensor:
        net, theta0 = self._fresh(ctx, syn.dtype)
        length, steps = self.plan(len(syn), ctx)
        self.check_memory(net, ctx, min(self.batch_syn or len(syn), len(syn)))
        lr = ctx.syn_lr if ctx.syn_lr is not None else torch.tensor(self.lr_inner, device=ctx.device)
        if not math.isfinite(float(lr.detach())):
            raise FloatingPointError(f"the learned lr is {float(lr.detach())} at step {ctx.step}; lower --lr-lr and "
                                     "restart from the last checkpoint")
        lr = lr.to(syn.dtype)
        reals = [real(c) for c in range(ctx.num_classes)]
        x_real = ctx.transform(torch.cat(reals)).to(syn.dtype)
        y_real = torch.cat([torch.full((len(r),), c, dtype=torch.long, device=x_real.device)
                            for c, r in enumerate(reals)])
        hard, soft = syn_labels, ctx.soft_labels
        self._logits = self.label_logits and isinstance(soft, nn.Parameter)  # learned label logits (else probabilities)
        # the truncated prefix: no graph
        cut = length - min(self.window_len, length)
        theta = theta0
        with torch.no_grad():
            targets_d = self._targets(soft.detach() if soft is not None else None, hard, self._logits)
        velocity = torch.zeros_like(theta0)
        for idx, params in steps[:cut]:
            velocity = self.momentum * velocity + self._grad(net, theta, self._inputs(syn.detach()[idx], params, ctx),
                                                             targets_d[idx])
            theta = theta - lr.detach() * velocity
        window = steps[cut:]
        if self.unroll == "autograd":
            return self._autograd(net, theta, velocity, window, syn, hard, soft, lr, x_real, y_real, ctx)
        return self._constant(net, theta, velocity, window, syn, hard, soft, lr, x_real, y_real, ctx)

    @staticmethod
    def _grad(net, theta, x, targets, create_graph=False) -> torch.Tensor:
        theta = theta if theta.requires_grad else theta.detach().requires_grad_(True)
        with torch.enable_grad():
            ce = soft_cross_entropy(net(theta, x), targets)
            (g,) = torch.autograd.grad(ce, theta, create_graph=create_graph)
        return g if create_graph else g.detach()

    @staticmethod
    def _real_loss(net, theta, x_real, y_real) -> torch.Tensor:
        return F.cross_entropy(net(theta, x_real), y_real)

    def _autograd(self, net, theta, velocity, window, syn, hard, soft, lr, x_real, y_real, ctx) -> torch.Tensor:
        targets = self._targets(soft, hard, self._logits)
        theta = theta.detach().requires_grad_(True)
        for idx, params in window:
            g = self._grad(net, theta, self._inputs(syn[idx], params, ctx), targets[idx], create_graph=True)
            velocity = self.momentum * velocity + g
            theta = theta - lr * velocity
        return self._real_loss(net, theta, x_real, y_real)

    def _constant(self, net, theta, velocity, window, syn, hard, soft, lr, x_real, y_real, ctx) -> torch.Tensor:
        """Forward without a graph keeping (θ_i, v_i), then the reverse pass with adjoints (a_θ, a_v) of the state::

            v_{i+1} = μ v_i + g_i(θ_i),  θ_{i+1} = θ_i - α v_{i+1};     w = a_v - α a_θ,  s = g_i · w
            dL/dx_Bi += ∂s/∂x_Bi,  dL/dα += -a_θ · v_{i+1},  a_θ <- a_θ + ∂s/∂θ_i,  a_v <- μ w
        """
        alpha, mu, x = lr.detach(), self.momentum, syn.detach()
        soft_d = soft.detach() if soft is not None else None
        learn_soft = soft is not None and soft.requires_grad
        with torch.no_grad():
            targets = self._targets(soft_d, hard, self._logits)
        states = [(theta.detach(), velocity.detach())]
        for idx, params in window:
            th, v = states[-1]
            v = mu * v + self._grad(net, th, self._inputs(x[idx], params, ctx), targets[idx])
            states.append((th - alpha * v, v))
        theta_n = states.pop()[0].requires_grad_(True)
        with torch.enable_grad():
            loss = self._real_loss(net, theta_n, x_real, y_real)
            (a_theta,) = torch.autograd.grad(loss, theta_n)
        a_v = torch.zeros_like(a_theta)
        grad_x = torch.zeros_like(x)
        grad_soft = torch.zeros_like(soft_d) if learn_soft else None
        grad_lr = torch.zeros((), device=x.device, dtype=x.dtype)
        for i in reversed(range(len(window))):
            idx, params = window[i]
            th_i, v_i = states[i]
            th = th_i.detach().requires_grad_(True)
            xb = x[idx].clone().requires_grad_(True)
            wrt = [th, xb]
            with torch.enable_grad():
                if learn_soft:
                    yb = soft_d[idx].clone().requires_grad_(True)
                    wrt.append(yb)
                    tb = self._targets(yb, hard[idx], self._logits)
                else:
                    tb = targets[idx]
                ce = soft_cross_entropy(net(th, self._inputs(xb, params, ctx)), tb)
                (g,) = torch.autograd.grad(ce, th, create_graph=True)
                w = a_v - alpha * a_theta
                s = (g * w).sum()
                grads = torch.autograd.grad(s, wrt, allow_unused=True)
            grad_lr = grad_lr - (a_theta * (mu * v_i + g.detach())).sum()
            if grads[1] is not None:
                grad_x.index_add_(0, idx, grads[1])
            if learn_soft and grads[2] is not None:
                grad_soft.index_add_(0, idx, grads[2])
            a_theta = a_theta + grads[0].detach()
            a_v = mu * w
            states[i] = None  # free as we go
        return with_reverse_grads(loss, (syn, grad_x), (lr, grad_lr), (soft, grad_soft))


@OBJECTIVES.register("ratbptt")
@dataclass
class RaTBPTT(BPTT):
    """RaT-BPTT: a random unroll length in [window, inner_steps], the gradient through its last ``window`` steps."""

    inner_steps: int = 40
    window: int | None = 10
    random_length: bool = True
