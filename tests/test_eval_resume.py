"""An interrupted evaluation continues where it stopped: each network's training state is saved at epoch ends
(safetensors, no pickle) and a continued network is, bit for bit, the one an uninterrupted run trains."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import ROOT, cli, load_recipe

import gendistill.evaluate as E
from gendistill.data import get_dataset


@pytest.fixture
def data(tiny_idx_dir):
    train, test = get_dataset("fashion-mnist", "train"), get_dataset("fashion-mnist", "test")
    idx = torch.cat([train.sample_class(c, 2, torch.Generator().manual_seed(0)) for c in range(10)])
    return train.float_images(idx), train.labels[idx], test


class Recording(E.RunCheckpoint):
    """Saves every epoch, keeps a copy of each state, and raises KeyboardInterrupt after saving epoch ``stop``."""

    def __init__(self, path, stop=None):
        super().__init__(path, every=0)
        self.states, self.stop = {}, stop

    def save(self, state):
        super().save(state)
        self.states[state["epoch"]] = {"net": {k: v.clone() for k, v in state["net"].items()},
                                       "optimizer": state["optimizer"], "generator": state["generator"].clone()}
        if state["epoch"] == self.stop:
            raise KeyboardInterrupt


def _train(data, ck, epochs=4):
    x, y, test = data
    cfg = E.EvalConfig(epochs=epochs, runs=1, batch=8)  # 3 steps an epoch; the lr drops after epoch 2
    return E.train_and_test(x, y, test, cfg, torch.Generator().manual_seed(7), "cpu", test.mean, test.std,
                            checkpoint=ck)


@pytest.mark.parametrize("stop", [1, 2])  # before the lr drop, and at it
def test_a_continued_network_is_the_uninterrupted_one(tmp_path, data, stop):
    full = Recording(tmp_path / "full.safetensors")
    acc = _train(data, full)
    part = Recording(tmp_path / "part.safetensors", stop=stop)
    with pytest.raises(KeyboardInterrupt):
        _train(data, part)
    assert E.RunCheckpoint(part.path).load()["epoch"] == stop
    cont = Recording(part.path)
    assert _train(data, cont) == acc
    assert sorted(cont.states) == list(range(stop + 1, 4))
    a, b = full.states[3], cont.states[3]
    assert all(torch.equal(a["net"][k], b["net"][k]) for k in a["net"])
    assert torch.equal(a["generator"], b["generator"])
    for i, s in a["optimizer"]["state"].items():
        assert torch.equal(s["momentum_buffer"], b["optimizer"]["state"][i]["momentum_buffer"])
    assert a["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.001)
    assert b["optimizer"]["param_groups"] == a["optimizer"]["param_groups"]


def test_the_state_is_written_when_due_and_not_after_the_last_epoch(tmp_path, data, monkeypatch):
    ck = Recording(tmp_path / "s.safetensors")
    _train(data, ck, epochs=3)
    assert sorted(ck.states) == [1, 2]  # the last epoch is tested, not saved
    clock = iter([0.0, 10.0, 70.0, 80.0, 200.0])
    monkeypatch.setattr(E.time, "monotonic", lambda: next(clock))
    ck = E.RunCheckpoint(tmp_path / "t.safetensors", every=60)  # made at 0 s
    assert not ck.due()  # 10 s
    assert ck.due()  # 70 s
    ck.save({"epoch": 1})  # at 80 s
    assert ck.due()  # 200 s


def _interrupt_run(monkeypatch, run: int, epoch: int):
    """Make the evaluation stop (KeyboardInterrupt) right after network ``run`` saved epoch ``epoch``."""
    save = E.RunCheckpoint.save

    def stopping(self, state):
        save(self, state)
        if f"-run{run}-" in self.path.name and state["epoch"] == epoch:
            raise KeyboardInterrupt

    monkeypatch.setattr(E.RunCheckpoint, "save", stopping)


def test_evaluate_continues_an_interrupted_evaluation(tmp_path, data, monkeypatch):
    x, y, test = data
    cfg = E.EvalConfig(epochs=3, runs=2, batch=8)
    want = E.evaluate(x, y, test, cfg, progress=False)
    assert "continued" not in want
    folder = tmp_path / "r.json.partial"
    with monkeypatch.context() as m:
        _interrupt_run(m, run=1, epoch=1)
        with pytest.raises(KeyboardInterrupt):
            E.evaluate(x, y, test, cfg, progress=False, state=E.EvalState.of(folder, x, y, test, cfg, every=0))
    assert sorted(p.suffix for p in folder.iterdir()) == [".json", ".safetensors"]  # run 0 tested, run 1 at epoch 1
    trained, real = [], E.train_and_test
    monkeypatch.setattr(E, "train_and_test", lambda *a, **k: trained.append(k["checkpoint"]) or real(*a, **k))
    state = E.EvalState.of(folder, x, y, test, cfg, every=0)
    got = E.evaluate(x, y, test, cfg, progress=False, state=state)
    assert got["archs"]["convnet"]["accs"] == want["archs"]["convnet"]["accs"]
    assert got["continued"] == [{"arch": "convnet", "run": 0, "from_epoch": 3},
                                {"arch": "convnet", "run": 1, "from_epoch": 1}]
    assert len(trained) == 1 and "-run1-" in trained[0].path.name  # network 0 was not trained again
    state.clear()
    assert not folder.exists()


def test_other_settings_never_take_up_a_state(tmp_path, data, monkeypatch):
    """A changed setting starts afresh; the other computation's files are left alone, and so is the folder."""
    x, y, test = data
    folder = tmp_path / "p"
    cfg3 = E.EvalConfig(epochs=3, runs=1, batch=8)
    with monkeypatch.context() as m:
        _interrupt_run(m, run=0, epoch=1)
        with pytest.raises(KeyboardInterrupt):
            E.evaluate(x, y, test, cfg3, progress=False, state=E.EvalState.of(folder, x, y, test, cfg3, every=0))
    left = sorted(folder.iterdir())
    for other in (E.EvalConfig(epochs=4, runs=1, batch=8), E.EvalConfig(epochs=3, runs=1, batch=8, seed=1)):
        state = E.EvalState.of(folder, x, y, test, other, every=0)
        assert "continued" not in E.evaluate(x, y, test, other, progress=False, state=state)
        state.clear()
    assert "continued" not in E.evaluate(x, y, test, cfg3, progress=False, lr=0.02,
                                         state=E.EvalState.of(folder, x, y, test, cfg3, lr=0.02, every=0))
    flipped = x.clone()
    flipped[0, 0, 0, 0] = 1 - flipped[0, 0, 0, 0]
    assert E.EvalState.of(folder, flipped, y, test, cfg3).key != E.EvalState.of(folder, x, y, test, cfg3).key
    assert [p for p in sorted(folder.iterdir()) if p.suffix == ".safetensors"] == left
    # more runs of the same settings keep the finished ones
    more = E.EvalConfig(epochs=3, runs=2, batch=8)
    assert E.EvalState.of(folder, x, y, test, more).key == E.EvalState.of(folder, x, y, test, cfg3).key


def test_a_damaged_state_is_a_clear_error(tmp_path, data):
    x, y, test = data
    cfg = E.EvalConfig(epochs=3, runs=1, batch=8)
    state = E.EvalState.of(tmp_path / "p", x, y, test, cfg, every=0)
    ck = state.checkpoint("convnet", 0)
    ck.path.write_bytes(b"\x80\x04not a safetensors file")  # e.g. a pickle put in its place
    with pytest.raises(ValueError, match="remove it|not a"):
        E.evaluate(x, y, test, cfg, progress=False, state=state)
    from gendistill.state import save_state

    save_state({"epoch": 5, "net": {}, "optimizer": {}, "generator": torch.zeros(1)}, ck.path)
    with pytest.raises(ValueError, match="holds epoch 5 of a 3-epoch run; remove it"):
        E.evaluate(x, y, test, cfg, progress=False, state=state)
    save_state({"epoch": 1, "net": {"w": torch.zeros(1)}, "optimizer": {}, "generator": torch.zeros(1)}, ck.path)
    with pytest.raises(ValueError, match="is not the state of this network .*; remove it"):
        E.evaluate(x, y, test, cfg, progress=False, state=state)
    ck.path.unlink()
    state._stem("convnet", 0).with_suffix(".json").write_text('{"accuracy": "high"}')
    with pytest.raises(ValueError, match="does not hold a network's accuracy; remove it"):
        E.evaluate(x, y, test, cfg, progress=False, state=state)


def test_cli_eval_continues_when_run_again(capsys, tmp_path, tiny_vae_dir, monkeypatch):
    s = tmp_path / "set.safetensors"
    assert cli(capsys, "init", "--backbone", tiny_vae_dir, "--ipc", 2, "--out", s)[0] == 0
    out = tmp_path / "r.json"
    args = ["eval", s, "--epochs", 2, "--runs", 2, "--out", out, "--state-every", 0]
    with monkeypatch.context() as m:
        _interrupt_run(m, run=1, epoch=1)
        code, _, err = cli(capsys, *args)
    assert code == 130 and "interrupted" in err and not out.exists()
    assert len(list((tmp_path / "r.json.partial").iterdir())) == 2
    code, stdout, err = cli(capsys, *args)
    assert code == 0, err
    assert "network 1 continues from epoch 1 of 2" in err
    assert "epoch 2/2" in err  # the bar shows a network's epochs
    result = json.loads(out.read_text())
    assert result["continued"] == [{"arch": "convnet", "run": 0, "from_epoch": 2},
                                   {"arch": "convnet", "run": 1, "from_epoch": 1}]
    assert not (tmp_path / "r.json.partial").exists()
    fresh = tmp_path / "fresh.json"
    assert cli(capsys, *args[:-4], "--out", fresh)[0] == 0
    assert json.loads(fresh.read_text())["archs"] == result["archs"]
    code, _, err = cli(capsys, "eval", s, "--state-every", "-1")
    assert code == 2 and "'-1' is not a number of seconds" in err


@pytest.mark.slow  # a recipe end to end, twice
def test_recipe_resume_continues_its_evaluation(tmp_path, tiny_vae_dir, monkeypatch):
    argv = ["--output", str(tmp_path / "run"), "--backbone", str(tiny_vae_dir), "--ipc", "2", "--batch-real", "4",
            "--depth", "2", "--width", "8", "--steps", "2", "--eval-runs", "2", "--eval-epochs", "2"]
    recipe = load_recipe(ROOT / "recipes" / "latent_dm.py")
    monkeypatch.setattr(E.EvalState, "of", _every_epoch(E.EvalState.of))
    with monkeypatch.context() as m:
        _interrupt_run(m, run=1, epoch=1)
        with pytest.raises(KeyboardInterrupt):
            recipe.main(argv)
    assert not (tmp_path / "run" / "eval.json").exists()
    assert (tmp_path / "run" / "eval.json.partial").is_dir()
    assert recipe.main([*argv, "--resume"]) == 0
    result = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert [c["run"] for c in result["continued"]] == [0, 1] and len(result["archs"]["convnet"]["accs"]) == 2
    assert not (tmp_path / "run" / "eval.json.partial").exists()


def _every_epoch(of):
    def wrapped(*a, **k):
        state = of(*a, **k)
        state.every = 0.0
        return state

    return wrapped


def test_time_left_reads_as_a_pace_and_a_duration(monkeypatch):
    assert E.time_left(0, 5.0, 10) == "" and E.time_left(3, 5.0, 0) == ""
    assert E.time_left(2, 70.4, 298) == " (35.2 s an epoch, 2 h 54 min left)"
    assert E.time_left(4, 10.0, 30) == " (2.5 s an epoch, 1 min left)"
    assert E.time_left(1, 0.5, 3) == " (0.5 s an epoch, 2 s left)"
    clock = iter([100.0, 130.0, 190.0])  # made at 100 s; epoch 143 (continued from 142) ends at 130, 145 at 190
    monkeypatch.setattr(E.time, "monotonic", lambda: next(clock))
    pace = E.Pace(300)
    assert pace(143) == " (30.0 s an epoch, 1 h 18 min left)"
    assert pace(145) == " (30.0 s an epoch, 1 h 17 min left)"


class _Wrapped(torch.nn.Module):
    """What torch.compile returns, as far as training cares: a module whose state names carry ``_orig_mod.``."""

    def __init__(self, net):
        super().__init__()
        self._orig_mod = net

    def forward(self, x):
        return self._orig_mod(x)


def test_compile_trains_the_compiled_step_and_saves_the_plain_network(tmp_path, data, monkeypatch):
    calls = []

    def spy(net, **kwargs):
        calls.append(kwargs)
        return _Wrapped(net)

    plain = Recording(tmp_path / "plain.safetensors")
    acc = _train(data, plain, epochs=3)
    monkeypatch.setattr(E.torch, "compile", spy)
    x, y, test = data
    cfg = E.EvalConfig(epochs=3, runs=1, batch=8, compile=True)
    ck = Recording(tmp_path / "compiled.safetensors")
    assert E.train_and_test(x, y, test, cfg, torch.Generator().manual_seed(7), "cpu", test.mean, test.std,
                            checkpoint=ck) == acc
    assert calls == [{"dynamic": False}]  # one wrapper a network; full and last batches compile once each
    # the checkpoint holds the network itself, so an evaluation continues whichever wrapper trained it
    assert list(ck.states[2]["net"]) == list(plain.states[2]["net"])
    assert all(torch.equal(ck.states[2]["net"][k], v) for k, v in plain.states[2]["net"].items())


def test_the_compile_setting_keys_the_state(tmp_path, data):
    x, y, test = data
    on, off = (E.EvalConfig(epochs=2, runs=1, compile=c) for c in (True, False))
    assert E.state_key(x, y, test, on, None) != E.state_key(x, y, test, off, None)  # other kernels: not bit for bit


@pytest.mark.slow  # a real torch.compile (a C compiler, about 10 s)
def test_cli_eval_compile_is_the_same_protocol(capsys, tmp_path):
    s = tmp_path / "real.safetensors"
    assert cli(capsys, "init", "--backbone", "pixel", "--ipc", 1, "--init", "real", "--out", s)[0] == 0
    accs = {}
    for flag in ([], ["--compile"]):
        out = tmp_path / f"r{len(flag)}.json"
        code, _, err = cli(capsys, "eval", s, "--epochs", 2, "--runs", 1, "--out", out, *flag)
        assert code == 0, err
        result = json.loads(out.read_text())
        assert result["settings"]["compile"] is bool(flag)
        accs[bool(flag)] = result["mean"]
    # the same maths with fused kernels: float rounding moves one of the 50 tiny test images at most
    assert abs(accs[True] - accs[False]) <= 1 / 50 + 1e-9
