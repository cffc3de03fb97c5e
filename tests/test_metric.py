"""The decoder's channel metric (``--latent-metric decoder``): its estimate, and what the loop feeds the objective."""

from __future__ import annotations

import pytest
import torch
from test_storage import FMNIST, _loop, _real, get_dm

from gendistill.metric import channel_mix, decoder_metric
from gendistill.synthetic import SyntheticSet


class MixingDecoder(torch.nn.Module):
    """decode(z) = A z at every position: a linear decoder whose channel metric is exactly A^T A."""

    def __init__(self, a: torch.Tensor):
        super().__init__()
        self.a = torch.nn.Parameter(a, requires_grad=False)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return torch.einsum("pc,nc...->np...", self.a, z)


def _latents(n=40, channels=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((n, channels, 5, 5), generator=g) * torch.tensor([2.0, 0.5, 1.0]).view(1, 3, 1, 1)


def test_metric_is_the_square_root_of_a_linear_decoders_gram_matrix_scaled_to_keep_the_variance():
    a = torch.tensor([[1.0, 0.2, 0.0], [0.0, 0.3, 0.5], [0.4, 0.0, 2.0], [0.1, 0.1, 0.1]])
    z = _latents()
    m = decoder_metric(MixingDecoder(a), z, samples=40)
    gram = (a.T @ a).double()
    m2 = (m.double() @ m.double())
    # M^2 is proportional to A^T A (central differences are exact for a linear decoder)
    assert torch.allclose(m2 / m2.trace(), gram / gram.trace(), atol=1e-5)
    assert torch.allclose(m, m.T, atol=1e-6)  # symmetric square root
    flat = z.transpose(0, 1).flatten(1).double()  # the sample the scale was fitted on: every latent here
    cov = torch.cov(flat)
    assert float(torch.trace(m.double() @ cov @ m.double().T)) == pytest.approx(float(torch.trace(cov)), rel=1e-5)


def test_a_channel_the_decoder_ignores_gets_weight_zero_and_the_estimate_is_deterministic():
    a = torch.diag(torch.tensor([3.0, 0.0, 1.0]))
    z = _latents()
    m = decoder_metric(MixingDecoder(a), z, samples=16)
    assert torch.equal(m, decoder_metric(MixingDecoder(a), z, samples=16))
    assert abs(float(m[1, 1])) < 0.01 * float(m[0, 0]) and float(m[0, 0]) == pytest.approx(3 * float(m[2, 2]), rel=1e-4)
    x = torch.randn(2, 3, 4, 4)
    assert torch.allclose(channel_mix(m)(x), torch.einsum("cd,ndhw->nchw", m, x))


def test_decoder_metric_refuses_too_few_latents():
    with pytest.raises(ValueError, match="at least 2 latents"):
        decoder_metric(MixingDecoder(torch.eye(3)), torch.zeros(1, 3, 2, 2))


def test_the_loop_feeds_latent_matching_the_mixed_latents(tiny_vae_dir):
    from gendistill.backbones import load_backbone

    backbone = load_backbone(str(tiny_vae_dir), image_shape=(1, 28, 28))
    latents = _real(shape=tuple(backbone.latent_shape))
    m = decoder_metric(backbone, latents.latents)
    dm, seen = get_dm(), []

    def spy(x, labels, real, ctx):
        seen.append((x.detach().clone(), ctx.transform(x.detach()), ctx.transform(real(0))))
        return dm(x, labels, real, ctx)

    syn = SyntheticSet(latents.latents[::3].clone(), latents.labels[::3].clone(), dataset=FMNIST)
    state = _loop(backbone, latents, syn, objective=spy, steps=2, batch_real=2, lr=0.1, latent_metric="decoder")
    assert state.step == 2
    x, fed, real_fed = seen[0]
    assert torch.allclose(fed, channel_mix(m)(x), atol=1e-6)  # the objective sees M z on both sides
    assert real_fed.shape[1:] == x.shape[1:] and not torch.allclose(fed, x)
    # the metric is computed once per (backbone, split): a second run on the same split reuses it
    assert len(latents._decoder_metrics) == 1
    syn_b = SyntheticSet(latents.latents[::3].clone(), latents.labels[::3].clone(), dataset=FMNIST)
    _loop(backbone, latents, syn_b, steps=1, batch_real=2, lr=0.1, latent_metric="decoder")
    assert len(latents._decoder_metrics) == 1
    # identity (the default) leaves the latents as they are, and gives a different set
    syn_c = SyntheticSet(latents.latents[::3].clone(), latents.labels[::3].clone(), dataset=FMNIST)
    syn_d = SyntheticSet(latents.latents[::3].clone(), latents.labels[::3].clone(), dataset=FMNIST)
    _loop(backbone, latents, syn_c, steps=2, batch_real=2, lr=0.1)
    _loop(backbone, latents, syn_d, steps=2, batch_real=2, lr=0.1, latent_metric="decoder")
    assert not torch.allclose(syn_c.latents, syn_d.latents)


def test_latent_metric_needs_a_latent_match_space(tiny_vae_dir):
    from gendistill.backbones import load_backbone

    backbone = load_backbone(str(tiny_vae_dir), image_shape=(1, 28, 28))
    latents = _real(shape=tuple(backbone.latent_shape))
    syn = SyntheticSet(latents.latents[::3].clone(), latents.labels[::3].clone(), dataset=FMNIST)
    with pytest.raises(ValueError, match="--latent-metric decoder shapes what latent-space matching sees"):
        _loop(backbone, _real(space="pixel"), syn, steps=1, match_space="pixel", latent_metric="decoder")
    with pytest.raises(ValueError, match="--latent-metric must be one of identity, decoder"):
        _loop(backbone, latents, syn, steps=1, latent_metric="euclid")


def test_latent_metric_with_latent_steps_applies_only_to_the_latent_phase(tiny_vae_dir):
    from gendistill.backbones import load_backbone

    backbone = load_backbone(str(tiny_vae_dir), image_shape=(1, 28, 28))
    latents = _real(shape=tuple(backbone.latent_shape))
    syn = SyntheticSet(latents.latents[::3].clone(), latents.labels[::3].clone(), dataset=FMNIST)
    dm, seen = get_dm(), []

    def spy(x, labels, real, ctx):
        seen.append((ctx.space, ctx.transform(x.detach()).shape))
        return dm(x, labels, real, ctx)

    _loop(backbone, _real(space="pixel"), syn, real_latents=latents, objective=spy, steps=2, latent_steps=1,
          match_space="pixel", batch_real=2, lr=0.1, latent_metric="decoder")
    assert [s for s, _ in seen] == ["latent", "pixel"]
