"""The decoder's metric on latent channels: what latent-space matching looks through (``--latent-metric decoder``).

A random proxy net weighs every latent channel alike, but a decoder does not: in the shipped 4x7x7 VAE a unit
change of channel 0 moves the decoded image about ten times as much (in squared pixels) as one of channel 1. So
latent-space matching spends its effort on differences the images do not show. ``decoder_metric`` estimates the
channel metric the decoder induces,

    G[i, j] = E_z < J(z) (r e_i), J(z) (r e_j) > / E ||r||^2,

J(z) the decoder's Jacobian at a real latent z and r a random spatial pattern shared by the channels (central
differences), and returns M = G^(1/2), scaled so that M z has the total variance z has. Fed M z instead of z, the
proxy sees latents under (to first order, channel by channel) the squared distances their images have; the matching's
step sizes stay where they were. The estimate is deterministic: a fixed sample of the real latents and a fixed seed.
"""

from __future__ import annotations

import torch

from .backbones import Backbone

METRICS = ("identity", "decoder")


@torch.no_grad()
def decoder_metric(backbone: Backbone, latents: torch.Tensor, samples: int = 64, eps: float = 0.02,
                   seed: int = 0, chunk: int = 16) -> torch.Tensor:
    """M = G^(1/2) (C x C, C = ``latents.shape[1]``) of the decoder's channel metric at ``samples`` of ``latents``
    (real latents, N x C x ...), normalised so that trace(M S M^T) = trace(S), S the channels' covariance."""
    if latents.dim() < 2 or len(latents) < 2:
        raise ValueError(f"the decoder metric needs at least 2 latents of shape (N, C, ...), got "
                         f"{tuple(latents.shape)}")
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(latents), generator=gen)[:samples]
    z = latents[idx].float().cpu()
    channels = z.shape[1]
    r = torch.randn((len(z), 1, *z.shape[2:]), generator=gen) * (eps * float(z.std()))
    device = next(backbone.parameters(), z).device
    z, r = z.to(device), r.to(device)

    def decode(x: torch.Tensor) -> torch.Tensor:  # in chunks: a large backbone's activations stay bounded
        return torch.cat([backbone.decode(x[i : i + chunk]).float() for i in range(0, len(x), chunk)])

    cols = []
    for c in range(channels):
        step = torch.zeros_like(z)
        step[:, c : c + 1] = r
        cols.append(((decode(z + step) - decode(z - step)) / 2).flatten(1))
    y = torch.stack(cols, 1).double()  # (n, C, pixels): the image change of the same pattern in each channel
    g = torch.einsum("ncp,ndp->cd", y, y) / r.double().pow(2).sum()
    values, vectors = torch.linalg.eigh(g)
    m = vectors @ torch.diag(values.clamp_min(values.max() * 1e-6).sqrt()) @ vectors.T
    flat = z.double().transpose(0, 1).flatten(1)  # (C, n * positions)
    cov = torch.cov(flat)
    scale = (torch.trace(cov) / torch.trace(m @ cov @ m.T)).sqrt()
    return (m * scale).float().cpu()


def channel_mix(m: torch.Tensor):
    """``x -> M x`` over dimension 1 of a batch of latents."""

    def apply(x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("cd,nd...->nc...", m.to(device=x.device, dtype=x.dtype), x)

    return apply
