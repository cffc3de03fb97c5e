"""Storage: the ledger's arithmetic, --ipc-budget, latent storage dtypes (int8, int4 and vq round trips), old files
without a ledger, quantisation-aware matching, and the loop's per-step subsampling (--syn-batch) and latent warm-up
(--latent-steps)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import ROOT, cli, load_recipe
from safetensors import safe_open
from safetensors.torch import save_file

from gendistill.storage import LEDGER_KEY, format_ledger, get_codec, latents_per_class, resolve_ipc
from gendistill.synthetic import SyntheticSet

FMNIST = {"name": "fashion-mnist", "num_classes": 10, "image_shape": [1, 28, 28], "mean": [0.286], "std": [0.353]}
DECODER = {"bytes": 1000, "params": 250}


def a_set(n_per_class=4, shape=(4, 7, 7), dtype="float32", soft=False, lr=None, seed=0) -> SyntheticSet:
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn((10 * n_per_class, *shape), generator=g)
    labels = torch.arange(10).repeat_interleave(n_per_class)
    if soft:
        labels = torch.nn.functional.one_hot(labels, 10).float()
    return SyntheticSet(latents, labels, lr=lr, backbone={"kind": "vae", "latent_shape": list(shape)}, dataset=FMNIST,
                        latent_dtype=dtype, decoder=DECODER)


def one_line_error(result, *fragments):
    code, out, err = result
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for f in fragments:
        assert f in lines[0], (f, lines[0])


# ---------------------------------------------------------------------------------------------------- the ledger


def test_ledger_arithmetic_against_hand_computed_bytes():
    # 40 latents of 4x7x7 float32 = 40 * 196 * 4 = 31,360 B; one float32 28x28 image = 3,136 B; 10 classes -> budget 1
    led = a_set().ledger()
    assert led["latents"] == {"count": 40, "shape": [4, 7, 7], "dtype": "float32", "bytes": 31360,
                              "quantisation_bytes": 0}
    assert led["labels"] == {"kind": "hard", "dtype": "int64", "bytes": 40 * 8}
    assert led["lr_bytes"] == 0 and led["total_bytes"] == 31360 + 320
    assert led["image_bytes"] == 3136 and led["per_class"] == 4 and led["budget_counts"] == "latents"
    assert led["budget_ipc"] == 1.0
    assert led["budget_ipc_with_labels"] == pytest.approx(31680 / 31360)
    assert led["decoder"] == DECODER  # beside the budget: not in total_bytes
    half = a_set(dtype="float16").ledger()
    assert half["latents"]["bytes"] == 15680 and half["budget_ipc"] == 0.5
    assert a_set(dtype="bfloat16").ledger()["latents"]["bytes"] == 15680
    q = a_set(dtype="int8").ledger()  # 7,840 B of int8 + 4 channels x (float32 scale + int32 zero point) = 32 B
    assert q["latents"]["bytes"] == 7840 and q["latents"]["quantisation_bytes"] == 32
    assert q["budget_ipc"] == pytest.approx(7872 / 31360) and q["total_bytes"] == 7872 + 320
    # int4: 196 numbers in 98 B per latent; scales 32 B and the latent's shape, 3 x int32 = 12 B
    q4 = a_set(dtype="int4").ledger()
    assert q4["latents"]["bytes"] == 3920 and q4["latents"]["quantisation_bytes"] == 44
    assert q4["latents"]["dtype"] == "int4" and q4["latents"]["shape"] == [4, 7, 7]  # not the packed bytes
    soft = a_set(soft=True, lr=0.01).ledger()  # soft labels: 40 x 10 float32; a learned lr: one float32
    assert soft["labels"] == {"kind": "soft", "dtype": "float32", "bytes": 1600}
    assert soft["lr_bytes"] == 4 and soft["total_bytes"] == 31360 + 1600 + 4


def test_ledger_is_written_with_the_set_and_matches_the_file(tmp_path):
    path = tmp_path / "s.safetensors"
    a_set(dtype="float16").save(path)
    with safe_open(str(path), "pt") as f:
        led = json.loads(f.metadata()[LEDGER_KEY])
        assert f.get_tensor("latents").dtype == torch.float16
        on_disk = sum(f.get_tensor(k).numel() * f.get_tensor(k).element_size() for k in f.keys())
    assert led["total_bytes"] == on_disk
    assert path.stat().st_size > on_disk  # the rest is the safetensors header and metadata, not counted


# ------------------------------------------------------------------------------------------------------ --ipc-budget


def test_budget_to_latents_per_class():
    img = (1, 28, 28)
    assert latents_per_class(1, (4, 7, 7), img, 10) == 4
    assert latents_per_class(10, (4, 7, 7), img, 10) == 40
    assert latents_per_class(1, (4, 7, 7), img, 10, "float16") == 8  # half the bytes: twice the latents
    assert latents_per_class(10, (4, 7, 7), img, 10, "bfloat16") == 80
    # int8: 196 B a latent, and the 32 B of scales the set holds once: floor((31,360 - 32) / 1,960) = 15
    assert latents_per_class(1, (4, 7, 7), img, 10, "int8") == 15
    # int4: 98 B a latent, 32 B of scales and 12 B of shape: floor((31,360 - 44) / 980) = 31; an odd count of numbers
    # rounds up to whole bytes (3x3x3: 27 numbers in 14 B)
    assert latents_per_class(1, (4, 7, 7), img, 10, "int4") == 31
    assert latents_per_class(1, (2, 7, 7), img, 10, "int4") == 63
    from gendistill.storage import latent_bytes

    assert latent_bytes((3, 3, 3), "int4") == 14 and latent_bytes((4, 7, 7), "int4") == 98
    assert latents_per_class(1, (1, 28, 28), img, 10) == 1  # pixel space: a budget of 1 is one image
    assert latents_per_class(2.6, (1, 28, 28), img, 10) == 2
    assert resolve_ipc(None, None, (4, 7, 7), img, 10) == 10 and resolve_ipc(3, None, (4, 7, 7), img, 10) == 3
    assert resolve_ipc(None, 10, (4, 7, 7), img, 10, "float16") == 80


def test_impossible_budget_unknown_dtype_and_both_flags_are_clear_errors():
    with pytest.raises(ValueError, match=r"less than one \(4, 7, 7\) float32 latent.*--ipc-budget 0.25 or more"):
        latents_per_class(0.2, (4, 7, 7), (1, 28, 28), 10)
    with pytest.raises(ValueError, match="positive"):
        latents_per_class(0, (4, 7, 7), (1, 28, 28), 10)
    with pytest.raises(ValueError, match="unknown --latent-dtype 'fp8'; choose one of: bfloat16, float16, "
                                         "float32, int4, int8, sq4, vq4, vq8"):
        get_codec("fp8")
    with pytest.raises(ValueError, match="both given"):
        resolve_ipc(3, 1.0, (4, 7, 7), (1, 28, 28), 10)
    from gendistill.pipeline import RecipeConfig

    with pytest.raises(ValueError, match="both given"):
        RecipeConfig(ipc=3, ipc_budget=1.0)
    with pytest.raises(ValueError, match="unknown --latent-dtype"):
        RecipeConfig(latent_dtype="float8")
    with pytest.raises(ValueError, match="--quantise-aware does not support --latent-dtype vq8: its codebook"):
        RecipeConfig(latent_dtype="vq8", quantise_aware=True)
    with pytest.raises(ValueError, match="does not support --latent-dtype sq4: its codebook or levels"):
        RecipeConfig(latent_dtype="sq4", quantise_aware=True)
    assert RecipeConfig().ipc == 10 and RecipeConfig(ipc_budget=1.0).ipc is None


def test_ipc_none_clears_a_config_files_ipc_for_a_budget(tmp_path):
    """The both-flags error's advice works: "--ipc none" drops a config file's ipc (a flag given as none overrides)."""
    from gendistill.config import parse_config
    from gendistill.pipeline import RecipeConfig

    cfg = tmp_path / "c.yaml"
    cfg.write_text("ipc: 10\nsteps: 7\n")
    with pytest.raises(ValueError, match=r"both given; keep one \(a config file's ipc is dropped with --ipc none\)"):
        parse_config(RecipeConfig, ["--config", str(cfg), "--ipc-budget", "10"])
    got = parse_config(RecipeConfig, ["--config", str(cfg), "--ipc", "none", "--ipc-budget", "10"])
    assert (got.ipc, got.ipc_budget, got.steps) == (None, 10.0, 7)
    assert parse_config(RecipeConfig, ["--config", str(cfg)]).ipc == 10  # flags not given leave the file's values
    assert parse_config(RecipeConfig, ["--ipc", "3"]).ipc == 3 and parse_config(RecipeConfig, []).ipc == 10


def test_cli_init_with_a_budget_and_its_bad_inputs(capsys, tmp_path, tiny_vae_dir):
    out = tmp_path / "b.safetensors"
    # the tiny VAE's latents are 2x14x14 = 392 numbers: a budget of 1 (784 float32 numbers per class) holds 2, at
    # float16 4
    code, stdout, err = cli(capsys, "init", "--backbone", tiny_vae_dir, "--ipc-budget", 1, "--latent-dtype", "float16",
                            "--out", out)
    assert code == 0, err
    syn = SyntheticSet.load(out)
    assert syn.ipc == 4 and syn.latent_dtype == "float16" and syn.ledger()["budget_ipc"] == 1.0
    code, info, _ = cli(capsys, "info", out)
    assert code == 0 and "budget    1 float32 images per class" in info and "beside the budget" in info
    bad = tmp_path / "x.safetensors"
    one_line_error(cli(capsys, "init", "--backbone", tiny_vae_dir, "--ipc-budget", 0.1, "--out", bad),
                   "--ipc-budget 0.1", "less than one")
    one_line_error(cli(capsys, "init", "--backbone", tiny_vae_dir, "--ipc", 2, "--ipc-budget", 1, "--out", bad),
                   "both given")
    one_line_error(cli(capsys, "init", "--backbone", tiny_vae_dir, "--latent-dtype", "fp8", "--out", bad),
                   "unknown --latent-dtype 'fp8'")
    one_line_error(cli(capsys, "init", "--backbone", tiny_vae_dir, "--ipc-budget", 20, "--out", bad), "smallest class",
                   "lower --ipc-budget")
    assert not bad.exists()


# ----------------------------------------------------------------------------------------------------- storage dtypes


def test_int8_round_trip_is_within_half_a_step_per_channel(tmp_path):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(30, 4, 7, 7, generator=g) * torch.tensor([0.1, 1.0, 10.0, 3.0]).view(1, 4, 1, 1) + torch.tensor(
        [0, 5, -20, 1.0]
    ).view(1, 4, 1, 1)
    z[:, 3] = 2.5  # a constant channel comes back exactly
    codec = get_codec("int8")
    stored = codec.encode(z)
    assert (
        stored["latents"].dtype == torch.int8
        and stored["latents_scale"].shape == (4,)
        and stored["latents_zero_point"].dtype == torch.int32
    )
    back = codec.decode(stored)
    spread = z.transpose(0, 1).reshape(4, -1)
    step = (spread.max(1).values - spread.min(1).values) / 255
    err = (back - z).abs().transpose(0, 1).reshape(4, -1).max(1).values
    assert torch.all(err[:3] <= step[:3] / 2 + 1e-5), (err, step)
    assert err[3] <= 1e-6
    # through a file: what load() gives is what the codec gives, and saving again does not drift
    syn = SyntheticSet(z, torch.arange(10).repeat_interleave(3), dataset=FMNIST, latent_dtype="int8")
    syn.save(tmp_path / "q.safetensors")
    loaded = SyntheticSet.load(tmp_path / "q.safetensors")
    assert loaded.latent_dtype == "int8" and torch.equal(loaded.latents, back)
    # re-quantising read-back latents keeps every code (scales move by an ulp at most)
    loaded.save(tmp_path / "q2.safetensors")
    with safe_open(str(tmp_path / "q.safetensors"), "pt") as a, safe_open(str(tmp_path / "q2.safetensors"), "pt") as b:
        assert torch.equal(a.get_tensor("latents"), b.get_tensor("latents"))
    assert torch.allclose(SyntheticSet.load(tmp_path / "q2.safetensors").latents, back, rtol=0, atol=1e-5)


@pytest.mark.parametrize("shape", [(4, 7, 7), (3, 3, 3)])  # an even and an odd count of numbers per latent
def test_int4_round_trip_is_within_half_a_step_and_packs_two_codes_a_byte(tmp_path, shape):
    g = torch.Generator().manual_seed(1)
    z = torch.randn(30, *shape, generator=g) * torch.tensor([0.1, 1.0, 10.0, 3.0][: shape[0]]).view(1, -1, 1, 1)
    z[:, -1] = -2.5  # a constant negative channel comes back exactly (codes 0..15 hold no sign)
    codec = get_codec("int4")
    stored = codec.encode(z)
    numbers = math.prod(shape)
    assert stored["latents"].dtype == torch.uint8 and stored["latents"].shape == (30, (numbers + 1) // 2)
    assert stored["latents_shape"].tolist() == list(shape) and stored["latents_shape"].dtype == torch.int32
    back = codec.decode(stored)
    assert back.shape == z.shape and back.dtype == torch.float32
    c = shape[0]
    spread = z.transpose(0, 1).reshape(c, -1)
    step = (spread.max(1).values - spread.min(1).values) / 15
    err = (back - z).abs().transpose(0, 1).reshape(c, -1).max(1).values
    assert torch.all(err[:-1] <= step[:-1] / 2 + 1e-5), (err, step)
    assert err[-1] <= 1e-6
    # 16 levels per channel, no more: the codes really are 4 bits
    assert all(len(torch.unique(back[:, i])) <= 16 for i in range(c))
    # the low nibble is the first number: unpacking by hand gives the codes the decoder used
    first = (stored["latents"][:, 0] & 0x0F).double()
    zp0, s0 = stored["latents_zero_point"][0].double(), stored["latents_scale"][0].double()
    assert torch.allclose(((first - zp0) * s0).float(), back.reshape(30, -1)[:, 0], atol=1e-6)
    syn = SyntheticSet(z, torch.arange(10).repeat_interleave(3), dataset=FMNIST, latent_dtype="int4")
    syn.save(tmp_path / "q.safetensors")
    loaded = SyntheticSet.load(tmp_path / "q.safetensors")
    assert loaded.latent_dtype == "int4" and torch.equal(loaded.latents, back)
    loaded.save(tmp_path / "q2.safetensors")  # re-saving keeps every code
    with safe_open(str(tmp_path / "q.safetensors"), "pt") as a, safe_open(str(tmp_path / "q2.safetensors"), "pt") as b:
        assert torch.equal(a.get_tensor("latents"), b.get_tensor("latents"))
    assert torch.equal(SyntheticSet(z.clone(), syn.labels, latent_dtype="int4").round_trip_().latents, back)


@pytest.mark.parametrize("damage,message", [
    (lambda t: t.pop("latents_shape"), "int4 latents but no 'latents_shape' tensor"),
    (lambda t: t.pop("latents_scale"), "int4 latents but no 'latents_scale' tensor"),
    (lambda t: t.__setitem__("latents_shape", torch.tensor([4, 7, 8], dtype=torch.int32)), "do not hold latents"),
    (lambda t: t.__setitem__("latents_shape", torch.tensor([4.0, 7, 7])), "do not hold latents"),
    (lambda t: t.__setitem__("latents_shape", torch.tensor([0, 7, 7], dtype=torch.int32)), "do not hold latents"),
])
def test_damaged_int4_set_is_a_one_line_error(tmp_path, capsys, damage, message):
    broken = damaged_set(tmp_path, "int4", damage)
    with pytest.raises(ValueError, match=message):
        SyntheticSet.load(broken)
    one_line_error(cli(capsys, "info", broken), message.split("'")[0].split(" tensor")[0])


def damaged_set(tmp_path, dtype: str, damage):
    """A set file of ``dtype`` whose tensors ``damage`` changed (metadata kept)."""
    path = tmp_path / "q.safetensors"
    a_set(dtype=dtype).save(path)
    with safe_open(str(path), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    damage(tensors)
    broken = tmp_path / "broken.safetensors"
    save_file(tensors, str(broken), metadata=meta)
    return broken


def correlated_latents(n, shape=(4, 7, 7), seed=2):
    """Latents whose channels move together, as a VAE's do: vector quantisation has structure to use."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, 1, *shape[1:], generator=g)
    mix = torch.tensor([1.0, -0.8, 0.5, 0.3][: shape[0]]).view(1, -1, *([1] * (len(shape) - 1)))
    return base * mix + 0.15 * torch.randn(n, *shape, generator=g)


@pytest.mark.parametrize("dtype,size,shape", [("vq8", 256, (4, 7, 7)), ("vq4", 16, (4, 7, 7)), ("vq4", 16, (3, 3, 3))])
def test_vq_round_trip_codebook_packing_and_file(tmp_path, dtype, size, shape):
    z = correlated_latents(60, shape)
    codec = get_codec(dtype)
    stored = codec.encode(z)
    positions = math.prod(shape[1:])
    per_latent = positions if size == 256 else (positions + 1) // 2  # one byte, or half a byte, a position
    assert stored["latents"].dtype == torch.uint8 and stored["latents"].shape == (60, per_latent)
    assert stored["latents_codebook"].shape == (size, shape[0]) and stored["latents_shape"].tolist() == list(shape)
    back = codec.decode(stored)
    assert back.shape == z.shape and back.dtype == torch.float32
    vectors = back.movedim(1, -1).reshape(-1, shape[0])
    book = stored["latents_codebook"]
    # every decoded vector is a codebook row, and the nearest row to the vector it replaces
    assert torch.cdist(vectors, book, compute_mode="donot_use_mm_for_euclid_dist").min(1).values.max() == 0
    original = z.movedim(1, -1).reshape(-1, shape[0])
    nearest = torch.cdist(original.double(), book.double()).min(1).values
    assert torch.allclose(nearest, (original - vectors).norm(dim=1).double(), atol=1e-5)
    # the low nibble is the first position (vq4): unpacking by hand gives the decoder's vector
    first = stored["latents"][:, 0] & 0x0F if size == 16 else stored["latents"][:, 0]
    assert torch.equal(book[first.long()], back.flatten(2)[:, :, 0])
    # k-means beats the scalar int4 of the same channels on these correlated latents at vq8's half of int4's bytes
    if dtype == "vq8":
        int4 = get_codec("int4")
        assert (back - z).square().mean() < (int4.decode(int4.encode(z)) - z).square().mean()
    syn = SyntheticSet(z, torch.arange(10).repeat_interleave(6), dataset=FMNIST, latent_dtype=dtype, decoder=DECODER)
    syn.save(tmp_path / "q.safetensors")
    loaded = SyntheticSet.load(tmp_path / "q.safetensors")
    assert loaded.latent_dtype == dtype and torch.equal(loaded.latents, back)
    ledger = loaded.ledger()
    assert ledger["latents"]["bytes"] == 60 * per_latent
    assert ledger["latents"]["quantisation_bytes"] == size * shape[0] * 4 + 4 * len(shape)
    assert ledger["latents"]["shape"] == list(shape) and ledger["latents"]["dtype"] == dtype
    loaded.save(tmp_path / "q2.safetensors")  # re-saving keeps every decoded vector (the codebook already fits)
    assert torch.equal(SyntheticSet.load(tmp_path / "q2.safetensors").latents, back)
    assert torch.equal(SyntheticSet(z.clone(), syn.labels, latent_dtype=dtype).round_trip_().latents, back)
    assert torch.equal(codec.encode(z)["latents"], stored["latents"])  # deterministic


def test_vq_budget_arithmetic_and_few_distinct_vectors():
    img = (1, 28, 28)
    # vq8: 49 B a 4x7x7 latent, a 256 x 4 float32 codebook (4,096 B) and the shape (12 B) once:
    # floor((313,600 - 4,108) / 490) = 631 at budget 10; vq4: 25 B, 16 x 4 x 4 + 12 = 268 B: floor(31,092 / 250) = 124
    assert latents_per_class(10, (4, 7, 7), img, 10, "vq8") == 631
    assert latents_per_class(1, (4, 7, 7), img, 10, "vq4") == 124
    from gendistill.storage import latent_bytes

    assert latent_bytes((4, 7, 7), "vq8") == 49 and latent_bytes((4, 7, 7), "vq4") == 25
    with pytest.raises(ValueError, match=r"vq8 quantises the vector at each position .* got \(512,\)"):
        latent_bytes((512,), "vq8")
    # fewer distinct vectors than rows: each is kept exactly, and the codebook still has its 256 rows
    z = torch.tensor([1.0, -2.0, 3.0]).view(3, 1, 1, 1).expand(3, 2, 2, 2).contiguous()
    stored = get_codec("vq8").encode(z)
    assert stored["latents_codebook"].shape == (256, 2) and torch.equal(get_codec("vq8").decode(stored), z)


@pytest.mark.parametrize("damage,message", [
    (lambda t: t.pop("latents_codebook"), "uint8 latents but no 'latents_scale' \\(int4\\), "),
    (lambda t: t.pop("latents_shape"), "vq8 latents but no 'latents_shape' tensor"),
    (lambda t: t.__setitem__("latents_codebook", torch.zeros(100, 4)), "matches no vq storage dtype"),
    (lambda t: t.__setitem__("latents_codebook", torch.zeros(256, 3)), "do not hold latents"),
    (lambda t: t.__setitem__("latents_shape", torch.tensor([4, 7, 8], dtype=torch.int32)), "do not hold latents"),
])
def test_damaged_vq_set_is_a_one_line_error(tmp_path, capsys, damage, message):
    broken = damaged_set(tmp_path, "vq8", damage)
    with pytest.raises(ValueError, match=message):
        SyntheticSet.load(broken)
    one_line_error(cli(capsys, "info", broken), message.split("|")[-1].split("'")[0].split(" tensor")[0])


@pytest.mark.parametrize("shape", [(4, 7, 7), (3, 3, 3)])  # an even and an odd count of numbers per latent
def test_sq4_round_trip_nearest_fitted_level_and_file(tmp_path, shape):
    g = torch.Generator().manual_seed(3)
    z = torch.randn(60, *shape, generator=g) * torch.tensor([0.1, 1.0, 10.0, 3.0][: shape[0]]).view(1, -1, 1, 1)
    codec = get_codec("sq4")
    stored = codec.encode(z)
    numbers, c = math.prod(shape), shape[0]
    assert stored["latents"].dtype == torch.uint8 and stored["latents"].shape == (60, (numbers + 1) // 2)
    assert stored["latents_levels"].shape == (c, 16) and stored["latents_shape"].tolist() == list(shape)
    levels = stored["latents_levels"]
    assert torch.all(levels[:, 1:] > levels[:, :-1])  # 16 distinct ascending levels a channel
    back = codec.decode(stored)
    assert back.shape == z.shape and back.dtype == torch.float32
    for i in range(c):  # every number comes back as its channel's nearest level
        got, orig = back[:, i].flatten(), z[:, i].flatten()
        assert torch.isin(got, levels[i]).all()
        nearest = (orig[:, None] - levels[i][None]).abs().min(1).values
        assert torch.allclose((orig - got).abs(), nearest, atol=1e-6)
        # Lloyd's fixed point: each level is the mean of the numbers it stands for
        for level in levels[i]:
            mine = orig[got == level]
            assert len(mine) == 0 or abs(float(mine.double().mean()) - float(level)) < 1e-5
    # the low nibble is the first number: unpacking by hand gives the decoder's value
    assert torch.equal(levels[0][(stored["latents"][:, 0] & 0x0F).long()], back.reshape(60, -1)[:, 0])
    # the same bytes as int4, and on bell-shaped numbers a smaller error than int4's even steps from min to max
    int4 = get_codec("int4")
    assert codec.latent_bytes(shape) == int4.latent_bytes(shape)
    assert (back - z).square().mean() < 0.8 * (int4.decode(int4.encode(z)) - z).square().mean()  # 0.54 and 0.75
    syn = SyntheticSet(z, torch.arange(10).repeat_interleave(6), dataset=FMNIST, latent_dtype="sq4", decoder=DECODER)
    syn.save(tmp_path / "q.safetensors")
    loaded = SyntheticSet.load(tmp_path / "q.safetensors")
    assert loaded.latent_dtype == "sq4" and torch.equal(loaded.latents, back)
    ledger = loaded.ledger()
    assert f"+ {16 * c * 4 + 4 * len(shape)} B sq4 levels" in "\n".join(format_ledger(ledger))
    assert ledger["latents"]["bytes"] == 60 * ((numbers + 1) // 2) and ledger["latents"]["dtype"] == "sq4"
    assert ledger["latents"]["quantisation_bytes"] == 16 * c * 4 + 4 * len(shape)
    loaded.save(tmp_path / "q2.safetensors")  # re-saving keeps every number (its levels are a fixed point)
    assert torch.equal(SyntheticSet.load(tmp_path / "q2.safetensors").latents, back)
    assert torch.equal(SyntheticSet(z.clone(), syn.labels, latent_dtype="sq4").round_trip_().latents, back)
    assert torch.equal(codec.encode(z)["latents"], stored["latents"])  # deterministic


def test_sq4_budget_arithmetic_and_few_distinct_numbers():
    # 98 B a 4x7x7 latent as int4; 16 x 4 float32 levels (256 B) and the shape (12 B): floor((313,600 - 268) / 980)
    assert latents_per_class(10, (4, 7, 7), (1, 28, 28), 10, "sq4") == 319
    assert latents_per_class(50, (4, 7, 7), (1, 28, 28), 10, "sq4") == 1599
    with pytest.raises(ValueError, match=r"sq4 stores latents of shape \(N, C, ...\)"):
        get_codec("sq4").encode(torch.randn(5))
    with pytest.raises(ValueError, match="an empty set cannot be stored as sq4"):
        get_codec("sq4").encode(torch.zeros(0, 4, 7, 7))
    # a channel of fewer than 16 distinct numbers (a constant one among them) comes back exactly
    z = torch.tensor([1.0, -2.0, 3.0]).view(3, 1, 1, 1).expand(3, 2, 2, 2).contiguous()
    z[:, 1] = -7.5
    stored = get_codec("sq4").encode(z)
    assert stored["latents_levels"].shape == (2, 16) and torch.equal(get_codec("sq4").decode(stored), z)
    # flat latents (a GAN's (N, D) codes): one row of levels per number of the latent
    flat = torch.randn(40, 6, generator=torch.Generator().manual_seed(4))
    stored = get_codec("sq4").encode(flat)
    assert stored["latents_levels"].shape == (6, 16) and stored["latents"].shape == (40, 3)
    back = get_codec("sq4").decode(stored)
    assert back.shape == flat.shape and all(torch.isin(back[:, i], stored["latents_levels"][i]).all() for i in range(6))


@pytest.mark.parametrize("damage,message", [
    (lambda t: t.pop("latents_levels"), "'latents_levels' \\(sq4\\)"),
    (lambda t: t.pop("latents_shape"), "sq4 latents but no 'latents_shape' tensor"),
    (lambda t: t.__setitem__("latents_levels", torch.zeros(4, 8)), "do not hold latents"),
    (lambda t: t.__setitem__("latents_levels", torch.zeros(3, 16)), "do not hold latents"),
    (lambda t: t.__setitem__("latents_shape", torch.tensor([4, 7, 8], dtype=torch.int32)), "do not hold latents"),
])
def test_damaged_sq4_set_is_a_one_line_error(tmp_path, capsys, damage, message):
    broken = damaged_set(tmp_path, "sq4", damage)
    with pytest.raises(ValueError, match=message):
        SyntheticSet.load(broken)
    one_line_error(cli(capsys, "info", broken), message.replace("\\", "").split("'")[0].split(" tensor")[0] or "sq4")


@pytest.mark.parametrize("dtype,tol", [("float16", 1e-3), ("bfloat16", 8e-3)])
def test_float_dtypes_round_trip_within_their_precision(tmp_path, dtype, tol):
    syn = a_set(dtype=dtype)
    syn.save(tmp_path / "h.safetensors")
    loaded = SyntheticSet.load(tmp_path / "h.safetensors")
    assert loaded.latent_dtype == dtype and loaded.latents.dtype == torch.float32
    rel = ((loaded.latents - syn.latents).abs() / syn.latents.abs().clamp_min(1e-3)).max()
    assert 0 < rel <= tol
    rounded = a_set(dtype=dtype).round_trip_()  # what the recipe evaluates equals what the file holds
    assert torch.equal(rounded.latents, loaded.latents)


def test_int8_set_without_its_scales_is_a_one_line_error(tmp_path, capsys):
    path = tmp_path / "q.safetensors"
    a_set(dtype="int8").save(path)
    with safe_open(str(path), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    del tensors["latents_scale"]
    broken = tmp_path / "broken.safetensors"
    save_file(tensors, str(broken), metadata=meta)
    with pytest.raises(ValueError, match="int8 latents but no 'latents_scale' tensor"):
        SyntheticSet.load(broken)
    one_line_error(cli(capsys, "eval", broken, "--epochs", 1, "--runs", 1), "latents_scale")


def test_older_set_without_a_ledger_loads_and_reports_one(tmp_path, capsys):
    path = tmp_path / "new.safetensors"
    a_set().save(path)
    with safe_open(str(path), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    del meta[LEDGER_KEY]
    old = tmp_path / "old.safetensors"
    save_file(tensors, str(old), metadata=meta)
    syn = SyntheticSet.load(old)
    assert syn.latent_dtype == "float32" and syn.decoder is None
    led = syn.ledger()
    assert led["total_bytes"] == 31680 and led["budget_ipc"] == 1.0 and led["decoder"] is None
    code, info, err = cli(capsys, "info", old)
    assert code == 0 and "budget    1 float32 images per class" in info and "decoder   unknown" in info
    code, out, _ = cli(capsys, "info", old, "--json")
    assert json.loads(out)["storage"]["computed"] is True


def test_convert_rewrites_the_dtype_and_keeps_the_input(tmp_path, capsys):
    src = tmp_path / "s.safetensors"
    a_set().save(src)
    before = src.read_bytes()
    code, out, err = cli(capsys, "convert", src, "--latent-dtype", "int8", "--out", tmp_path / "q.safetensors")
    assert code == 0, err
    assert src.read_bytes() == before
    q = SyntheticSet.load(tmp_path / "q.safetensors")
    assert q.latent_dtype == "int8" and q.decoder == DECODER
    one_line_error(cli(capsys, "convert", src, "--latent-dtype", "int8", "--out", src), "is the input file")
    one_line_error(cli(capsys, "convert", src, "--latent-dtype", "int3", "--out", tmp_path / "x.safetensors"),
                   "unknown --latent-dtype")
    code, out, err = cli(capsys, "convert", src, "--latent-dtype", "int4", "--out", tmp_path / "h.safetensors")
    assert code == 0 and "40 latents as int4, 4,284 B" in out, err  # 40 x 98 B + 44 B + 320 B of labels
    assert SyntheticSet.load(tmp_path / "h.safetensors").latent_dtype == "int4"
    code, out, err = cli(capsys, "info", tmp_path / "h.safetensors")
    assert code == 0 and "latents 40 x (4, 7, 7) int4: 3,920 B + 44 B int4 scales" in out, err
    code, out, err = cli(capsys, "convert", src, "--latent-dtype", "vq8", "--out", tmp_path / "v.safetensors")
    assert code == 0 and "40 latents as vq8, 6,388 B" in out, err  # 40 x 49 B + 4,096 + 12 B + 320 B of labels
    code, out, err = cli(capsys, "info", tmp_path / "v.safetensors")
    assert code == 0 and "latents 40 x (4, 7, 7) vq8: 1,960 B + 4,108 B vq8 codebook" in out, err


# ------------------------------------------------------------------------------------ many latents: subsampled steps


def _loop(backbone, real, syn, real_latents=None, objective=None, **cfg):
    from gendistill.distill import DistillConfig, distill, make_accelerator

    accelerator = make_accelerator("no", cpu=True)
    return distill(syn, objective or get_dm(), backbone, real, DistillConfig(log_every=10**9, **cfg), accelerator,
                   FMNIST, real_latents=real_latents)


def get_dm():
    from gendistill.objectives import get_objective

    return get_objective("dm", depth=1, width=4, kernel="linear")


def _real(n=6, shape=(1, 28, 28), space="latent"):
    from gendistill.cache import LatentSplit

    g = torch.Generator().manual_seed(1)
    return LatentSplit(torch.rand((10 * n, *shape), generator=g), torch.arange(10).repeat_interleave(n), 10,
                       space=space)


def test_syn_rows_draws_k_per_class():
    from gendistill.distill import syn_rows

    labels = torch.arange(10).repeat_interleave(7)
    rows = syn_rows(labels, 10, 3, torch.Generator().manual_seed(0))
    assert len(rows) == 30 and torch.equal(labels[rows].bincount(), torch.full((10,), 3))
    assert syn_rows(labels, 10, 0, torch.Generator()) is None and syn_rows(labels, 10, 7, torch.Generator()) is None


@pytest.mark.parametrize("space", ["latent", "pixel"])
def test_subsampled_dm_step_moves_only_the_matched_latents(tiny_vae_dir, space):
    from gendistill.backbones import load_backbone
    from gendistill.distill import syn_rows

    backbone = load_backbone(str(tiny_vae_dir), image_shape=(1, 28, 28))
    latents = _real(shape=tuple(backbone.latent_shape))
    real = latents if space == "latent" else _real(space="pixel")
    syn = SyntheticSet(latents.latents[::2].clone(), latents.labels[::2].clone(), dataset=FMNIST)  # 3 per class
    start = syn.latents.detach().clone()
    _loop(backbone, real, syn, steps=1, syn_batch=1, match_space=space, batch_real=2, lr=0.1)
    moved = (syn.latents.detach() - start).flatten(1).abs().sum(1) > 0
    expect = syn_rows(syn.hard_labels, 10, 1, torch.Generator().manual_seed(0))  # the loop's shared generator, seed 0
    assert moved.sum() == 10 and torch.equal(moved.nonzero().flatten(), expect)


def test_latent_steps_warm_up_then_decode_through(tiny_vae_dir):
    from gendistill.backbones import load_backbone

    backbone = load_backbone(str(tiny_vae_dir), image_shape=(1, 28, 28))
    latents = _real(shape=tuple(backbone.latent_shape))
    syn = SyntheticSet(latents.latents[::3].clone(), latents.labels[::3].clone(), dataset=FMNIST)
    dm, seen = get_dm(), []

    def spy(x, labels, real, ctx):
        seen.append((ctx.space, tuple(x.shape[1:]), tuple(real(0).shape[1:])))
        return dm(x, labels, real, ctx)

    state = _loop(backbone, _real(space="pixel"), syn, real_latents=latents, objective=spy, steps=3, latent_steps=2,
                  match_space="pixel", batch_real=2, lr=0.1)
    assert state.step == 3 and all(math.isfinite(v) for v in state.losses)
    lat, img = tuple(backbone.latent_shape), (1, 28, 28)
    assert seen == [("latent", lat, lat), ("latent", lat, lat), ("pixel", img, img)]
    with pytest.raises(ValueError, match="--latent-steps warms up"):
        _loop(backbone, latents, syn, steps=1, latent_steps=1, match_space="latent")


@pytest.mark.parametrize("space", ["latent", "pixel"])
def test_quantise_aware_steps_match_what_the_file_will_hold(tiny_vae_dir, space):
    from gendistill.backbones import load_backbone

    backbone = load_backbone(str(tiny_vae_dir), image_shape=(1, 28, 28))
    latents = _real(shape=tuple(backbone.latent_shape))
    real = latents if space == "latent" else _real(space="pixel")
    dm, seen = get_dm(), []

    def spy(x, labels, real_batch, ctx):
        seen.append(x.detach().clone())
        return dm(x, labels, real_batch, ctx)

    def run(quantise_aware, dtype="int4"):
        syn = SyntheticSet(latents.latents[::2].clone() * 3, latents.labels[::2].clone(), dataset=FMNIST,
                           latent_dtype=dtype)
        start = syn.latents.detach().clone()
        seen.clear()
        _loop(backbone, real, syn, objective=spy, steps=1, quantise_aware=quantise_aware, match_space=space,
              batch_real=2, lr=0.1)
        return start, syn.latents.detach()

    codec = get_codec("int4")
    start, after = run(True)
    held = codec.decode(codec.encode(start))
    assert not torch.allclose(held, start, atol=1e-3)  # int4 really rounds these latents
    with torch.no_grad():
        expect = held if space == "latent" else backbone.decode(held)
    assert torch.allclose(seen[0], expect, atol=1e-5)  # the objective saw what the file will hold ...
    assert (after != start).any()  # ... and the float32 latents moved by its gradient (straight through)
    start, _ = run(False)
    with torch.no_grad():
        plain = start if space == "latent" else backbone.decode(start)
    assert torch.allclose(seen[0], plain, atol=1e-5)  # without the flag: the float32 latents
    with pytest.raises(ValueError, match="stored as float32"):
        run(True, dtype="float32")


@pytest.mark.slow  # end to end (a recipe run, a training or several model loads): a second or more
def test_recipe_with_budget_dtype_and_subsampling(tmp_path, tiny_vae_dir):
    out = tmp_path / "run"
    argv = ["--output", str(out), "--backbone", str(tiny_vae_dir), "--ipc-budget", "2", "--latent-dtype", "int8",
            "--quantise-aware", "--syn-batch", "2", "--latent-steps", "1", "--steps", "2", "--batch-real", "4",
            "--eval-runs", "0", "--depth", "2", "--width", "8"]
    assert load_recipe(ROOT / "recipes" / "latent_dm.py").main(argv) == 0
    syn = SyntheticSet.load(out / "set.safetensors")
    # budget 2: 2 x 3,136 B per class; an int8 2x14x14 latent is 392 B; minus 16 B of scales: floor((62,720 - 16) /
    # 3,920) = 15
    assert syn.ipc == 15 and syn.latent_dtype == "int8"
    assert syn.run_meta["ipc_budget"] == 2.0 and syn.run_meta["config"]["ipc"] == 15
    assert syn.ledger()["budget_ipc"] <= 2.0 and syn.run_meta["config"]["quantise_aware"] is True
