"""The survey's other families: BPTT / RaT-BPTT, KRR (KIP, FRePo), CAFE and decoupled SRe2L.

Gradients against finite differences on tiny float64 problems, the closed-form solve against a direct one, the
truncated unroll against the full one, the BatchNorm statistics hook against a hand computation, resume, one-line
errors, and a 3-step run of every recipe under ``accelerate launch --cpu`` (marked slow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import fast_first, launch, load_recipe
from torch import nn

from gendistill.objectives import StepContext, get_objective, list_objectives
from gendistill.objectives.bptt import unroll_step_bytes
from gendistill.objectives.cafe import block_features
from gendistill.objectives.krr import centred_one_hot, krr_loss, krr_predict
from gendistill.objectives.sre2l import BNStatistics
from gendistill.synthetic import SyntheticSet

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
TINY = ["--depth", "2", "--width", "8"]
SHAPE = (1, 8, 8)


def _problem(n_per_class=2, classes=3, real_per_class=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    syn = torch.randn(n_per_class * classes, *SHAPE, generator=g, dtype=torch.float64)
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    real = torch.randn(classes, real_per_class, *SHAPE, generator=g, dtype=torch.float64)
    return syn, labels, real


def _ctx(classes=3, seed=1, **kw):
    return StepContext(0, torch.Generator().manual_seed(seed), SHAPE, classes, torch.device("cpu"), space="latent",
                       **kw)


@pytest.fixture(params=["fast", pytest.param("full", marks=pytest.mark.slow)])
def gradcheck(request):
    """torch's finite-difference check; "fast" compares the gradient along random directions (a few evaluations),
    "full" the whole Jacobian, one input element at a time (slow: CI runs it)."""

    def check(fn, inputs):
        return torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=request.param == "fast")

    return check


def test_registered():
    assert {"kip", "frepo", "bptt", "ratbptt", "cafe", "sre2l"} <= set(list_objectives())


# --------------------------------------------------------------------------------------------------------- KRR


def test_krr_solve_equals_a_direct_solve():
    g = torch.Generator().manual_seed(0)
    phi_s, phi_t = torch.randn(7, 12, generator=g, dtype=torch.float64), torch.randn(5, 12, generator=g,
                                                                                     dtype=torch.float64)
    y_s = centred_one_hot(torch.tensor([0, 1, 2, 0, 1, 2, 0]), 3)
    k_ss, k_ts = phi_s @ phi_s.T, phi_t @ phi_s.T
    pred, lam = krr_predict(k_ts, k_ss, y_s, jitter=1e-3)
    assert lam == pytest.approx(1e-3 * float(k_ss.diagonal().mean()))
    direct = k_ts @ torch.linalg.solve(k_ss + lam * torch.eye(7, dtype=torch.float64), y_s)
    assert torch.allclose(pred, direct, atol=1e-10)
    y_t = centred_one_hot(torch.tensor([2, 1, 0, 0, 1]), 3)
    loss, _ = krr_loss(phi_t, y_t, phi_s, y_s, 1e-3)
    assert float(loss) == pytest.approx(float(((direct - y_t) ** 2).sum(1).mean()))


def test_kernel_not_positive_definite_is_one_line():
    k_ss = torch.tensor([[1.0, 2.0], [2.0, 1.0]], dtype=torch.float64)  # eigenvalues 3 and -1
    with pytest.raises(ValueError, match=r"not positive definite at jitter 0.*raise --jitter") as e:
        krr_predict(torch.ones(1, 2, dtype=torch.float64), k_ss, torch.eye(2, dtype=torch.float64), jitter=0.0)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="--jitter"):
        get_objective("kip", jitter=-1.0)


@pytest.mark.parametrize("kernel", ["nngp", "ntk"])
def test_kip_gradient_matches_finite_differences(kernel, gradcheck):
    syn, labels, real = _problem()

    def loss(x):
        return get_objective("kip", kernel=kernel, width=4, depth=2, jitter=1e-3,
                             num_models=2)(x, labels, lambda c: real[c], _ctx())

    assert gradcheck(loss, (syn.clone().requires_grad_(True),))


def test_kip_learned_labels_get_the_exact_gradient(gradcheck):
    syn, labels, real = _problem()
    logits = nn.Parameter(torch.nn.functional.one_hot(labels, 3).double() * 2)

    def loss(y):  # a plain tensor of soft labels is used as the targets (a Parameter is taken as logits)
        return get_objective("kip", width=4, depth=2, jitter=1e-3)(syn, labels, lambda c: real[c], _ctx(soft_labels=y))

    assert gradcheck(loss, (logits.detach().clone().requires_grad_(True),))
    obj = get_objective("kip", width=4, depth=2, jitter=1e-3)
    ctx = _ctx(soft_labels=logits)
    obj(syn, labels, lambda c: real[c], ctx).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_frepo_gradient_and_pool_state(gradcheck):
    syn, labels, real = _problem()
    obj = get_objective("frepo", width=4, depth=2, jitter=1e-3, pool_size=2, max_online_steps=2)
    obj(syn, labels, lambda c: real[c], _ctx())  # draws the pool, trains the drawn net one step on the set
    drawn = obj._net
    obj.prepare = lambda *a: None  # keep that net: the gradient is the set's, with the net fixed

    def loss(x):
        return obj(x, labels, lambda c: real[c], _ctx())

    assert gradcheck(loss, (syn.clone().requires_grad_(True),)) and obj._net is drawn
    state = obj.state_dict()
    assert [e["steps"] for e in state["pool"]] == [1, 0] or [e["steps"] for e in state["pool"]] == [0, 1]
    json.dumps({k: v for k, v in state["pool"][0].items() if k == "steps"})  # counters are plain values
    assert all(isinstance(t, torch.Tensor) for e in state["pool"] for t in e["net"].values())


def test_frepo_replaces_a_net_after_max_online_steps():
    syn, labels, real = _problem()
    obj = get_objective("frepo", width=4, depth=2, pool_size=1, max_online_steps=2)
    g = torch.Generator().manual_seed(0)
    steps = []
    for step in range(5):
        ctx = StepContext(step, g, SHAPE, 3, torch.device("cpu"), space="latent")
        obj(syn.float(), labels, lambda c: real[c].float(), ctx)
        steps.append(obj._pool[0]["steps"])
    assert steps == [1, 2, 1, 2, 1]


# -------------------------------------------------------------------------------------------------------- BPTT


def _bptt_loss(name, x, lr, **kw):
    syn, labels, real = _problem()
    return get_objective(name, width=4, depth=2, **kw)(x, labels, lambda c: real[c], _ctx(syn_lr=lr))


@pytest.mark.parametrize("unroll", ["autograd", "constant"])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_bptt_gradient_matches_finite_differences(unroll, momentum, gradcheck):
    syn, _, _ = _problem()
    lr = torch.tensor(0.1, dtype=torch.float64)
    fn = lambda x, a: _bptt_loss("bptt", x, a, inner_steps=3, batch_syn=4, unroll=unroll, momentum=momentum)  # noqa: E731
    assert gradcheck(fn, (syn.clone().requires_grad_(True), lr.clone().requires_grad_(True)))


def _grads(name, **kw):
    syn, _, _ = _problem()
    x, lr = syn.clone().requires_grad_(True), torch.tensor(0.1, dtype=torch.float64, requires_grad=True)
    loss = _bptt_loss(name, x, lr, **kw)
    loss.backward()
    return loss.item(), x.grad, lr.grad


def test_truncated_unroll_equals_the_full_unroll_when_the_window_covers_it():
    full = _grads("bptt", inner_steps=4, batch_syn=4)
    for kw in (dict(window=4), dict(window=9), dict(window=4, unroll="constant")):
        got = _grads("ratbptt", inner_steps=4, batch_syn=4, **kw)
        assert got[0] == pytest.approx(full[0], abs=1e-12)
        assert torch.allclose(got[1], full[1], atol=1e-9) and torch.allclose(got[2], full[2], atol=1e-9)
    # a shorter window is a different (truncated) gradient, and both unrolls compute the same one
    short = _grads("ratbptt", inner_steps=4, window=2, batch_syn=4, random_length=False)
    short_c = _grads("ratbptt", inner_steps=4, window=2, batch_syn=4, random_length=False, unroll="constant")
    plain = _grads("bptt", inner_steps=4, batch_syn=4, momentum=0.0)
    plain_c = _grads("bptt", inner_steps=4, batch_syn=4, momentum=0.0, unroll="constant")
    assert torch.allclose(plain[1], plain_c[1], atol=1e-9) and not torch.allclose(plain[1], full[1], atol=1e-6)
    assert short[0] == pytest.approx(full[0], abs=1e-12) and not torch.allclose(short[1], full[1], atol=1e-6)
    assert torch.allclose(short[1], short_c[1], atol=1e-9) and torch.allclose(short[2], short_c[2], atol=1e-9)


def test_ratbptt_draws_lengths_between_window_and_inner_steps():
    obj = get_objective("ratbptt", inner_steps=6, window=2, width=4, depth=2)
    g = torch.Generator().manual_seed(0)
    lengths = {obj.plan(6, StepContext(0, g, SHAPE, 3, torch.device("cpu"), space="latent"))[0] for _ in range(60)}
    assert lengths == {2, 3, 4, 5, 6}


def test_unroll_longer_than_memory_allows_is_refused_with_the_fix():
    syn, _, _ = _problem()
    with pytest.raises(ValueError, match=r"autograd unroll of 50 steps .* use --unroll constant .* "
                                         r"--window of at most") as e:
        _bptt_loss("bptt", syn.clone().requires_grad_(True), None, inner_steps=50, memory_budget_gb=1e-3)
    assert "\n" not in str(e.value)
    # fits
    _bptt_loss("bptt", syn.clone().requires_grad_(True), None, inner_steps=50, memory_budget_gb=1e-3, unroll="constant")


def test_unroll_memory_estimate_counts_activations():
    from gendistill.nets import get_net

    net = get_net("convnet", SHAPE, 3, depth=2, width=4)
    one, two = unroll_step_bytes(net, SHAPE, 1, 100, torch.device("cpu")), unroll_step_bytes(net, SHAPE, 2, 100,
                                                                                             torch.device("cpu"))
    # block 1: conv, norm, relu at 4x8x8, pool to 4x4x4; block 2: the same at 4x4x4, pool to 4x2x2; the head's 3 logits
    acts = 3 * 4 * 8 * 8 + 4 * 4 * 4 + 3 * 4 * 4 * 4 + 4 * 2 * 2 + 3
    assert two - one == 4 * 2 * acts  # float32 bytes x 2 copies (activations; what backward and double backward keep)


# -------------------------------------------------------------------------------------------------------- CAFE


def test_cafe_gradient_matches_finite_differences(gradcheck):
    syn, labels, real = _problem()

    def loss(x):
        return get_objective("cafe", width=4, depth=2, beta=0.5)(x, labels, lambda c: real[c], _ctx())

    assert gradcheck(loss, (syn.clone().requires_grad_(True),))


def test_cafe_block_features_end_with_the_embedding():
    from gendistill.nets import get_net

    net = get_net("convnet", (1, 28, 28), 10, depth=3, width=8)
    x = torch.randn(2, 1, 28, 28)
    feats = block_features(net, x)
    assert [f.shape[1] for f in feats] == [8 * 16 * 16, 8 * 8 * 8, 8 * 4 * 4] and torch.equal(feats[-1], net.embed(x))


def test_cafe_dynamic_schedule():
    syn, labels, real = _problem()
    g = torch.Generator().manual_seed(0)

    def run(**kw):
        obj = get_objective("cafe", width=4, depth=2, window=2, inner_loop=5, **kw)
        used = []
        for step in range(6):
            obj(syn.float(), labels, lambda c: real[c].float(),
                StepContext(step, g, SHAPE, 3, torch.device("cpu"), space="latent"))
            used.append(obj.nets_used)
        return used

    assert run(outer_loop=3, lambda_outer=0.0) == [1, 1, 1, 2, 2, 2]  # never settles: outer_loop caps it
    assert run(outer_loop=100, lambda_outer=2.0) == [1, 1, 2, 2, 3, 3]  # always settled after a full window


# ------------------------------------------------------------------------------------------------------ SRe2L


def test_bn_statistics_hook_against_hand_computation():
    bn = nn.BatchNorm2d(3)
    bn.running_mean.copy_(torch.tensor([0.5, -1.0, 2.0]))
    bn.running_var.copy_(torch.tensor([1.0, 4.0, 0.25]))
    net = nn.Sequential(bn, nn.Conv2d(3, 2, 1), nn.BatchNorm2d(2)).eval()
    x = torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # by hand, before the hook exists
        flat = x.permute(1, 0, 2, 3).reshape(3, -1)
        mean, var = flat.sum(1) / flat.shape[1], ((flat - flat.mean(1, keepdim=True)) ** 2).sum(1) / flat.shape[1]
        first = ((mean - bn.running_mean) ** 2).sum().sqrt() + ((var - bn.running_var) ** 2).sum().sqrt()
        h = net[1](bn(x)).permute(1, 0, 2, 3).reshape(2, -1)  # what the second BN sees; its running stats are 0 and 1
        second = (h.mean(1) ** 2).sum().sqrt() + ((h.var(1, unbiased=False) - 1) ** 2).sum().sqrt()
    hook = BNStatistics(net, first_multiplier=10.0)
    with torch.no_grad():
        net(x)
    assert float(hook.pop()) == pytest.approx(float(10 * first + second), rel=1e-5)
    with pytest.raises(RuntimeError):  # popped: nothing left until the next forward pass
        hook.pop()
    hook.remove()
    with torch.no_grad():
        net(x)
    assert hook.terms == []
    with pytest.raises(ValueError, match="no BatchNorm layers"):
        BNStatistics(nn.Sequential(nn.Conv2d(1, 1, 1)))


def test_sre2l_recover_gradient_matches_finite_differences(gradcheck):
    from gendistill.nets import get_net

    syn, labels, _ = _problem()
    teacher = get_net("convnet-bn", SHAPE, 3, depth=2, width=4)
    with torch.no_grad():
        teacher.train()(torch.randn(32, *SHAPE))  # running statistics to match
    obj = get_objective("sre2l", teacher=teacher, bn_weight=0.5)

    def loss(x):
        return obj(x, labels, None, _ctx(seed=3))

    assert gradcheck(loss, (syn.clone().requires_grad_(True),))
    assert set(obj.last_terms) == {"ce", "bn"}
    with pytest.raises(ValueError, match="needs a teacher"):
        get_objective("sre2l")


def test_teacher_round_trip_and_mismatch(tmp_path):
    from gendistill.nets import get_net
    from gendistill.sre2l import load_teacher, save_teacher

    net = get_net("convnet-bn", SHAPE, 3, depth=2, width=4)
    meta = {"net": "convnet-bn", "depth": 2, "width": 4, "in_shape": list(SHAPE), "num_classes": 3, "space": "latent"}
    digest = save_teacher(net, tmp_path / "t", meta)
    loaded, got = load_teacher(tmp_path / "t", expect={"space": "latent"})
    assert got["sha256"] == digest and all(torch.equal(a, b)
                                           for a, b in zip(net.state_dict().values(), loaded.state_dict().values()))
    with pytest.raises(ValueError, match="has space 'latent', this run needs 'pixel'"):
        load_teacher(tmp_path / "t", expect={"space": "pixel"})
    with pytest.raises(FileNotFoundError, match="no SRe2L teacher"):
        load_teacher(tmp_path / "missing")


# ---------------------------------------------------------------------------------------------------- recipes


def _args(out, backbone, *extra, steps=3):
    return [str(a) for a in ["--output", out, "--backbone", backbone, "--ipc", 2, "--steps", steps, "--eval-runs", 0,
                             "--batch-real", 4, "--init", "real", *TINY, *extra]]


RECIPE_CASES = {
    "kip": ("latent_krr.py", ["--method", "kip", "--match-space", "latent"]),
    "kip-ntk-pixel": ("latent_krr.py", ["--method", "kip", "--kernel", "ntk", "--match-space", "pixel"]),
    "frepo": ("latent_krr.py", ["--method", "frepo", "--match-space", "latent", "--learn-labels"]),
    "bptt": ("latent_bptt.py", ["--method", "bptt", "--match-space", "latent", "--inner-steps", 2]),
    "bptt-labels": ("latent_bptt.py", ["--method", "bptt", "--match-space", "latent", "--inner-steps", 2,
                                       "--learn-labels"]),
    "ratbptt": ("latent_bptt.py", ["--method", "ratbptt", "--match-space", "pixel", "--inner-steps", 3, "--window", 2,
                                   "--unroll", "constant"]),
    "cafe": ("latent_dm.py", ["--method", "cafe", "--match-space", "latent", "--inner-loop", 2]),
    "sre2l": ("sre2l.py", ["--match-space", "pixel", "--teacher-epochs", 1, "--teacher-width", 8, "--relabel-views",
                           2]),
}


@pytest.mark.parametrize("case", fast_first(list(RECIPE_CASES)))
def test_recipe_in_process(tmp_path, tiny_vae_dir, case):
    recipe, extra = RECIPE_CASES[case]
    out = tmp_path / case
    assert load_recipe(RECIPES / recipe).main(_args(out, tiny_vae_dir, *extra)) == 0
    syn = SyntheticSet.load(out / "set.safetensors")
    assert syn.run_meta["steps_done"] == 3 and len(syn) == 20
    if case.startswith(("kip", "frepo")):
        assert syn.run_meta["krr"]["jitter"] == 1e-6 and syn.run_meta["krr"]["last_ridge"] > 0
    if case in ("frepo", "bptt-labels"):  # learned label logits are stored as probabilities, and they did learn
        assert syn.labels.shape == (20, 10) and torch.allclose(syn.labels.sum(1), torch.ones(20))
        start = torch.nn.functional.one_hot(syn.labels.argmax(1), 10).float().mul(5.0).softmax(1)
        assert (syn.labels - start).abs().max() > 1e-4
    if "bptt" in case:
        assert syn.lr is not None and float(syn.lr.detach()) > 0
    if case == "sre2l":
        assert syn.labels.shape == (20, 10) and syn.run_meta["relabel"]["label_bytes"] == 800
        teacher = syn.run_meta["teacher"]
        assert teacher["directory"] == "teacher"  # folders are recorded by name (no machine paths)
        assert (out / "teacher" / "teacher.safetensors").is_file()
        assert 0 <= teacher["test_accuracy"] <= 1


@pytest.mark.parametrize("case", fast_first(["frepo", "cafe", "bptt"]))
def test_resume_equals_uninterrupted(tmp_path, tiny_vae_dir, case):
    recipe, extra = RECIPE_CASES[case]

    def run(name, steps, *more):
        argv = _args(tmp_path / name, tiny_vae_dir, *extra, "--checkpoint-every", 2, *more, steps=steps)
        assert load_recipe(RECIPES / recipe).main(argv) == 0
        return SyntheticSet.load(tmp_path / name / "set.safetensors")

    full = run("full", 4)
    run("part", 2)
    resumed = run("part", 4, "--resume")
    assert torch.equal(full.latents, resumed.latents) and torch.equal(full.labels, resumed.labels)


@pytest.mark.slow  # end to end (a recipe run, a training or several model loads): a second or more
def test_sre2l_reuses_its_teacher_and_a_missing_one_is_one_line(tmp_path, tiny_vae_dir, capsys):
    from gendistill.cli import run_guarded

    recipe, extra = RECIPE_CASES["sre2l"]
    mod = load_recipe(RECIPES / recipe)
    assert mod.main(_args(tmp_path / "a", tiny_vae_dir, *extra)) == 0
    stamp = (tmp_path / "a" / "teacher" / "teacher.safetensors").stat().st_mtime_ns
    assert mod.main(_args(tmp_path / "b", tiny_vae_dir, *extra, "--teacher", tmp_path / "a" / "teacher")) == 0
    assert (tmp_path / "a" / "teacher" / "teacher.safetensors").stat().st_mtime_ns == stamp and not (
        tmp_path / "b" / "teacher"
    ).exists()
    assert SyntheticSet.load(tmp_path / "b" / "set.safetensors").run_meta["teacher"]["directory"] == "teacher"
    capsys.readouterr()
    assert run_guarded(mod.main, _args(tmp_path / "c", tiny_vae_dir, *extra, "--teacher", tmp_path / "nope")) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: no SRe2L teacher in") and "leave out --teacher" in err
    assert run_guarded(mod.main, _args(tmp_path / "d", tiny_vae_dir, "--match-space", "latent", "--teacher", tmp_path
                                       / "a" / "teacher")) == 2
    assert "this run needs" in capsys.readouterr().err
    assert not (tmp_path / "c" / "set.safetensors").exists()


@pytest.mark.slow  # end to end (a recipe run, a training or several model loads): a second or more
def test_recipe_errors_are_one_line(tmp_path, tiny_vae_dir, capsys):
    from gendistill.cli import run_guarded

    cases = [("latent_krr.py", ["--method", "kop"], "unknown --method"),
             ("latent_krr.py", ["--kernel", "rbf"], "unknown kernel"),
             ("latent_krr.py", ["--jitter", "-1"], "--jitter must be >= 0"),
             ("latent_bptt.py", ["--inner-steps", "40", "--memory-budget-gb", "0.00001"], "use --unroll constant"),
             ("latent_bptt.py", ["--unroll", "sideways"], "unknown unroll"),
             ("latent_bptt.py", ["--net", "convnet-bn"], "BatchNorm running statistics"),
             ("latent_dm.py", ["--method", "cafe", "--layer-weights", "1,x"], "--layer-weights"),
             ("latent_dm.py", ["--method", "kip"], "unknown --method"),
             ("sre2l.py", ["--teacher-net", "convnet", "--teacher-epochs", "1"], "no BatchNorm layers")]
    for recipe, extra, fragment in cases:
        capsys.readouterr()
        assert run_guarded(load_recipe(RECIPES / recipe).main,
                           _args(tmp_path / "err", tiny_vae_dir, "--match-space", "latent", *extra)) == 2
        err = capsys.readouterr().err
        last = err.strip().splitlines()[-1]
        assert "Traceback" not in err and last.startswith("error:") and fragment in last, (recipe, err)
    assert not (tmp_path / "err" / "set.safetensors").exists()


FAMILY_CONFIGS = sorted(p for d in ("latent_krr", "latent_bptt", "sre2l", "latent_dm")
                        for p in (RECIPES / "configs" / d).glob("*.yaml"))


@pytest.mark.parametrize("path", FAMILY_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_reported_configs_parse(path):
    """Every row of docs/families.md is a config its recipe reads (method and backbone stated explicitly)."""
    import dataclasses

    from gendistill.config import parse_config
    from gendistill.pipeline import RecipeConfig

    mod = load_recipe(RECIPES / f"{path.parent.name}.py")
    (cls,) = [c for c in vars(mod).values() if isinstance(c, type) and issubclass(c, RecipeConfig)
              and c is not RecipeConfig]
    cfg = parse_config(cls, ["--config", str(path)])
    assert dataclasses.is_dataclass(cfg) and cfg.ipc in (1, 10) and "backbone" in path.read_text()


@pytest.mark.slow
@pytest.mark.parametrize("case", ["kip", "frepo", "bptt", "ratbptt", "cafe", "sre2l"])
def test_accelerate_launch_cpu(tmp_path, tiny_vae_dir, case):
    recipe, extra = RECIPE_CASES[case]
    out = tmp_path / case
    proc = launch(["--mixed_precision", "no", RECIPES / recipe,
                   *_args(out, tiny_vae_dir, *extra, "--eval-runs", 1, "--eval-epochs", 2)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "test accuracy" in proc.stdout.strip().splitlines()[-1]
    result = json.loads((out / "eval.json").read_text())
    assert 0 <= result["mean"] <= 1 and SyntheticSet.load(out / "set.safetensors").run_meta["steps_done"] == 3
