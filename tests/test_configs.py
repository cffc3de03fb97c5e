"""Every config under recipes/configs/ parses against its recipe's config class (nothing runs), and the docs cite
only configs that exist. ``recipes/configs/<method>/<dataset>_<ipc N or budget>_<variant>.yaml``."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from conftest import ROOT, load_recipe

from gendistill.cli import run_guarded
from gendistill.config import parse_config, read_config_file

CONFIGS = ROOT / "recipes" / "configs"
# method folder -> the recipe that runs it
RECIPES = {"dm": "latent_dm", "dc": "latent_dc", "dsa": "latent_dc", "mtt": "latent_mtt", "tesla": "latent_mtt",
           "datm": "latent_mtt", "itgan": "itgan", "experts": "train_experts",
           "kip": "latent_krr", "frepo": "latent_krr", "bptt": "latent_bptt", "ratbptt": "latent_bptt",
           "sre2l": "sre2l", "cafe": "latent_dm"}
NAME = re.compile(r"^(?P<dataset>[a-z0-9-]+)_(?P<size>ipc(?P<ipc>\d+)|[a-z0-9]+)_(?P<variant>[a-z0-9.+-]+)\.yaml$")
ALL = sorted(CONFIGS.rglob("*.yaml"))


class _Captured(Exception):
    pass


_classes: dict[str, type] = {}


def config_class(recipe: str) -> type:
    """The dataclass that ``recipes/<recipe>.py`` parses its arguments into (caught at its ``parse_config`` call)."""
    from gendistill import recipes as library

    method = {"latent_dm": "dm", "latent_dc": "dc", "latent_mtt": "mtt", "itgan": "itgan"}.get(recipe)
    if method is not None:  # the distillation recipes live in the library (gendistill/recipes)
        return library.config_class(method)
    if recipe not in _classes:
        module = load_recipe(ROOT / "recipes" / f"{recipe}.py")

        def capture(cls, argv=None, description=None):
            _classes[recipe] = cls
            raise _Captured

        module.parse_config = capture
        with pytest.raises(_Captured):
            module.main([])
    return _classes[recipe]


def test_there_are_configs_and_every_folder_names_a_recipe():
    assert len(ALL) >= 10
    folders = {p.parent.name for p in ALL}
    assert folders <= set(RECIPES), f"config folders without a recipe: {sorted(folders - set(RECIPES))}; add to RECIPES"
    assert all(p.parent.parent == CONFIGS for p in ALL), "configs live in recipes/configs/<method>/NAME.yaml"


@pytest.mark.parametrize("path", ALL, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_config_parses_against_its_recipe(path):
    method = path.parent.name
    cls = config_class(RECIPES[method])
    values = read_config_file(cls, path)  # unknown keys and wrong types raise here
    cfg = parse_config(cls, ["--config", str(path)])  # the path a recipe takes
    assert {k: getattr(cfg, k) for k in values} == values
    named = NAME.match(path.name)
    assert named, f"{path.name}: name it <dataset>_<ipcN or budget>_<variant>.yaml"
    assert named["dataset"] == cfg.dataset
    if named["ipc"] is not None:
        assert int(named["ipc"]) == cfg.ipc
    if "method" in values or hasattr(cfg, "method"):
        assert cfg.method == method, f"{path.name} is under {method}/ but runs method {cfg.method!r}"
    assert cfg.output, "a config names its output directory, so that two configs never share one"


def test_outputs_are_distinct_and_experts_come_from_a_config():
    outputs: dict[str, Path] = {}
    experts_made = set()
    for path in ALL:
        cfg = parse_config(config_class(RECIPES[path.parent.name]), ["--config", str(path)])
        assert cfg.output not in outputs, f"{path} and {outputs[cfg.output]} both write {cfg.output}"
        outputs[cfg.output] = path
        if path.parent.name == "experts":
            experts_made.add(cfg.output)
    for path in ALL:
        cfg = parse_config(config_class(RECIPES[path.parent.name]), ["--config", str(path)])
        if getattr(cfg, "experts", None):
            assert cfg.experts in experts_made, f"{path}: no config in recipes/configs/experts/ makes {cfg.experts}"


def _cited(text: str) -> set[str]:
    """``<method>/<name>.yaml`` config names a text cites, bare or as ``recipes/configs/...``."""
    folders = "|".join(map(re.escape, RECIPES))
    return set(re.findall(rf"(?<![\w-])((?:{folders})/[A-Za-z0-9_.+-]+\.yaml)", text))


def test_docs_cite_existing_configs_and_every_config_is_reported():
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    cited = set().union(*(_cited(p.read_text()) for p in docs if p.exists()))
    have = {str(p.relative_to(CONFIGS)) for p in ALL}
    assert not cited - have, f"docs cite configs that do not exist: {sorted(cited - have)}"
    results = ROOT / "docs" / "results.md"
    orphans = have - _cited(results.read_text())
    assert not orphans, f"configs reported nowhere in docs/results.md: {sorted(orphans)}"


def test_config_files_are_checked_key_by_key(tmp_path):
    @dataclasses.dataclass
    class Cfg:
        lr: float = 0.01
        steps: int = 10
        name: str | None = None
        flag: bool = False

    good = tmp_path / "good.yaml"
    good.write_text("lr: 1\nsteps: 5\nname: null\nflag: true\n")
    assert read_config_file(Cfg, good) == {"lr": 1.0, "steps": 5, "name": None, "flag": True}
    good.write_text("lr: 1e-5\n")  # YAML 1.1 would read this as text; gendistill reads it as the number it is
    assert read_config_file(Cfg, good) == {"lr": 1e-5}
    for text, message in (("lrr: 0.1\n", "unknown keys \\['lrr'\\]"),
                          ("lr: '1e-5'\n", "lr in --config .* must be a number, got '1e-5' \\(a str\\)"),
                          ("steps: 2.5\n", "steps in --config .* must be an integer, got 2.5"),
                          ("steps: true\n", "steps in --config .* must be an integer, got True"),
                          ("flag: 1\n", "flag in --config .* must be true or false, got 1"),
                          ("steps: null\n", "steps in --config .* must be set"),
                          ("- lr\n", "mapping"),
                          ("lr: [\n", "not valid YAML")):
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        with pytest.raises(ValueError, match=message):
            read_config_file(Cfg, bad)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_config_file(Cfg, tmp_path / "missing.yaml")


def test_a_bad_config_is_one_line_at_the_command_line(tmp_path, capsys):
    @dataclasses.dataclass
    class Cfg:
        lr: float = 0.01

    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: fast\n")
    assert run_guarded(lambda argv: parse_config(Cfg, argv), ["--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1
        and "bad.yaml" in err[0]
        and "lr in --config" in err[0]
        and "must be a number, got 'fast'" in err[0]
    )
    good = tmp_path / "good.yaml"
    good.write_text("lr: 0.5\n")
    assert parse_config(Cfg, ["--config", str(good), "--lr", "0.25"]).lr == 0.25  # a flag overrides the file
