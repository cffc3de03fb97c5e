"""Real samplers: DREAM batches cover every sub-cluster of a class and come from near its centre; ``uniform`` is the
split itself, so the default loop is unchanged; ``--real-sampler dream`` runs in a recipe, refused where no real data
is drawn."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import load_recipe
from safetensors import safe_open

from gendistill.cache import LatentSplit
from gendistill.sampler import DreamSplit, real_sampler

ROOT = Path(__file__).resolve().parents[1]


def blobs(per_blob=10, blobs_per_class=4, classes=2, seed=0) -> LatentSplit:
    """Each class is ``blobs_per_class`` tight, far-apart blobs of ``per_blob`` 2-d points; the truth is in ``blob``."""
    g = torch.Generator().manual_seed(seed)
    xs, ys, truth = [], [], []
    for c in range(classes):
        for b in range(blobs_per_class):
            centre = torch.tensor([100.0 * b, 100.0 * c])
            xs.append(centre + 0.5 * torch.randn(per_blob, 2, generator=g))
            ys += [c] * per_blob
            truth += [b] * per_blob
    split = LatentSplit(torch.cat(xs).view(-1, 2, 1, 1), torch.tensor(ys), classes)
    split.blob = torch.tensor(truth)
    return split


@pytest.fixture
def split():
    return blobs()


def test_uniform_is_the_split_itself(split):
    assert real_sampler("uniform", split, 8) is split


def test_dream_finds_the_blobs(split):
    d = DreamSplit.build(split, 4, torch.Generator().manual_seed(0))
    for c in range(2):
        idx = split.class_indices(c)
        pairs = set(zip(d.cluster[idx].tolist(), split.blob[idx].tolist()))
        assert len(pairs) == 4 and len({a for a, _ in pairs}) == 4  # one k-means sub-cluster per blob


@pytest.mark.parametrize("n", [4, 6, 8, 12, 40])
def test_dream_batches_cover_every_cluster_evenly(split, n):
    d = real_sampler("dream", split, n, torch.Generator().manual_seed(0), clusters=4)
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        for c in range(2):
            rows = d.sample_class(c, n, g)
            assert len(rows) == n and len(set(rows.tolist())) == n and (split.labels[rows] == c).all()
            counts = torch.bincount(d.cluster[rows], minlength=4)
            assert (counts > 0).all() and int(counts.max() - counts.min()) <= 1  # every cluster, equal shares


def test_dream_draws_from_the_core_of_each_cluster(split):
    d = real_sampler("dream", split, 8, torch.Generator().manual_seed(0), clusters=4)
    g = torch.Generator().manual_seed(2)
    seen = set()
    for _ in range(20):
        rows = d.sample_class(0, 4, g)
        assert (d.rank[rows] < math.ceil(0.25 * 10)).all()  # one of the 3 nearest their centre in a 10-member cluster
        seen.add(tuple(sorted(rows.tolist())))
    assert len(seen) > 1  # batches differ from step to step


def test_dream_fewer_than_clusters_and_whole_class(split):
    d = real_sampler("dream", split, 8, torch.Generator().manual_seed(0), clusters=4)
    rows = d.sample_class(1, 3, torch.Generator().manual_seed(0))
    assert len(set(d.cluster[rows].tolist())) == 3  # three samples from three different clusters
    assert sorted(d.sample_class(1, 40).tolist()) == split.class_indices(1).tolist()
    with pytest.raises(ValueError, match="fewer than the 41"):
        d.sample_class(1, 41)


def test_dream_default_clusters_is_the_batch(split):
    assert real_sampler("dream", split, 5).clusters == 5
    with pytest.raises(ValueError, match="dream-clusters"):
        real_sampler("dream", split, 5, clusters=-1)
    with pytest.raises(ValueError, match="unknown real sampler"):
        real_sampler("magic", split, 5)


def test_dream_is_reproducible_from_its_generators(split):
    a = real_sampler("dream", split, 4, torch.Generator().manual_seed(0), clusters=4)
    b = real_sampler("dream", split, 4, torch.Generator().manual_seed(0), clusters=4)
    assert torch.equal(a.cluster, b.cluster)
    assert torch.equal(a.sample_class(0, 4, torch.Generator().manual_seed(3)),
                       b.sample_class(0, 4, torch.Generator().manual_seed(3)))


def test_dream_shard_keeps_the_clusters(split):
    d = real_sampler("dream", split, 4, torch.Generator().manual_seed(0), clusters=4)
    s = d.shard(1, 2)
    assert isinstance(s, DreamSplit) and len(s.labels) == 40
    rows = s.sample_class(0, 4, torch.Generator().manual_seed(0))
    assert len(set(s.cluster[rows].tolist())) == 4


def _run(tmp_path, recipe, *args):
    out = tmp_path / "run"
    argv = ["--output", str(out), "--ipc", "1", "--steps", "2", "--batch-real", "4", "--eval-runs", "0", "--depth", "2",
            "--width", "8", *map(str, args)]
    assert load_recipe(ROOT / "recipes" / recipe).main(argv) == 0
    return out


def test_recipe_with_dream_sampler(tmp_path, tiny_vae_dir):
    out = _run(tmp_path, "latent_dm.py", "--backbone", tiny_vae_dir, "--match-space", "latent", "--init", "real",
               "--real-sampler", "dream", "--dream-clusters", "2")
    with safe_open(str(out / "set.safetensors"), framework="pt") as f:
        import json

        config = json.loads(f.metadata()["gendistill.run"])["config"]
    assert config["real_sampler"] == "dream" and config["dream_clusters"] == 2


def test_dream_refused_where_no_real_batch_is_drawn(tmp_path):
    from types import SimpleNamespace

    from gendistill.objectives.trajectory import TrajectoryMatching
    from gendistill.pipeline import sampled_real

    assert TrajectoryMatching.samples_real is False  # MTT, TESLA, DATM (subclasses) match experts only
    experts_only = TrajectoryMatching.__new__(TrajectoryMatching)
    cfg = SimpleNamespace(real_sampler="dream", batch_real=4, seed=0, dream_clusters=0)
    with pytest.raises(ValueError, match="draws none"):
        sampled_real(cfg, SimpleNamespace(real=blobs()), experts_only)
    uniform = SimpleNamespace(real_sampler="uniform", batch_real=4, seed=0, dream_clusters=0)
    pieces = SimpleNamespace(real=blobs())
    assert sampled_real(uniform, pieces, experts_only) is pieces.real
    assert isinstance(sampled_real(cfg, pieces, object()), DreamSplit)  # objectives draw real data unless they say not
