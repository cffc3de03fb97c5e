"""Network registry: shapes for image and latent inputs, the ConvNet's feature sizes and norms, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gendistill.nets import NETS, NetConfig, fresh_net, get_net, list_nets

SHAPES = [(1, 28, 28), (3, 32, 32), (4, 7, 7)]
TINY = dict(width=8)  # the contracts below do not depend on the width; keep the nets small


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name", list_nets())
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_logits_and_embed_shapes(name, shape):
    net = get_net(name, shape, 10, **TINY)
    x = torch.randn(2, *shape, generator=gen(0))
    assert net(x).shape == (2, 10)
    emb = net.embed(x)
    assert emb.shape == (2, net.feature_dim)
    torch.testing.assert_close(net(x), net.classifier(emb))
    assert (emb[0] - emb[1]).abs().max() > 1e-3  # features depend on the input (no norm wipes them out)


def test_registered_names():
    assert list_nets() == ["convnet", "convnet-bn", "mlp"]
    assert get_net("mlp", (1, 28, 28), 10).feature_dim == 128


@pytest.mark.parametrize("shape,dim", [((1, 28, 28), 128 * 4 * 4), ((4, 7, 7), 128 * 1 * 1), ((3, 32, 32), 128 * 4 * 4)])
def test_convnet_feature_dim(shape, dim):
    net = get_net("convnet", shape, 10)
    assert net.feature_dim == dim and net.classifier.in_features == dim
    assert net.embed(torch.zeros(1, *shape)).shape == (1, dim)


def test_latent_pooling_stops_below_two():
    net = get_net("convnet", (4, 7, 7), 10, **TINY)
    assert sum(isinstance(m, nn.AvgPool2d) for m in net.modules()) == 2  # 7 -> 3 -> 1, then no pool
    assert sum(isinstance(m, nn.AvgPool2d) for m in get_net("convnet", (1, 28, 28), 10, **TINY).modules()) == 3


def test_default_is_the_evaluation_convnet():
    assert NetConfig() == NetConfig(width=128, depth=3, norm="instancenorm", act="relu", pool="avgpooling")
    net = get_net("convnet", (1, 28, 28), 10)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    # DC's convention: the first conv pads by 3 on 1x28x28 (28 -> 32), the others by 1
    assert [(c.out_channels, c.kernel_size, c.padding) for c in convs] == [(128, (3, 3), (3, 3))] + [(128, (3, 3), (1, 1))] * 2


@pytest.mark.parametrize("name,norm,groups", [("convnet", "instancenorm", 8), ("convnet", "layernorm", 1)])
def test_group_norms(name, norm, groups):
    net = get_net(name, (1, 28, 28), 10, norm=norm, **TINY)
    norms = [m for m in net.modules() if isinstance(m, nn.GroupNorm)]
    assert len(norms) == 3
    assert all(n.num_groups == groups and n.num_channels == 8 and n.affine for n in norms)


def test_no_instance_norm_on_a_1x1_map():
    """Block 3 of a 4x7x7 net runs at 1x1, where a per-channel norm over one pixel would zero every feature."""
    net = get_net("convnet", (4, 7, 7), 10, **TINY).eval()
    assert sum(isinstance(m, nn.GroupNorm) for m in net.modules()) == 2
    emb = net.embed(torch.randn(3, 4, 7, 7, generator=gen(0)))
    assert emb.abs().max() > 1e-3 and not torch.allclose(emb[0], emb[1])
    assert sum(isinstance(m, nn.GroupNorm) for m in get_net("convnet", (4, 7, 7), 10, norm="layernorm", **TINY).modules()) == 3


def test_batchnorm_and_none():
    assert sum(isinstance(m, nn.BatchNorm2d) for m in get_net("convnet-bn", (1, 28, 28), 10, **TINY).modules()) == 3
    net = get_net("convnet", (1, 28, 28), 10, norm="none", **TINY)
    assert not any(isinstance(m, (nn.GroupNorm, nn.BatchNorm2d)) for m in net.modules())


def test_unknown_names_raise():
    with pytest.raises(ValueError, match="unknown network 'resnet'; choose one of: convnet, convnet-bn, mlp"):
        get_net("resnet", (1, 28, 28), 10)
    with pytest.raises(ValueError, match="unknown network setting.*widht"):
        get_net("convnet", (1, 28, 28), 10, widht=8)
    with pytest.raises(ValueError, match="unknown norm"):
        get_net("convnet", (1, 28, 28), 10, norm="instance")
    with pytest.raises(ValueError, match="channels, height, width"):
        get_net("convnet", (28, 28), 10)


def test_fresh_net_is_reproducible_from_its_generator():
    a = fresh_net("convnet", (4, 7, 7), 10, gen(0), **TINY)
    b = fresh_net("convnet", (4, 7, 7), 10, gen(0), **TINY)
    c = fresh_net("convnet", (4, 7, 7), 10, gen(1), **TINY)
    for (_, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(pa, pb)
    assert not torch.equal(a.classifier.weight, c.classifier.weight)
    assert set(NETS.names()) == set(list_nets())
