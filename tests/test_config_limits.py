"""Config limits: declared once per field (``setting``), checked whenever a config is built, from flags, YAML or
code."""

from __future__ import annotations

import dataclasses

import pytest

from gendistill.config import Checked, check_value, limits_of, parse_config, setting
from gendistill.errors import UsageError


@dataclasses.dataclass
class Base(Checked):
    steps: int = setting(10, min=0)
    lr: float = setting(0.1, above=0)
    mode: str = setting("a", choices=("a", "b"))
    sizes: tuple[int, ...] = setting((1, 2), min=1)
    name: str | None = None
    flag: bool = False


@dataclasses.dataclass
class Child(Base):
    steps: int = 3  # a new default keeps the limits Base declared


def test_limits_are_inherited_by_a_redeclared_field():
    assert limits_of(Child, "steps") == {"min": 0}
    with pytest.raises(ValueError, match="--steps must be at least 0, got -1"):
        Child(steps=-1)


def test_building_checks_and_normalises():
    c = Base(lr=1, sizes=[3, 4])
    assert c.lr == 1.0 and isinstance(c.lr, float) and c.sizes == (3, 4)
    for kwargs, message in [({"steps": "10"}, "must be an integer, got '10'"),
                            ({"steps": True}, "must be an integer, got True"), ({"lr": 0}, "must be greater than 0"),
                            ({"lr": float("inf")}, "must be a finite number"),
                            ({"mode": "c"}, "must be one of a, b, got 'c'"),
                            ({"sizes": (1, 0)}, "has an element that must be at least 1"),
                            ({"name": 5}, "must be a string"), ({"flag": "yes"}, "must be true or false")]:
        with pytest.raises(ValueError, match=message):
            Base(**kwargs)


def test_check_value_names_where_the_value_came_from():
    with pytest.raises(ValueError, match="^lr in cfg.yaml must be greater than 0, got -1.0$"):
        check_value(Base, "lr", -1, where="lr in cfg.yaml")


def test_yaml_floats_without_a_dot_are_numbers(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: 1e-3\nsteps: 5\nsizes: [2, 3]\nflag: yes\n")
    c = parse_config(Child, ["--config", str(path)])
    assert (c.lr, c.steps, c.sizes, c.flag) == (0.001, 5, (2, 3), True)
    path.write_text("lr: '1e-3'\n")  # quoted: a string, refused
    with pytest.raises(ValueError, match="lr in --config .* must be a number, got '1e-3'"):
        parse_config(Child, ["--config", str(path)])


def test_flags_win_over_yaml_and_are_checked(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("steps: 5\n")
    assert parse_config(Child, ["--config", str(path), "--steps", "7"]).steps == 7
    with pytest.raises(UsageError, match="argument --lr: must be greater than 0, got -0.5"):
        parse_config(Child, ["--lr", "-0.5"])
    with pytest.raises(UsageError, match="argument --mode: must be one of a, b, got 'z'"):
        parse_config(Child, ["--mode", "z"])


def test_flags_are_never_abbreviated():
    with pytest.raises(UsageError, match="unrecognized arguments: --step 5"):
        parse_config(Child, ["--step", "5"])


def test_none_only_for_optional_fields():
    assert parse_config(Child, ["--name", "none"]).name is None
    with pytest.raises(UsageError, match="argument --steps: invalid int value: 'none'"):
        parse_config(Child, ["--steps", "none"])
