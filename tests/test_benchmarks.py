"""The storage benchmarks run end to end on the tiny dataset (their figures are in docs/results.md); a benchmark that
no test runs rots when the library moves under it."""

from __future__ import annotations

import json
import sys

import pytest
from conftest import ROOT, load_recipe

sys.path.insert(0, str(ROOT / "benchmarks"))


def bench(name: str):
    return load_recipe(ROOT / "benchmarks" / f"{name}.py")


def test_scaling_factor_keeps_the_latent_grid_with_auto():
    scaling = bench("scaling")
    assert [scaling.vae_factor(s, "auto") for s in (28, 56, 112)] == [4, 8, 16]
    assert scaling.vae_factor(112, "4") == 4
    assert scaling.untrained_vae(56, 8).latent_shape == (4, 7, 7)
    assert scaling.untrained_vae(56, 4).latent_shape == (4, 14, 14)
    with pytest.raises(ValueError, match="power of two dividing the size"):
        scaling.vae_factor(28, "3")


@pytest.mark.slow  # two short distillations and four evaluations
def test_time_to_accuracy_prints_the_ratio(tmp_path, tiny_vae_dir, capsys):
    out = tmp_path / "tta.json"
    bench("time_to_accuracy").main(["--ipc", "2", "--steps", "2", "--eval-every", "1", "--eval-epochs", "1",
                                     "--batch-real", "4", "--workdir", str(tmp_path), "--out", str(out),
                                     "--latent", "--backbone", str(tiny_vae_dir)])
    printed = capsys.readouterr().out
    assert "time-to-accuracy ratio" in printed
    result = json.loads(out.read_text())
    assert [p["step"] for p in result["pixel"]["points"]] == [0, 1, 2]
    assert [p["step"] for p in result["latent"]["points"]] == [0, 1, 2]
    assert result["latent"]["config"]["backbone"] == str(tiny_vae_dir)
    assert result["target"] == result["pixel"]["points"][-1]["accuracy"]
    assert result["latent"]["setup_cpu_seconds"] > 0 and result["pixel"]["setup_cpu_seconds"] > 0
    assert "latent set-up" in printed and "pixel  set-up" in printed
    # the pixel curve reused: only the latent run is made; other settings are refused
    again = tmp_path / "again.json"
    tta = bench("time_to_accuracy")
    tta.main(["--ipc", "2", "--steps", "2", "--eval-every", "1", "--eval-epochs", "1", "--batch-real", "4",
              "--workdir", str(tmp_path), "--out", str(again), "--pixel-from", str(out),
              "--latent", "--backbone", str(tiny_vae_dir), "--match-space", "latent"])
    assert json.loads(again.read_text())["pixel"] == result["pixel"]
    budget = tmp_path / "budget.json"  # a storage-matched latent set against the same pixel curve
    tta.main(["--ipc", "2", "--steps", "2", "--eval-every", "1", "--eval-epochs", "1", "--batch-real", "4",
              "--workdir", str(tmp_path), "--out", str(budget), "--pixel-from", str(out),
              "--latent", "--backbone", str(tiny_vae_dir), "--match-space", "latent", "--ipc-budget", "1"])
    latent = json.loads(budget.read_text())["latent"]
    assert latent["config"]["ipc_budget"] == 1 and [p["step"] for p in latent["points"]] == [0, 1, 2]
    with pytest.raises(SystemExit, match=r"made with other settings \(eval_epochs\)"):
        tta.main(["--ipc", "2", "--steps", "2", "--eval-every", "1", "--eval-epochs", "2", "--batch-real", "4",
                  "--pixel-from", str(out), "--latent", "--backbone", str(tiny_vae_dir)])


@pytest.mark.slow  # trains a net on 40 decoded images
def test_decoder_ceiling_writes_its_json(tmp_path, tiny_vae_dir, capsys):
    out = tmp_path / "ceiling.json"
    bench("decoder_ceiling").main(["--backbone", str(tiny_vae_dir), "--epochs", "2", "--limit", "40", "--no-raw",
                                   "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["images"] == 40 and "decoded" in result and "raw" not in result
    assert 0 <= result["decoded"]["mean"] <= 1
    progress = [line.split(" (")[0] for line in capsys.readouterr().err.splitlines()]
    assert progress == ["decoded run 1/1: epoch 1/2", "decoded run 1/1: epoch 2/2"]


@pytest.mark.slow  # trains a net on 40 raw images
def test_decoder_ceiling_only_raw_skips_the_backbone_images(tmp_path, tiny_vae_dir):
    out = tmp_path / "raw.json"
    bench("decoder_ceiling").main(["--backbone", str(tiny_vae_dir), "--epochs", "1", "--limit", "40", "--only", "raw",
                                   "--latent-dtype", "int4", "--out", str(out)])
    result = json.loads(out.read_text())
    assert "raw" in result and "decoded" not in result and result["psnr_db"] is None
    assert result["latent_dtype"] == "int4"


def test_decoder_ceiling_rejects_an_unknown_dtype(tiny_vae_dir, capsys):
    with pytest.raises(SystemExit) as e:
        bench("decoder_ceiling").main(["--backbone", str(tiny_vae_dir), "--latent-dtype", "int3"])
    assert e.value.code == 2 and "unknown --latent-dtype 'int3'" in capsys.readouterr().err


def test_reconstruct_through_a_storage_codec(tiny_vae_dir):
    """A storage class's ceiling: the codes of all the images stored as one set of that dtype, read back, decoded."""
    import torch

    from gendistill.backbones import load_backbone
    from gendistill.evaluate import psnr, reconstruct
    from gendistill.storage import get_codec

    vae = load_backbone(str(tiny_vae_dir), image_shape=(1, 28, 28))
    images = torch.rand(30, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    plain = reconstruct(vae, images, batch=7)
    assert torch.equal(reconstruct(vae, images, batch=7, codec=get_codec("float32")), plain)
    codes = torch.cat([vae.encode(images[i : i + 7]) for i in range(0, 30, 7)])
    int4 = get_codec("int4")
    expected = vae.decode(int4.decode(int4.encode(codes))).float().clamp(0, 1)
    got = reconstruct(vae, images, batch=7, codec=int4)
    assert got.shape == plain.shape and torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(got, plain, atol=1e-4)  # 16 levels a channel move the decoding
    assert psnr(got, plain) > 20  # but not far


def test_eval_autoencoder_psnr_only(tmp_path, tiny_vae_dir, capsys):
    """``--classifier-epochs 0`` measures PSNR alone (how the second shipped VAE's quality was recorded)."""
    out = tmp_path / "q.json"
    assert load_recipe(ROOT / "recipes" / "eval_autoencoder.py").main(
        ["--backbone", str(tiny_vae_dir), "--limit", "20", "--classifier-epochs", "0", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["test_images"] == 20 and result["psnr_db"] > 0 and "classifier_acc_real" not in result
    assert capsys.readouterr().out.strip().endswith(f"PSNR {result['psnr_db']:.2f} dB")


def test_cpu_allocator_runs_the_command_with_and_without_the_tuned_allocator(capsys, monkeypatch):
    alloc = bench("cpu_allocator")
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "123")  # the default run must not inherit the user's setting
    probe = "import os; print(os.environ.get('MALLOC_MMAP_THRESHOLD_'), os.environ.get('MALLOC_TRIM_THRESHOLD_'))"
    assert alloc.run([sys.executable, "-c", probe], tuned=False)["stdout"] == "None None\n"
    tuned = alloc.run([sys.executable, "-c", probe], tuned=True)
    assert tuned["stdout"] == f"{4 << 30} {4 << 30}\n" and tuned["user"] >= 0 and tuned["peak_mib"] > 0
    assert alloc.main(["--", sys.executable, "-c", probe]) == 0
    printed = capsys.readouterr().out
    assert "allocator speed ratio" in printed and "different results" in printed  # the two environments differ
    with pytest.raises(SystemExit, match="exited 3"):
        alloc.main(["--", sys.executable, "-c", "raise SystemExit(3)"])
    with pytest.raises(SystemExit):
        alloc.main([])  # neither a set nor a command


def test_vq_fidelity_measures_every_dtype(tmp_path, tiny_vae_dir, capsys):
    out = tmp_path / "fidelity.json"
    result = bench("vq_fidelity").main(["--backbone", str(tiny_vae_dir), "--images", "40", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    rows = {r["dtype"]: r for r in result["rows"]}
    assert list(rows) == ["float32", "float16", "int8", "int4", "sq4", "vq8", "vq4"] and result["images"] == 40
    # bytes fall and counts rise down the list; the errors are measured, not assumed: zero only for float32
    assert [rows[d]["latent_bytes"] for d in rows] == sorted((rows[d]["latent_bytes"] for d in rows), reverse=True)
    assert rows["float32"]["latent_rel_sq_error"] == 0 < rows["float16"]["latent_rel_sq_error"]
    assert rows["int4"]["latent_rel_sq_error"] > rows["int8"]["latent_rel_sq_error"]
    assert rows["sq4"]["latent_bytes"] == rows["int4"]["latent_bytes"]  # the same codes, levels where the numbers are
    errors = [rows[d]["latent_rel_sq_error"] for d in ("int4", "sq4", "int8")]
    assert errors == sorted(errors, reverse=True) and errors[1] < errors[0]
    assert rows["vq4"]["latent_rel_sq_error"] > rows["vq8"]["latent_rel_sq_error"] > 0
    assert rows["vq4"]["per_class_budget10"] > rows["vq8"]["per_class_budget10"]
    assert rows["float16"]["psnr_vs_float32"] > rows["vq4"]["psnr_vs_float32"]
    assert "vq8" in capsys.readouterr().out


@pytest.mark.slow  # a real torch.compile (a C compiler, about 10 s)
def test_eval_compile_prints_the_ratio_and_the_same_loss(tmp_path, capsys):
    out = tmp_path / "compile.json"
    bench("eval_compile").main(["--images", "20", "--epochs", "1", "--out", str(out)])
    printed = capsys.readouterr().out
    assert "compile speed ratio" in printed
    r = json.loads(out.read_text())
    assert r["steps_per_epoch"] == 1 and r["timed_epochs"] == 1
    assert r["plain"]["loss"] == pytest.approx(r["compiled"]["loss"], abs=1e-3)  # the same maths, fused kernels
    assert r["ratio"] > 0


def test_eval_compile_refuses_a_count_below_one():
    with pytest.raises(SystemExit):
        bench("eval_compile").main(["--images", "0"])
