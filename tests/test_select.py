"""Coreset selection (random, herding, k-center, k-means, forgetting), YOCO pruning (LBPE, balanced) and their
commands."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import cli, ok
from safetensors import safe_open
from safetensors.torch import load_file

from gendistill.backbones import load_backbone
from gendistill.cache import cached_latents
from gendistill.data import get_dataset
from gendistill.select import (
    LBPEConfig,
    Pool,
    herding,
    kcenter,
    kmeans_members,
    lbpe_from_dynamics,
    lbpe_scores,
    prune_indices,
    rank_keep,
    select_indices,
)
from gendistill.synthetic import INITS, SyntheticSet
from gendistill.teacher import Dynamics, NetTraining, train_net

TINY = NetTraining(width=4, depth=1, epochs=3, batch=64)


def run_record(path):
    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["gendistill.run"])


@pytest.fixture(scope="module")
def train(tiny_idx_dir):
    return get_dataset("fashion-mnist", data_dir=str(tiny_idx_dir))


@pytest.fixture(scope="module")
def vae(tiny_vae_dir):
    return load_backbone(str(tiny_vae_dir))


@pytest.fixture(scope="module")
def real(vae, train, tmp_path_factory):
    return cached_latents(vae, train, root=tmp_path_factory.mktemp("cache"), log=lambda m: None)


# --------------------------------------------------------------------------------------- the algorithms


def test_herding_by_hand():
    # mean 3.25: 2 is nearest; then (2 + x) / 2 nearest 3.25 is x = 1 (1.5); then (3 + x) / 3: x = 10 (4.33) beats 0
    # (1.0)
    x = torch.tensor([[0.0], [1.0], [2.0], [10.0]])
    assert herding(x, 3).tolist() == [2, 1, 3]
    assert sorted(herding(x, 4).tolist()) == [0, 1, 2, 3]


def test_kcenter_by_hand():
    # start at 2 (nearest the mean 3.25), then the farthest from {2} is 10, then from {2, 10} it is 0 (distance 2)
    x = torch.tensor([[0.0], [1.0], [2.0], [10.0]])
    assert kcenter(x, 3).tolist() == [2, 3, 0]


def test_algorithms_refuse_too_many():
    x = torch.zeros(3, 2)
    for fn in (herding, kcenter, lambda x, k: kmeans_members(x, k)):
        with pytest.raises(ValueError, match="cannot choose 4 of 3"):
            fn(x, 4)


def test_kmeans_members_one_per_blob():
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(8, 2, generator=g) * 0.1 + 5, torch.randn(8, 2, generator=g) * 0.1 - 5])
    chosen = kmeans_members(x, 2, torch.Generator().manual_seed(0)).tolist()
    assert sorted(i < 8 for i in chosen) == [False, True]


def test_rank_keep_ties_and_infinity():
    scores = torch.tensor([1.0, float("inf"), 3.0, 3.0, 0.0])
    assert rank_keep(scores, 2, highest=False).tolist() == [4, 0]
    picks = {tuple(rank_keep(scores, 2, True, torch.Generator().manual_seed(s)).tolist()) for s in range(20)}
    assert picks == {(1, 2), (1, 3)}  # the tie between 2 and 3 is broken at random


def test_forgetting_scores_and_events():
    dyn = Dynamics(torch.tensor([0, 2, 0]), torch.tensor([True, True, False]), torch.zeros(1, 3, 2), torch.zeros(1))
    assert dyn.forgetting_scores().tolist() == [0.0, 2.0, float("inf")]


def test_train_net_counts_forgetting_like_its_history(train):
    """The online counters equal the events read back from the recorded per-epoch outputs (one presentation per
    epoch): forgetting = correct -> incorrect transitions, learned = ever correct."""
    images, labels = train.float_images(), train.labels
    net, dyn = train_net(images, labels, train.image_shape, 10, train.mean, train.std,
                         NetTraining(width=4, depth=1, epochs=6, batch=50, lr=0.05), track=True, progress=False)
    correct = dyn.probs.argmax(2) == labels  # (epochs, N)
    events = (correct[:-1] & ~correct[1:]).sum(0)
    assert torch.equal(dyn.forgetting, events)
    assert torch.equal(dyn.learned, correct.any(0))
    assert torch.allclose(dyn.epoch_accuracy, correct.float().mean(1))
    assert torch.allclose(dyn.probs.sum(2), torch.ones(6, len(labels)))
    again = train_net(images, labels, train.image_shape, 10, train.mean, train.std,
                      NetTraining(width=4, depth=1, epochs=6, batch=50, lr=0.05), track=True, progress=False)[1]
    assert torch.equal(again.probs, dyn.probs)  # seeded: the same run twice


# ------------------------------------------------------------------------------------------- the selectors


@pytest.mark.parametrize("method", ["random", "herding", "kcenter", "kmeans", "forgetting"])
def test_select_indices(method, real, train):
    pool = Pool(real, train, net=TINY, progress=False)
    idx = select_indices(method, pool, 3, torch.Generator().manual_seed(0))
    assert idx.shape == (30,)
    assert real.labels[idx].tolist() == [c for c in range(10) for _ in range(3)]
    assert len(set(idx.tolist())) == 30
    again = select_indices(method, Pool(real, train, net=TINY, progress=False), 3, torch.Generator().manual_seed(0))
    assert torch.equal(idx, again)


def test_select_herding_matches_the_algorithm_per_class(real, train):
    idx = select_indices("herding", Pool(real, train), 2)
    for c in range(10):
        members = real.class_indices(c)
        assert idx[2 * c : 2 * c + 2].tolist() == members[herding(real.latents[members].flatten(1), 2)].tolist()


def test_forgetting_keeps_most_or_least(real, train, monkeypatch):
    pool = Pool(real, train, net=TINY, progress=False)
    n = len(real.labels)
    forgetting = torch.arange(n) % 7  # a known score per row
    learned = torch.ones(n, dtype=torch.bool)
    learned[real.class_indices(0)[5]] = False  # never learned: infinitely forgotten
    monkeypatch.setattr(pool, "trained", lambda: (None, Dynamics(forgetting, learned, torch.zeros(1, n, 10),
                                                                 torch.zeros(1))))
    scores = Dynamics(forgetting, learned, None, None).forgetting_scores()
    most = select_indices("forgetting", pool, 2, torch.Generator().manual_seed(0), keep="most")
    least = select_indices("forgetting", pool, 2, torch.Generator().manual_seed(0), keep="least")
    assert int(real.class_indices(0)[5]) in most[:2].tolist()
    for c in range(10):
        s = scores[real.class_indices(c)].sort().values
        assert sorted(scores[most[2 * c : 2 * c + 2]].tolist()) == s[-2:].tolist()
        assert sorted(scores[least[2 * c : 2 * c + 2]].tolist()) == s[:2].tolist()


def test_pool_order_pixel_and_latent(real, train):
    assert torch.equal(train.labels[Pool(real, train).order()], real.labels)  # the cache is class-major
    pixel = cached_latents(load_backbone("pixel", image_shape=(1, 28, 28)), train)
    assert torch.equal(Pool(pixel, train).order(), torch.arange(len(train)))
    assert torch.equal(Pool(real, train).images(), train.float_images(Pool(real, train).order()))


def test_select_errors(real, train):
    with pytest.raises(ValueError, match="smallest class"):
        select_indices("random", Pool(real, train), 21)
    with pytest.raises(ValueError, match="unknown selection method"):
        select_indices("magic", Pool(real, train), 1)
    with pytest.raises(ValueError, match="unknown features"):
        Pool(real, train, features="magic")


@pytest.mark.parametrize("method", ["herding", "kcenter"])
def test_init_reuses_the_selectors(method, real, vae, train):
    assert method in INITS.names()
    s = SyntheticSet.initialise(method, real, 2, vae, train.meta())
    idx = select_indices(method, Pool(real, train), 2)
    assert torch.equal(s.latents.detach(), real.latents[idx])


# ------------------------------------------------------------------------------------------------- command


@pytest.mark.parametrize("method", ["herding", "forgetting"])
def test_select_command_vae(capsys, tmp_path, tiny_vae_dir, train, method):
    out = tmp_path / f"{method}.safetensors"
    ok(cli(capsys, "select", "--method", method, "--ipc", 2, "--backbone", tiny_vae_dir, "--out", out,
           "--net-width", 4, "--net-depth", 1, "--net-epochs", 2))
    t = load_file(str(out))
    assert t["latents"].shape == (20, 2, 14, 14) and t["labels"].tolist() == [c for c in range(10) for _ in range(2)]
    run = run_record(out)
    assert run["method"] == "select" and run["init"] == method and run["ipc"] == 2
    chosen = torch.tensor(run["select"]["selected"])  # the train-split images the set holds
    assert train.labels[chosen].tolist() == t["labels"].tolist()
    vae = load_backbone(str(tiny_vae_dir))
    with torch.no_grad():
        assert torch.allclose(vae.encode(train.float_images(chosen)), t["latents"], atol=1e-5)
    ok(cli(capsys, "info", out))


def test_select_command_pixel_is_the_images(capsys, tmp_path, train):
    out = tmp_path / "kc.safetensors"
    ok(cli(capsys, "select", "--method", "kcenter", "--ipc", 1, "--backbone", "pixel", "--out", out))
    t = load_file(str(out))
    chosen = torch.tensor(run_record(out)["select"]["selected"])
    assert torch.equal(t["latents"], train.float_images(chosen))


def test_select_command_errors(capsys, tmp_path):
    code, _, err = cli(capsys, "select", "--ipc", 50, "--backbone", "pixel", "--out", tmp_path / "x.safetensors")
    assert code == 2 and err.startswith("error:") and "smallest class" in err
    code, _, err = cli(capsys, "select", "--ipc", 1, "--backbone", "pixel", "--out", tmp_path / "no" / "x.safetensors")
    assert code == 2 and "does not exist" in err


# ------------------------------------------------------------------------------------------------ YOCO


def test_lbpe_by_hand():
    # two samples, labels 0 and 1, three epochs; epoch 1 has the highest training accuracy
    probs = torch.tensor([[[0.5, 0.5], [0.5, 0.5]],
                          [[0.9, 0.1], [0.2, 0.8]],
                          [[0.1, 0.9], [0.6, 0.4]]])
    dyn = Dynamics(torch.zeros(2), torch.ones(2, dtype=torch.bool), probs, torch.tensor([0.5, 1.0, 0.0]))
    labels = torch.tensor([0, 1])
    # top-1: epoch 1 only: sample 0 |(0.9, 0.1) - (1, 0)| = sqrt(0.02), sample 1 |(0.2, 0.8) - (0, 1)| = sqrt(0.08)
    assert torch.allclose(lbpe_from_dynamics(dyn, labels, 1), torch.tensor([0.02 ** 0.5, 0.08 ** 0.5]))
    # top-2: epochs 1 and 0 averaged; epoch 0 gives sqrt(0.5) to both
    expect = torch.tensor([(0.02 ** 0.5 + 0.5 ** 0.5) / 2, (0.08 ** 0.5 + 0.5 ** 0.5) / 2])
    assert torch.allclose(lbpe_from_dynamics(dyn, labels, 2), expect)


def test_prune_indices_balanced_low_high():
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    scores = torch.tensor([0.3, 0.1, 0.2, 0.9, 0.5, 0.7])
    assert prune_indices(scores, labels, 2, 2, "low").tolist() == [1, 2, 4, 5]
    assert prune_indices(scores, labels, 1, 2, "high").tolist() == [0, 3]
    r = prune_indices(scores, labels, 2, 2, "random", torch.Generator().manual_seed(0))
    assert labels[r].tolist() == [0, 0, 1, 1]
    with pytest.raises(ValueError, match="fewer than --ipc 4"):
        prune_indices(scores, labels, 4, 2)
    with pytest.raises(ValueError, match="unknown prune rule"):
        prune_indices(scores, labels, 1, 2, "magic")


def test_lbpe_config_checks():
    with pytest.raises(ValueError, match="top-k"):
        LBPEConfig(net=NetTraining(epochs=2), top_k=3)


def test_prune_command_keeps_k_per_class_with_low_lbpe(capsys, tmp_path, tiny_vae_dir, tiny_idx_dir):
    src = tmp_path / "set.safetensors"
    ok(cli(capsys, "init", "--backbone", tiny_vae_dir, "--ipc", 4, "--out", src))
    out = tmp_path / "pruned.safetensors"
    flags = ["--net-width", 4, "--net-depth", 1, "--net-epochs", 4, "--top-k", 2]
    ok(cli(capsys, "prune", src, "--ipc", 2, "--out", out, *flags))
    syn, pruned = SyntheticSet.load(src), SyntheticSet.load(out)
    assert pruned.ipc == 2 and pruned.hard_labels.bincount().tolist() == [2] * 10
    run = pruned.run_meta
    assert (
        run["method"] == "init+yoco"
        and run["ipc"] == 2
        and run["prune"]["rule"] == "low"
        and run["prune"]["source_ipc"] == 4
    )
    # the kept ones are, per class, the two of lowest LBPE as the library computes it with the same settings
    vae = load_backbone(str(tiny_vae_dir))
    cfg = LBPEConfig(net=NetTraining(width=4, depth=1, epochs=4, augment="dsa"), top_k=2)
    scores = lbpe_scores(syn.decode(vae), syn.labels, 10, syn.dataset_meta["mean"], syn.dataset_meta["std"], cfg,
                         progress=False)
    assert torch.allclose(torch.tensor(run["prune"]["scores"]), scores, atol=1e-5)
    keep = run["prune"]["kept"]
    for c in range(10):
        mine = [i for i in range(len(syn)) if syn.labels[i] == c]
        assert sorted(i for i in keep if i in mine) == sorted(sorted(mine, key=lambda i: float(scores[i]))[:2])
    assert torch.equal(pruned.latents, syn.latents[torch.tensor(keep)])
    code, _, err = cli(capsys, "prune", src, "--ipc", 4, "--out", tmp_path / "p2.safetensors")
    assert code == 2 and "not below the set's IPC" in err
