"""SyntheticSet: initialisers, decode, and the set-file contract (save/load round trip and every load error)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from gendistill import __version__
from gendistill.backbones import load_backbone
from gendistill.cache import cached_latents
from gendistill.data import get_dataset
from gendistill.synthetic import FORMAT_VERSION, HASH_FLAG, INITS, SyntheticSet, kmeans, read_metadata

IPC = 3


@pytest.fixture(scope="module")
def vae(tiny_vae_dir):
    return load_backbone(str(tiny_vae_dir))


@pytest.fixture(scope="module")
def train(tiny_idx_dir):
    return get_dataset("fashion-mnist", data_dir=str(tiny_idx_dir))  # module scope: the env fixture is per test


@pytest.fixture(scope="module")
def real(vae, train, tmp_path_factory):
    return cached_latents(vae, train, root=tmp_path_factory.mktemp("cache"), log=lambda m: None)


@pytest.fixture
def syn(real, vae, train):
    return SyntheticSet.initialise("real", real, IPC, vae, train.meta(), torch.Generator().manual_seed(0),
                                   run={"method": "init", "ipc": IPC, "steps": 0, "seed": 0,
                                        "config": {"a": 1, "b": [1, 2]}})


# ----------------------------------------------------------------------------------------------- creation


def test_inits_registered():
    assert set(INITS.names()) >= {"real", "mean", "noise", "kmeans"}


@pytest.mark.parametrize("method", ["real", "mean", "noise", "kmeans"])
def test_initialise(method, real, vae, train):
    s = SyntheticSet.initialise(method, real, IPC, vae, train.meta(), torch.Generator().manual_seed(0))
    assert s.latents.shape == (10 * IPC, 2, 14, 14) and s.latents.dtype == torch.float32
    assert isinstance(s.latents, torch.nn.Parameter) and s.latents.requires_grad
    assert s.labels.tolist() == [c for c in range(10) for _ in range(IPC)]
    assert s.ipc == IPC and s.num_classes == 10 and len(s) == 10 * IPC and not s.soft
    assert torch.isfinite(s.latents).all()
    assert s.run_meta["init"] == method and s.backbone_meta == vae.describe() and s.dataset_meta == train.meta()
    for c in range(10):
        block = s.latents[s.class_indices(c)]
        assert len(torch.unique(block.flatten(1), dim=0)) == IPC  # the ipc latents of a class differ
    again = SyntheticSet.initialise(method, real, IPC, vae, train.meta(), torch.Generator().manual_seed(0))
    assert torch.equal(again.latents, s.latents)  # randomness comes from the generator only


@pytest.mark.parametrize("method", ["real", "kmeans"])
def test_initialise_picks_real_members(method, real, vae, train):
    s = SyntheticSet.initialise(method, real, IPC, vae, train.meta(), torch.Generator().manual_seed(1))
    for c in range(10):
        members = real.latents[real.class_indices(c)].flatten(1)
        for z in s.latents[s.class_indices(c)].detach().flatten(1):
            assert (members == z).all(1).any()


def test_initialise_errors(real, vae, train):
    with pytest.raises(ValueError, match="at least 1"):
        SyntheticSet.initialise("real", real, 0, vae, train.meta())
    with pytest.raises(ValueError, match="unknown initialisation"):
        SyntheticSet.initialise("magic", real, 1, vae, train.meta())
    for method in ("real", "kmeans"):
        with pytest.raises(ValueError, match="fewer than"):
            SyntheticSet.initialise(method, real, 21, vae, train.meta())


def test_kmeans_separates_blobs():
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(10, 2, generator=g) * 0.1 + 5, torch.randn(10, 2, generator=g) * 0.1 - 5])
    centres, assign = kmeans(x, 2, generator=torch.Generator().manual_seed(0))
    assert sorted(centres[:, 0].round().tolist()) == [-5.0, 5.0]
    assert len(set(assign[:10].tolist())) == 1 and len(set(assign[10:].tolist())) == 1 and assign[0] != assign[10]


def test_constructor_validation():
    with pytest.raises(ValueError, match="latents but labels"):
        SyntheticSet(torch.zeros(3, 2), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="latents but labels"):
        SyntheticSet(torch.zeros(3, 2), torch.zeros(3, 2, 2))


def test_soft_labels_views():
    labels = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.0, 0.1, 0.9], [0.6, 0.2, 0.2]])
    s = SyntheticSet(torch.zeros(4, 2), labels)
    assert s.soft and s.num_classes == 3 and s.hard_labels.tolist() == [0, 1, 2, 0] and s.ipc == 2


def test_decode(syn, vae):
    x = syn.decode(vae, batch=7)
    assert x.shape == (len(syn), 1, 28, 28) and 0 <= x.min() and x.max() <= 1
    assert not x.requires_grad
    torch.testing.assert_close(x, vae.decode(syn.latents.detach()).clamp(0, 1), rtol=1e-4, atol=1e-5)
    raw = syn.decode(vae, clamp=False)
    assert raw.shape == x.shape


# ----------------------------------------------------------------------------------------- save and load


def _meta(path):
    with safe_open(str(path), framework="pt") as f:
        return f.metadata()


def test_save_load_round_trip(tmp_path, syn, vae, train):
    path = tmp_path / "set.safetensors"
    syn.save(path, run={"extra": "yes"})
    meta = _meta(path)
    assert meta["gendistill.format"] == FORMAT_VERSION == "1"
    b = json.loads(meta["gendistill.backbone"])
    assert b["sha256"] == vae.weights_sha256() and b["latent_shape"] == [2, 14, 14]
    assert b["kind"] == "vae" and b["source"] == vae.source and b["scaling"]["scaling_factor"] == pytest.approx(0.18215)
    d = json.loads(meta["gendistill.dataset"])
    assert d == {"name": "fashion-mnist", "num_classes": 10, "image_shape": [1, 28, 28], "mean": [0.2860],
                 "std": [0.3530], "classes": train.classes}
    r = json.loads(meta["gendistill.run"])
    assert r["package_version"] == __version__ and r["method"] == "init" and r["ipc"] == IPC and r["steps"] == 0
    assert r["seed"] == 0 and r["config"] == {"a": 1, "b": [1, 2]} and r["init"] == "real" and r["extra"] == "yes"

    loaded = SyntheticSet.load(path, backbone=vae)
    assert torch.equal(loaded.latents, syn.latents) and torch.equal(loaded.labels, syn.labels)
    assert loaded.labels.dtype == torch.int64 and loaded.lr is None
    assert loaded.backbone_meta == b and loaded.dataset_meta == d and loaded.run_meta == r
    loaded.save(tmp_path / "again.safetensors")
    assert _meta(tmp_path / "again.safetensors") == meta  # a reload/resave keeps every field
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_soft_labels_and_lr_round_trip(tmp_path, syn):
    soft = torch.softmax(torch.randn(len(syn), 10, generator=torch.Generator().manual_seed(0)), 1)
    s = SyntheticSet(syn.latents, soft, lr=0.0123, backbone=syn.backbone_meta, dataset=syn.dataset_meta,
                     run=syn.run_meta)
    assert isinstance(s.lr, torch.nn.Parameter) and s.lr.shape == ()
    s.save(tmp_path / "soft.safetensors")
    loaded = SyntheticSet.load(tmp_path / "soft.safetensors")
    assert loaded.soft and loaded.labels.dtype == torch.float32 and loaded.labels.shape == (len(syn), 10)
    assert torch.equal(loaded.labels, soft)
    assert loaded.lr is not None and loaded.lr.item() == pytest.approx(0.0123)
    assert torch.equal(loaded.latents, syn.latents)


def _write(path, tensors, metadata):
    save_file(tensors, str(path), metadata=metadata)
    return path


def test_load_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SyntheticSet.load(tmp_path / "nope.safetensors")


def test_load_not_safetensors(tmp_path):
    path = tmp_path / "x.safetensors"
    path.write_text("hello, I am a text file\n")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        SyntheticSet.load(path)


def test_load_truncated(tmp_path, syn):
    path = tmp_path / "t.safetensors"
    syn.save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        SyntheticSet.load(path)


def test_load_without_metadata(tmp_path):
    path = _write(tmp_path / "plain.safetensors", {"latents": torch.zeros(2, 3),
                                                   "labels": torch.zeros(2, dtype=torch.int64)}, None)
    with pytest.raises(ValueError, match="no gendistill metadata"):
        SyntheticSet.load(path)


def test_load_unknown_version(tmp_path, syn):
    meta = syn.metadata() | {"gendistill.format": "99"}
    path = _write(tmp_path / "v99.safetensors", {"latents": syn.latents.detach(), "labels": syn.labels}, meta)
    with pytest.raises(ValueError, match="format version '99'"):
        SyntheticSet.load(path)


def test_load_bad_json_record(tmp_path, syn):
    meta = syn.metadata() | {"gendistill.run": "{oops"}
    path = _write(tmp_path / "j.safetensors", {"latents": syn.latents.detach(), "labels": syn.labels}, meta)
    with pytest.raises(ValueError, match="gendistill.run is not valid JSON"):
        SyntheticSet.load(path)


def test_load_missing_tensor(tmp_path, syn):
    path = _write(tmp_path / "m.safetensors", {"latents": syn.latents.detach()}, syn.metadata())
    with pytest.raises(ValueError, match="no 'labels' tensor"):
        SyntheticSet.load(path)


def test_load_label_count_mismatch(tmp_path, syn):
    path = _write(tmp_path / "c.safetensors", {"latents": syn.latents.detach(), "labels": syn.labels[:-1].clone()},
                  syn.metadata())
    with pytest.raises(ValueError, match="inconsistent"):
        SyntheticSet.load(path)


def test_load_latent_shape_vs_record(tmp_path, syn):
    path = _write(tmp_path / "s.safetensors", {"latents": torch.zeros(len(syn), 2, 7, 7), "labels": syn.labels},
                  syn.metadata())
    with pytest.raises(ValueError, match="recorded backbone latent shape"):
        SyntheticSet.load(path)


def test_load_latent_shape_vs_backbone(tmp_path, syn, vae):
    meta = syn.metadata()
    b = json.loads(meta["gendistill.backbone"]) | {"latent_shape": [2, 7, 7]}
    meta["gendistill.backbone"] = json.dumps(b)
    path = _write(tmp_path / "s.safetensors", {"latents": torch.zeros(len(syn), 2, 7, 7), "labels": syn.labels}, meta)
    SyntheticSet.load(path)  # consistent on its own
    with pytest.raises(ValueError, match=r"backbone .* makes \(2, 14, 14\)"):
        SyntheticSet.load(path, backbone=vae)
    with pytest.raises(ValueError, match="makes"):
        SyntheticSet.load(path, backbone=vae, ignore_hash=True)  # the shape check is not waived


def test_load_backbone_hash_mismatch(tmp_path, syn, tiny_vae_dir_other):
    other = load_backbone(str(tiny_vae_dir_other))
    path = tmp_path / "h.safetensors"
    syn.save(path)
    want, have = syn.backbone_meta["sha256"], other.weights_sha256()
    with pytest.raises(ValueError, match="hash mismatch") as e:
        SyntheticSet.load(path, backbone=other)
    msg = str(e.value)
    assert want[:16] in msg and have[:16] in msg and HASH_FLAG in msg and HASH_FLAG == "--ignore-backbone-hash"
    loaded = SyntheticSet.load(path, backbone=other, ignore_hash=True)
    assert torch.equal(loaded.latents, syn.latents)


def test_read_metadata_direct():
    with pytest.raises(ValueError, match="no gendistill metadata"):
        read_metadata("f", {})
    out = read_metadata("f", {"gendistill.format": FORMAT_VERSION})
    assert out == {"backbone": {}, "dataset": {}, "run": {}}


def test_save_into_missing_directory(tmp_path, syn):
    target = tmp_path / "no" / "such" / "dir" / "set.safetensors"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        syn.save(target)
    assert not (tmp_path / "no").exists()
    assert list(tmp_path.iterdir()) == []


def test_save_failure_leaves_no_partial_file(tmp_path, syn, monkeypatch):
    import gendistill.io as gio

    path = tmp_path / "set.safetensors"

    def failing_save(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(gio, "save_file", failing_save)
    with pytest.raises(OSError, match="disk full"):
        syn.save(path)
    assert list(tmp_path.iterdir()) == []


def test_save_overwrites_atomically(tmp_path, syn):
    path = tmp_path / "set.safetensors"
    syn.save(path)
    s2 = SyntheticSet(syn.latents * 2, syn.labels, backbone=syn.backbone_meta, dataset=syn.dataset_meta)
    s2.save(path)
    assert torch.equal(SyntheticSet.load(path).latents, syn.latents * 2)
    assert [p.name for p in tmp_path.iterdir()] == ["set.safetensors"]


def test_check_backbone_notices_scaling_change(tmp_path, syn, tiny_vae_dir):
    import shutil

    shutil.copytree(tiny_vae_dir, tmp_path / "rescaled")
    cfg_file = tmp_path / "rescaled" / "config.json"
    cfg_file.write_text(json.dumps(json.loads(cfg_file.read_text()) | {"scaling_factor": 1.0}))
    rescaled = load_backbone(str(tmp_path / "rescaled"))
    try:
        syn.check_backbone(rescaled)
    except ValueError:
        return
    pytest.fail("a backbone with a different scaling_factor was accepted: decoding would silently be wrong")
