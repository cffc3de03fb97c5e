"""The diffusion backbone: DDIM decode / inversion / VJP contract, classifier-free guidance, options and identity, the
generative initialisers, text-conditioned (Stable Diffusion layout) directories, the recipes (DM through the diffusion
decoder under ``accelerate launch``, train_diffusion, eval_gan) and the bad-input errors, with tiny random models."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from conftest import NUM_CLASSES, ROOT, fast_first, launch, load_recipe, tiny_vae

from gendistill.backbones import DiffusionBackbone, VAEBackbone, load_backbone
from gendistill.cache import cached_latents, image_split
from gendistill.data import FASHION_CLASSES, get_dataset
from gendistill.synthetic import SyntheticSet
from gendistill.training.diffusion import DiffusionConfig, build_scheduler, build_unet

IMAGE_SHAPE = (1, 28, 28)
NOISE_SHAPE = (2, 14, 14)  # the tiny VAE's latents
LATENT_DIM = math.prod(NOISE_SHAPE) + NUM_CLASSES + 1
TINY = DiffusionConfig(block_out_channels=(8, 16), attention=(0, 1), norm_num_groups=4, attention_head_dim=8)


def tiny_unet(seed: int = 0, out_scale: float = 1.0):
    """A tiny random class-conditional UNet2DModel; ``out_scale`` < 1 shrinks its output layer: a smooth noise
    predictor (as a trained one is), for which DDIM inversion's fixed-point iterations converge."""
    unet = build_unet(NOISE_SHAPE, NUM_CLASSES, TINY, seed)
    with torch.no_grad():
        unet.conv_out.weight.mul_(out_scale)
        unet.conv_out.bias.mul_(out_scale)
    return unet


def tiny_backbone(vae_dir: Path, out_scale: float = 1.0, **options) -> DiffusionBackbone:
    vae = VAEBackbone.from_pretrained(str(vae_dir), image_shape=IMAGE_SHAPE)
    return DiffusionBackbone(tiny_unet(out_scale=out_scale), build_scheduler(TINY), vae, FASHION_CLASSES,
                             source="tiny-ldm", vae_pointer=str(vae_dir), **options)


@pytest.fixture(scope="module")
def ldm_dir(tmp_path_factory, tiny_vae_dir) -> Path:
    d = tmp_path_factory.mktemp("ldm") / "tiny-ldm"
    tiny_backbone(tiny_vae_dir).save_pretrained(d)
    return d


def _load(d, **options) -> DiffusionBackbone:
    return load_backbone(str(d), options=options)


def _one_line(e) -> str:
    text = str(e.value)
    assert "\n" not in text
    return text


# ------------------------------------------------------------------------------------------------- the contract


def test_directory_layout_and_kind(ldm_dir, tiny_vae_dir):
    assert json.loads((ldm_dir / "unet" / "config.json").read_text())["_class_name"] == "UNet2DModel"
    assert (ldm_dir / "scheduler" / "scheduler_config.json").exists() and list((ldm_dir / "unet").glob("*.safetensors"))
    info = json.loads((ldm_dir / "gendistill.json").read_text())
    vae = load_backbone(str(tiny_vae_dir))
    assert info["kind"] == "diffusion" and info["classes"] == FASHION_CLASSES and info["conditioning"] == "class"
    assert info["vae"] == {"source": str(tiny_vae_dir), "sha256": vae.weights_sha256()}
    b = _load(ldm_dir)
    assert isinstance(b, DiffusionBackbone) and b.image_shape == IMAGE_SHAPE and not b.cheap_encode
    assert b.noise_shape == NOISE_SHAPE and b.latent_shape == (LATENT_DIM,)
    assert b.options() == {"decode_steps": 10, "invert_to": 999, "guidance_scale": 1.0}
    assert b.timesteps() == [999, 899, 799, 699, 599, 500, 400, 300, 200, 100]  # diffusers' "trailing" spacing
    assert not any(p.requires_grad for p in b.parameters())


def test_decode_shapes_and_class_weights(ldm_dir):
    b = _load(ldm_dir, decode_steps=3)
    z = b.random_latents(4, 3, torch.Generator().manual_seed(0))
    x, w = b.split(z)
    assert z.shape == (3, LATENT_DIM) and x.shape == (3, *NOISE_SHAPE)
    # condition in the latent
    assert torch.equal(w, torch.nn.functional.one_hot(torch.full((3,), 4), NUM_CLASSES + 1).float())
    images = b.decode(z)
    assert images.shape == (3, *IMAGE_SHAPE) and images.dtype == torch.float32 and torch.isfinite(images).all()
    assert torch.equal(b.decode(z), images)  # deterministic
    again = b.random_latents(4, 3, torch.Generator().manual_seed(0))
    assert torch.equal(again, z)  # randomness comes from the generator
    assert b.sample_images(torch.tensor([0, 9]), torch.Generator().manual_seed(1)).shape == (2, *IMAGE_SHAPE)


@pytest.mark.slow  # end to end, over a second of CPU
def test_invert_then_decode_reproduces_the_latent(tiny_vae_dir):
    """DDIM inversion is exact up to its fixed-point iterations: with a smooth tiny UNet (output layer x 0.1), 20 steps
    to t = 500 and 3 refinements, decoding the inversion gives the VAE latent back within 1e-3 (max abs) where the
    latents span about +-0.25 (images within 1e-2); without refinement the error is larger."""
    b = tiny_backbone(tiny_vae_dir, out_scale=0.1, decode_steps=20, invert_to=500)
    x = torch.rand(4, *IMAGE_SHAPE, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 3, 3, 9])
    z0 = b.vae.encode(x)
    b.invert_refine = 3
    z = b.encode(x, labels=labels)
    assert z.shape == (4, LATENT_DIM)
    err = (b.denoise(z) - z0).abs().max().item()
    assert err < 1e-3, err
    torch.testing.assert_close(b.decode(z), b.vae.decode(z0), atol=1e-2, rtol=0)  # the random decoder amplifies ~5x
    b.invert_refine = 0
    assert (b.denoise(b.encode(x, labels=labels)) - z0).abs().max().item() > 2 * err


def test_inversion_is_exact_for_a_constant_noise_prediction(tiny_vae_dir):
    """The updates themselves invert exactly (to rounding) when the noise estimate does not depend on x: full noise, K =
    10."""
    b = tiny_backbone(tiny_vae_dir).double()
    with torch.no_grad():
        b.unet.conv_out.weight.zero_()
        b.unet.conv_out.bias.fill_(0.5)
    b.invert_refine = 0
    z0 = torch.randn((3, *NOISE_SHAPE), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(b.denoise(b.invert(z0, labels=2)), z0, atol=1e-10, rtol=0)


@pytest.mark.parametrize("guidance", fast_first([2.5, 1.0]))
def test_decode_vjp_equals_autograd(ldm_dir, guidance):
    b = _load(ldm_dir, decode_steps=3, guidance_scale=guidance).double()
    g = torch.Generator().manual_seed(1)
    z = torch.cat([b.random_latents(c, 1, g) for c in (0, 5, 7, 9, 2)]).double()
    # soft conditions
    z[:, -NUM_CLASSES - 1 :] += 0.1 * torch.rand((5, NUM_CLASSES + 1), generator=g, dtype=torch.float64)
    grad_x = torch.randn((5, *IMAGE_SHAPE), generator=g, dtype=torch.float64)
    zr = z.clone().requires_grad_(True)
    b.decode(zr).backward(grad_x)
    got = b.decode_vjp(z, grad_x, chunk=2)  # chunks of 2, checkpointed UNet calls
    assert got.shape == z.shape and not got.requires_grad
    assert zr.grad[:, -NUM_CLASSES - 1 :].abs().sum() > 0  # the condition weights get gradients too
    torch.testing.assert_close(got, zr.grad, rtol=1e-6, atol=1e-9)


def test_guidance_mixes_the_null_condition(ldm_dir):
    z = _load(ldm_dir, decode_steps=2).random_latents(3, 2, torch.Generator().manual_seed(0))
    x, _ = _load(ldm_dir).split(z)
    plain = _load(ldm_dir, decode_steps=2)
    null = plain.join(x, plain.condition_weights(None, 2))
    torch.testing.assert_close(_load(ldm_dir, decode_steps=2, guidance_scale=0).decode(z), plain.decode(null))
    b = _load(ldm_dir, decode_steps=1, guidance_scale=3.0)
    one = _load(ldm_dir, decode_steps=1)
    t = b.timesteps()[0]
    out_c = one._output(x, t, one.split(z)[1])
    out_u = one._output(x, t, one.condition_weights(None, 2))
    torch.testing.assert_close(b._output(x, t, b.split(z)[1]), out_u + 3.0 * (out_c - out_u))


def test_options_are_part_of_the_identity_and_survive_save_load(tmp_path, ldm_dir):
    base = _load(ldm_dir)
    hashes = {base.weights_sha256(), _load(ldm_dir, decode_steps=5).weights_sha256(),
              _load(ldm_dir, invert_to=700).weights_sha256(), _load(ldm_dir, guidance_scale=2).weights_sha256()}
    assert len(hashes) == 4
    assert base.describe()["options"] == base.options() and base.describe()["kind"] == "diffusion"
    base.save_pretrained(tmp_path / "copy")
    assert _load(tmp_path / "copy").weights_sha256() == base.weights_sha256()
    assert (
        tiny_backbone(Path(json.loads((ldm_dir / "gendistill.json").read_text())["vae"]["source"])).weights_sha256()
        == base.weights_sha256()
    )


def test_partial_noise_samples(ldm_dir):
    """At an earlier --invert-to, a random latent is a full-noise sample's VAE latent noised to that level."""
    b = _load(ldm_dir, decode_steps=4, invert_to=400)
    z = b.random_latents(1, 2, torch.Generator().manual_seed(0))
    assert z.shape == (2, LATENT_DIM) and b.decode(z).shape == (2, *IMAGE_SHAPE)


# ------------------------------------------------------------------------------------------------ initialisers


@pytest.mark.parametrize("init", ["diffusion", "diffusion-prototype"])
@pytest.mark.parametrize("target", fast_first(["ldm", "pixel", "vae"]))
def test_generative_init_gives_the_class_counts(ldm_dir, tiny_vae_dir, init, target):
    train = get_dataset("fashion-mnist", "train")
    model = _load(ldm_dir, decode_steps=2)
    model.invert_refine = 0
    backbone = {"pixel": load_backbone("pixel", image_shape=IMAGE_SHAPE), "vae": load_backbone(str(tiny_vae_dir)),
                "ldm": model}[target]
    real = cached_latents(backbone, train) if backbone.cheap_encode and target != "pixel" else image_split(train)
    syn = SyntheticSet.initialise(init, real, 2, backbone, train.meta(), torch.Generator().manual_seed(0),
                                  init_model=model)
    assert syn.latents.shape == (20, *backbone.latent_shape)
    assert torch.bincount(syn.labels, minlength=NUM_CLASSES).tolist() == [2] * NUM_CLASSES
    assert syn.run_meta["init"] == init and syn.run_meta["init_model"]["sha256"] == model.weights_sha256()
    if init == "diffusion" and target == "vae":  # the sampled VAE latents themselves
        g = torch.Generator().manual_seed(0)
        expect = torch.cat([model.denoise(model.random_latents(c, 2, g)) for c in range(NUM_CLASSES)])
        torch.testing.assert_close(syn.latents.detach().reshape(expect.shape), expect)
    if target == "ldm":  # the noise latents, carrying their class
        assert torch.equal(model.split(syn.latents.detach())[1].argmax(1), syn.labels)


def test_init_model_defaults(monkeypatch, tmp_path, ldm_dir, tiny_vae_dir):
    import gendistill.backbones.loading as backbones

    train = get_dataset("fashion-mnist", "train")
    vae = load_backbone(str(tiny_vae_dir))
    monkeypatch.setattr(backbones, "ASSETS", tmp_path)  # no shipped fashion-mnist-ldm
    with pytest.raises(FileNotFoundError, match="recipes/train_diffusion.py") as e:
        SyntheticSet.initialise("diffusion", cached_latents(vae, train), 1, vae, train.meta())
    _one_line(e)
    (tmp_path / "backbones").mkdir()
    shutil.copytree(ldm_dir, tmp_path / "backbones" / "fashion-mnist-ldm")
    syn = SyntheticSet.initialise("diffusion", cached_latents(vae, train), 1, vae, train.meta(),
                                  model_options={"decode_steps": 2})
    assert syn.run_meta["init_model"]["options"]["decode_steps"] == 2 and syn.latents.shape == (10, *NOISE_SHAPE)
    with pytest.raises(ValueError, match="is a vae backbone; --init diffusion samples a diffusion model"):
        SyntheticSet.initialise("diffusion", cached_latents(vae, train), 1, vae, train.meta(),
                                init_model=str(tiny_vae_dir))


def test_unknown_init_lists_the_generative_ones(tiny_vae_dir):
    train = get_dataset("fashion-mnist", "train")
    with pytest.raises(ValueError, match="diffusion, diffusion-prototype"):
        SyntheticSet.initialise("sample", image_split(train), 1, load_backbone("pixel", image_shape=IMAGE_SHAPE),
                                train.meta())


# ------------------------------------------------------------------------------------------------ text-conditioned


def _tiny_tokenizer():
    from transformers import CLIPTokenizer

    chars = "abcdefghijklmnopqrstuvwxyz-/"
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({f"{c}</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=24)


def save_tiny_sd(d: Path) -> Path:
    """A tiny random Stable Diffusion layout: unet/ (UNet2DConditionModel), text_encoder/ (CLIPTextModel), tokenizer/
    (a character-level CLIPTokenizer), vae/ (AutoencoderKL) and scheduler/ (DDIMScheduler)."""
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = _tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                                            num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=24,
                                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                            pad_token_id=tokenizer.pad_token_id))
        unet = UNet2DConditionModel(sample_size=14, in_channels=2, out_channels=2, layers_per_block=1,
                                    block_out_channels=(8, 16),
                                    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
                                    attention_head_dim=4, norm_num_groups=4)
    unet.save_pretrained(str(d / "unet"))
    text.save_pretrained(str(d / "text_encoder"))
    tokenizer.save_pretrained(str(d / "tokenizer"))
    tiny_vae().save_pretrained(str(d / "vae"))
    DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                  clip_sample=False).save_pretrained(str(d / "scheduler"))
    return d


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory) -> Path:
    return save_tiny_sd(tmp_path_factory.mktemp("sd") / "tiny-sd")


def test_text_conditioned_pipeline_encodes_class_prompts(sd_dir, tmp_path):
    from transformers import AutoTokenizer, CLIPTextModel

    b = load_backbone(str(sd_dir), image_shape=IMAGE_SHAPE, class_names=FASHION_CLASSES, options={"decode_steps": 2})
    assert isinstance(b, DiffusionBackbone) and b.text_conditioned and b.image_shape == IMAGE_SHAPE
    assert b.prompts == [f"a photo of a {name}" for name in FASHION_CLASSES] + [""]
    tok, enc = (
        AutoTokenizer.from_pretrained(str(sd_dir / "tokenizer")),
        CLIPTextModel.from_pretrained(str(sd_dir / "text_encoder")),
    )
    ids = tok(b.prompts, padding="max_length", max_length=24, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        expect = enc(ids)[0]
    torch.testing.assert_close(b.prompt_embeds, expect)
    # the class names differ, so do the prompts' embeddings
    assert not torch.allclose(b.prompt_embeds[0], b.prompt_embeds[1])
    # a one-hot condition is that class's prompt embedding, fed to the UNet as encoder_hidden_states
    z = b.random_latents(3, 2, torch.Generator().manual_seed(0))
    x, w = b.split(z)
    from gendistill.backbones.diffusion import run_unet

    t = b.timesteps()[0]
    torch.testing.assert_close(b._output(x, t, w), run_unet(b.unet, x, t,
                                                            encoder_hidden_states=expect[3].expand(2, -1, -1)))
    assert b.decode(z).shape == (2, *IMAGE_SHAPE)
    assert b.encode(torch.rand(2, *IMAGE_SHAPE), labels=torch.tensor([1, 2])).shape == (2, b.latent_shape[0])
    other = load_backbone(str(sd_dir), image_shape=IMAGE_SHAPE, class_names=FASHION_CLASSES,
                          options={"prompt_template": "{name}, product photo"})
    assert other.prompts[0] == "T-shirt/top, product photo" and other.weights_sha256() != b.weights_sha256()
    assert other.options()["prompt_template"] == "{name}, product photo"


def test_text_conditioned_errors(sd_dir, tmp_path, ldm_dir):
    broken = tmp_path / "no-tokenizer"
    shutil.copytree(sd_dir, broken)
    shutil.rmtree(broken / "tokenizer")
    with pytest.raises(ValueError, match="no tokenizer/") as e:
        load_backbone(str(broken), class_names=FASHION_CLASSES)
    _one_line(e)
    with pytest.raises(ValueError, match="its prompts need the dataset's class names"):
        load_backbone(str(sd_dir))
    with pytest.raises(ValueError, match="must hold \\{name\\}"):
        load_backbone(str(sd_dir), class_names=FASHION_CLASSES, options={"prompt_template": "a photo"})
    with pytest.raises(ValueError, match="applies to text-conditioned diffusion models"):
        _load(ldm_dir, prompt_template="a photo of a {name}")


# ------------------------------------------------------------------------------------------------------- errors


def test_directory_without_unet_or_scheduler(tmp_path, ldm_dir):
    for missing in ("unet", "scheduler"):
        d = tmp_path / f"no-{missing}"
        shutil.copytree(ldm_dir, d)
        shutil.rmtree(d / missing)
        with pytest.raises(ValueError, match=f"not a diffusion directory: no {missing}/") as e:
            load_backbone(str(d))
        _one_line(e)


@pytest.mark.parametrize("options, message", [
    ({"guidance_scale": 31}, "--guidance-scale 31 is out of range: \\[0, 30\\]"),
    ({"guidance_scale": -0.5}, "--guidance-scale -0.5 is out of range"),
    ({"guidance_scale": float("nan")}, "--guidance-scale nan is out of range"),
    ({"decode_steps": 0}, "--decode-steps 0 is out of range: 1 to 999"),
    ({"decode_steps": 50, "invert_to": 20}, "--decode-steps 50 is out of range: 1 to 20"),
    ({"invert_to": 1000}, "--invert-to 1000 is out of range: a timestep in \\[1, 999\\]"),
    ({"invert_to": 0}, "--invert-to 0 is out of range"),
])
def test_options_out_of_range(ldm_dir, options, message):
    with pytest.raises(ValueError, match=message) as e:
        _load(ldm_dir, **options)
    _one_line(e)


def test_diffusion_options_on_another_kind(tiny_vae_dir):
    with pytest.raises(ValueError, match="--decode-steps applies to diffusion backbones") as e:
        load_backbone(str(tiny_vae_dir), options={"decode_steps": 5})
    _one_line(e)
    assert load_backbone(str(tiny_vae_dir), options={"decode_steps": None}).kind == "vae"  # unset options are fine


def test_vae_pointer_with_another_hash(tmp_path, ldm_dir, tiny_vae_dir_other):
    d = tmp_path / "moved"
    shutil.copytree(ldm_dir, d)
    info = json.loads((d / "gendistill.json").read_text())
    want = info["vae"]["sha256"]
    info["vae"]["source"] = str(tiny_vae_dir_other)
    (d / "gendistill.json").write_text(json.dumps(info))
    have = load_backbone(str(tiny_vae_dir_other)).weights_sha256()
    with pytest.raises(ValueError, match="the UNet was trained on the latents of one with") as e:
        load_backbone(str(d))
    assert have[:16] in _one_line(e) and want[:16] in _one_line(e)
    info["vae"]["source"] = "no-such-vae"
    (d / "gendistill.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match="neither a directory next to it nor a shipped backbone"):
        load_backbone(str(d))


def test_vae_pointer_relative_to_the_directory(tmp_path, ldm_dir, tiny_vae_dir):
    d = tmp_path / "bundle"
    shutil.copytree(ldm_dir, d)
    shutil.copytree(tiny_vae_dir, d / "vae-copy")
    info = json.loads((d / "gendistill.json").read_text())
    info["vae"]["source"] = "vae-copy"
    (d / "gendistill.json").write_text(json.dumps(info))
    assert load_backbone(str(d)).vae.source == str(d / "vae-copy")


def test_bad_guidance_through_the_cli_is_one_line_and_nonzero(tmp_path, ldm_dir, capsys):
    from gendistill.cli import main

    with pytest.raises(SystemExit) as e:
        main(["init", "--backbone", str(ldm_dir), "--init", "noise", "--ipc", "1", "--guidance-scale", "40",
              "--out", str(tmp_path / "s.safetensors")])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.startswith("error: --guidance-scale 40.0 is out of range") and "\n" not in err


# ------------------------------------------------------------------------------------------------------ recipes


def test_cli_records_the_options_a_set_is_decoded_with(tmp_path, ldm_dir, capsys):
    from gendistill.cli import main

    out = tmp_path / "set.safetensors"
    for argv in (["init", "--backbone", ldm_dir, "--init", "diffusion", "--ipc", 1, "--decode-steps", 2,
                  "--guidance-scale", 2, "--out", out],
                 ["sample", out, "--out", tmp_path / "grid.png"]):
        with pytest.raises(SystemExit) as e:
            main([str(a) for a in argv])
        assert e.value.code == 0, capsys.readouterr().err
    syn = SyntheticSet.load(out)
    assert syn.backbone_meta["options"] == {"decode_steps": 2, "invert_to": 999, "guidance_scale": 2.0}
    assert (tmp_path / "grid.png").exists()


@pytest.mark.slow  # spawns a process
def test_dm_through_the_diffusion_decoder_under_accelerate(tmp_path, ldm_dir):
    out = tmp_path / "dm"
    args = ["recipes/latent_dm.py", "--output", out, "--backbone", ldm_dir, "--match-space", "pixel", "--init",
            "diffusion", "--decode-steps", 2, "--ipc", 1, "--batch-real", 4, "--steps", 3, "--eval-runs", 0, "--depth",
            2, "--width", 8, "--checkpoint-every", 0]
    r = launch(args)
    assert r.returncode == 0, r.stderr[-3000:]
    syn = SyntheticSet.load(out / "set.safetensors", backbone=_load(ldm_dir, decode_steps=2))
    assert syn.latents.shape == (10, LATENT_DIM) and syn.run_meta["steps_done"] == 3
    assert syn.backbone_meta["kind"] == "diffusion" and syn.backbone_meta["options"]["decode_steps"] == 2
    start = torch.cat([_load(ldm_dir, decode_steps=2).random_latents(c, 1, g)
                       for g in [torch.Generator().manual_seed(0)] for c in range(10)])
    # 3 Adam steps moved the noise
    assert not torch.allclose(syn.latents, start) and (syn.latents - start).abs().max() < 1.0
    assert (out / "grid.png").exists()


@pytest.mark.slow  # end to end, over a second of CPU
@pytest.mark.parametrize("init", ["real", "diffusion-prototype"])
def test_dm_through_the_diffusion_decoder_from_real_data(tmp_path, ldm_dir, init, monkeypatch):
    """(d) from inverted real images (only the chosen ones are inverted) or from the inverted k-means prototypes."""
    monkeypatch.setattr(DiffusionBackbone, "invert_refine", 0)
    out = tmp_path / init
    argv = ["--output", out, "--backbone", ldm_dir, "--match-space", "pixel", "--init", init, "--decode-steps", 2,
            "--ipc", 1, "--batch-real", 4, "--steps", 3, "--eval-runs", 0, "--depth", 2, "--width", 8,
            "--checkpoint-every", 0]
    assert load_recipe(ROOT / "recipes" / "latent_dm.py").main([str(a) for a in argv]) == 0
    syn = SyntheticSet.load(out / "set.safetensors", backbone=_load(ldm_dir, decode_steps=2))
    assert syn.latents.shape == (10, LATENT_DIM) and syn.run_meta["init"] == init and syn.run_meta["steps_done"] == 3
    assert syn.labels.tolist() == list(range(10))


@pytest.mark.slow  # end to end (a recipe run, a training or several model loads): a second or more
def test_dm_from_diffusion_init_on_a_vae(tmp_path, ldm_dir, tiny_vae_dir):
    """(c): a VAE-space set started from diffusion samples; the diffusion options go to the init model."""
    out = tmp_path / "dm-vae"
    argv = ["--output", out, "--backbone", tiny_vae_dir, "--init", "diffusion", "--init-model", ldm_dir,
            "--decode-steps", 2, "--guidance-scale", 1.5, "--ipc", 1, "--batch-real", 4, "--steps", 2, "--eval-runs", 0,
            "--depth", 2, "--width", 8, "--checkpoint-every", 0]
    assert load_recipe(ROOT / "recipes" / "latent_dm.py").main([str(a) for a in argv]) == 0
    syn = SyntheticSet.load(out / "set.safetensors")
    assert syn.backbone_meta["kind"] == "vae" and syn.run_meta["init_model"]["options"]["guidance_scale"] == 1.5


@pytest.mark.slow  # end to end, over a second of CPU
def test_train_diffusion_writes_a_loadable_directory(tmp_path, tiny_vae_dir):
    args = ["--vae", str(tiny_vae_dir), "--max-steps", "2", "--batch-size", "16", "--block-out-channels", "8", "16",
            "--attention", "0", "1", "--norm-num-groups", "4", "--attention-head-dim", "8", "--samples-per-class", "1",
            "--cache-dir", str(tmp_path / "cache")]
    recipe = load_recipe(ROOT / "recipes" / "train_diffusion.py")
    assert recipe.main(["--output", str(tmp_path / "a"), *args]) == 0
    assert recipe.main(["--output", str(tmp_path / "b"), *args]) == 0
    a, b = load_backbone(str(tmp_path / "a")), load_backbone(str(tmp_path / "b"))
    assert a.kind == "diffusion" and a.weights_sha256() == b.weights_sha256()  # reproducible from the seed
    assert a.weights_sha256() != tiny_backbone(tiny_vae_dir).weights_sha256()  # trained
    info = json.loads((tmp_path / "a" / "gendistill.json").read_text())
    assert info["recipe"] == "recipes/train_diffusion.py" and info["config"]["max_steps"] == 2
    assert info["vae"]["source"] == str(tiny_vae_dir) and info["dataset"]["name"] == "fashion-mnist"
    assert (tmp_path / "a" / "samples.png").exists() and not list(tmp_path.glob(".a.*"))
    assert a.scheduler.config.prediction_type == "epsilon" and a.unet.config.num_class_embeds == NUM_CLASSES + 1


@pytest.mark.slow  # end to end, over a second of CPU
def test_eval_gan_measures_a_diffusion_backbone(tmp_path, ldm_dir):
    argv = ["--backbone", str(ldm_dir), "--per-class", "2", "--classifier-epochs", "1", "--invert", "2",
            "--decode-steps", "2", "--out", str(tmp_path / "eval.json")]
    assert load_recipe(ROOT / "recipes" / "eval_gan.py").main(argv) == 0
    result = json.loads((tmp_path / "eval.json").read_text())
    assert (
        len(result["classifier_acc_generated_per_class"]) == NUM_CLASSES
        and 0 <= result["classifier_acc_generated"] <= 1
    )
    assert result["inversion"]["images"] == 2 and result["inversion"]["options"]["decode_steps"] == 2
