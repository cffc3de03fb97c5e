"""The distillation recipes, in the library (so an installed package has them): one module per family, each with its
config dataclass, ``run(cfg) -> eval result`` and ``main(argv)``. ``gendistill distill METHOD``,
``gendistill.distill_set(method=...)`` and the repository's ``recipes/*.py`` files all run these.

    dm                   distribution matching (DM / M3D / IDM), recipes/latent_dm.py
    dc, dsa              gradient matching, recipes/latent_dc.py
    mtt, tesla, datm     trajectory matching, recipes/latent_mtt.py
    itgan                IT-GAN on a GAN backbone, recipes/itgan.py
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from importlib import import_module

from ..registry import Registry


@dataclass(frozen=True)
class Recipe:
    module: str  # gendistill.recipes.<module>
    config: str  # its config dataclass
    method: str | None = None  # the config's ``method`` value, for families of several methods


RECIPES: Registry = Registry("distillation method")
for _name, _module, _config, _method in (
    ("dm", "dm", "LatentDMConfig", None),
    ("dc", "dc", "LatentDCConfig", "dc"), ("dsa", "dc", "LatentDCConfig", "dsa"),
    ("mtt", "mtt", "LatentMTTConfig", "mtt"), ("tesla", "mtt", "LatentMTTConfig", "tesla"),
    ("datm", "mtt", "LatentMTTConfig", "datm"), ("itgan", "itgan", "ITGANConfig", None),
):
    RECIPES.register(_name)(Recipe(_module, _config, _method))


def methods() -> list[str]:
    return RECIPES.names()


def has_recipe(method: str) -> bool:
    return method in RECIPES


def recipe_module(method: str):
    return import_module(f"{__name__}.{RECIPES.get(method).module}")


def config_class(method: str) -> type:
    return getattr(recipe_module(method), RECIPES.get(method).config)


def make_config(name: str, /, **settings):
    """Method ``name``'s config with ``settings`` (field names of its dataclass) over its defaults."""
    from ..config import check_value

    recipe, cls = RECIPES.get(name), config_class(name)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(settings) - names)
    if unknown:
        raise ValueError(f"unknown setting(s) {', '.join(unknown)} for method {name!r}; valid: "
                         f"{', '.join(sorted(names))}")
    settings = {k: check_value(cls, k, v) for k, v in settings.items()}  # a wrong type or value is a one-line error now
    if recipe.method is not None:
        if settings.get("method", recipe.method) != recipe.method:
            raise ValueError(f"method {name!r} was asked for, but settings say method={settings['method']!r}; give one")
        settings["method"] = recipe.method
    return cls(**settings)


def default_settings(method: str) -> dict:
    return dataclasses.asdict(make_config(method))


def run(method: str, cfg) -> dict | None:
    """Run the method's recipe on a config from ``make_config``; returns the eval result (None when skipped)."""
    return recipe_module(method).run(cfg)


def main(method: str, argv=None) -> int:
    """``gendistill distill METHOD [--key value ...]``: the recipe's command line (``--config FILE.yaml`` too)."""
    recipe = RECIPES.get(method)
    argv = list(argv or [])
    if recipe.method is not None:
        given = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--method"]
        if any(g != recipe.method for g in given):
            raise ValueError(f"`gendistill distill {method}` runs --method {recipe.method}; drop --method {given[-1]}")
        argv = ["--method", recipe.method, *argv]
    return recipe_module(method).main(argv)
