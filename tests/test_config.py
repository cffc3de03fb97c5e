"""One source of truth per setting: recipe configs take the objective's settings (and defaults) from its dataclass,
every config reads its data settings from DataConfig, and "auto" augmentation / the effective match space are one
helper each."""

from __future__ import annotations

import dataclasses
import math

import pytest
from conftest import ROOT, load_recipe

from gendistill.augment import get_augment, resolve_augment
from gendistill.backbones import effective_match_space
from gendistill.config import objective_kwargs, objective_settings, parse_config, with_objective
from gendistill.data import DataConfig
from gendistill.objectives import get_objective
from gendistill.pipeline import RecipeConfig

# the recipe, its config class, the objectives whose settings it carries, and the defaults it deliberately changes
RECIPES = {
    "latent_dm": ("LatentDMConfig", ("dm",), {"kernel": "gaussian"}),
    "latent_dc": ("LatentDCConfig", ("dc",), {"outer_loop": None, "inner_loop": None}),
    "itgan": ("ITGANConfig", ("itgan", "dm"), {"kernel": "gaussian"}),
}


def _defaults(cls) -> dict:
    return {f.name: f.default for f in dataclasses.fields(cls)}


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_recipe_configs_take_objective_defaults_from_the_objective(recipe):
    name, objectives, changed = RECIPES[recipe]
    defaults = _defaults(getattr(load_recipe(ROOT / "recipes" / f"{recipe}.py"), name))
    for objective in objectives:
        for field, (_, default) in objective_settings(objective).items():
            assert field in defaults, f"{recipe} lacks {objective}'s setting {field}"
            if field in changed:
                assert defaults[field] == changed[field]
            elif field not in ("net", "depth", "width"):  # the proxy net's size is the recipe's (RecipeConfig)
                assert defaults[field] == default, f"{recipe} restates {field} with another default"


def test_mtt_recipe_leaves_the_method_defaults_to_the_method():
    mod = load_recipe(ROOT / "recipes" / "latent_mtt.py")
    cfg = parse_config(mod.LatentMTTConfig, [])
    settings = objective_settings("mtt")
    assert {k for k in settings if k not in ("lr_teacher", "label_logits")} <= set(_defaults(mod.LatentMTTConfig))
    assert objective_kwargs(cfg, "mtt", drop_none=True) == {}  # every one unset: datm and tesla keep their own defaults
    cfg = parse_config(mod.LatentMTTConfig, ["--syn-steps", "7", "--threshold", "inf", "--method", "datm"])
    assert objective_kwargs(cfg, "datm", drop_none=True) == {"syn_steps": 7, "threshold": math.inf}


def test_the_demo_recipe_builds_the_objective_it_built_before():
    """latent_dm's objective: the settings the recipe passed by hand before (kernel gaussian, DM's other defaults)."""
    mod = load_recipe(ROOT / "recipes" / "latent_dm.py")
    cfg = parse_config(mod.LatentDMConfig, [])
    built = get_objective("dm", **objective_kwargs(cfg, "dm"))
    by_hand = get_objective("dm", net="convnet", depth=3, width=128, pool="avgpooling", augment="auto",
                            kernel="gaussian", proxy="fresh", proxy_nets=10, proxy_train=2, proxy_max_steps=100,
                            ce_weight=0.0)
    assert dataclasses.asdict(built) == dataclasses.asdict(by_hand)


def test_with_objective_adds_only_missing_plain_settings():
    cls = with_objective(RecipeConfig, "itgan", "dm")
    names = [f.name for f in dataclasses.fields(cls)]
    assert names[: len(dataclasses.fields(RecipeConfig))] == [f.name for f in dataclasses.fields(RecipeConfig)]
    assert "cls_weight" in names and "kernel" in names and names.count("net") == 1
    assert "classifier" not in names and "anchors" not in names  # run-time objects, not settings
    assert "experts" not in {f.name for f in dataclasses.fields(with_objective(RecipeConfig, "mtt"))}


@pytest.mark.parametrize("recipe", ["latent_dm", "latent_dc", "latent_mtt", "itgan", "train_experts", "eval_gan",
                                    "eval_autoencoder"])
def test_every_recipe_config_is_a_data_config(recipe):
    mod = load_recipe(ROOT / "recipes" / f"{recipe}.py")
    # a recipe file either defines its config or re-exports it from the library's gendistill.recipes
    configs = [v for k, v in vars(mod).items() if isinstance(v, type) and dataclasses.is_dataclass(v)
               and (v.__module__ == mod.__name__ or v.__module__.startswith("gendistill.recipes."))]
    assert configs and all(issubclass(c, DataConfig) for c in configs)


def test_auto_augmentation_is_one_helper():
    assert resolve_augment("auto", "pixel") == "dsa" and resolve_augment("auto", "latent") == "latent"
    assert resolve_augment("auto", "pixel", siamese=False) == resolve_augment("auto", "latent", siamese=False) == "none"
    assert resolve_augment("latent", "pixel") == "latent"
    dc, dsa, dm = get_objective("dc"), get_objective("dsa"), get_objective("dm")
    assert repr(dc._augments["pixel"]) == repr(dc._augments["latent"]) == repr(get_augment("none"))
    assert repr(dsa._augments["pixel"]) == repr(dm._augments["pixel"]) == repr(get_augment("dsa"))
    assert repr(dsa._augments["latent"]) == repr(dm._augments["latent"]) == repr(get_augment("latent"))


def test_a_pixel_backbone_matches_in_pixel_space():
    assert effective_match_space("pixel", "latent") == "pixel" and effective_match_space("vae", "latent") == "latent"
    assert effective_match_space("gan", "pixel") == "pixel"
