"""Cross-architecture evaluation beyond the zoo: the transformers ViT (``vit``) and the ``tv:NAME`` / ``timm:NAME``
escape hatches; weights from the generator only, the global RNG untouched, usable by ``gendistill eval --arch``."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from torch import nn

from gendistill.cli import main
from gendistill.data import get_dataset
from gendistill.evaluate import EvalConfig, evaluate
from gendistill.nets import fresh_net, get_builder
from gendistill.nets.vit import patch_size


def gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("shape,patch", [((1, 28, 28), 4), ((3, 32, 32), 4), ((2, 14, 14), 2), ((4, 7, 7), 1)])
def test_vit_patch_size_and_shapes(shape, patch):
    assert patch_size(*shape[1:]) == patch
    net = fresh_net("vit", shape, 10, gen(0), width=32, depth=1)
    assert net.config.patch_size == patch and net.config.num_channels == shape[0] and net.config.image_size == shape[1]
    assert net(torch.zeros(2, *shape)).shape == (2, 10) and net.embed(torch.zeros(2, *shape)).shape == (2, 32)


def test_vit_defaults_and_refusals():
    net = fresh_net("vit", (1, 28, 28), 10, gen(0))
    from transformers import ViTForImageClassification

    assert isinstance(net.model, ViTForImageClassification)
    c = net.config
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.intermediate_size) == (128, 3, 4, 256)
    with pytest.raises(ValueError, match="leave norm"):
        fresh_net("vit", (1, 28, 28), 10, gen(0), norm="batchnorm")
    with pytest.raises(ValueError, match="square"):
        fresh_net("vit", (1, 28, 14), 10, gen(0))


@pytest.mark.parametrize("name", ["vit", "tv:resnet18"])
def test_weights_from_the_generator_and_global_rng_untouched(name):
    state = torch.get_rng_state()
    a, b, c = (fresh_net(name, (1, 28, 28), 10, gen(s)) for s in (0, 0, 1))
    assert torch.equal(torch.get_rng_state(), state)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa if sa[k].is_floating_point())


@pytest.mark.slow  # end to end (a recipe run, a training or several model loads): a second or more
def test_torchvision_adapted_to_channels_and_classes():
    net = fresh_net("tv:resnet18", (1, 28, 28), 7, gen(0))
    first = next(m for m in net.modules() if isinstance(m, nn.Conv2d))
    assert first.in_channels == 1 and net(torch.zeros(3, 1, 28, 28)).shape == (3, 7)
    assert fresh_net("tv:resnet18", (3, 32, 32), 10, gen(0))(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="torchvision has no model 'resnet'"):
        fresh_net("tv:resnet", (1, 28, 28), 10, gen(0))
    with pytest.raises(ValueError, match="does not run on inputs of shape"):
        fresh_net("tv:vit_b_16", (1, 28, 28), 10, gen(0))
    with pytest.raises(ValueError, match="do not apply"):
        fresh_net("tv:resnet18", (1, 28, 28), 10, gen(0), width=8)
    with pytest.raises(ValueError, match="unknown network library prefix 'tf'"):
        get_builder("tf:resnet18")


@pytest.mark.skipif(importlib.util.find_spec("timm") is not None, reason="timm is installed here")
def test_timm_is_optional():
    with pytest.raises(ValueError, match="timm is not installed"):
        fresh_net("timm:resnet18", (1, 28, 28), 10, gen(0))


@pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="timm is not installed (optional)")
def test_timm_model():
    assert fresh_net("timm:resnet18", (1, 28, 28), 10, gen(0))(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.slow  # end to end (a recipe run, a training or several model loads): a second or more
def test_evaluate_across_vit_and_torchvision(tiny_idx_dir):
    train, test = (get_dataset("fashion-mnist", s, str(tiny_idx_dir)) for s in ("train", "test"))
    idx = torch.cat([train.class_indices(c)[:2] for c in range(10)])
    r = evaluate(train.float_images(idx), train.labels[idx], test, EvalConfig(epochs=1, runs=1),
                 archs=["vit", "tv:resnet18"], progress=False)
    assert set(r["archs"]) == {"vit", "tv:resnet18"} and all(0 <= a["mean"] <= 1 for a in r["archs"].values())


@pytest.mark.slow  # end to end (a recipe run, a training or several model loads): a second or more
def test_eval_command_arch_flag(capsys, tmp_path):
    path = tmp_path / "rr.safetensors"
    with pytest.raises(SystemExit):
        main(["init", "--backbone", "pixel", "--ipc", "1", "--out", str(path)])
    with pytest.raises(SystemExit) as e:
        main(["eval", str(path), "--arch", "mlp,vit,tv:resnet18", "--epochs", "1", "--runs", "1"])
    assert e.value.code == 0
    result = json.loads((tmp_path / "rr.eval.json").read_text())
    assert set(result["archs"]) == {"mlp", "vit", "tv:resnet18"}
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["eval", str(path), "--arch", "mlp,tv:nonesuch", "--epochs", "1", "--runs", "1"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "torchvision has no model" in err
