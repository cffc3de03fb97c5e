"""Gradient matching (DC / DSA): distance parity, the objective, its schedule and state, the latent_dc recipe."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT, fast_first, launch, load_recipe
from safetensors import safe_open

from gendistill.augment import DSAConfig, get_augment
from gendistill.nets import fresh_net
from gendistill.objectives import StepContext, get_objective
from gendistill.objectives.gradient import batchwise_params, gradient_distance, layerwise_distance, reference_loops

RECIPE = ROOT / "recipes" / "latent_dc.py"
SHAPE = (2, 8, 8)


def run_recipe(tmp_path, *args, name="run"):
    out = tmp_path / name
    argv = ["--output", str(out), "--ipc", "2", "--batch-real", "4", "--eval-runs", "0", "--depth", "2", "--width", "8",
            "--outer-loop", "2", "--inner-loop", "1", *map(str, args)]
    assert load_recipe(RECIPE).main(argv) == 0
    return out


def toy_problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    syn = torch.randn(4, *SHAPE, generator=g).requires_grad_(True)
    labels = torch.tensor([0, 0, 1, 1])
    real = {0: torch.randn(5, *SHAPE, generator=g), 1: torch.randn(6, *SHAPE, generator=g)}
    return syn, labels, real


def ctx_for(seed=3, **kw):
    return StepContext(0, torch.Generator().manual_seed(seed), SHAPE, 2, torch.device("cpu"), **kw)


# ------------------------------------------------------------------------------------------------ distances


def test_layerwise_distance_matches_hand_computed():
    # a conv gradient (2 output nodes, 1x1x2 each), a linear one (1 output node) and a bias
    conv_r = torch.tensor([[1.0, 0.0], [1.0, 1.0]]).view(2, 1, 1, 2)
    conv_s = torch.tensor([[0.0, 1.0], [2.0, 2.0]]).view(2, 1, 1, 2)
    lin_r, lin_s = torch.tensor([[3.0, 4.0]]), torch.tensor([[4.0, 3.0]])
    bias_r, bias_s = torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.0])
    # per output node 1 - cos: node 1 orthogonal (1), node 2 parallel (0); linear: 1 - 24/25; biases count 0
    conv = (1 - 0 / (1 * 1 + 1e-6)) + (1 - 4 / (math.sqrt(2) * math.sqrt(8) + 1e-6))
    lin = 1 - 24 / (5 * 5 + 1e-6)
    assert layerwise_distance(conv_r, conv_s).item() == pytest.approx(conv, abs=1e-6)
    assert layerwise_distance(lin_r, lin_s).item() == pytest.approx(lin, abs=1e-6)
    assert layerwise_distance(bias_r, bias_s).item() == 0.0
    real, syn = [conv_r, lin_r, bias_r], [conv_s, lin_s, bias_s]
    assert gradient_distance(real, syn).item() == pytest.approx(conv + lin, abs=1e-6)
    assert gradient_distance(real, syn, "ours").item() == pytest.approx(conv + lin, abs=1e-6)  # the reference's name
    # whole-vector variants: every tensor, biases included, flattened and concatenated
    assert gradient_distance(real, syn, "mse").item() == pytest.approx(4 + 2 + 5)
    r, s = [1, 0, 1, 1, 3, 4, 1, 2], [0, 1, 2, 2, 4, 3, 0, 0]
    dot, nr, ns = sum(a * b for a, b in zip(r, s)), math.sqrt(sum(a * a for a in r)), math.sqrt(sum(b * b for b in s))
    assert gradient_distance(real, syn, "cos").item() == pytest.approx(1 - dot / (nr * ns + 1e-6), abs=1e-6)


def test_unknown_distance_and_bad_loops_are_one_line_errors():
    with pytest.raises(ValueError, match="--dis-metric must be one of layerwise, mse, cos, ours, got 'l1'"):
        get_objective("dc", dis_metric="l1")
    with pytest.raises(ValueError, match="--outer-loop must be at least 1, got 0"):
        get_objective("dsa", outer_loop=0)
    with pytest.raises(ValueError, match="--net-lr must be greater than 0, got 0.0"):
        get_objective("dc", net_lr=0.0)


def test_reference_loops():
    assert reference_loops(1) == (1, 1) and reference_loops(10) == (10, 50) and reference_loops(50) == (50, 10)
    assert reference_loops(12) == (10, 50) and reference_loops(100) == (50, 10)


def test_batchwise_params_share_one_transform_across_samples_and_batches():
    aug = get_augment("dsa", DSAConfig(mode="all"))
    params = batchwise_params(aug, 5, torch.Generator().manual_seed(0), "cpu")
    x = torch.rand(1, 1, 12, 12).expand(5, 1, 12, 12).contiguous()
    out = aug.apply(x, params)
    assert torch.allclose(out, out[:1].expand_as(out))  # every sample got the same transform
    assert torch.equal(aug.apply(x[:2], params), out[:2])  # and a smaller batch gets it too
    assert not torch.allclose(out, x)


# ------------------------------------------------------------------------------------------------ the objective


def test_dc_objective_is_sum_over_classes_of_layerwise_gradient_distance():
    """The first call matches on a net drawn from ctx.generator; the loss equals the formula on that net."""
    syn, labels, real = toy_problem()
    obj = get_objective("dc", depth=2, width=8)
    assert obj._augments["latent"].tokens == [] and obj._augments["pixel"].tokens == []  # DC: no augmentation
    loss = obj(syn, labels, real.__getitem__, ctx_for())
    net = fresh_net("convnet", SHAPE, 2, torch.Generator().manual_seed(3), depth=2, width=8)
    params = list(net.parameters())
    expected = 0.0
    for c in (0, 1):
        gr = torch.autograd.grad(F.cross_entropy(net(real[c]), torch.full((len(real[c]),), c)), params)
        gs = torch.autograd.grad(F.cross_entropy(net(syn[labels == c]), labels[labels == c]), params)
        expected += sum(layerwise_distance(a, b) for a, b in zip(gr, gs))
    assert torch.allclose(loss, expected, rtol=1e-5)
    loss.backward()
    assert syn.grad is not None and syn.grad.abs().sum() > 0


@pytest.mark.parametrize("method,space", [("dc", "latent"), ("dsa", "latent"), ("dsa", "pixel")])
def test_loss_decreases_on_a_fixed_net(method, space):
    """With the net held fixed (inner_loop 0, one outer iteration) descending on syn lowers the loss."""
    syn, labels, real = toy_problem()
    obj = get_objective(method, depth=2, width=8, outer_loop=1000, inner_loop=0, augment="none" if method == "dc"
                        else "auto")
    opt = torch.optim.Adam([syn], lr=0.05)
    losses = []
    for _ in range(15):
        ctx = ctx_for(space=space)  # the same augmentation draws every step: a fixed objective
        opt.zero_grad()
        loss = obj(syn, labels, real.__getitem__, ctx)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[1], losses  # from call 1 on the augmentation draws repeat too


def test_pixel_space_dsa_uses_image_ops_and_transform():
    obj = get_objective("dsa", depth=2, width=8)
    assert "cutout" in obj._augments["pixel"].tokens and "cutout" not in obj._augments["latent"].tokens
    syn, labels, real = toy_problem()
    seen = []
    ctx = ctx_for(space="pixel", transform=lambda x: seen.append(len(x)) or (x - 0.5) / 0.25)
    obj(syn, labels, real.__getitem__, ctx).backward()
    assert sorted(seen) == [2, 2, 5, 6] and syn.grad.abs().sum() > 0  # both sides of both classes normalised


def test_net_is_redrawn_every_outer_loop_and_trained_in_between():
    syn, labels, real = toy_problem()
    obj = get_objective("dsa", depth=2, width=8, outer_loop=3, inner_loop=2)
    ctx = ctx_for()
    nets, weights = [], []
    for _ in range(4):
        obj(syn, labels, real.__getitem__, ctx).backward()
        nets.append(obj._net)
        weights.append(copy.deepcopy(obj._net.state_dict()))
    assert nets[0] is nets[1] is nets[2] and nets[3] is not nets[2]
    key = "classifier.weight"
    assert not torch.equal(weights[0][key], weights[1][key])  # trained on the set between matching steps
    assert obj.calls == 4


def test_state_dict_round_trip_gives_the_same_next_loss(tmp_path):
    from gendistill.state import load_state, save_state

    syn, labels, real = toy_problem()
    a = get_objective("dsa", depth=2, width=8, outer_loop=4, inner_loop=2, net_lr=0.1)
    ctx = ctx_for()
    for _ in range(2):
        a(syn, labels, real.__getitem__, ctx).backward()
    # as a checkpoint does: safetensors + JSON, loaded to the CPU
    save_state(a.state_dict(), tmp_path / "objective.safetensors")
    gen_state = ctx.generator.get_state()
    expected = a(syn, labels, real.__getitem__, ctx)

    b = get_objective("dsa", depth=2, width=8, outer_loop=4, inner_loop=2, net_lr=0.1)
    b.load_state_dict(load_state(tmp_path / "objective.safetensors"))
    ctx.generator.set_state(gen_state)
    assert b.calls == 2
    assert torch.equal(b(syn, labels, real.__getitem__, ctx), expected)
    fresh = get_objective("dsa", depth=2, width=8, outer_loop=4, inner_loop=2, net_lr=0.1)
    ctx.generator.set_state(gen_state)
    assert not torch.equal(fresh(syn, labels, real.__getitem__, ctx), expected)  # the state is what makes it equal


# ------------------------------------------------------------------------------------------------ the recipe


@pytest.mark.parametrize("method,space", fast_first([("dc", "latent"), ("dsa", "latent"), ("dsa", "pixel")]))
def test_recipe_writes_set_with_method(tmp_path, tiny_vae_dir, method, space):
    out = run_recipe(tmp_path, "--backbone", tiny_vae_dir, "--method", method, "--match-space", space, "--steps", 3)
    for name in ("set.safetensors", "grid.png", "loss.png"):
        assert (out / name).stat().st_size > 0
    with safe_open(str(out / "set.safetensors"), "pt") as f:
        run = json.loads(f.metadata()["gendistill.run"])
        assert f.get_tensor("latents").shape == (20, 2, 14, 14)
    assert run["method"] == method and run["steps_done"] == 3 and run["config"]["match_space"] == space
    assert run["config"]["outer_loop"] == 2 and run["config"]["dis_metric"] == "layerwise"


def test_recipe_pixel_backbone_is_classic_dc(tmp_path):
    from gendistill.synthetic import SyntheticSet

    out = run_recipe(tmp_path, "--backbone", "pixel", "--method", "dsa", "--steps", 3, "--init", "noise")
    init = run_recipe(tmp_path, "--backbone", "pixel", "--method", "dsa", "--steps", 0, "--init", "noise", name="init")
    with safe_open(str(out / "set.safetensors"), "pt") as f:
        assert f.get_tensor("latents").shape == (20, 1, 28, 28)
        assert json.loads(f.metadata()["gendistill.backbone"])["kind"] == "pixel"
    assert not torch.allclose(SyntheticSet.load(out / "set.safetensors").latents,
                              SyntheticSet.load(init / "set.safetensors").latents)


def test_recipe_loops_default_to_the_reference_for_the_ipc(tmp_path, tiny_vae_dir):
    out = tmp_path / "ref"
    argv = ["--output", str(out), "--ipc", "1", "--batch-real", "4", "--eval-runs", "0", "--depth", "2", "--width", "8",
            "--backbone", str(tiny_vae_dir), "--steps", "1"]
    assert load_recipe(RECIPE).main(argv) == 0
    with safe_open(str(out / "set.safetensors"), "pt") as f:
        config = json.loads(f.metadata()["gendistill.run"])["config"]
    assert (config["outer_loop"], config["inner_loop"]) == (1, 1)


def test_recipe_unknown_method_is_a_user_error(tmp_path):
    with pytest.raises(ValueError, match="--method: must be one of dc, dsa, got 'mtt'"):
        run_recipe(tmp_path, "--method", "mtt")


@pytest.mark.slow  # end to end, over a second of CPU
def test_resume_equals_uninterrupted(tmp_path, tiny_vae_dir):
    """Interrupted mid outer iteration (the proxy net trained, not fresh): the objective's state makes resume exact."""
    from gendistill.synthetic import SyntheticSet

    args = ["--backbone", tiny_vae_dir, "--method", "dsa", "--outer-loop", 4, "--checkpoint-every", 2]
    full = run_recipe(tmp_path, *args, "--steps", 6, name="full")
    part = run_recipe(tmp_path, *args, "--steps", 3, name="part")
    assert (part / "checkpoints" / "step_0000003").is_dir()
    run_recipe(tmp_path, *args, "--steps", 6, "--resume", name="part")
    a, b = SyntheticSet.load(full / "set.safetensors"), SyntheticSet.load(part / "set.safetensors")
    assert torch.equal(a.latents, b.latents)


@pytest.mark.slow  # spawns a process
def test_accelerate_launch_cpu(tmp_path, tiny_vae_dir):
    out = tmp_path / "launched"
    proc = launch(["--mixed_precision", "no", RECIPE, "--backbone", tiny_vae_dir, "--method", "dsa", "--match-space",
                   "pixel", "--steps", 3, "--ipc", 2, "--batch-real", 4, "--depth", 2, "--width", 8, "--outer-loop", 2,
                   "--inner-loop", 1, "--eval-runs", 1, "--eval-epochs", 2, "--output", out])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1].startswith("dsa fashion-mnist ipc 2 (pixel space): test accuracy")
    assert json.loads((out / "eval.json").read_text())["settings"]["epochs"] == 2
