"""gendistill.state: nested training state to safetensors + JSON and back, never through pickle."""

from __future__ import annotations

import math

import pytest
import torch

from gendistill.state import load_state, save_state


def test_round_trip_keeps_types_and_tensors(tmp_path):
    state = {"a": torch.arange(6).view(2, 3), "nested": {0: {"step": torch.tensor(3.0)}, 1: [1, 2.5, "x", None, True]},
             "betas": (0.9, 0.999), "inf": math.inf, "empty": [], "bytes": torch.Generator().manual_seed(3).get_state()}
    save_state(state, tmp_path / "s")
    back = load_state(tmp_path / "s")
    assert set(back) == set(state) and list(back["nested"]) == [0, 1]  # int keys stay ints
    assert torch.equal(back["a"], state["a"]) and torch.equal(back["bytes"], state["bytes"])
    assert back["nested"][1] == [1, 2.5, "x", None, True] and back["betas"] == (0.9, 0.999) and back["inf"] == math.inf
    assert back["empty"] == [] and torch.equal(back["nested"][0]["step"], torch.tensor(3.0))


def test_shared_storage_is_saved(tmp_path):
    t = torch.arange(4.0)
    save_state({"x": t, "view": t[:2]}, tmp_path / "s")
    assert torch.equal(load_state(tmp_path / "s")["view"], t[:2])


def test_objects_other_than_plain_data_are_refused(tmp_path):
    with pytest.raises(TypeError, match="without pickle"):
        save_state({"f": lambda: 0}, tmp_path / "s")
    assert not (tmp_path / "s").exists()
