"""Network registry: shapes for image and latent inputs, the ConvNet's and the zoo's feature sizes and norms, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gendistill.nets import NETS, NetConfig, fresh_net, get_net, init_weights, list_nets

ZOO = ["alexnet", "vgg11", "resnet18", "resnet18bn"]
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
    assert list_nets() == ["alexnet", "convnet", "convnet-bn", "mlp", "resnet18", "resnet18bn", "vgg11", "vit"]
    assert get_net("mlp", (1, 28, 28), 10).feature_dim == 128


@pytest.mark.parametrize("shape,dim", [((1, 28, 28), 128 * 4 * 4), ((4, 7, 7), 128 * 1 * 1),
                                       ((3, 32, 32), 128 * 4 * 4)])
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
    assert [(c.out_channels, c.kernel_size, c.padding) for c in convs] == [(128, (3, 3),
                                                                            (3, 3))] + [(128, (3, 3), (1, 1))] * 2


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
    assert sum(isinstance(m, nn.GroupNorm) for m in get_net("convnet", (4, 7, 7), 10, norm="layernorm",
                                                            **TINY).modules()) == 3


def test_batchnorm_and_none():
    assert sum(isinstance(m, nn.BatchNorm2d) for m in get_net("convnet-bn", (1, 28, 28), 10, **TINY).modules()) == 3
    net = get_net("convnet", (1, 28, 28), 10, norm="none", **TINY)
    assert not any(isinstance(m, (nn.GroupNorm, nn.BatchNorm2d)) for m in net.modules())


def test_unknown_names_raise():
    with pytest.raises(ValueError, match="unknown network 'resnet'; choose one of: alexnet, convnet, convnet-bn, "
                                         "mlp, resnet18, "
                       "resnet18bn, vgg11, vit"):
        get_net("resnet", (1, 28, 28), 10)
    with pytest.raises(ValueError, match="unknown network setting.*widht"):
        get_net("convnet", (1, 28, 28), 10, widht=8)
    with pytest.raises(ValueError, match="unknown norm"):
        get_net("convnet", (1, 28, 28), 10, norm="instance")
    with pytest.raises(ValueError, match="channels, height, width"):
        get_net("convnet", (28, 28), 10)


@pytest.mark.parametrize("name", list_nets())
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_fresh_net_is_reproducible_from_its_generator(name, shape):
    with torch.random.fork_rng():  # the global RNG plays no part: another global state gives the same weights
        torch.manual_seed(1)
        a = fresh_net(name, shape, 10, gen(0), **TINY)
        torch.manual_seed(2)
        b = fresh_net(name, shape, 10, gen(0), **TINY)
    c = fresh_net(name, shape, 10, gen(1), **TINY)
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(a.classifier.weight, c.classifier.weight)
    assert set(NETS.names()) == set(list_nets())


@pytest.mark.parametrize("name", list_nets())
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_gradient_reaches_every_input(name, shape):
    net = fresh_net(name, shape, 10, gen(0), **TINY)
    x = torch.randn(3, *shape, generator=gen(1), requires_grad=True)
    nn.functional.cross_entropy(net(x), torch.tensor([0, 1, 2])).backward()
    assert torch.isfinite(x.grad).all()
    assert (x.grad.flatten(1).abs().amax(1) > 0).all()


def test_init_weights_refuses_what_it_cannot_seed():
    with pytest.raises(ValueError, match="does not know how to initialise LayerNorm"):
        init_weights(nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)), gen(0))


# -- the zoo: alexnet, vgg11, resnet18 (DC reference maths, shapes computed) -----------------------------------------

@pytest.mark.parametrize("name,dims,params", [
    ("alexnet", (3072, 3072, 192), 1_865_802),  # 192*4*4 on 28/32 px, as the DC reference's Linear(192*4*4)
    ("vgg11", (512, 512, 512), 9_229_962),
    ("resnet18", (512, 512, 512), 11_172_810),
    ("resnet18bn", (512, 512, 512), 11_172_810),
])
def test_zoo_reference_sizes(name, dims, params):
    for shape, dim in zip(SHAPES, dims):
        net = get_net(name, shape, 10).eval()
        assert net.feature_dim == dim and net.classifier.in_features == dim
        assert net.embed(torch.zeros(1, *shape)).shape == (1, dim)
    assert sum(p.numel() for p in get_net(name, (1, 28, 28), 10).parameters()) == params


def test_zoo_first_conv_grows_28_to_32():
    for name, pads in [("alexnet", (4, 2)), ("vgg11", (3, 1)), ("resnet18", (1, 1))]:
        for shape, pad in zip([(1, 28, 28), (3, 32, 32)], pads):
            first = next(m for m in get_net(name, shape, 10, **TINY).modules() if isinstance(m, nn.Conv2d))
            assert first.padding == (pad, pad), (name, shape)


def test_zoo_latent_skips_pools_and_instance_norm_at_1x1():
    def count(net, kind):
        return sum(isinstance(m, kind) for m in net.modules())

    for name, pools in [("alexnet", 3), ("vgg11", 5)]:
        assert count(get_net(name, (3, 32, 32), 10, **TINY), nn.MaxPool2d) == pools
        assert count(get_net(name, (4, 7, 7), 10, **TINY), nn.MaxPool2d) == 2  # 7 -> 3 -> 1, then no pool
    vgg = get_net("vgg11", (4, 7, 7), 10, **TINY)
    groups = [m.num_groups == m.num_channels for m in vgg.modules() if isinstance(m, nn.GroupNorm)]
    assert groups == [True, True] + [False] * 6  # instance norm at 7x7 and 3x3, then layer norm on the 1x1 map
    assert [m.kernel_size for m in vgg.modules() if isinstance(m, nn.Conv2d)] == [(3, 3)] * 2 + [(1, 1)] * 6
    assert all(m.num_groups == m.num_channels for m in get_net("vgg11", (3, 32, 32), 10, **TINY).modules()
               if isinstance(m, nn.GroupNorm))
    res = get_net("resnet18", (4, 7, 7), 10, **TINY)
    assert [m.stride for m in res.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)] == [(2, 2)] * 3


def test_zoo_norms_and_settings():
    assert not any(isinstance(m, (nn.GroupNorm, nn.BatchNorm2d)) for m in get_net("alexnet", (1, 28, 28), 10).modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in get_net("alexnet", (1, 28, 28), 10,
                                                              norm="batchnorm").modules()) == 5
    bn = get_net("resnet18bn", (3, 32, 32), 10, **TINY)
    assert not any(isinstance(m, nn.GroupNorm) for m in bn.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in bn.modules()) == 1 + 8 * 2 + 3  # stem, blocks, 3 projections
    # width scales every layer by width/128: the objectives' defaults (depth 3, width 128, avgpooling) give the
    # reference
    assert [m.out_channels for m in get_net("resnet18", (1, 28, 28), 10, width=8).modules()
            if isinstance(m, nn.Conv2d)][::5] == [4, 8, 16, 32]
    assert get_net("vgg11", (1, 28, 28), 10, depth=3, width=128, pool="avgpooling").feature_dim == 512
    with pytest.raises(ValueError, match="resnet18 has the reference's fixed depth.*depth=4"):
        get_net("resnet18", (1, 28, 28), 10, depth=4)
    with pytest.raises(ValueError, match="alexnet has the reference's fixed depth.*pool='none'"):
        get_net("alexnet", (4, 7, 7), 10, pool="none")


@pytest.mark.slow  # end to end, over a second of CPU
def test_evaluate_across_architectures():
    from gendistill.data import get_dataset
    from gendistill.evaluate import EvalConfig, evaluate

    train, test = get_dataset("fashion-mnist", "train"), get_dataset("fashion-mnist", "test")
    idx = torch.cat([train.sample_class(c, 1, gen(0)) for c in range(10)])
    archs = ["alexnet", "vgg11", "resnet18"]
    r = evaluate(train.float_images(idx), train.labels[idx], test, EvalConfig(epochs=1, runs=1), archs=archs,
                 progress=False)
    assert list(r["archs"]) == archs
    assert all(len(a["accs"]) == 1 and 0 <= a["mean"] <= 1 for a in r["archs"].values())
    with pytest.raises(ValueError, match="unknown network 'resnet19'"):
        evaluate(train.float_images(idx), train.labels[idx], test, EvalConfig(epochs=1, runs=1),
                 archs=["convnet", "resnet19"])
