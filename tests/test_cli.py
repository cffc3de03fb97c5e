"""The ``gendistill`` command, run in-process: every command works, and every bad input is one clean line.

A bad input means: exit code 2, exactly one line on stderr starting with ``error:``, no traceback, no output file.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import cli
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from gendistill.cli import main

IPC = 2


def assert_ok(result):
    code, out, err = result
    assert code == 0, err
    assert "Traceback" not in err
    return out


def assert_user_error(result, *fragments):
    code, out, err = result
    assert code == 2, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


def _metadata(path):
    with safe_open(str(path), framework="pt") as f:
        return f.metadata()


# ------------------------------------------------------------------------------------- shared artefacts


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def set_file(workdir, tiny_vae_dir, tiny_idx_dir):
    """An initialised set (IPC 2) written by ``gendistill init`` once for the module."""
    path = workdir / "set.safetensors"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GENDISTILL_FASHION_MNIST_DIR", str(tiny_idx_dir))
        mp.setenv("GENDISTILL_CACHE", str(workdir / "cache"))
        with pytest.raises(SystemExit) as e:
            main(["init", "--backbone", str(tiny_vae_dir), "--ipc", str(IPC), "--out", str(path)])
    assert e.value.code == 0
    return path


@pytest.fixture(scope="module")
def images_file(workdir, set_file):
    path = workdir / "images.safetensors"
    with pytest.raises(SystemExit) as e:
        main(["export", str(set_file), "--out", str(path)])
    assert e.value.code == 0
    return path


def _rewrite(src, dst, tensors=None, metadata=None):
    """Copy a set file, replacing some tensors and metadata entries."""
    t = load_file(str(src))
    m = _metadata(src)
    t.update(tensors or {})
    m.update(metadata or {})
    save_file(t, str(dst), metadata=m)
    return dst


# ---------------------------------------------------------------------------------------------- commands


def test_init(capsys, tmp_path, tiny_vae_dir):
    out_file = tmp_path / "init.safetensors"
    out = assert_ok(cli(capsys, "init", "--backbone", tiny_vae_dir, "--ipc", IPC, "--out", out_file))
    assert "wrote" in out and str(out_file) in out
    t = load_file(str(out_file))
    assert t["latents"].shape == (10 * IPC, 2, 14, 14) and t["latents"].dtype == torch.float32
    assert t["labels"].tolist() == [c for c in range(10) for _ in range(IPC)]
    meta = _metadata(out_file)
    assert meta["gendistill.format"] == "1"
    assert json.loads(meta["gendistill.backbone"])["source"] == tiny_vae_dir.name  # by name + sha256, never a path
    assert str(tmp_path) not in meta["gendistill.run"] and str(tiny_vae_dir) not in meta["gendistill.run"]
    assert json.loads(meta["gendistill.dataset"])["name"] == "fashion-mnist"
    run = json.loads(meta["gendistill.run"])
    assert run["ipc"] == IPC and run["seed"] == 0 and run["config"]["ipc"] == IPC and run["init"] == "real"


def test_init_is_deterministic(capsys, tmp_path, tiny_vae_dir, set_file):
    out_file = tmp_path / "again.safetensors"
    assert_ok(cli(capsys, "init", "--backbone", tiny_vae_dir, "--ipc", IPC, "--out", out_file))
    assert torch.equal(load_file(str(out_file))["latents"], load_file(str(set_file))["latents"])


@pytest.mark.parametrize("init", ["mean", "noise", "kmeans"])
def test_init_methods(capsys, tmp_path, tiny_vae_dir, init):
    out_file = tmp_path / f"{init}.safetensors"
    assert_ok(cli(capsys, "init", "--backbone", tiny_vae_dir, "--ipc", 1, "--init", init, "--seed", 3, "--out",
                  out_file))
    assert load_file(str(out_file))["latents"].shape == (10, 2, 14, 14)


def test_init_pixel_and_sample(capsys, tmp_path):
    out_file = tmp_path / "pixel.safetensors"
    assert_ok(cli(capsys, "init", "--backbone", "pixel", "--ipc", 1, "--out", out_file))
    t = load_file(str(out_file))
    assert t["latents"].shape == (10, 1, 28, 28) and 0 <= t["latents"].min() and t["latents"].max() <= 1
    assert_ok(cli(capsys, "sample", out_file, "--out", tmp_path / "g.png"))
    assert Image.open(tmp_path / "g.png").size == ((28 + 2) * 1 * 2 + 4, (28 + 2) * 10 * 2 + 4)


def test_info_text(capsys, set_file, tiny_vae_dir):
    out = assert_ok(cli(capsys, "info", set_file))
    assert "latents: float32 (20, 2, 14, 14)" in out
    assert "labels: int64 (20,)" in out
    assert f"ipc       {IPC} per class (hard labels)" in out
    assert "fashion-mnist 10 classes" in out and tiny_vae_dir.name in out
    assert "decoded images" not in out


def test_info_json(capsys, set_file, tiny_vae_dir):
    from gendistill.backbones import load_backbone

    info = json.loads(assert_ok(cli(capsys, "info", set_file, "--json")))
    assert info["tensors"]["latents"] == {"shape": [20, 2, 14, 14], "dtype": "float32"}
    assert info["ipc"] == IPC and info["per_class"] == [IPC] * 10 and info["soft_labels"] is False
    assert info["decoded"] is False and info["bytes"] == set_file.stat().st_size
    assert info["backbone"]["sha256"] == load_backbone(str(tiny_vae_dir)).weights_sha256()
    assert info["dataset"]["num_classes"] == 10 and info["run"]["method"] == "init"


def test_info_soft_labels_and_lr(capsys, tmp_path, set_file):
    soft = torch.full((20, 10), 0.01)
    soft[torch.arange(20), torch.arange(20) % 10] = 0.91
    path = _rewrite(set_file, tmp_path / "soft.safetensors", {"labels": soft, "lr": torch.tensor(0.05)})
    info = json.loads(assert_ok(cli(capsys, "info", path, "--json")))
    assert info["soft_labels"] is True and info["per_class"] == [2] * 10 and info["lr"] == pytest.approx(0.05)
    assert "lr        0.05" in assert_ok(cli(capsys, "info", path))


def test_sample(capsys, tmp_path, set_file):
    grid = tmp_path / "grid.png"
    out = assert_ok(cli(capsys, "sample", set_file, "--out", grid))
    assert str(grid) in out
    im = Image.open(grid)
    assert im.format == "PNG"
    # 10 rows x IPC columns of 28x28 tiles with 2-pixel padding, scaled x2
    assert im.size == (((28 + 2) * IPC + 2) * 2, ((28 + 2) * 10 + 2) * 2)
    assert_ok(cli(capsys, "sample", set_file, "--out", tmp_path / "one.png", "--per-class", 1, "--scale", 1))
    assert Image.open(tmp_path / "one.png").size == (28 + 4, (28 + 2) * 10 + 2)


def test_export_safetensors(capsys, images_file, set_file, tiny_vae_dir):
    from gendistill.backbones import load_backbone
    from gendistill.synthetic import SyntheticSet

    t = load_file(str(images_file))
    assert set(t) == {"images", "labels"}
    x = t["images"]
    assert x.dtype == torch.float32 and x.shape == (10 * IPC, 1, 28, 28)
    assert 0 <= x.min() and x.max() <= 1
    assert torch.equal(t["labels"], load_file(str(set_file))["labels"])
    meta = _metadata(images_file)
    assert meta["gendistill.decoded"] == "1" and meta["gendistill.format"] == "1"
    for key in ("gendistill.backbone", "gendistill.dataset", "gendistill.run"):
        assert json.loads(meta[key]) == json.loads(_metadata(set_file)[key])
    expected = SyntheticSet.load(set_file).decode(load_backbone(str(tiny_vae_dir)))
    torch.testing.assert_close(x, expected, rtol=1e-5, atol=1e-6)


def test_info_on_exported_file(capsys, images_file):
    out = assert_ok(cli(capsys, "info", images_file))
    assert "decoded images" in out and "images: float32 (20, 1, 28, 28)" in out
    info = json.loads(assert_ok(cli(capsys, "info", images_file, "--json")))
    assert info["decoded"] is True and info["ipc"] == IPC


def test_export_imagefolder(capsys, tmp_path, set_file, images_file):
    d = tmp_path / "folder"
    assert_ok(cli(capsys, "export", set_file, "--format", "imagefolder", "--out", d))
    folders = sorted(p for p in d.iterdir() if p.is_dir())
    assert len(folders) == 10 and folders[0].name == "000_T-shirt_top" and folders[9].name == "009_Ankle_boot"
    for f in folders:
        pngs = sorted(f.glob("*.png"))
        assert [p.name for p in pngs] == ["00000.png", "00001.png"]
        im = Image.open(pngs[0])
        assert im.mode == "L" and im.size == (28, 28)
    meta = json.loads((d / "metadata.json").read_text())
    assert meta["gendistill.format"] == "1"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    images = load_file(str(images_file))["images"]
    first = torch.from_numpy(__import__("numpy").array(Image.open(folders[0] / "00000.png"))).float() / 255
    torch.testing.assert_close(first, images[0, 0], atol=1 / 255 + 1e-6, rtol=0)
    # the exported folder is itself a dataset gendistill can read
    shutil.copytree(d, tmp_path / "ds" / "train", ignore=shutil.ignore_patterns("metadata.json"))
    shutil.copytree(d, tmp_path / "ds" / "test", ignore=shutil.ignore_patterns("metadata.json"))
    from gendistill.data import get_dataset

    ds = get_dataset("imagefolder", data_dir=str(tmp_path / "ds"))
    assert len(ds) == 20 and ds.image_shape == (1, 28, 28)


def test_eval_set_file(capsys, tmp_path, set_file):
    src = tmp_path / "s.safetensors"
    shutil.copy(set_file, src)
    out = assert_ok(cli(capsys, "eval", src, "--epochs", 2, "--runs", 1))
    result_file = tmp_path / "s.eval.json"
    assert str(result_file) in out
    r = json.loads(result_file.read_text())
    assert 0 <= r["mean"] <= 1 and r["std"] == 0
    assert r["settings"]["epochs"] == 2 and r["settings"]["runs"] == 1
    assert r["dataset"] == "fashion-mnist" and r["num_images"] == 10 * IPC and r["set"] == str(src)
    assert len(r["archs"]["convnet"]["accs"]) == 1


@pytest.mark.slow  # end to end, over a second of CPU
def test_table_reads_the_set_and_every_eval_beside_it(capsys, tmp_path, set_file):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(set_file, run / "set.safetensors")
    assert_ok(cli(capsys, "eval", run / "set.safetensors", "--epochs", 2, "--runs", 2))  # -> run/set.eval.json
    assert_ok(cli(capsys, "eval", run / "set.safetensors", "--epochs", 1, "--runs", 1, "--arch", "mlp", "--out", run
                  / "mlp.eval.json"))
    out = assert_ok(cli(capsys, "table", run, "--json"))
    row = json.loads(out)[0]
    assert row["ipc"] == IPC and row["bytes"] == (run / "set.safetensors").stat().st_size and row["backbone"] == "vae"
    assert row["archs"]["convnet"]["runs"] == 2 and row["archs"]["convnet"]["epochs"] == 2
    assert row["archs"]["mlp"]["runs"] == 1 and row["archs"]["mlp"]["epochs"] == 1
    assert abs(row["convnet_drop"] - (row["archs"]["convnet"]["mean"] - row["archs"]["mlp"]["mean"])) < 1e-12
    table = assert_ok(cli(capsys, "table", run, set_file)).splitlines()
    assert table[0].endswith("| convnet % | mlp % | convnet - mean of others (points) |") and len(table) == 4
    mean = 100 * json.loads((run / "set.eval.json").read_text())["mean"]
    assert f"{mean:.2f} +- " in table[2] and table[2].endswith(f"| {100 * row['convnet_drop']:.2f} |")
    assert table[3].endswith("| - | - | - |")  # the bare set file has no eval beside it
    assert_user_error(cli(capsys, "table", tmp_path / "missing"), "missing", "does not exist")


def test_table_reports_the_recorded_ipc_of_soft_labels_whose_argmax_moved(capsys, tmp_path, set_file):
    run = tmp_path / "run"
    run.mkdir()
    hard = load_file(str(set_file))["labels"]
    soft = torch.nn.functional.one_hot(hard, 10).float()
    soft[0] = torch.nn.functional.one_hot(torch.tensor((int(hard[0]) + 1) % 10), 10).float()  # DATM moved one sample
    _rewrite(set_file, run / "set.safetensors", tensors={"labels": soft})
    row = json.loads(assert_ok(cli(capsys, "table", run, "--json")))[0]
    assert row["ipc"] == IPC and row["soft_labels"]


def test_table_names_the_matching_net_and_calls_a_pixel_backbones_space_pixel(capsys, tmp_path, set_file):
    run = tmp_path / "run"
    run.mkdir()
    meta = _metadata(set_file)
    backbone = {**json.loads(meta["gendistill.backbone"]), "kind": "pixel"}
    record = json.loads(meta["gendistill.run"])
    record["config"] = {**record.get("config", {}), "net": "convnet", "depth": 3, "width": 32, "match_space": "latent"}
    _rewrite(set_file, run / "set.safetensors", metadata={"gendistill.backbone": json.dumps(backbone),
                                                          "gendistill.run": json.dumps(record)})
    row = json.loads(assert_ok(cli(capsys, "table", run, "--json")))[0]
    assert row["match_space"] == "pixel" and row["match_net"] == "convnet-3 w32"
    assert "| convnet-3 w32 |" in assert_ok(cli(capsys, "table", run))


def test_eval_images_file(capsys, tmp_path, images_file):
    result_file = tmp_path / "r.json"
    assert_ok(cli(capsys, "eval", images_file, "--epochs", 2, "--runs", 1, "--out", result_file))
    r = json.loads(result_file.read_text())
    assert {"mean", "std", "settings"} <= set(r) and r["num_images"] == 10 * IPC


# ------------------------------------------------------------------------------------------- bad inputs


FILE_COMMANDS = ["info", "sample", "export", "eval"]
DECODING_COMMANDS = ["sample", "export", "eval"]


def _outputs(tmp_path, command):
    """Extra arguments for ``command`` and the output paths it must not leave behind."""
    if command == "info":
        return [], []
    out = tmp_path / {"sample": "grid.png", "export": "exported.safetensors", "eval": "result.json"}[command]
    extra = ["--out", out] + (["--epochs", 1, "--runs", 1] if command == "eval" else [])
    return extra, [out]


def _check_bad(capsys, tmp_path, command, path, *fragments):
    extra, outputs = _outputs(tmp_path, command)
    before = set(tmp_path.rglob("*"))
    line = assert_user_error(cli(capsys, command, path, *extra), *fragments)
    for o in outputs:
        assert not o.exists()
    assert set(tmp_path.rglob("*")) == before  # nothing written, not even a default eval JSON or a temporary file
    return line


def _make_missing(tmp_path, set_file):
    return tmp_path / "missing.safetensors"


def _make_truncated(tmp_path, set_file):
    data = set_file.read_bytes()
    p = tmp_path / "truncated.safetensors"
    p.write_bytes(data[: len(data) // 2])
    return p


def _make_text(tmp_path, set_file):
    p = tmp_path / "notes.safetensors"
    p.write_text("just some text\n" * 10)
    return p


def _make_no_metadata(tmp_path, set_file):
    p = tmp_path / "plain.safetensors"
    save_file(load_file(str(set_file)), str(p))
    return p


def _make_bad_version(tmp_path, set_file):
    return _rewrite(set_file, tmp_path / "v99.safetensors", metadata={"gendistill.format": "99"})


@pytest.mark.parametrize("command", FILE_COMMANDS)
@pytest.mark.parametrize("make, fragment", [
    (_make_missing, "does not exist"),
    (_make_truncated, "not a readable safetensors file"),
    (_make_text, "not a readable safetensors file"),
    (_make_no_metadata, "no gendistill metadata"),
    (_make_bad_version, "format version '99'"),
], ids=["missing", "truncated", "not-safetensors", "no-metadata", "unknown-version"])
def test_bad_files(capsys, tmp_path, set_file, command, make, fragment):
    path = make(tmp_path, set_file)
    _check_bad(capsys, tmp_path, command, path, fragment)


@pytest.mark.parametrize("command", DECODING_COMMANDS)
def test_label_count_mismatch(capsys, tmp_path, set_file, command):
    labels = load_file(str(set_file))["labels"][:-3].clone()
    path = _rewrite(set_file, tmp_path / "counts.safetensors", {"labels": labels})
    _check_bad(capsys, tmp_path, command, path, "20 latents", "labels of shape (17,)")


@pytest.mark.parametrize("command", DECODING_COMMANDS)
def test_latent_shape_vs_record(capsys, tmp_path, set_file, command):
    path = _rewrite(set_file, tmp_path / "shape.safetensors", {"latents": torch.zeros(20, 2, 7, 7)})
    _check_bad(capsys, tmp_path, command, path, "recorded backbone latent shape")


@pytest.mark.parametrize("command", DECODING_COMMANDS)
def test_latent_shape_vs_backbone(capsys, tmp_path, set_file, command):
    backbone = json.loads(_metadata(set_file)["gendistill.backbone"]) | {"latent_shape": [2, 7, 7]}
    path = _rewrite(set_file, tmp_path / "shape.safetensors", {"latents": torch.zeros(20, 2, 7, 7)},
                    {"gendistill.backbone": json.dumps(backbone)})
    _check_bad(capsys, tmp_path, command, path, "(2, 7, 7)", "(2, 14, 14)")


@pytest.mark.parametrize("command", DECODING_COMMANDS)
def test_backbone_hash_mismatch(capsys, tmp_path, set_file, tiny_vae_dir_other, command):
    from gendistill.backbones import load_backbone

    want = json.loads(_metadata(set_file)["gendistill.backbone"])["sha256"]
    have = load_backbone(str(tiny_vae_dir_other)).weights_sha256()
    extra, outputs = _outputs(tmp_path, command)
    before = set(tmp_path.rglob("*"))
    assert_user_error(cli(capsys, command, set_file, "--backbone", tiny_vae_dir_other, *extra),
                      "hash mismatch", want[:16], have[:16], "--ignore-backbone-hash")
    assert set(tmp_path.rglob("*")) == before
    assert_ok(cli(capsys, command, set_file, "--backbone", tiny_vae_dir_other, "--ignore-backbone-hash", *extra))
    for o in outputs:
        assert o.exists()


def test_recorded_hash_edited(capsys, tmp_path, set_file):
    backbone = json.loads(_metadata(set_file)["gendistill.backbone"]) | {"sha256": "f" * 64}
    path = _rewrite(set_file, tmp_path / "h.safetensors", metadata={"gendistill.backbone": json.dumps(backbone)})
    assert_user_error(cli(capsys, "export", path, "--out", tmp_path / "x.safetensors"), "hash mismatch", "f" * 16)
    assert not (tmp_path / "x.safetensors").exists()


@pytest.fixture
def unet_dir(tmp_path):
    d = tmp_path / "unet"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    return d


@pytest.mark.parametrize("command", DECODING_COMMANDS)
def test_backbone_not_autoencoder(capsys, tmp_path, set_file, unet_dir, command):
    extra, outputs = _outputs(tmp_path, command)
    assert_user_error(cli(capsys, command, set_file, "--backbone", unet_dir, *extra), "UNet2DModel")
    for o in outputs:
        assert not o.exists()


def test_init_backbone_not_autoencoder(capsys, tmp_path, unet_dir):
    out = tmp_path / "s.safetensors"
    assert_user_error(cli(capsys, "init", "--backbone", unet_dir, "--ipc", 1, "--out", out), "UNet2DModel")
    assert not out.exists()


def test_unknown_backbone(capsys, tmp_path, set_file):
    out = tmp_path / "s.safetensors"
    assert_user_error(cli(capsys, "init", "--backbone", "no-such-backbone", "--ipc", 1, "--out", out),
                      "unknown backbone")
    assert not out.exists()
    assert_user_error(cli(capsys, "sample", set_file, "--backbone", "no-such-backbone", "--out", tmp_path / "g.png"),
                      "unknown backbone")
    assert not (tmp_path / "g.png").exists()


def test_unknown_dataset(capsys, tmp_path, images_file):
    out = tmp_path / "s.safetensors"
    code, _, err = cli(capsys, "init", "--dataset", "no-such-set", "--ipc", 1, "--out", out)
    assert code == 2 and "no-such-set" in err and "Traceback" not in err  # argparse's own choices error
    assert not out.exists()
    result = tmp_path / "r.json"
    assert_user_error(cli(capsys, "eval", images_file, "--dataset", "no-such-set", "--epochs", 1, "--runs", 1,
                          "--out", result), "unknown dataset", "fashion-mnist")
    assert not result.exists()


def test_bad_ipc(capsys, tmp_path, tiny_vae_dir):
    out = tmp_path / "s.safetensors"
    assert_user_error(cli(capsys, "init", "--backbone", tiny_vae_dir, "--ipc", 0, "--out", out), "--ipc")
    code, _, err = cli(capsys, "init", "--backbone", tiny_vae_dir, "--ipc", 21, "--out", out)
    # the cache may log its "encoding ..." line first; the error is still one clean line
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("error: ") and "lower --ipc" in err and err.count("error:") == 1
    assert not out.exists()


def test_missing_output_directory(capsys, tmp_path, set_file, tiny_vae_dir):
    missing = tmp_path / "no" / "such"
    cases = [
        ["init", "--backbone", tiny_vae_dir, "--ipc", 1, "--out", missing / "s.safetensors"],
        ["sample", set_file, "--out", missing / "g.png"],
        ["export", set_file, "--out", missing / "e.safetensors"],
        ["export", set_file, "--format", "imagefolder", "--out", missing / "folder"],
        ["eval", set_file, "--epochs", 1, "--runs", 1, "--out", missing / "r.json"],
    ]
    for argv in cases:
        assert_user_error(cli(capsys, *argv), "does not exist", "mkdir -p")
        assert not (tmp_path / "no").exists()


def test_missing_dataset_files(capsys, tmp_path, monkeypatch, no_system_fashion, tiny_vae_dir, images_file):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("GENDISTILL_FASHION_MNIST_DIR", str(empty))
    out = tmp_path / "s.safetensors"
    assert_user_error(cli(capsys, "init", "--backbone", tiny_vae_dir, "--ipc", 1, "--out", out),
                      "apt-get install -y dataset-fashion-mnist")
    assert not out.exists()
    result = tmp_path / "r.json"
    assert_user_error(cli(capsys, "eval", images_file, "--epochs", 1, "--runs", 1, "--out", result),
                      "apt-get install -y dataset-fashion-mnist")
    assert not result.exists()


def test_decoded_file_without_images(capsys, tmp_path, images_file):
    path = tmp_path / "broken.safetensors"
    t = load_file(str(images_file))
    save_file({"labels": t["labels"]}, str(path), metadata=_metadata(images_file))
    assert_user_error(cli(capsys, "eval", path, "--epochs", 1, "--runs", 1, "--out", tmp_path / "r.json"),
                      "has no 'images' tensor")
    assert not (tmp_path / "r.json").exists()


def test_parsers_are_built_once_and_again_when_a_registry_gains_a_name():
    from gendistill import cli
    from gendistill.config import _config_parser
    from gendistill.pipeline import RecipeConfig
    from gendistill.registry import Registry

    first, flags = cli.cached_parser(), _config_parser(RecipeConfig, None)
    assert cli.cached_parser() is first and _config_parser(RecipeConfig, None) is flags
    Registry("test thing").register("new")(object())  # a plug-in registering a name: choices may have changed
    assert cli.cached_parser() is not first and _config_parser(RecipeConfig, None) is not flags
