"""Atomic writes and safetensors helpers."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from gendistill.errors import format_error
from gendistill.io import (
    atomic_dir,
    atomic_path,
    check_parent,
    load_safetensors,
    save_safetensors,
    tensor_sha256,
    write_json,
)


def test_check_parent(tmp_path, monkeypatch):
    assert check_parent(tmp_path / "x") == tmp_path / "x"
    monkeypatch.chdir(tmp_path)
    assert str(check_parent("x.png")) == "x.png"
    with pytest.raises(FileNotFoundError, match="mkdir -p"):
        check_parent(tmp_path / "a" / "b" / "x")


def test_atomic_path_commits_or_leaves_nothing(tmp_path):
    target = tmp_path / "out.txt"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp != target
        tmp.write_text("done")
    assert target.read_text() == "done"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "done"  # the old file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_atomic_dir(tmp_path):
    target = tmp_path / "d"
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("1")
    assert (target / "a").read_text() == "1"
    with atomic_dir(target) as tmp:
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["b"]
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "c").write_text("3")
            raise RuntimeError("interrupted")
    assert sorted(p.name for p in target.iterdir()) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_safetensors_round_trip(tmp_path):
    path = tmp_path / "t.safetensors"
    t = {"a": torch.arange(6.0).view(2, 3), "b": torch.tensor([1, 2], dtype=torch.int64)}
    save_safetensors(t, path, {"k": "v"})
    got, meta = load_safetensors(path)
    assert meta == {"k": "v"} and torch.equal(got["a"], t["a"]) and torch.equal(got["b"], t["b"])
    save_safetensors(t, tmp_path / "n.safetensors")
    assert load_safetensors(tmp_path / "n.safetensors")[1] == {}


def test_load_safetensors_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_safetensors(tmp_path / "missing.safetensors")
    with pytest.raises(IsADirectoryError, match="is a directory, not a safetensors file"):
        load_safetensors(tmp_path)  # a directory is not a file
    bad = tmp_path / "bad.safetensors"
    for data in (b"", b"\x00" * 3, b"\xff" * 16, b"{}" * 10):
        bad.write_bytes(data)
        with pytest.raises(ValueError, match="not a readable safetensors file") as e:
            load_safetensors(bad)
        assert "\n" not in str(e.value)


def test_tensor_sha256():
    a = {"x": torch.arange(4.0), "y": torch.zeros(2, 2)}
    assert tensor_sha256(a) == tensor_sha256({"y": torch.zeros(2, 2), "x": torch.arange(4.0)})
    assert tensor_sha256(a) == tensor_sha256({k: v.clone() for k, v in a.items()})
    assert tensor_sha256(a) != tensor_sha256({"x": torch.arange(4.0), "y": torch.zeros(4)})  # shape matters
    assert tensor_sha256(a) != tensor_sha256({"x": torch.arange(4.0).double(), "y": torch.zeros(2, 2)})  # dtype
    assert tensor_sha256(a) != tensor_sha256({"z": torch.arange(4.0), "y": torch.zeros(2, 2)})  # names
    assert tensor_sha256({"e": torch.zeros(0)}) == tensor_sha256({"e": torch.zeros(0)})
    assert tensor_sha256({"t": torch.arange(6.0).view(2, 3).t()}) == tensor_sha256(
        {"t": torch.arange(6.0).view(2, 3).t().contiguous()}
    )


def test_write_json(tmp_path):
    write_json({"b": 1, "a": [1, 2]}, tmp_path / "x.json")
    assert (tmp_path / "x.json").read_text().startswith('{\n  "a"')


def test_format_error():
    assert format_error(ValueError("first line\nsecond")) == "error: first line"
    assert format_error(ValueError("")) == "error: ValueError"
    assert format_error(KeyError("k")) == "error: missing 'k'"


def _umask():
    old = os.umask(0)
    os.umask(old)
    return old


def test_outputs_get_normal_permissions(tmp_path):
    expected_file = 0o666 & ~_umask()
    expected_dir = 0o777 & ~_umask()
    save_safetensors({"a": torch.zeros(1)}, tmp_path / "f.safetensors")
    with atomic_dir(tmp_path / "d") as tmp:
        (tmp / "x").write_text("1")
    assert stat.S_IMODE(os.stat(tmp_path / "f.safetensors").st_mode) == expected_file
    assert stat.S_IMODE(os.stat(tmp_path / "d").st_mode) == expected_dir
