"""Soft-label relabelling: teachers saved as safetensors + JSON (no pickle), probabilities as labels, their bytes
counted."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import cli, ok
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from gendistill.backbones import load_backbone
from gendistill.cli import main
from gendistill.data import normalize
from gendistill.select import derived_set
from gendistill.storage import latents_per_class
from gendistill.synthetic import SyntheticSet
from gendistill.teacher import load_teacher

NET = ["--net-width", 4, "--net-depth", 1, "--net-epochs", 1]


def user_error(result, fragment):
    code, out, err = result
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("error:") and "Traceback" not in err, err
    assert fragment in err, err
    return err


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, tiny_idx_dir):
    d = tmp_path_factory.mktemp("t") / "teacher"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GENDISTILL_FASHION_MNIST_DIR", str(tiny_idx_dir))
        with pytest.raises(SystemExit) as e:
            main(["relabel", "--train-teacher", "--teacher", str(d), "--test-teacher", *map(str, NET)])
    assert e.value.code == 0
    return d


@pytest.fixture(scope="module")
def set_file(tmp_path_factory, tiny_vae_dir, tiny_idx_dir):
    path = tmp_path_factory.mktemp("s") / "set.safetensors"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GENDISTILL_FASHION_MNIST_DIR", str(tiny_idx_dir))
        mp.setenv("GENDISTILL_CACHE", str(path.parent / "cache"))
        with pytest.raises(SystemExit) as e:
            main(["init", "--backbone", str(tiny_vae_dir), "--ipc", "2", "--out", str(path)])
    assert e.value.code == 0
    return path


def test_teacher_files_are_safetensors_and_json(teacher_dir):
    assert sorted(p.name for p in teacher_dir.iterdir()) == ["teacher.json", "teacher.safetensors"]
    info = json.loads((teacher_dir / "teacher.json").read_text())
    assert info["training"]["width"] == 4 and info["training"]["epochs"] == 1 and info["num_classes"] == 10
    assert 0.0 <= info["measured"]["test_accuracy"] <= 1.0
    load_file(str(teacher_dir / "teacher.safetensors"))  # plain tensors
    t = load_teacher(teacher_dir)
    assert t.sha256 == info["sha256"] and t.dataset["name"] == "fashion-mnist"


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_relabel_writes_teacher_probabilities(capsys, tmp_path, teacher_dir, set_file, tiny_vae_dir, temperature):
    out = tmp_path / "soft.safetensors"
    text = ok(cli(capsys, "relabel", set_file, "--teacher", teacher_dir, "--out", out, "--temperature", temperature))
    src, soft = SyntheticSet.load(set_file), SyntheticSet.load(out)
    assert soft.labels.shape == (20, 10) and soft.labels.dtype == torch.float32 and soft.soft
    assert torch.allclose(soft.labels.sum(1), torch.ones(20), atol=1e-5)
    assert torch.equal(soft.latents, src.latents)  # only the labels change
    teacher = load_teacher(teacher_dir)
    images = src.decode(load_backbone(str(tiny_vae_dir)))
    with torch.no_grad():
        logits = teacher.net(normalize(images, teacher.dataset["mean"], teacher.dataset["std"]))
    assert torch.allclose(soft.labels, (logits / temperature).softmax(1), atol=1e-5)
    record = soft.run_meta["relabel"]
    assert record["label_bytes"] == 20 * 10 * 4 and record["previous_label_bytes"] == 20 * 8
    assert record["temperature"] == temperature and record["teacher"]["sha256"] == teacher.sha256
    assert f"{20 * 10 * 4:,} bytes" in text
    info = json.loads(ok(cli(capsys, "info", out, "--json")))
    assert info["soft_labels"] is True and info["tensors"]["labels"]["shape"] == [20, 10]
    ledger = info["storage"]  # the storage ledger counts the soft labels' bytes
    assert ledger["labels"] == {"kind": "soft", "dtype": "float32", "bytes": 20 * 10 * 4} and not ledger["computed"]
    assert ledger["total_bytes"] == ledger["latents"]["bytes"] + 800 + ledger["lr_bytes"]


def test_relabel_half_precision_labels(capsys, tmp_path, teacher_dir, set_file, tiny_idx_dir, monkeypatch):
    full, half = tmp_path / "f32.safetensors", tmp_path / "f16.safetensors"
    ok(cli(capsys, "relabel", set_file, "--teacher", teacher_dir, "--out", full))
    text = ok(cli(capsys, "relabel", set_file, "--teacher", teacher_dir, "--out", half, "--label-dtype", "float16"))
    f32, f16 = SyntheticSet.load(full), SyntheticSet.load(half)
    assert f16.labels.dtype == torch.float16 and "float16" in text and f"{20 * 10 * 2:,} bytes" in text
    assert torch.allclose(f16.labels.float(), f32.labels, atol=1e-3) and not torch.equal(f16.labels.float(), f32.labels)
    info = json.loads(ok(cli(capsys, "info", half, "--json")))
    assert info["storage"]["labels"] == {"kind": "soft", "dtype": "float16", "bytes": 20 * 10 * 2}
    assert f16.run_meta["relabel"]["label_dtype"] == "float16"
    monkeypatch.setenv("GENDISTILL_FASHION_MNIST_DIR", str(tiny_idx_dir))
    ok(cli(capsys, "eval", half, "--epochs", 1, "--runs", 1, "--out", tmp_path / "e.json"))  # trains on them
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["soft_labels"] is True and 0 <= result["mean"] <= 1 and result["last_batch"] == 20


def test_relabel_fits_a_budget_with_the_soft_labels_counted(capsys, tmp_path, teacher_dir, set_file):
    src = SyntheticSet.load(set_file)
    shape, image_shape = tuple(src.latents.shape[1:]), src.dataset_meta["image_shape"]
    code, label, unit = math.prod(shape) * 4, 10 * 2, 10 * math.prod(image_shape) * 4
    one = 10 * (code + label) / unit  # exactly one latent per class with its float16 label
    assert latents_per_class(one, shape, image_shape, 10, label_bytes=label) == 1
    out = tmp_path / "trim.safetensors"
    text = ok(cli(capsys, "relabel", set_file, "--teacher", teacher_dir, "--out", out, "--label-dtype", "float16",
                  "--ipc-budget", one * 1.5))  # 1.5 latents' worth: still one per class
    soft = SyntheticSet.load(out)
    first = torch.stack([torch.nonzero(src.labels == c).flatten()[0] for c in range(10)])
    assert torch.equal(soft.latents, src.latents[first]) and len(soft) == 10 and soft.labels.dtype == torch.float16
    assert "kept the first 1 latents of each class (10 of 20)" in text
    assert "ends with a step" not in text  # 10 images are one batch; 260 would end each epoch with a 4-image step
    record = soft.run_meta["relabel"]
    assert record["kept"] == first.tolist() and record["ipc_budget"] == pytest.approx(one * 1.5)
    assert soft.run_meta["ipc"] == 1 and record["source_count"] == 20
    ledger = json.loads(ok(cli(capsys, "info", out, "--json")))["storage"]
    assert ledger["budget_ipc_with_labels"] == pytest.approx(one) and ledger["latents"]["count"] == 10
    roomy = tmp_path / "all.safetensors"  # two per class fit: nothing is dropped
    text = ok(cli(capsys, "relabel", set_file, "--teacher", teacher_dir, "--out", roomy, "--ipc-budget", 100))
    assert len(SyntheticSet.load(roomy)) == 20 and "kept" not in text
    user_error(cli(capsys, "relabel", set_file, "--teacher", teacher_dir, "--out", tmp_path / "x.safetensors",
                   "--label-dtype", "float16", "--ipc-budget", one / 2), "and its 20 B label")
    images = tmp_path / "images.safetensors"
    ok(cli(capsys, "export", set_file, "--out", images))
    user_error(cli(capsys, "relabel", images, "--teacher", teacher_dir, "--out", tmp_path / "x.safetensors",
                   "--ipc-budget", 1), "decoded-images file")
    assert not (tmp_path / "x.safetensors").exists()


def test_relabel_budget_names_a_small_last_batch(capsys, tmp_path, teacher_dir, set_file):
    two = SyntheticSet.load(set_file)  # 2 per class: repeat them to 27 per class (270 latents)
    keep = torch.cat([torch.nonzero(two.labels == c).flatten().repeat(14)[:27] for c in range(10)])
    big = tmp_path / "big.safetensors"
    derived_set(two, dict(two.run_meta), keep=keep).save(big)
    src = SyntheticSet.load(big)
    shape, image_shape = tuple(src.latents.shape[1:]), src.dataset_meta["image_shape"]
    b26 = 26 * 10 * (math.prod(shape) * 4 + 40) / (10 * math.prod(image_shape) * 4)  # 26 per class, float32 labels
    text = ok(cli(capsys, "relabel", big, "--teacher", teacher_dir, "--out", tmp_path / "x.safetensors",
                  "--ipc-budget", b26))
    assert "(260 of 270)" in text and "ends with a step on 4 images" in text
    assert len(SyntheticSet.load(tmp_path / "x.safetensors")) == 260


def test_relabel_decoded_images_file(capsys, tmp_path, teacher_dir, set_file):
    images = tmp_path / "images.safetensors"
    ok(cli(capsys, "export", set_file, "--out", images))
    out = tmp_path / "soft-images.safetensors"
    ok(cli(capsys, "relabel", images, "--teacher", teacher_dir, "--out", out))
    t = load_file(str(out))
    assert t["labels"].shape == (20, 10) and torch.equal(t["images"], load_file(str(images))["images"])
    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
    assert meta["gendistill.decoded"] == "1" and "relabel" in json.loads(meta["gendistill.run"])
    ledger = json.loads(meta["gendistill.storage"])
    assert ledger["labels"] == {"kind": "soft", "dtype": "float32", "bytes": 20 * 10
                                * 4} and ledger["images"]["count"] == 20


def test_relabel_errors(capsys, tmp_path, teacher_dir, set_file):
    user_error(cli(capsys, "relabel", set_file, "--teacher", tmp_path / "none", "--out", tmp_path / "o.safetensors"),
               "--train-teacher")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "teacher.json").write_text((teacher_dir / "teacher.json").read_text())
    w = load_file(str(teacher_dir / "teacher.safetensors"))
    w = {k: v + 1 if v.is_floating_point() else v for k, v in w.items()}
    save_file(w, str(bad / "teacher.safetensors"))
    user_error(cli(capsys, "relabel", set_file, "--teacher", bad, "--out", tmp_path / "o.safetensors"), "sha256")
    (bad / "teacher.json").write_text("{not json")
    user_error(cli(capsys, "relabel", set_file, "--teacher", bad, "--out", tmp_path / "o.safetensors"),
               "not valid JSON")
    user_error(cli(capsys, "relabel", set_file, "--teacher", teacher_dir), "--out")
    user_error(cli(capsys, "relabel", set_file, "--teacher", teacher_dir, "--out", tmp_path / "o.safetensors",
                   "--temperature", 0),
               "temperature")
    assert not (tmp_path / "o.safetensors").exists()


def test_teacher_and_outputs_are_never_replaced_unasked(capsys, tmp_path, teacher_dir, set_file):
    before = (teacher_dir / "teacher.safetensors").read_bytes()
    user_error(cli(capsys, "relabel", "--train-teacher", "--teacher", teacher_dir, *NET), "--overwrite")
    assert (teacher_dir / "teacher.safetensors").read_bytes() == before
    user_error(cli(capsys, "relabel", set_file, "--teacher", teacher_dir, "--out", set_file), "replace the input")
    user_error(cli(capsys, "prune", set_file, "--ipc", 1, "--out", set_file), "replace the input")


def _sre2l_teacher(directory, space="pixel", record=True):
    """A tiny teacher folder as recipes/sre2l.py writes it (config.json), trained on nothing."""
    from gendistill.data import get_dataset
    from gendistill.nets import fresh_net
    from gendistill.sre2l import TeacherConfig, save_teacher, teacher_meta

    shape = (1, 28, 28) if space == "pixel" else (4, 7, 7)
    dataset = get_dataset("fashion-mnist", "test").meta()
    backbone = type("Backbone", (), {"weights_sha256": lambda self: "0" * 64})()
    meta = teacher_meta(TeacherConfig(depth=1, width=4), space, shape, 10, dataset, backbone)
    if not record:
        del meta["dataset_record"]
    net = fresh_net("convnet-bn", shape, 10, torch.Generator().manual_seed(0), depth=1, width=4)
    save_teacher(net, directory, meta)
    return net


@pytest.mark.parametrize("record", [True, False])
def test_relabel_reads_an_sre2l_teacher(capsys, tmp_path, set_file, tiny_vae_dir, tiny_idx_dir, monkeypatch, record):
    """One kind of teacher folder serves both commands: an SRe2L run's teacher relabels any set (older folders without
    the dataset record fall back on the built-in dataset's normalisation)."""
    monkeypatch.setenv("GENDISTILL_FASHION_MNIST_DIR", str(tiny_idx_dir))
    net = _sre2l_teacher(tmp_path / "sre2l-teacher", record=record).eval()
    out = tmp_path / "soft.safetensors"
    ok(cli(capsys, "relabel", set_file, "--teacher", tmp_path / "sre2l-teacher", "--out", out, "--temperature", 2))
    soft = SyntheticSet.load(out)
    images = SyntheticSet.load(set_file).decode(load_backbone(str(tiny_vae_dir)))
    with torch.no_grad():
        want = (net(normalize(images, (0.2860,), (0.3530,))) / 2).softmax(1)
    assert torch.allclose(soft.labels, want, atol=1e-5)
    teacher = soft.run_meta["relabel"]["teacher"]
    assert teacher["source"] == "sre2l-teacher" and teacher["training"]["kind"] == "sre2l"
    assert teacher["training"]["net"] == "convnet-bn"


def test_sre2l_teacher_refusals(capsys, tmp_path, set_file, tiny_idx_dir, monkeypatch):
    monkeypatch.setenv("GENDISTILL_FASHION_MNIST_DIR", str(tiny_idx_dir))
    _sre2l_teacher(tmp_path / "latent", space="latent")
    user_error(cli(capsys, "relabel", set_file, "--teacher", tmp_path / "latent", "--out", tmp_path / "o.safetensors"),
               "needs a teacher of images")
    _sre2l_teacher(tmp_path / "t")
    w = load_file(str(tmp_path / "t" / "teacher.safetensors"))
    save_file({k: v + 1 if v.is_floating_point() else v for k, v in w.items()}, str(tmp_path / "t" /
                                                                                   "teacher.safetensors"))
    user_error(cli(capsys, "relabel", set_file, "--teacher", tmp_path / "t", "--out", tmp_path / "o.safetensors"),
               "sha256")
    assert not (tmp_path / "o.safetensors").exists()
