"""The backbone contract for every kind: shapes, chunked VJP equals autograd, determinism, identity, loading."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import save_tiny_vae, tiny_vae

from gendistill.backbones import BACKBONES, PixelBackbone, VAEBackbone, load_backbone

IMAGE_SHAPE = (1, 28, 28)


def _images(n=5, shape=IMAGE_SHAPE, seed=0):
    return torch.rand((n, *shape), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(params=["pixel", "vae"])
def backbone(request, tiny_vae_dir):
    if request.param == "pixel":
        return load_backbone("pixel", image_shape=IMAGE_SHAPE)
    return load_backbone(str(tiny_vae_dir))


def test_kinds_registered():
    assert {"pixel", "vae"} <= set(BACKBONES.names())


# ------------------------------------------------------------------------------------------ the contract


def test_shapes(backbone):
    assert backbone.image_shape == IMAGE_SHAPE
    expected = {"pixel": IMAGE_SHAPE, "vae": (2, 14, 14)}[backbone.kind]
    assert tuple(backbone.latent_shape) == expected
    x = _images(4)
    z = backbone.encode(x)
    assert z.shape == (4, *expected)
    out = backbone.decode(z)
    assert out.shape == (4, *IMAGE_SHAPE) and out.dtype == torch.float32


@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_decode_vjp_equals_autograd(backbone, chunk):
    g = torch.Generator().manual_seed(1)
    z = torch.randn((5, *backbone.latent_shape), generator=g)
    grad_x = torch.randn((5, *IMAGE_SHAPE), generator=g)
    zr = z.clone().requires_grad_(True)
    backbone.decode(zr).backward(grad_x)
    got = backbone.decode_vjp(z, grad_x, chunk=chunk)
    assert got.shape == z.shape and not got.requires_grad
    torch.testing.assert_close(got, zr.grad, rtol=1e-4, atol=1e-5)


def test_decode_vjp_under_no_grad(backbone):
    z = torch.randn((3, *backbone.latent_shape), generator=torch.Generator().manual_seed(2))
    grad_x = torch.ones((3, *IMAGE_SHAPE))
    expected = backbone.decode_vjp(z, grad_x, chunk=2)
    with torch.no_grad():
        got = backbone.decode_vjp(z, grad_x, chunk=2)
    torch.testing.assert_close(got, expected)


def test_decode_vjp_count_mismatch(tiny_vae_dir):
    b = load_backbone(str(tiny_vae_dir))
    with pytest.raises(ValueError, match="latents but"):
        b.decode_vjp(torch.zeros(3, *b.latent_shape), torch.zeros(2, *IMAGE_SHAPE))


def test_pixel_is_identity():
    b = PixelBackbone(IMAGE_SHAPE)
    z = torch.rand(3, *IMAGE_SHAPE)
    assert torch.equal(b.encode(b.decode(z)), z)
    assert torch.equal(b.decode(b.encode(z)), z)
    gx = torch.randn(3, *IMAGE_SHAPE)
    assert torch.equal(b.decode_vjp(z, gx), gx)
    assert b.describe()["kind"] == "pixel" and b.describe()["latent_shape"] == list(IMAGE_SHAPE)


def test_pixel_hash_depends_on_shape():
    assert PixelBackbone((1, 28, 28)).weights_sha256() == PixelBackbone((1, 28, 28)).weights_sha256()
    assert PixelBackbone((1, 28, 28)).weights_sha256() != PixelBackbone((3, 32, 32)).weights_sha256()


def test_pixel_needs_image_shape():
    with pytest.raises(ValueError, match="image shape"):
        load_backbone("pixel")


def test_vae_deterministic(tiny_vae_dir):
    b = load_backbone(str(tiny_vae_dir))
    x = _images(3)
    assert torch.equal(b.encode(x), b.encode(x))
    z = b.encode(x)
    assert torch.equal(b.decode(z), b.decode(z))
    other = load_backbone(str(tiny_vae_dir))
    assert torch.equal(other.encode(x), b.encode(x))


def test_vae_sampling_uses_generator(tiny_vae_dir):
    b = load_backbone(str(tiny_vae_dir))
    x = _images(2)
    s1 = b.encode(x, generator=torch.Generator().manual_seed(0))
    s2 = b.encode(x, generator=torch.Generator().manual_seed(0))
    assert torch.equal(s1, s2)
    assert not torch.equal(s1, b.encode(x))


def test_vae_weights_frozen(tiny_vae_dir):
    b = load_backbone(str(tiny_vae_dir))
    assert not any(p.requires_grad for p in b.parameters())
    assert not b.vae.training


# ------------------------------------------------------------------------------------------------- identity


def test_weights_sha256_stable_across_save_load(tmp_path, tiny_vae_dir, tiny_vae_dir_other):
    b = load_backbone(str(tiny_vae_dir))
    h = b.weights_sha256()
    assert len(h) == 64 and int(h, 16) >= 0
    b.save_pretrained(tmp_path / "copy")
    assert load_backbone(str(tmp_path / "copy")).weights_sha256() == h
    in_memory = VAEBackbone(tiny_vae(), image_shape=IMAGE_SHAPE)  # the weights the fixture saved
    assert in_memory.weights_sha256() == h
    assert load_backbone(str(tiny_vae_dir_other)).weights_sha256() != h


def test_describe(tiny_vae_dir):
    b = load_backbone(str(tiny_vae_dir))
    d = b.describe()
    # portable: the folder by name (+ sha256), never a path
    assert d["kind"] == "vae" and d["source"] == tiny_vae_dir.name
    assert d["ref"] == {"type": "local", "name": tiny_vae_dir.name}
    assert d["sha256"] == b.weights_sha256()
    assert d["latent_shape"] == [2, 14, 14] and d["image_shape"] == [1, 28, 28]
    assert d["scaling"]["scaling_factor"] == pytest.approx(0.18215)
    json.dumps(d)


def test_load_backbone_round_trip(tmp_path, tiny_vae_dir):
    b = load_backbone(str(tiny_vae_dir))
    assert isinstance(b, VAEBackbone)
    assert (tiny_vae_dir / "config.json").exists() and list(tiny_vae_dir.glob("*.safetensors"))
    info = json.loads((tiny_vae_dir / "gendistill.json").read_text())
    assert info["kind"] == "vae" and info["image_shape"] == [1, 28, 28]
    b.save_pretrained(tmp_path / "again", extra={"note": "x"})
    c = load_backbone(str(tmp_path / "again"))
    assert json.loads((tmp_path / "again" / "gendistill.json").read_text())["note"] == "x"
    x = _images(2)
    assert torch.equal(b.encode(x), c.encode(x))
    assert c.image_shape == b.image_shape and c.latent_shape == b.latent_shape


def test_load_plain_diffusers_dir(tmp_path):
    """A directory written by diffusers alone (no gendistill.json): image shape from the VAE config."""
    tiny_vae().save_pretrained(tmp_path / "plain")
    b = load_backbone(str(tmp_path / "plain"))
    assert b.kind == "vae" and b.image_shape == (1, 28, 28)
    b2 = load_backbone(str(tmp_path / "plain"), image_shape=(1, 20, 20))
    assert b2.image_shape == (1, 20, 20) and b2.latent_shape == (2, 10, 10)


def test_load_pipeline_vae_subfolder(tmp_path):
    tiny_vae().save_pretrained(tmp_path / "pipe" / "vae")
    b = load_backbone(str(tmp_path / "pipe"), image_shape=IMAGE_SHAPE)
    assert b.kind == "vae" and b.latent_shape == (2, 14, 14)


def test_scaling_factor_read_from_config(tmp_path, tiny_vae_dir):
    shutil.copytree(tiny_vae_dir, tmp_path / "scaled")
    cfg_file = tmp_path / "scaled" / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["scaling_factor"] = 1.0
    cfg_file.write_text(json.dumps(cfg))
    base, scaled = load_backbone(str(tiny_vae_dir)), load_backbone(str(tmp_path / "scaled"))
    assert scaled.scaling()["scaling_factor"] == 1.0
    x = _images(2)
    torch.testing.assert_close(scaled.encode(x) * 0.18215, base.encode(x), rtol=1e-5, atol=1e-6)
    z = base.encode(x)
    torch.testing.assert_close(base.decode(z), scaled.decode(z / 0.18215), rtol=1e-4, atol=1e-5)


def test_three_channel_vae_with_gray_images(tiny_vae3_dir):
    b = load_backbone(str(tiny_vae3_dir))
    assert b.image_shape == (1, 28, 28) and b.vae.config.in_channels == 3
    z = b.encode(_images(3))
    assert z.shape == (3, *b.latent_shape)
    assert b.decode(z).shape == (3, 1, 28, 28)
    # the VJP through the channel adaptation, in float64 so batch-size-dependent float32 rounding cannot show
    b = b.double()
    z, gx = z.double(), torch.randn(3, 1, 28, 28, dtype=torch.float64)
    zr = z.clone().requires_grad_(True)
    b.decode(zr).backward(gx)
    torch.testing.assert_close(b.decode_vjp(z, gx, chunk=2), zr.grad, rtol=1e-4, atol=1e-5)


def test_vae_resizes_odd_image_sizes():
    b = VAEBackbone(tiny_vae(in_channels=3, sample_size=32), image_shape=(1, 27, 27))
    assert b.work_size == (28, 28) and b.latent_shape == (2, 14, 14)
    z = b.encode(_images(2, (1, 27, 27)))
    assert z.shape == (2, 2, 14, 14)
    assert b.decode(z).shape == (2, 1, 27, 27)


def test_vae_rgb_images_on_gray_vae():
    b = VAEBackbone(tiny_vae(in_channels=1), image_shape=(3, 28, 28))
    z = b.encode(_images(2, (3, 28, 28)))
    assert b.decode(z).shape == (2, 3, 28, 28)


# ---------------------------------------------------------------------------------------------- bad sources


def test_not_an_autoencoder(tmp_path):
    d = tmp_path / "unet"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    with pytest.raises(ValueError, match="UNet2DModel"):
        load_backbone(str(d))
    with pytest.raises(ValueError, match="not an AutoencoderKL"):
        VAEBackbone.from_pretrained(str(d))


def test_bad_backbone_dirs(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="config.json"):
        load_backbone(str(empty))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_backbone(str(broken))


def test_vae_dir_without_weights(tmp_path, tiny_vae_dir):
    d = tmp_path / "noweights"
    d.mkdir()
    shutil.copy(tiny_vae_dir / "config.json", d / "config.json")
    with pytest.raises(ValueError, match="could not load AutoencoderKL"):
        load_backbone(str(d), image_shape=IMAGE_SHAPE)


@pytest.mark.parametrize("name", ["no-such-backbone", "weights.ckpt", "./missing-dir", "/does/not/exist", "a/b/c"])
def test_unknown_backbone(name):
    with pytest.raises(ValueError, match="unknown backbone"):
        load_backbone(name, image_shape=IMAGE_SHAPE)


def test_save_tiny_vae_helper_is_seeded(tmp_path):
    a = save_tiny_vae(tmp_path / "a", seed=3)
    b = save_tiny_vae(tmp_path / "b", seed=3)
    assert load_backbone(str(a)).weights_sha256() == load_backbone(str(b)).weights_sha256()
