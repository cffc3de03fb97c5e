"""Expert trajectories and trajectory matching (MTT, TESLA, DATM): tiny data, tiny nets, deterministic."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import ROOT, fast_first, launch, load_recipe
from safetensors import safe_open

from gendistill.backbones import load_backbone
from gendistill.experts import (
    ExpertConfig,
    Experts,
    NetSpec,
    describe,
    expert_file,
    flatten_params,
    identity,
    load_experts,
    param_layout,
    read_description,
)
from gendistill.io import save_safetensors, write_json
from gendistill.objectives import StepContext, get_objective

TRAIN_EXPERTS = ROOT / "recipes" / "train_experts.py"
LATENT_MTT = ROOT / "recipes" / "latent_mtt.py"
TINY_NET = ["--depth", "2", "--width", "8"]


@pytest.fixture(scope="module")
def expert_dir(tmp_path_factory, tiny_idx_dir, tiny_vae_dir):
    """Two experts x 3 epochs on the tiny dataset's latents (tiny VAE, ConvNet depth 2 width 8)."""
    root = tmp_path_factory.mktemp("experts")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GENDISTILL_FASHION_MNIST_DIR", str(tiny_idx_dir))
        mp.setenv("GENDISTILL_CACHE", str(root / "cache"))
        argv = ["--output", root / "exp", "--backbone", tiny_vae_dir, "--num-experts", 2, "--epochs", 3, "--batch", 64,
                *TINY_NET]
        assert load_recipe(TRAIN_EXPERTS).main([str(a) for a in argv]) == 0
    return root / "exp"


def _expect(backbone_dir, space="latent", width=8, in_shape=(2, 14, 14)):
    backbone = load_backbone(str(backbone_dir), image_shape=(1, 28, 28))
    return identity(space, backbone, {"name": "fashion-mnist"}, NetSpec("convnet", 2, width), in_shape, 10)


# ------------------------------------------------------------------------------------------------ experts


def test_expert_files_round_trip(expert_dir, tiny_vae_dir):
    experts = load_experts(expert_dir, expect=_expect(tiny_vae_dir))
    meta = read_description(expert_dir)
    assert meta["space"] == "latent" and meta["training"]["epochs"] == 3 and meta["training"]["lr"] == 0.01
    assert meta["training"]["augment"] == "latent" and meta["training"]["momentum"] == 0.0
    assert meta["backbone"]["sha256"] == load_backbone(str(tiny_vae_dir)).weights_sha256()
    with safe_open(str(expert_file(expert_dir, 1)), "pt") as f:
        traj = f.get_tensor("trajectory")
        assert float(f.metadata()["test_acc"]) >= 0
    assert traj.shape == (4, experts.num_params)
    assert torch.equal(experts.snapshot(1, 2), traj[2]) and torch.equal(experts.snapshot(1, -1), traj[3])
    assert not torch.equal(traj[0], traj[3])  # it trained
    # epoch 0 is the initialisation drawn from the expert's own generator
    net = NetSpec("convnet", 2, 8).build((2, 14, 14), 10, torch.Generator().manual_seed(1))
    assert torch.equal(traj[0], flatten_params(net))


def test_rerun_skips_finished_experts_and_redoes_missing(expert_dir, tiny_vae_dir, tmp_path, tiny_idx_dir):
    import shutil

    copy = tmp_path / "exp"
    shutil.copytree(expert_dir, copy)
    before = expert_file(copy, 0).stat().st_mtime_ns
    kept = safe_open(str(expert_file(copy, 1)), "pt").get_tensor("trajectory")
    expert_file(copy, 1).unlink()
    with pytest.raises(FileNotFoundError, match="expert_0001.safetensors.*missing"):
        load_experts(copy)
    argv = ["--output", copy, "--backbone", tiny_vae_dir, "--num-experts", 2, "--epochs", 3, "--batch", 64, *TINY_NET,
            "--cache-dir", tmp_path / "cache"]
    assert load_recipe(TRAIN_EXPERTS).main([str(a) for a in argv]) == 0
    assert expert_file(copy, 0).stat().st_mtime_ns == before
    assert torch.equal(safe_open(str(expert_file(copy, 1)), "pt").get_tensor("trajectory"), kept)  # deterministic
    with pytest.raises(ValueError, match=r"other settings \(training.lr differ\)"):
        load_recipe(TRAIN_EXPERTS).main([str(a) for a in argv + ["--lr", "0.1"]])


def test_shards_make_the_same_experts(expert_dir, tiny_vae_dir, tmp_path):
    out = tmp_path / "sharded"
    for shard in ("1/2", "0/2"):
        argv = ["--output", out, "--backbone", tiny_vae_dir, "--num-experts", 2, "--epochs", 3, "--batch", 64,
                *TINY_NET, "--cache-dir", tmp_path / "cache", "--shard", shard, "--test", "false"]
        assert load_recipe(TRAIN_EXPERTS).main([str(a) for a in argv]) == 0
        assert (
            expert_file(out, int(shard[0])).exists()
            and not expert_file(out, 1 - int(shard[0])).exists()
            or shard == "0/2"
        )
    for i in range(2):
        a, b = (safe_open(str(expert_file(d, i)), "pt").get_tensor("trajectory") for d in (out, expert_dir))
        assert torch.equal(a, b)


@pytest.mark.parametrize("change, match", [
    (dict(space="pixel", in_shape=(1, 28, 28)), "space 'latent', this run needs 'pixel'"),
    (dict(width=16), "net convnet depth 2 width 8, this run needs convnet depth 2 width 16"),
    ("other-backbone", "backbone"),
])
def test_experts_mismatch_is_one_line(expert_dir, tiny_vae_dir, tiny_vae_dir_other, change, match):
    expect = _expect(tiny_vae_dir_other) if change == "other-backbone" else _expect(tiny_vae_dir, **change)
    with pytest.raises(ValueError, match=match) as e:
        load_experts(expert_dir, expect=expect)
    assert "\n" not in str(e.value) and "train_experts.py" in str(e.value)


def test_missing_directory_and_window(expert_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_experts(tmp_path / "nope")
    experts = load_experts(expert_dir)
    with pytest.raises(ValueError, match="beyond the 3 epochs"):
        experts.check_window(expert_epochs=2, max_start_epoch=2)
    with pytest.raises(ValueError, match="beyond the 3 epochs"):
        get_objective("datm", experts=experts, expert_epochs=1, max_start_epoch=1, max_start_epoch_final=3)
    experts.check_window(expert_epochs=1, max_start_epoch=2)


# -------------------------------------------------------------------------------------- matching objectives


IN_SHAPE, K = (2, 6, 6), 3


@pytest.fixture(scope="module")
def toy_experts(tmp_path_factory) -> Experts:
    """Two made-up trajectories (5 snapshots) of a ConvNet depth 2 width 4 on 2x6x6 inputs, 3 classes."""
    d = tmp_path_factory.mktemp("toy-experts")
    net = NetSpec("convnet", 2, 4)
    ident = identity("latent", load_backbone("pixel", image_shape=(1, 28, 28)), {"name": "toy"}, net, IN_SHAPE, K)
    meta = describe(ident, param_layout(net.build(IN_SHAPE, K, torch.Generator().manual_seed(0))),
                    ExpertConfig(num_experts=2, epochs=4))
    write_json(meta, d / "experts.json")
    g = torch.Generator().manual_seed(1)
    for i in range(2):
        base = flatten_params(net.build(IN_SHAPE, K, g))
        steps = 0.05 * torch.randn(4, meta["num_params"], generator=g)
        save_safetensors({"trajectory": torch.cat([base[None], base + steps.cumsum(0)])}, expert_file(d, i))
    return load_experts(d)


def _step(name, experts, syn0, soft0=None, lr0=0.05, seed=5, transform=lambda x: x, **kw):
    obj = get_objective(name, experts=experts, syn_steps=5, batch_syn=2, expert_epochs=2, max_start_epoch=2, **kw)
    syn = syn0.clone().requires_grad_(True)
    lr = torch.nn.Parameter(torch.tensor(lr0))
    soft = torch.nn.Parameter(soft0.clone()) if soft0 is not None else None
    labels = torch.arange(K).repeat_interleave(len(syn0) // K)
    ctx = StepContext(0, torch.Generator().manual_seed(seed), IN_SHAPE, K, torch.device("cpu"), transform=transform,
                      syn_lr=lr, soft_labels=soft)
    loss = obj(syn, labels, None, ctx)
    loss.backward()
    return loss.detach(), syn.grad, lr.grad, None if soft is None else soft.grad


@pytest.mark.parametrize("soft", [False, True])
def test_tesla_gradient_equals_mtt(toy_experts, soft):
    """Constant-memory reverse pass == back-propagation through the unroll: latents, lr and soft labels (1e-4)."""
    g = torch.Generator().manual_seed(0)
    syn0, soft0 = torch.randn(6, *IN_SHAPE, generator=g), torch.randn(6, K, generator=g) if soft else None
    kw = dict(label_logits=True) if soft else {}
    norm = lambda x: (x - 0.1) / 0.9  # noqa: E731  (a match-space transform, as normalisation in pixel space)
    mtt = _step("mtt", toy_experts, syn0, soft0, transform=norm, **kw)
    tesla = _step("tesla", toy_experts, syn0, soft0, transform=norm, **kw)
    torch.testing.assert_close(tesla[0], mtt[0], rtol=1e-5, atol=0)
    for a, b in zip(tesla[1:], mtt[1:]):
        if b is None:
            continue
        assert b.abs().max() > 0
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()))


def test_mtt_loss_is_normalised_distance_and_deterministic(toy_experts):
    syn0 = torch.randn(6, *IN_SHAPE, generator=torch.Generator().manual_seed(0))
    a, b = _step("mtt", toy_experts, syn0), _step("mtt", toy_experts, syn0)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], _step("mtt", toy_experts, syn0, seed=6)[0])
    # with lr 0 the student does not move: the loss is exactly 1
    assert float(_step("mtt", toy_experts, syn0, lr0=0.0)[0]) == pytest.approx(1.0)


def test_datm_window_grows_and_threshold_skips(toy_experts):
    obj = get_objective("datm", experts=toy_experts, expert_epochs=1, max_start_epoch=1, max_start_epoch_final=3,
                        expansion_end_step=10)
    assert (
        obj.window(0) == (0, 1) and obj.window(5) == (0, 2) and obj.window(10) == (0, 3) and obj.window(100) == (0, 3)
    )
    syn0 = torch.randn(6, *IN_SHAPE, generator=torch.Generator().manual_seed(0))
    for unroll in ("autograd", "constant"):
        loss, g_syn, g_lr, _ = _step("datm", toy_experts, syn0, threshold=0.0, unroll=unroll, max_start_epoch_final=2)
        assert float(loss) > 0 and float(g_syn.abs().max()) == 0 and g_lr is None


def test_nonfinite_lr_is_one_line(toy_experts):
    syn0 = torch.randn(6, *IN_SHAPE)
    with pytest.raises(FloatingPointError, match="the learned lr is nan"):
        _step("tesla", toy_experts, syn0, lr0=float("nan"))


# ------------------------------------------------------------------------------------------- DATM soft labels


def test_datm_soft_labels_init_save_load_and_evaluate(toy_experts, tmp_path, tiny_idx_dir, monkeypatch):
    import gendistill.evaluate as ev
    from gendistill.cache import LatentSplit
    from gendistill.data import get_dataset
    from gendistill.evaluate import EvalConfig, evaluate
    from gendistill.objectives.trajectory import finish_soft_labels, init_soft_labels
    from gendistill.synthetic import SyntheticSet

    g = torch.Generator().manual_seed(0)
    real = LatentSplit(torch.randn(30, *IN_SHAPE, generator=g), torch.arange(K).repeat_interleave(10), K)
    syn = SyntheticSet(torch.zeros(6, *IN_SHAPE), torch.arange(K).repeat_interleave(2), lr=0.02,
                       dataset={"num_classes": K})
    info = init_soft_labels(syn, toy_experts, lambda z: z, real, torch.Generator().manual_seed(1))
    assert isinstance(syn.labels, torch.nn.Parameter) and syn.labels.shape == (6, K) and info["samples"] == 6
    assert all(any(torch.equal(z, r) for r in real.latents) for z in syn.latents.detach())  # real samples chosen
    finish_soft_labels(syn)
    assert not isinstance(syn.labels, torch.nn.Parameter) and torch.allclose(syn.labels.sum(1), torch.ones(6))
    syn.save(tmp_path / "set.safetensors")
    back = SyntheticSet.load(tmp_path / "set.safetensors")
    assert back.soft and torch.equal(back.labels, syn.labels) and float(back.lr.detach()) == pytest.approx(0.02)

    # evaluation trains on the soft labels (and the learned lr)
    seen = []
    monkeypatch.setattr(ev, "_loss", lambda logits, y: (seen.append(y.detach().clone()),
                                                        ev.F.cross_entropy(logits, y.float()))[1])
    test = get_dataset("fashion-mnist", "test")
    images = torch.rand(6, 1, 28, 28)
    soft10 = torch.softmax(torch.randn(6, 10, generator=g), 1)
    r = evaluate(images, soft10, test, EvalConfig(epochs=1, runs=1), lr=float(back.lr.detach()), progress=False)
    assert r["soft_labels"] is True and r["lr_used"] == pytest.approx(0.02)
    assert seen and seen[0].shape == (6, 10)
    assert sorted(map(tuple, seen[0].tolist())) == sorted(map(tuple, soft10.tolist()))  # the same rows, shuffled


# ------------------------------------------------------------------------------------------------- recipes


def _mtt_args(out, backbone, *extra):
    return [str(a) for a in ["--output", out, "--backbone", backbone, "--match-space", "latent", "--ipc", 2, "--steps",
                             3, "--eval-runs", 0, "--syn-steps", 3, "--expert-epochs", 1, "--max-start-epoch", 1,
                             "--lr-lr", 1e-9, *TINY_NET, *extra]]


@pytest.mark.parametrize("method", fast_first(["mtt", "tesla", "datm"]))
def test_latent_mtt_recipe_end_to_end(tmp_path, tiny_vae_dir, expert_dir, method):
    from gendistill.synthetic import SyntheticSet

    extra = ["--max-start-epoch-final", 2] if method == "datm" else []
    out = tmp_path / method
    assert load_recipe(LATENT_MTT).main(_mtt_args(out, tiny_vae_dir, "--method", method, "--experts", expert_dir,
                                                  *extra)) == 0
    syn = SyntheticSet.load(out / "set.safetensors")
    # the learned lr is saved (its gradient: test_tesla_gradient_equals_mtt)
    assert syn.lr is not None and float(syn.lr.detach()) > 0
    assert syn.run_meta["method"] == method and syn.run_meta["steps_done"] == 3
    assert syn.run_meta["experts"]["directory"] == expert_dir.name  # by name: a set records no path of this machine
    assert syn.run_meta["experts"]["epochs"] == 3
    if method == "datm":
        assert syn.labels.shape == (20, 10) and torch.allclose(syn.labels.sum(1), torch.ones(20))
        # `gendistill eval` trains on the soft labels with the learned lr
        from gendistill.cli import main as cli

        with pytest.raises(SystemExit) as e:
            cli(["eval", str(out / "set.safetensors"), "--epochs", "1", "--runs", "1", "--out",
                 str(out / "cli-eval.json")])
        assert e.value.code == 0
        result = json.loads((out / "cli-eval.json").read_text())
        assert result["soft_labels"] is True and result["lr_used"] == pytest.approx(float(syn.lr.detach()))
    else:
        assert syn.labels.shape == (20,)


@pytest.mark.slow  # end to end, over a second of CPU
@pytest.mark.parametrize("unroll", ["autograd", "constant"])
def test_datm_resume_equals_uninterrupted(tmp_path, tiny_vae_dir, expert_dir, unroll):
    """Latents, soft-label logits and the learned lr all come back from the checkpoint."""
    from gendistill.synthetic import SyntheticSet

    def run(name, steps, *extra):
        args = ["--method", "datm", "--experts", expert_dir, "--max-start-epoch-final", 2, "--unroll", unroll,
                "--checkpoint-every", 2]
        argv = _mtt_args(tmp_path / name, tiny_vae_dir, *args, *extra)
        argv[argv.index("--steps") + 1] = str(steps)
        assert load_recipe(LATENT_MTT).main(argv) == 0
        return SyntheticSet.load(tmp_path / name / "set.safetensors")

    full = run("full", 4)
    run("part", 2)
    resumed = run("part", 4, "--resume")
    assert torch.equal(full.latents, resumed.latents) and torch.equal(full.labels, resumed.labels)
    assert torch.equal(full.lr, resumed.lr)


@pytest.mark.slow  # end to end (a recipe run, a training or several model loads): a second or more
def test_latent_mtt_default_experts_are_cached(tmp_path, tiny_vae_dir, capsys):
    cache = tmp_path / "cache"
    args = ["--method", "tesla", "--num-experts", 1, "--expert-train-epochs", 2, "--cache-dir", cache]
    assert load_recipe(LATENT_MTT).main(_mtt_args(tmp_path / "a", tiny_vae_dir, *args)) == 0
    made = list((cache / "experts").iterdir())
    assert len(made) == 1 and read_description(made[0])["training"]["num_experts"] == 1
    stamp = expert_file(made[0], 0).stat().st_mtime_ns
    assert load_recipe(LATENT_MTT).main(_mtt_args(tmp_path / "b", tiny_vae_dir, *args)) == 0
    assert expert_file(made[0], 0).stat().st_mtime_ns == stamp and list((cache / "experts").iterdir()) == made


@pytest.mark.slow  # end to end (a recipe run, a training or several model loads): a second or more
def test_pixel_match_space_recipe_with_pixel_experts(tmp_path, tiny_vae_dir):
    """GLaD-style: the VAE's latents are learned, the experts and the student see decoded, normalised images."""
    args = ["--method", "datm", "--match-space", "pixel", "--num-experts", 1, "--expert-train-epochs", 2,
            "--max-start-epoch-final", 1, "--cache-dir", tmp_path / "cache", "--steps", 2]
    assert load_recipe(LATENT_MTT).main(_mtt_args(tmp_path / "px", tiny_vae_dir, *args)) == 0
    (made,) = (tmp_path / "cache" / "experts").iterdir()
    assert read_description(made)["space"] == "pixel" and read_description(made)["in_shape"] == [1, 28, 28]


@pytest.mark.slow  # end to end (a recipe run, a training or several model loads): a second or more
def test_recipe_errors_are_one_line(tmp_path, tiny_vae_dir, expert_dir, capsys):
    from gendistill.cli import run_guarded

    mod = load_recipe(LATENT_MTT)
    cases = [(["--experts", expert_dir, "--width", "16"], "this run needs"),
             (["--experts", expert_dir, "--max-start-epoch", "3"], "beyond the 3 epochs"),
             (["--experts", tmp_path / "missing"], "does not exist"),
             (["--experts", expert_dir, "--syn-lr-init", "nan"], "--syn-lr-init"),
             (["--experts", expert_dir, "--lr-lr", "inf"], "argument --lr-lr: must be a finite number, got inf"),
             (["--experts", expert_dir, "--lr-lr", "1e30"], "became"),  # the learned lr, the loss or the latents
             (["--experts", expert_dir, "--method", "kip"], "--method: must be one of mtt, tesla, datm, got 'kip'")]
    for extra, fragment in cases:
        capsys.readouterr()
        argv = _mtt_args(tmp_path / "err", tiny_vae_dir) + [str(a) for a in extra]
        assert run_guarded(mod.main, argv) == 2
        err = capsys.readouterr().err  # (progress bars may precede it on stderr)
        last = err.strip().splitlines()[-1]
        assert "Traceback" not in err and last.startswith("error:") and fragment in last, err
    assert not (tmp_path / "err" / "set.safetensors").exists()


@pytest.mark.slow  # spawns a process
def test_accelerate_launch_cpu(tmp_path, tiny_vae_dir, expert_dir):
    out = tmp_path / "launched"
    proc = launch(["--mixed_precision", "no", LATENT_MTT,
                   *_mtt_args(out, tiny_vae_dir, "--method", "datm", "--experts", expert_dir, "--max-start-epoch-final",
                              2, "--unroll", "constant", "--eval-runs", 1, "--eval-epochs", 2)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "test accuracy" in proc.stdout.strip().splitlines()[-1] and "learned lr" in proc.stdout
    result = json.loads((out / "eval.json").read_text())
    with safe_open(str(out / "set.safetensors"), "pt") as f:
        lr = float(f.get_tensor("lr"))
        assert f.get_tensor("labels").shape == (20, 10)
    assert result["soft_labels"] is True and result["lr_used"] == pytest.approx(lr)


def test_info_describes_an_experts_directory(expert_dir, capsys):
    from gendistill.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["info", str(expert_dir)])
    out = capsys.readouterr().out
    assert e.value.code == 0
    assert "experts" in out and "latent" in out and "2/2" in out and "convnet" in out
    with pytest.raises(SystemExit):
        main(["info", str(expert_dir), "--json"])
    info = json.loads(capsys.readouterr().out)
    assert info["complete"] == 2 and info["training"]["epochs"] == 3
