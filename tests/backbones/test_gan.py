"""The gan backbone: latent spaces, decode / VJP contract, inversion, identity, sets in every space, the recipes
(DM through the generator, IT-GAN, train_gan, eval_gan) and the errors, with a tiny random generator."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from conftest import ROOT, fast_first, load_recipe

from gendistill.backbones import GANBackbone, load_backbone
from gendistill.backbones.gan_model import ConditionalStyleGenerator
from gendistill.cache import cached_latents, image_split
from gendistill.data import get_dataset
from gendistill.synthetic import SyntheticSet

SPACES = ["z", "w", "w+", "f0", "f1", "f2"]
TINY = dict(z_dim=8, embed_dim=4, w_dim=16, mapping_layers=2, base_size=7, channels=(8, 8, 8))
IMAGE_SHAPE = (1, 28, 28)


def tiny_generator(seed: int = 0) -> ConditionalStyleGenerator:
    return ConditionalStyleGenerator(**TINY).reset_parameters(torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def gan_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("gan") / "tiny-gan"
    GANBackbone(tiny_generator(), source=str(d)).save_pretrained(d)
    return d


@pytest.fixture
def fast_inversion(monkeypatch):
    """A few inversion steps, and no convergence warning (a tiny random generator cannot fit real images)."""
    monkeypatch.setattr(GANBackbone, "invert_steps", 5)
    monkeypatch.setattr(GANBackbone, "invert_tolerance", float("inf"))


def _load(gan_dir, space=None) -> GANBackbone:
    return load_backbone(str(gan_dir), latent_space=space)


# ------------------------------------------------------------------------------------------------- the contract


def test_directory_layout_and_kind(gan_dir):
    assert (gan_dir / "config.json").exists() and list(gan_dir.glob("*.safetensors"))
    assert json.loads((gan_dir / "config.json").read_text())["_class_name"] == "ConditionalStyleGenerator"
    info = json.loads((gan_dir / "gendistill.json").read_text())
    assert info["kind"] == "gan" and info["latent_spaces"] == SPACES
    b = _load(gan_dir)
    assert isinstance(b, GANBackbone) and b.latent_space == "w+" and b.image_shape == IMAGE_SHAPE
    assert not b.cheap_encode and not any(p.requires_grad for p in b.parameters())


def test_kind_from_config_alone(tmp_path):
    """A directory written by diffusers alone (no gendistill.json) is recognised by its _class_name."""
    tiny_generator().save_pretrained(tmp_path / "plain")
    assert _load(tmp_path / "plain").kind == "gan"


@pytest.mark.parametrize("space", SPACES)
def test_decode_shape_in_every_space(gan_dir, space):
    b = _load(gan_dir, space)
    expected = {"z": (12,), "w": (16,), "w+": (3, 16), "f0": (8 * 7 * 7 + 2 * 16,), "f1": (8 * 14 * 14 + 16,),
                "f2": (8 * 28 * 28,)}
    assert tuple(b.latent_shape) == expected[space]
    z = b.random_latents(3, 4, torch.Generator().manual_seed(0))
    assert z.shape == (4, *expected[space])
    x = b.decode(z)
    assert x.shape == (4, *IMAGE_SHAPE) and x.dtype == torch.float32 and torch.isfinite(x).all()
    assert b.describe()["latent_space"] == space and b.describe()["latent_shape"] == list(expected[space])


@pytest.mark.parametrize("space", SPACES)
def test_decode_vjp_equals_autograd(gan_dir, space):
    b = _load(gan_dir, space).double()
    g = torch.Generator().manual_seed(1)
    z = b.random_latents(2, 5, g).double()
    grad_x = torch.randn((5, *IMAGE_SHAPE), generator=g, dtype=torch.float64)
    zr = z.clone().requires_grad_(True)
    b.decode(zr).backward(grad_x)
    got = b.decode_vjp(z, grad_x, chunk=2)
    assert got.shape == z.shape and not got.requires_grad
    torch.testing.assert_close(got, zr.grad, rtol=1e-6, atol=1e-8)


def test_same_w_decodes_alike_in_every_w_space(gan_dir):
    """The class-mean w pushed into w, w+ or f<k> decodes to the same image (F-space carries the later ws)."""
    images = [_load(gan_dir, s).class_mean_latents(4, 2, noise=0.0) for s in SPACES[1:]]
    decoded = [_load(gan_dir, s).decode(z) for s, z in zip(SPACES[1:], images)]
    for x in decoded[1:]:
        torch.testing.assert_close(x, decoded[0], rtol=1e-5, atol=1e-5)


def test_random_latents_decode_like_the_generator(gan_dir):
    b = _load(gan_dir, "z")
    z = b.random_latents(7, 3, torch.Generator().manual_seed(5))
    x = b.sample_images(torch.full((3,), 7), torch.Generator().manual_seed(5))
    torch.testing.assert_close(b.decode(z), x, rtol=1e-5, atol=1e-6)
    assert torch.equal(z[:, 8:], b.generator.embed.weight[7].expand(3, -1))  # z-space: [z, embed(class)]


def test_deterministic_and_generator_driven(gan_dir):
    b = _load(gan_dir, "w+")
    a1 = b.class_mean_latents(1, 3, torch.Generator().manual_seed(0))
    a2 = b.class_mean_latents(1, 3, torch.Generator().manual_seed(0))
    assert torch.equal(a1, a2) and not torch.equal(a1[0], a1[1])  # the noise makes the ipc differ
    assert torch.equal(_load(gan_dir).w_mean, b.w_mean)  # the class-mean w comes from a fixed seed


# ------------------------------------------------------------------------------------------------------- inversion


@pytest.mark.parametrize("space", fast_first(["f1", "z", "w+"]))
def test_inversion_reduces_reconstruction_error(gan_dir, space):
    b = _load(gan_dir, space)
    labels = torch.tensor([2, 5, 5])
    x = b.sample_images(labels, torch.Generator().manual_seed(3)).clamp(0, 1)
    start = (b.decode(b.start_latents(labels)) - x).pow(2).flatten(1).mean(1)
    b.invert_steps, b.invert_batch, b.invert_tolerance = 40, 2, 1.0  # two batches; no warning wanted here
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        z = b.encode(x, labels=labels)
    assert z.shape == (3, *b.latent_shape)
    err = (b.decode(z) - x).pow(2).flatten(1).mean(1)
    torch.testing.assert_close(err, b.last_inversion_error, rtol=1e-4, atol=1e-7)
    assert (err < 0.5 * start).all(), (start, err)


def test_inversion_warns_when_not_converged(gan_dir):
    b = _load(gan_dir)
    b.invert_steps, b.invert_tolerance = 2, 0.0
    with pytest.warns(UserWarning, match="did not converge: mean reconstruction MSE"):
        b.encode(torch.rand(2, *IMAGE_SHAPE, generator=torch.Generator().manual_seed(0)), labels=3)


def test_inversion_without_labels_and_bad_labels(gan_dir):
    b = _load(gan_dir, "w")
    b.invert_steps, b.invert_tolerance = 3, 1.0
    x = torch.rand(2, *IMAGE_SHAPE, generator=torch.Generator().manual_seed(0))
    assert b.encode(x).shape == (2, 16)
    with pytest.raises(ValueError, match="2 images but 3 labels"):
        b.encode(x, labels=torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"class ids in \[0, 10\)"):
        b.encode(x, labels=torch.tensor([0, 10]))


# -------------------------------------------------------------------------------------------------------- identity


def test_hash_depends_on_latent_space_and_survives_save_load(tmp_path, gan_dir):
    hashes = {s: _load(gan_dir, s).weights_sha256() for s in SPACES}
    assert len(set(hashes.values())) == len(SPACES)
    b = _load(gan_dir, "f1")
    b.save_pretrained(tmp_path / "copy")
    assert _load(tmp_path / "copy", "f1").weights_sha256() == hashes["f1"]
    assert GANBackbone(tiny_generator(), latent_space="f1").weights_sha256() == hashes["f1"]
    assert GANBackbone(tiny_generator(seed=1), latent_space="f1").weights_sha256() != hashes["f1"]


@pytest.mark.parametrize("space", SPACES)
@pytest.mark.parametrize("init", ["classmean", "noise", "real", "kmeans"])
def test_set_in_every_space_saves_and_loads(tmp_path, gan_dir, fast_inversion, space, init):
    train = get_dataset("fashion-mnist", "train")
    b = _load(gan_dir, space)
    syn = SyntheticSet.initialise(init, image_split(train), 2, b, train.meta(), torch.Generator().manual_seed(0))
    assert syn.latents.shape == (20, *b.latent_shape)
    assert syn.backbone_meta["latent_space"] == space
    syn.save(tmp_path / "set.safetensors")
    back = SyntheticSet.load(tmp_path / "set.safetensors", backbone=_load(gan_dir, space))
    assert torch.equal(back.latents, syn.latents)
    assert back.decode(b).shape == (20, *IMAGE_SHAPE)
    other = "w" if space != "w" else "w+"
    with pytest.raises(ValueError, match=f"latent space '{space}'.*--latent-space {space}"):
        SyntheticSet.load(tmp_path / "set.safetensors", backbone=_load(gan_dir, other))


def test_real_init_inverts_only_the_chosen_images(gan_dir, fast_inversion, monkeypatch):
    train = get_dataset("fashion-mnist", "train")
    b = _load(gan_dir)
    seen = []
    original = GANBackbone.encode

    def counting(self, x, labels=None, **kw):
        seen.append((len(x), labels.tolist()))
        return original(self, x, labels=labels, **kw)

    monkeypatch.setattr(GANBackbone, "encode", counting)
    SyntheticSet.initialise("real", image_split(train), 3, b, train.meta(), torch.Generator().manual_seed(0))
    assert seen == [(30, torch.arange(10).repeat_interleave(3).tolist())]  # one call, ipc x classes images, with labels


def test_init_errors(gan_dir, tiny_vae_dir):
    train = get_dataset("fashion-mnist", "train")
    b = _load(gan_dir)
    for method in ("mean",):
        with pytest.raises(ValueError, match="use --init classmean"):
            SyntheticSet.initialise(method, image_split(train), 1, b, train.meta())
    vae = load_backbone(str(tiny_vae_dir))
    with pytest.raises(ValueError, match="needs a generator backbone"):
        SyntheticSet.initialise("classmean", image_split(train), 1, vae, train.meta())


# ---------------------------------------------------------------------------------------------------------- errors


def _one_line(e) -> str:
    text = str(e.value)
    assert "\n" not in text
    return text


def test_config_without_structure_fails_in_one_line(tmp_path):
    d = tmp_path / "bad"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"_class_name": "ConditionalStyleGenerator", "num_classes": 10,
                                               "z_dim": 8}))
    with pytest.raises(ValueError, match="lacks the generator structure") as e:
        load_backbone(str(d))
    text = _one_line(e)
    assert "mapping.w_dim" in text and "synthesis.channels" in text and "recipes/train_gan.py" in text


def test_unknown_latent_space_lists_valid_ones(gan_dir):
    with pytest.raises(ValueError, match="unknown latent space 'f9'") as e:
        load_backbone(str(gan_dir), latent_space="f9")
    assert "valid: z, w, w+, f0, f1, f2" in _one_line(e)
    with pytest.raises(ValueError, match="valid: z, w, w\\+, f0, f1, f2"):
        GANBackbone(tiny_generator(), latent_space="s")


def test_latent_space_on_a_vae_is_an_error(tiny_vae_dir):
    with pytest.raises(ValueError, match="applies to gan backbones"):
        load_backbone(str(tiny_vae_dir), latent_space="w+")


def test_gan_dir_without_weights(tmp_path, gan_dir):
    d = tmp_path / "noweights"
    d.mkdir()
    shutil.copy(gan_dir / "config.json", d / "config.json")
    with pytest.raises(ValueError, match="could not load the GAN generator") as e:
        load_backbone(str(d))
    _one_line(e)


def test_no_latent_cache_for_a_gan(gan_dir):
    train = get_dataset("fashion-mnist", "train")
    with pytest.raises(ValueError, match="--match-space pixel"):
        cached_latents(_load(gan_dir), train)


# --------------------------------------------------------------------------------------------------------- recipes


def _recipe_args(out, gan_dir, *extra):
    return ["--output", str(out), "--backbone", str(gan_dir), "--ipc", "2", "--batch-real", "4", "--steps", "3",
            "--eval-runs", "0", "--depth", "2", "--width", "8", "--checkpoint-every", "0", *map(str, extra)]


@pytest.mark.slow  # end to end (a recipe run, a training or several model loads): a second or more
def test_dm_through_the_gan(tmp_path, gan_dir, fast_inversion):
    out = tmp_path / "dm"
    argv = _recipe_args(out, gan_dir, "--latent-space", "w+", "--match-space", "pixel", "--init", "classmean")
    assert load_recipe(ROOT / "recipes" / "latent_dm.py").main(argv) == 0
    syn = SyntheticSet.load(out / "set.safetensors", backbone=_load(gan_dir, "w+"))
    assert syn.latents.shape == (20, 3, 16) and syn.backbone_meta["latent_space"] == "w+"
    assert syn.run_meta["config"]["latent_space"] == "w+" and syn.run_meta["steps_done"] == 3
    b, g = _load(gan_dir, "w+"), torch.Generator().manual_seed(0)  # the start: build's classmean init with --seed 0
    start = torch.cat([b.class_mean_latents(c, 2, g) for c in range(10)])
    assert not torch.allclose(syn.latents, start) and (syn.latents - start).abs().max() < 1.0  # 3 Adam steps moved it
    assert (out / "grid.png").exists()


def test_dm_in_latent_space_with_a_gan_says_use_pixel(tmp_path, gan_dir):
    with pytest.raises(ValueError, match="add --match-space pixel") as e:
        load_recipe(ROOT / "recipes" / "latent_dm.py").main(_recipe_args(tmp_path / "x", gan_dir, "--match-space",
                                                                         "latent"))
    _one_line(e)


@pytest.mark.slow  # end to end (a recipe run, a training or several model loads): a second or more
def test_dc_through_the_gan_in_f_space(tmp_path, gan_dir, fast_inversion):
    out = tmp_path / "dc"
    argv = _recipe_args(out, gan_dir, "--latent-space", "f1", "--match-space", "pixel", "--init", "real",
                        "--outer-loop", "1", "--inner-loop", "1")
    assert load_recipe(ROOT / "recipes" / "latent_dc.py").main(argv) == 0
    syn = SyntheticSet.load(out / "set.safetensors", backbone=_load(gan_dir, "f1"))
    assert syn.backbone_meta["latent_space"] == "f1" and syn.run_meta["init"] == "real"


def test_datm_through_the_gan(tmp_path, gan_dir):
    """Trajectory matching shares the config: pixel-space experts, the set in z space; DATM keeps the set's own start
    (its candidate search needs cached latents, which a gan has not)."""
    out = tmp_path / "datm"
    argv = ["--output", out, "--backbone", gan_dir, "--latent-space", "z", "--match-space", "pixel", "--init", "noise",
            "--method", "datm", "--ipc", 2, "--steps", 2, "--eval-runs", 0, "--syn-steps", 2, "--expert-epochs", 1,
            "--max-start-epoch", 1, "--max-start-epoch-final", 1, "--num-experts", 1, "--expert-train-epochs", 2,
            "--lr-lr", 1e-9, "--depth", 2, "--width", 8, "--cache-dir", tmp_path / "cache"]
    assert load_recipe(ROOT / "recipes" / "latent_mtt.py").main([str(a) for a in argv]) == 0
    syn = SyntheticSet.load(out / "set.safetensors", backbone=_load(gan_dir, "z"))
    assert (
        syn.latents.shape == (20, 12) and syn.labels.shape == (20, 10) and syn.run_meta["experts"]["space"] == "pixel"
    )


@pytest.mark.slow  # end to end, over a second of CPU
def test_itgan_recipe(tmp_path, gan_dir, fast_inversion):
    out = tmp_path / "itgan"
    argv = _recipe_args(out, gan_dir, "--classifier-epochs", "1", "--reg-weight", "1.0")
    assert load_recipe(ROOT / "recipes" / "itgan.py").main(argv) == 0
    syn = SyntheticSet.load(out / "set.safetensors", backbone=_load(gan_dir, "w+"))
    assert syn.run_meta["method"] == "itgan" and syn.run_meta["init"] == "real" and syn.latents.shape == (20, 3, 16)


@pytest.mark.slow  # end to end, over a second of CPU
def test_reference_classifier_is_trained_once_then_loaded_and_a_bad_file_is_named(tmp_path):
    from gendistill.evaluate import reference_classifier

    train = get_dataset("fashion-mnist", "train")
    path = tmp_path / "clf.safetensors"
    first = reference_classifier(train, path=path, epochs=1, progress=False)
    assert path.is_file()
    again = reference_classifier(train, path=path, epochs=1, seed=5, progress=False)  # loaded, not retrained
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values()))
    path.write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="clf.safetensors.*delete it"):
        reference_classifier(train, path=path)


def test_itgan_objective_terms():
    """DM + cls_weight * CE, and latent_loss = reg_weight * mean squared distance to the anchors."""
    from gendistill.objectives import StepContext, get_objective

    classifier = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4 * 4, 2))
    anchors = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    obj = get_objective("itgan", cls_weight=0.5, reg_weight=0.25, classifier=classifier, anchors=anchors,
                        depth=1, width=4, augment="none")
    syn = torch.rand(4, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 0, 1, 1])
    real = {c: torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(2 + c)) for c in (0, 1)}
    ctx = lambda: StepContext(0, torch.Generator().manual_seed(9), (1, 4, 4), 2, torch.device("cpu"), space="pixel")  # noqa: E731
    dm = get_objective("dm", depth=1, width=4, augment="none")(syn, labels, real.__getitem__, ctx())
    ce = torch.nn.functional.cross_entropy(classifier(syn), labels)
    torch.testing.assert_close(obj(syn, labels, real.__getitem__, ctx()), dm + 0.5 * ce)
    z = anchors + 0.1
    torch.testing.assert_close(obj.latent_loss(z, labels, ctx()), torch.tensor(0.25 * 3 * 0.01))
    state = obj.state_dict()
    fresh = get_objective("itgan", classifier=torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2)), depth=1,
                          width=4)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.anchors, anchors) and torch.equal(fresh.classifier[1].weight, classifier[1].weight)


@pytest.mark.slow  # end to end (a recipe run, a training or several model loads): a second or more
def test_train_gan_writes_a_loadable_directory(tmp_path):
    args = ["--max-steps", "2", "--batch-size", "16", "--channels", "8", "8", "8", "--d-channels", "8", "8", "8",
            "--w-dim", "16", "--z-dim", "8", "--embed-dim", "4", "--mapping-layers", "2", "--samples-per-class", "2"]
    recipe = load_recipe(ROOT / "recipes" / "train_gan.py")
    assert recipe.main(["--output", str(tmp_path / "a"), *args]) == 0
    assert recipe.main(["--output", str(tmp_path / "b"), *args]) == 0
    a, b = load_backbone(str(tmp_path / "a")), load_backbone(str(tmp_path / "b"))
    assert a.kind == "gan" and a.weights_sha256() == b.weights_sha256()  # reproducible from the seed
    # trained
    assert a.weights_sha256() != GANBackbone(a.generator.__class__(**TINY), latent_space="w+").weights_sha256()
    info = json.loads((tmp_path / "a" / "gendistill.json").read_text())
    assert (
        info["recipe"] == "recipes/train_gan.py"
        and info["config"]["max_steps"] == 2
        and info["dataset"]["name"] == "fashion-mnist"
    )
    assert (tmp_path / "a" / "samples.png").exists() and not list(tmp_path.glob(".a.*"))  # atomic: no leftovers
    assert a.decode(a.random_latents(0, 2)).shape == (2, *IMAGE_SHAPE)


@pytest.mark.slow  # end to end, over a second of CPU
def test_eval_gan_recipe(tmp_path, gan_dir, fast_inversion, capsys):
    recipe = load_recipe(ROOT / "recipes" / "eval_gan.py")
    clf = tmp_path / "clf.safetensors"
    argv = ["--backbone", str(gan_dir), "--per-class", "3", "--classifier-epochs", "1", "--invert", "2",
            "--classifier", str(clf), "--out", str(tmp_path / "eval.json")]
    assert recipe.main(argv) == 0
    first = json.loads((tmp_path / "eval.json").read_text())
    assert clf.exists() and len(first["classifier_acc_generated_per_class"]) == 10
    assert 0 <= first["classifier_acc_generated"] <= 1 and first["inversion"]["images"] == 2
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("class consistency:")
    assert recipe.main(argv) == 0  # the saved classifier is reused: the same numbers
    second = json.loads((tmp_path / "eval.json").read_text())
    assert second["classifier_acc_real_test"] == first["classifier_acc_real_test"]


def test_cli_init_and_sample_in_a_gan_space(tmp_path, gan_dir, capsys):
    from gendistill.cli import main

    out = tmp_path / "set.safetensors"
    for argv in (["init", "--backbone", str(gan_dir), "--latent-space", "f1", "--init", "classmean", "--ipc", "1",
                  "--out", out],
                 ["sample", out, "--out", tmp_path / "grid.png"]):
        with pytest.raises(SystemExit) as e:
            main([str(a) for a in argv])
        assert e.value.code == 0, capsys.readouterr().err
    assert SyntheticSet.load(out).backbone_meta["latent_space"] == "f1" and (tmp_path / "grid.png").exists()


def test_minibatch_std_channel_is_zero_for_identical_samples_and_the_group_spread_otherwise():
    from gendistill.training.gan import minibatch_std

    same = torch.ones(8, 3, 2, 2)
    out = minibatch_std(same, 4)
    assert out.shape == (8, 4, 2, 2) and torch.equal(out[:, :3], same) and out[:, 3].abs().max() < 1e-3
    h = torch.zeros(4, 1, 1, 1)
    h[0], h[2] = 1.0, 3.0  # groups of 2 take every 2nd sample: (h0, h2) and (h1, h3)
    std = minibatch_std(h, 2)[:, 1, 0, 0]
    torch.testing.assert_close(std, torch.tensor([1.0, 0.0, 1.0, 0.0]), atol=1e-3, rtol=0)


def test_mode_seeking_loss_is_large_when_different_z_give_one_image():
    from gendistill.training.gan import mode_seeking_loss

    z = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    collapsed = mode_seeking_loss(torch.ones(8, 1, 4, 4), z)
    diverse = mode_seeking_loss(torch.randn(8, 1, 4, 4, generator=torch.Generator().manual_seed(1)), z)
    assert collapsed > 1e4 and diverse < 10


def test_within_class_spread_tells_a_collapsed_generator_from_varied_images():
    from gendistill.evaluate import within_class_spread

    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    images = torch.zeros(6, 1, 2, 2)
    images[3:] = torch.tensor([0.0, 0.5, 1.0]).view(3, 1, 1, 1)
    spread = within_class_spread(images, labels)
    assert spread[0] == 0 and abs(spread[1] - (0.5 + 1.0 + 0.5) / 3) < 1e-6


@pytest.mark.slow  # end to end (a recipe run, a training or several model loads): a second or more
def test_discriminator_auxiliary_classifier_logits_and_the_ac_term_changes_training():
    from gendistill.training.gan import GANConfig, ProjectionDiscriminator, train_gan

    # eval: spectral norm's power iteration is frozen
    D = ProjectionDiscriminator(1, 10, (8, 8, 8), mbstd_group=4).eval()
    x, y = torch.randn(8, 1, 28, 28), torch.arange(8)
    score, logits = D(x, y, logits=True)
    assert score.shape == (8,) and logits.shape == (8, 10) and torch.equal(score, D(x, y))

    train = get_dataset("fashion-mnist", "train")
    tiny = dict(z_dim=8, embed_dim=4, w_dim=16, mapping_layers=2, channels=(8, 8, 8), d_channels=(8, 8, 8),
                batch_size=16, max_steps=2, ema=0.0)
    sha = [train_gan(train, GANConfig(**tiny, ac_weight=w), log=lambda *a: None, progress=False).weights_sha256()
           for w in (0.0, 1.0, 1.0)]
    assert sha[0] != sha[1] and sha[1] == sha[2]  # the term is in the generator's loss; still reproducible
