"""DSA augmentation: siamese params, determinism, gradients, shapes, latent variant, errors, bf16 autocast."""

from __future__ import annotations

import pytest
import torch

from gendistill.augment import (
    AUGMENTS,
    IMAGE_GROUPS,
    LATENT_GROUPS,
    Augment,
    DSAConfig,
    get_augment,
    image_augment,
    latent_augment,
)

SHAPES = [(1, 28, 28), (4, 7, 7)]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=gen(seed))


def every_op(groups) -> Augment:
    return Augment(DSAConfig(strategy="_".join(groups), mode="all"), groups)


@pytest.mark.parametrize("groups", [IMAGE_GROUPS, LATENT_GROUPS], ids=["image", "latent"])
def test_same_params_same_output_and_smaller_batch_uses_first_rows(groups):
    aug = every_op(groups)
    x = rand(6, 4, 7, 7)
    params = aug.make_params(6, gen(3))
    y = aug.apply(x, params)
    assert torch.equal(y, aug.apply(x.clone(), params))
    torch.testing.assert_close(aug.apply(x[:2], params), y[:2])
    assert torch.equal(aug(x, gen(3)), y)  # __call__ draws the same params from the same seed


def test_single_mode_shares_the_drawn_op():
    aug = image_augment()
    real, syn = rand(8, 1, 28, 28, seed=1), rand(3, 1, 28, 28, seed=2)
    for seed in range(6):
        params = aug.make_params(8, gen(seed))
        assert params["ops"] in {"_".join(ops) for ops in IMAGE_GROUPS.values()}
        torch.testing.assert_close(aug.apply(torch.cat([syn, real[:5]]), params)[:3], aug.apply(syn, params))


def test_params_too_small_raise():
    aug = every_op(IMAGE_GROUPS)
    with pytest.raises(ValueError, match="drawn for 2 samples"):
        aug.apply(rand(3, 1, 8, 8), aug.make_params(2, gen(0)))


@pytest.mark.parametrize("groups", [IMAGE_GROUPS, LATENT_GROUPS], ids=["image", "latent"])
def test_different_seeds_differ(groups):
    aug = every_op(groups)
    x = rand(4, 4, 7, 7)
    assert not torch.allclose(aug(x, gen(0)), aug(x, gen(1)))
    single = Augment(DSAConfig(strategy="_".join(groups)), groups)
    assert len({single.make_params(4, gen(s))["ops"] for s in range(30)}) > 1  # the drawn op varies too


def test_randomness_only_from_generator():
    aug = image_augment(DSAConfig(mode="all"))
    state = torch.get_rng_state()
    aug(rand(3, 1, 8, 8), gen(0))
    assert torch.equal(torch.get_rng_state(), state)


ALL_OPS = [("image", t) for t in IMAGE_GROUPS] + [("latent", t) for t in LATENT_GROUPS]


@pytest.mark.parametrize("kind,op", ALL_OPS)
@pytest.mark.parametrize("shape", SHAPES, ids=["1x28x28", "4x7x7"])
def test_every_op_keeps_shape_and_passes_gradient(kind, op, shape):
    aug = (image_augment if kind == "image" else latent_augment)(DSAConfig(strategy=op))
    x = rand(3, *shape).requires_grad_()
    y = aug(x, gen(0))
    assert y.shape == x.shape and y.dtype == x.dtype
    (y * rand(*y.shape, seed=1)).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_none_is_identity():
    x = rand(2, 1, 8, 8)
    aug = get_augment("none")
    assert aug.make_params(2, gen(0)) == {"ops": ""}
    assert torch.equal(aug(x, gen(0)), x)


def test_registry():
    assert AUGMENTS.names() == ["dsa", "latent", "none"]
    assert get_augment("latent").tokens == ["crop", "flip", "scale"]
    with pytest.raises(ValueError, match="dsa, latent, none"):
        get_augment("dsaa")


def test_unknown_op_names_valid_ops():
    with pytest.raises(ValueError, match="'colour'.*valid ops: color, crop, cutout, flip, scale, rotate"):
        image_augment(DSAConfig(strategy="colour_flip"))
    with pytest.raises(ValueError, match="'color'.*valid ops: crop, translate, flip, scale, rotate"):
        latent_augment(DSAConfig(strategy="color_crop"))
    with pytest.raises(ValueError, match="mode"):
        image_augment(DSAConfig(mode="S"))


def test_latent_augment_is_geometric_only():
    """Channel k constant k: every geometric op keeps the centre pixel (the shift is under a pixel, the scale and
    flip fix the centre), while brightness, saturation, contrast or a cutout would move it."""
    x = torch.arange(4.0).view(1, 4, 1, 1).expand(5, 4, 7, 7).contiguous()
    latent = latent_augment(DSAConfig(strategy="crop_flip_scale_rotate", mode="all"))
    for seed in range(5):
        torch.testing.assert_close(latent(x, gen(seed))[:, :, 3, 3], x[:, :, 3, 3])
    for op in ("brightness", "saturation", "contrast", "color"):  # the check can fail: it does for colour ops
        assert not torch.allclose(image_augment(DSAConfig(strategy=op))(x, gen(0))[:, :, 3, 3], x[:, :, 3, 3])
    for seed in range(20):  # whatever op is drawn, it is one of the latent ones
        assert latent_augment().make_params(2, gen(seed))["ops"] in {"translate", "flip", "scale"}


def test_latent_shift_is_sub_pixel():
    aug = latent_augment(DSAConfig(strategy="crop"))
    theta = aug.make_params(100, gen(0))["translate"]
    shift_px = theta[:, :, 2].abs() * (7 - 1) / 2  # affine_grid coordinates span 2 over 6 pixel steps
    assert shift_px.max() <= 0.125 * 6 + 1e-6 and shift_px.max() > 0.3


def test_image_ops_match_formulas():
    x = rand(2, 3, 8, 8)
    aug = image_augment(DSAConfig(strategy="color", mode="all"))
    p = aug.make_params(2, gen(0))
    b, s, c = (p[k].view(-1, 1, 1, 1) for k in ("brightness", "saturation", "contrast"))
    assert (b.abs() <= 0.5).all() and ((s >= 0) & (s <= 2)).all() and ((c >= 0.5) & (c <= 1.5)).all()
    y = x + b
    y = (y - y.mean(1, keepdim=True)) * s + y.mean(1, keepdim=True)
    y = (y - y.mean((1, 2, 3), keepdim=True)) * c + y.mean((1, 2, 3), keepdim=True)
    torch.testing.assert_close(aug.apply(x, p), y)

    flip = image_augment(DSAConfig(strategy="flip"))
    mask = torch.tensor([True, False])
    torch.testing.assert_close(flip.apply(x, {"ops": "flip", "flip": mask}), torch.stack([x[0].flip(2), x[1]]))

    crop = image_augment(DSAConfig(strategy="crop"))  # 8x8: shifts in -1..1; u=0 -> -1 (read row y-1), u=1 -> +1
    y = crop.apply(x, {"ops": "crop", "crop": torch.tensor([[0.0, 0.5], [0.999, 0.0]])})
    torch.testing.assert_close(y[0, :, 1:], x[0, :, :-1])
    assert (y[0, :, 0] == 0).all()
    torch.testing.assert_close(y[1, :, :-1, 1:], x[1, :, 1:, :-1])
    assert (y[1, :, -1] == 0).all() and (y[1, :, :, 0] == 0).all()

    cut = image_augment(DSAConfig(strategy="cutout"))  # a 4x4 square
    y = cut(x.abs() + 1, gen(0))
    assert ((y == 0).all(1).sum((1, 2)) <= 16).all() and (y == 0).any()

    identity = torch.tensor([[[1.0, 0, 0], [0, 1.0, 0]]]).expand(2, 2, 3)
    torch.testing.assert_close(image_augment(DSAConfig(strategy="scale")).apply(x, {"ops": "scale", "scale": identity}),
                               x)


@pytest.mark.parametrize("name", ["dsa", "latent"])
def test_bf16_autocast_cpu(name):
    strategy = "crop_flip_scale_rotate" if name == "latent" else "color_crop_cutout_flip_scale_rotate"
    aug = get_augment(name, DSAConfig(strategy=strategy, mode="all"))
    conv = torch.nn.Conv2d(4, 4, 3, padding=1)
    x = rand(3, 4, 7, 7).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = conv(x)
        assert h.dtype == torch.bfloat16
        y = aug(h, gen(0))
        z = aug(x, gen(0))
    assert y.dtype == torch.bfloat16 and z.dtype == torch.float32 and y.shape == x.shape
    (y.float().sum() + z.sum()).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
