"""The latent cache: encode once per (backbone hash, dataset split), reuse, rebuild when stale."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import fast_first

from gendistill.backbones import load_backbone
from gendistill.cache import LatentSplit, cache_dir, cached_latents, default_cache_root
from gendistill.data import get_dataset


@pytest.fixture
def vae(tiny_vae_dir):
    return load_backbone(str(tiny_vae_dir))


@pytest.fixture
def train():
    return get_dataset("fashion-mnist")


class Log(list):
    def __call__(self, msg):
        self.append(msg)


def _expected(backbone, ds):
    order = torch.cat([ds.class_indices(c) for c in range(ds.num_classes)])
    with torch.no_grad():
        return backbone.encode(ds.float_images(order)), ds.labels[order]


def _forbid_encode(monkeypatch, backbone):
    def boom(*a, **k):
        raise AssertionError("encode called on a cache hit")

    monkeypatch.setattr(backbone, "encode", boom)


def test_default_root_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("GENDISTILL_CACHE", str(tmp_path / "c"))
    assert default_cache_root() == tmp_path / "c"


def test_miss_encodes_and_writes(tmp_path, vae, train):
    log = Log()
    split = cached_latents(vae, train, root=tmp_path, log=log)
    d = cache_dir(vae, train, tmp_path)
    assert d.parent == tmp_path and d.name == f"fashion-mnist-train-{vae.weights_sha256()[:16]}"
    assert sorted(p.name for p in d.iterdir()) == sorted([f"class_{c:04d}.safetensors" for c in range(10)]
                                                         + ["meta.json"])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary directory left behind
    meta = json.loads((d / "meta.json").read_text())
    assert meta["backbone_sha256"] == vae.weights_sha256()
    assert meta["counts"] == [20] * 10 and meta["latent_shape"] == [2, 14, 14] and meta["num_classes"] == 10
    assert meta["dataset_fingerprint"] == train.fingerprint()
    assert len(log) == 1 and "encoding" in log[0]
    z, y = _expected(vae, train)
    assert split.latents.shape == (200, 2, 14, 14) and split.num_classes == 10
    torch.testing.assert_close(split.latents, z, rtol=1e-5, atol=1e-6)
    assert torch.equal(split.labels, y)


def test_hit_does_not_encode(tmp_path, vae, train, monkeypatch):
    first = cached_latents(vae, train, root=tmp_path, log=Log())
    _forbid_encode(monkeypatch, vae)
    log = Log()
    second = cached_latents(vae, train, root=tmp_path, log=log)
    assert log == []
    assert torch.equal(first.latents, second.latents) and torch.equal(first.labels, second.labels)
    for c in range(10):
        assert (second.labels[second.class_indices(c)] == c).all()


def test_default_root_is_used(vae, train, monkeypatch, tmp_path):
    monkeypatch.setenv("GENDISTILL_CACHE", str(tmp_path / "envcache"))
    cached_latents(vae, train, log=Log())
    assert cache_dir(vae, train).parent == tmp_path / "envcache"
    assert (cache_dir(vae, train) / "meta.json").exists()


def _corrupt_shard(d):
    (d / "class_0003.safetensors").write_bytes(b"garbage, not safetensors")


def _delete_shard(d):
    (d / "class_0007.safetensors").unlink()


def _edit_meta_hash(d):
    meta = json.loads((d / "meta.json").read_text())
    meta["backbone_sha256"] = "0" * 64
    (d / "meta.json").write_text(json.dumps(meta))


def _edit_meta_counts(d):
    meta = json.loads((d / "meta.json").read_text())
    meta["counts"][2] += 1
    (d / "meta.json").write_text(json.dumps(meta))


def _bad_json_meta(d):
    (d / "meta.json").write_text("{")


def _delete_meta(d):
    (d / "meta.json").unlink()


def _wrong_shard_shape(d):
    from safetensors.torch import save_file

    save_file({"latents": torch.zeros(20, 2, 7, 7)}, str(d / "class_0001.safetensors"))


def _nan_shard(d):
    from safetensors.torch import load_file, save_file

    z = load_file(str(d / "class_0003.safetensors"))["latents"]
    z.view(-1)[5] = float("nan")
    save_file({"latents": z}, str(d / "class_0003.safetensors"))


def _integer_shard(d):
    from safetensors.torch import load_file, save_file

    z = load_file(str(d / "class_0004.safetensors"))["latents"]
    save_file({"latents": z.round().long()}, str(d / "class_0004.safetensors"))


@pytest.mark.parametrize("damage", fast_first([_corrupt_shard, _delete_shard, _edit_meta_hash, _edit_meta_counts,
                                               _bad_json_meta, _delete_meta, _wrong_shard_shape, _nan_shard,
                                               _integer_shard]))
def test_stale_is_rebuilt(tmp_path, vae, train, damage):
    first = cached_latents(vae, train, root=tmp_path, log=Log())
    d = cache_dir(vae, train, tmp_path)
    damage(d)
    log = Log()
    rebuilt = cached_latents(vae, train, root=tmp_path, log=log)
    assert len(log) == 1 and "stale" in log[0], log
    assert torch.equal(rebuilt.latents, first.latents) and torch.equal(rebuilt.labels, first.labels)
    log = Log()
    assert torch.equal(cached_latents(vae, train, root=tmp_path, log=log).latents, first.latents)
    assert log == []  # the rebuilt cache is a hit again


@pytest.mark.parametrize("meta_text", fast_first(['{"format": "1"}', "[]"]))
def test_stale_malformed_meta_is_rebuilt(tmp_path, vae, train, meta_text):
    cached_latents(vae, train, root=tmp_path, log=Log())
    d = cache_dir(vae, train, tmp_path)
    meta = json.loads((d / "meta.json").read_text())
    if meta_text.startswith("{"):
        del meta["counts"]
        meta_text = json.dumps(meta)
    (d / "meta.json").write_text(meta_text)
    log = Log()
    cached_latents(vae, train, root=tmp_path, log=log)
    assert "stale" in log[0]


def test_changed_dataset_is_stale(tmp_path, vae, train):
    cached_latents(vae, train, root=tmp_path, log=Log())
    other = get_dataset("fashion-mnist")
    other.images[0] = 255 - other.images[0]
    assert cache_dir(vae, other, tmp_path) == cache_dir(vae, train, tmp_path)
    log = Log()
    cached_latents(vae, other, root=tmp_path, log=log)
    assert "stale" in log[0] and "fingerprint" in log[0]


def test_splits_get_their_own_directory(tmp_path, vae, train):
    test = get_dataset("fashion-mnist", "test")
    a = cached_latents(vae, train, root=tmp_path, log=Log())
    b = cached_latents(vae, test, root=tmp_path, log=Log())
    assert cache_dir(vae, train, tmp_path) != cache_dir(vae, test, tmp_path)
    assert len(a.labels) == 200 and len(b.labels) == 50


def test_different_backbone_different_directory(tmp_path, vae, train, tiny_vae_dir_other):
    other = load_backbone(str(tiny_vae_dir_other))
    assert other.weights_sha256() != vae.weights_sha256()
    assert cache_dir(vae, train, tmp_path) != cache_dir(other, train, tmp_path)
    a = cached_latents(vae, train, root=tmp_path, log=Log())
    log = Log()
    b = cached_latents(other, train, root=tmp_path, log=log)
    assert "encoding" in log[0]
    assert len(list(tmp_path.iterdir())) == 2
    assert not torch.equal(a.latents, b.latents)


def test_pixel_returns_images_without_writing(tmp_path, train):
    pixel = load_backbone("pixel", image_shape=train.image_shape)
    root = tmp_path / "root"
    log = Log()
    split = cached_latents(pixel, train, root=root, log=log)
    assert not root.exists() and log == []
    assert torch.equal(split.latents, train.float_images())
    assert torch.equal(split.labels, train.labels)


def test_latent_split_sampling():
    labels = torch.arange(3).repeat(4)  # 4 per class
    split = LatentSplit(torch.arange(12, dtype=torch.float32).view(12, 1), labels, 3)
    pick = split.sample_class(1, 3, torch.Generator().manual_seed(0))
    assert len(set(pick.tolist())) == 3 and (labels[pick] == 1).all()
    with pytest.raises(ValueError, match="fewer than"):
        split.sample_class(0, 5)


def test_scaling_factor_change_is_not_a_hit(tmp_path, vae, train, tiny_vae_dir):
    import shutil

    shutil.copytree(tiny_vae_dir, tmp_path / "rescaled")
    cfg_file = tmp_path / "rescaled" / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["scaling_factor"] = 1.0
    cfg_file.write_text(json.dumps(cfg))
    rescaled = load_backbone(str(tmp_path / "rescaled"))
    root = tmp_path / "cache"
    cached_latents(vae, train, root=root, log=Log())
    got = cached_latents(rescaled, train, root=root, log=Log())
    z, _ = _expected(rescaled, train)
    torch.testing.assert_close(got.latents, z, rtol=1e-4, atol=1e-5)


def test_nan_shard_is_named_in_the_stale_message(tmp_path, vae, train):
    cached_latents(vae, train, root=tmp_path, log=Log())
    _nan_shard(cache_dir(vae, train, tmp_path))
    log = Log()
    rebuilt = cached_latents(vae, train, root=tmp_path, log=log)
    assert "shard of class 3 holds NaN or infinite latents" in log[0]
    assert torch.isfinite(rebuilt.latents).all()


def test_backbone_encoding_to_nan_is_refused_and_nothing_is_cached(tmp_path, vae, train, monkeypatch):
    real_encode = vae.encode

    def nan_for_one(x, labels=None):
        z = real_encode(x, labels=labels)
        z[min(3, len(z) - 1)] = float("nan")
        return z

    monkeypatch.setattr(vae, "encode", nan_for_one)
    with pytest.raises(ValueError, match=r"encodes 1 of the 200 fashion-mnist/train images \(first: #3\) to NaN or "
                                         r"infinite latents"):
        cached_latents(vae, train, root=tmp_path, log=Log())
    assert not cache_dir(vae, train, tmp_path).exists()
