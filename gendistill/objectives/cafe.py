"""CAFE (Wang et al. 2022): layer-wise feature alignment plus a discrimination loss, with a dynamic bi-level schedule.

Alignment: for every class c and every block l of the proxy net (the output of each conv block, ending with the
embedding), the per-class mean features of a real and a synthetic batch (one siamese augmentation draw) should agree::

    L_f = sum_c sum_l w_l || mean_i f_l(A(x_real_ci)) - mean_j f_l(A(x_syn_cj)) ||^2

Discrimination: the synthetic set's class centres in the embedding, p_c = mean_j f(A(x_syn_cj)), classify the real
batch, logits = f(A(x_real)) p^T; ``L_d`` is the summed cross-entropy of these logits on the real labels (as in the
reference, weight ``beta`` = 0.01). The loss is L_f + beta L_d.

Dynamic bi-level schedule. The proxy net does not stay random: between two matching steps it is trained on the
(detached, augmented) synthetic set, and both loops stop when the net's accuracy on real data has settled:
 - inner loop (before a matching step on a net that has matched before): SGD steps of the net on the set, at most
   ``inner_loop``, stopping once the last ``window`` accuracies on a held real batch (``acc_batch`` per class of the
   step's real batch) span less than ``lambda_inner``;
 - outer loop (the matching steps one net serves): the net's accuracy on each step's real batch is recorded; once the
   last ``window`` of them span less than ``lambda_outer`` (or after ``outer_loop`` steps) the next step draws a fresh
   net from ``ctx.generator``.
Every call is one update of the set. The net, its optimiser, the step count and the accuracy window are the
objective's state (tensors and plain values), so a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..augment import get_augment
from ..nets import fresh_net, get_net
from .base import OBJECTIVES, StepContext

WEIGHT_LAYERS = (nn.Conv2d, nn.Linear)


def block_features(net: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Outputs of every block of ``net.features`` (what enters each weight layer after the first, then the last
    output), flattened per sample; the last one is the embedding."""
    features = getattr(net, "features", None)
    if not isinstance(features, nn.Sequential):
        raise ValueError("CAFE needs a net whose features are a plain sequence of layers (convnet, convnet-bn, mlp, "
                         f"alexnet, vgg11); {type(net).__name__} is not; pick another --net")
    out, seen = [], 0
    for layer in features:
        if isinstance(layer, WEIGHT_LAYERS):
            if seen:
                out.append(x.flatten(1))
            seen += 1
        x = layer(x)
    out.append(x.flatten(1))
    return out


def parse_weights(text: str | None) -> tuple[float, ...] | None:
    if text in (None, ""):
        return None
    try:
        return tuple(float(t) for t in str(text).split(","))
    except ValueError:
        raise ValueError("--layer-weights must be numbers separated by commas (one per block, the embedding last), "
                         f"got {text!r}") from None


@OBJECTIVES.register("cafe")
@dataclass
class CAFE:
    net: str = "convnet"
    depth: int = 3
    width: int = 128
    pool: str = "avgpooling"
    augment: str = "auto"  # "auto": DSA on images, the latent variant on latents
    layer_weights: str | None = None  # "w1,w2,...": one per block, the embedding last (None: 1 each)
    beta: float = 0.01  # weight of the discrimination loss (summed cross-entropy)
    outer_loop: int = 10  # at most this many matching steps per net
    inner_loop: int = 10  # at most this many SGD steps of the net on the set between two matching steps
    window: int = 5  # accuracies compared by the dynamic stopping rules
    lambda_outer: float = 0.01  # the net is replaced once its real accuracy moves less than this over the window
    lambda_inner: float = 0.01  # the inner loop stops once the real accuracy moves less than this over the window
    net_lr: float = 0.01  # SGD (momentum 0.9) of the inner loop
    batch_train: int = 256
    acc_batch: int = 16  # real samples per class that judge the inner loop's accuracy

    def __post_init__(self):
        self._weights = parse_weights(self.layer_weights)
        for name, low in (("outer_loop", 1), ("inner_loop", 0), ("window", 2), ("batch_train", 1), ("acc_batch", 1)):
            if int(getattr(self, name)) < low:
                raise ValueError(f"{name} must be >= {low}, got {getattr(self, name)}; set --{name.replace('_', '-')} "
                                 f"to {low} or more")
        if not self.net_lr > 0:
            raise ValueError(f"--net-lr must be > 0, got {self.net_lr}")
        self._augments = {space: get_augment(self.augment if self.augment != "auto"
                                             else ("dsa" if space == "pixel" else "latent"))
                          for space in ("pixel", "latent")}
        self.on_net = 0  # matching steps the current net has served
        self.nets_used = 0
        self.outer_acc: list[float] = []
        self._net: nn.Module | None = None
        self._opt: torch.optim.Optimizer | None = None
        self._pending: dict | None = None

    # -- state ---------------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"on_net": self.on_net, "nets_used": self.nets_used, "outer_acc": list(self.outer_acc),
                "net": None if self._net is None else self._net.state_dict(),
                "opt": None if self._opt is None else self._opt.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.on_net, self.nets_used = int(state["on_net"]), int(state["nets_used"])
        self.outer_acc = [float(a) for a in state["outer_acc"]]
        self._net = self._opt = None
        self._pending = state if state.get("net") is not None else None

    def _build(self, ctx: StepContext, generator: torch.Generator | None, like: torch.Tensor) -> None:
        kw = dict(depth=self.depth, width=self.width, pool=self.pool)
        net = fresh_net(self.net, ctx.in_shape, ctx.num_classes, generator, **kw) if generator is not None else \
            get_net(self.net, ctx.in_shape, ctx.num_classes, **kw)
        self._net = (net.to(like.device, torch.float64) if like.dtype == torch.float64 else net.to(like.device)).train()
        self._opt = torch.optim.SGD(self._net.parameters(), lr=self.net_lr, momentum=0.9)

    @staticmethod
    def settled(history: list[float], window: int, tolerance: float) -> bool:
        last = history[-window:]
        return len(last) == window and max(last) - min(last) < tolerance

    # -- the inner loop ------------------------------------------------------------------------------------------------
    def _train_net(self, syn, labels, x_acc, y_acc, ctx: StepContext) -> int:
        net, augment, x_all = self._net, self._augments[ctx.space], ctx.transform(syn.detach())
        history: list[float] = []
        steps = 0
        for _ in range(self.inner_loop):
            net.requires_grad_(True).train()
            order = torch.randperm(len(x_all), generator=ctx.generator).to(x_all.device)[: self.batch_train]
            x = augment.apply(x_all[order], augment.make_params(len(order), ctx.generator, ctx.device))
            self._opt.zero_grad(set_to_none=True)
            F.cross_entropy(net(x), labels[order]).backward()
            self._opt.step()
            steps += 1
            with torch.no_grad():
                history.append(float((net(x_acc).argmax(1) == y_acc).float().mean()))
            if self.settled(history, self.window, self.lambda_inner):
                break
        return steps

    # -- one matching step ---------------------------------------------------------------------------------------------
    def __call__(self, syn, syn_labels, real, ctx: StepContext) -> torch.Tensor:
        reals = [real(c) for c in range(ctx.num_classes)]
        if self._pending is not None:
            self._build(ctx, None, syn)
            self._net.load_state_dict(self._pending["net"])
            self._opt.load_state_dict(self._pending["opt"])
            self._pending = None
        if self._net is None or self.on_net >= self.outer_loop or self.settled(self.outer_acc, self.window,
                                                                               self.lambda_outer):
            self._build(ctx, ctx.generator, syn)  # a new outer iteration
            self.on_net, self.outer_acc = 0, []
            self.nets_used += 1
        else:
            x_acc = ctx.transform(torch.cat([r[: self.acc_batch] for r in reals])).to(syn.dtype)
            y_acc = torch.cat([torch.full((min(len(r), self.acc_batch),), c, dtype=torch.long, device=x_acc.device)
                               for c, r in enumerate(reals)])
            self._train_net(syn, syn_labels, x_acc, y_acc, ctx)
        net, augment = self._net.requires_grad_(False), self._augments[ctx.space]
        net.train()
        loss = syn.new_zeros(())
        centres, real_embs, real_labels, correct, count = [], [], [], 0, 0
        for c in range(ctx.num_classes):
            x_syn, x_real = syn[syn_labels == c], reals[c]
            if len(x_syn) == 0:
                raise ValueError(f"class {c} has no synthetic samples; CAFE's discrimination loss needs every class "
                                 "(raise --ipc)")
            params = augment.make_params(max(len(x_real), len(x_syn)), ctx.generator, ctx.device)
            with torch.no_grad():
                f_real = block_features(net, augment.apply(ctx.transform(x_real).to(syn.dtype), params))
                correct += int((net.classifier(f_real[-1]).argmax(1) == c).sum())
                count += len(x_real)
            f_syn = block_features(net, augment.apply(ctx.transform(x_syn), params))
            weights = self._weights or (1.0,) * len(f_syn)
            if len(weights) != len(f_syn):
                raise ValueError(f"--layer-weights has {len(weights)} values but the net has {len(f_syn)} blocks; give "
                                 "one per block")
            for w, fr, fs in zip(weights, f_real, f_syn):
                if w:
                    loss = loss + w * ((fr.mean(0) - fs.mean(0)) ** 2).sum()
            centres.append(f_syn[-1].mean(0))
            real_embs.append(f_real[-1])
            real_labels.append(torch.full((len(x_real),), c, dtype=torch.long, device=f_real[-1].device))
        if self.beta:
            logits = torch.cat(real_embs) @ torch.stack(centres).T
            loss = loss + self.beta * F.cross_entropy(logits, torch.cat(real_labels), reduction="sum")
        self.outer_acc = (self.outer_acc + [correct / max(count, 1)])[-self.window:]
        self.on_net += 1
        return loss
