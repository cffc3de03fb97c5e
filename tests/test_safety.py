"""Safety (docs/safety.md): checkpoints without pickle, resume after kills, SIGTERM, disk full, and outputs that never
replace what the user did not ask to replace (inputs, non-empty folders, a second run's folder)."""

from __future__ import annotations

import errno
import os
import pickle
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import fast_first, load_recipe

from gendistill.cli import main as cli_main
from gendistill.cli import run_guarded

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "latent_dm.py"
TINY = ["--ipc", "2", "--batch-real", "4", "--eval-runs", "0", "--depth", "2", "--width", "8", "--backbone", "pixel"]


def recipe_argv(out: Path, *args) -> list[str]:
    return ["--output", str(out), *TINY, *map(str, args)]


def run(out: Path, *args) -> Path:
    """The DM recipe in-process on the pixel backbone (tiny and fast); raises what the recipe raises."""
    assert load_recipe(RECIPE).main(recipe_argv(out, *args)) == 0
    return out


def guarded(capsys, out: Path, *args) -> tuple[int, str]:
    """The recipe through the CLI boundary: (exit code, its stderr)."""
    capsys.readouterr()  # drop what earlier runs printed (progress bars)
    code = run_guarded(load_recipe(RECIPE).main, recipe_argv(out, *args))
    return code, capsys.readouterr().err


def one_line(err: str) -> str:
    """The one line a failure printed (besides the progress bar of a run that got going), without a traceback."""
    lines = [line for line in err.strip().splitlines() if line.strip() and not line.startswith("distill (")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def latents(out: Path) -> torch.Tensor:
    from gendistill.synthetic import SyntheticSet

    return SyntheticSet.load(out / "set.safetensors").latents


def tree(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` with its bytes (to show nothing changed)."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


class Payload:
    """Unpickling this creates ``marker``: what a malicious pickle would do, harmlessly."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def plant(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps({"state": Payload(marker)}))


def test_payload_runs_when_unpickled(tmp_path):
    """The planted payload is live: unpickling it (what accelerate's load_state did) creates its marker."""
    plant(tmp_path / "p.pkl", tmp_path / "ran")
    pickle.loads((tmp_path / "p.pkl").read_bytes())
    assert (tmp_path / "ran").exists()
    torch.save({"state": Payload(tmp_path / "ran2")}, tmp_path / "p.bin")
    # as accelerate's load_custom_state loads custom_checkpoint_N.pkl
    torch.load(tmp_path / "p.bin", weights_only=False)
    assert (tmp_path / "ran2").exists()


# ------------------------------------------------------------------------------------------- checkpoint format


def test_checkpoint_is_safetensors_and_json_only(tmp_path):
    from gendistill.state import load_state

    out = run(tmp_path / "r", "--steps", 3, "--checkpoint-every", 2)
    (ckpt,) = (out / "checkpoints").iterdir()
    assert ckpt.name == "step_0000003"
    assert sorted(p.name for p in ckpt.iterdir()) == ["config.json", "rank_0.safetensors", "shared.safetensors"]
    shared, own = load_state(ckpt / "shared.safetensors"), load_state(ckpt / "rank_0.safetensors")
    assert shared["train"]["step"] == 3 and len(shared["train"]["losses"]) == 3 and shared["num_processes"] == 1
    assert torch.equal(shared["set"]["latents"], latents(out))
    # generator states
    assert shared["train"]["shared"].dtype == torch.uint8 and own["train"]["data"].dtype == torch.uint8
    assert shared["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999) and 0 in shared["optimizer"]["state"]


@pytest.mark.parametrize("name", fast_first(["custom_checkpoint_0.pkl", "custom_checkpoint_1.pkl",
                                             "random_states_0.pkl", "optimizer.bin", "model.bin"]))
def test_planted_pickle_beside_a_checkpoint_never_runs(tmp_path, name):
    out = run(tmp_path / "r", "--steps", 2, "--checkpoint-every", 1)
    plant(out / "checkpoints" / "step_0000002" / name, tmp_path / "ran")
    run(out, "--steps", 4, "--resume")  # the file is never opened
    assert not (tmp_path / "ran").exists()
    assert torch.equal(latents(out), latents(run(tmp_path / "full", "--steps", 4)))


@pytest.mark.parametrize("name", ["shared.safetensors", "rank_0.safetensors"])
def test_checkpoint_file_replaced_by_a_pickle_is_refused_in_one_line(tmp_path, capsys, name):
    out = run(tmp_path / "r", "--steps", 2)
    target = out / "checkpoints" / "step_0000002" / name
    torch.save({"state": Payload(tmp_path / "ran")}, target)  # a pickle where the safetensors file was
    code, err = guarded(capsys, out, "--steps", 4, "--resume")
    line = one_line(err)
    assert code == 2 and name in line and "delete the checkpoint" in line and "--overwrite" in line
    assert not (tmp_path / "ran").exists()


def test_old_pickle_checkpoint_is_refused_and_never_runs(tmp_path, capsys):
    out = run(tmp_path / "r", "--steps", 2)
    ckpt = out / "checkpoints" / "step_0000002"
    for p in ckpt.glob("*.safetensors"):
        p.unlink()
    for name in ("custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer.bin"):  # accelerate save_state's layout
        plant(ckpt / name, tmp_path / "ran")
    code, err = guarded(capsys, out, "--steps", 4, "--resume")
    line = one_line(err)
    assert code == 2 and "older pickle format" in line and "never loaded" in line and str(ckpt) in line
    assert not (tmp_path / "ran").exists()


@pytest.mark.parametrize("name", ["shared.safetensors", "rank_0.safetensors", "config.json"])
@pytest.mark.parametrize("damage", ["empty", "truncated", "missing"])
def test_damaged_checkpoint_file_is_one_line(tmp_path, capsys, name, damage):
    out = run(tmp_path / "r", "--steps", 2)
    ckpt = out / "checkpoints" / "step_0000002"
    target = ckpt / name
    if damage == "empty":
        target.write_bytes(b"")
    elif damage == "truncated":
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    else:
        target.unlink()
    before = tree(out)
    code, err = guarded(capsys, out, "--steps", 4, "--resume")
    line = one_line(err)
    assert (
        code == 2
        and name in line
        and f"delete the checkpoint {ckpt}" in line
        and "start fresh with --overwrite" in line
    )
    assert tree(out) == before  # nothing changed


def test_checkpoint_of_another_process_count_is_one_line(tmp_path, capsys):
    from gendistill.state import load_state, save_state

    out = run(tmp_path / "r", "--steps", 2)
    shared_file = out / "checkpoints" / "step_0000002" / "shared.safetensors"
    shared = load_state(shared_file)
    save_state({**shared, "num_processes": 2}, shared_file)
    code, err = guarded(capsys, out, "--steps", 4, "--resume")
    assert code == 2 and "written by 2 process(es)" in one_line(err) and "--num_processes 2" in err


def _objective_states():
    from gendistill.objectives import get_objective

    classifier = lambda: torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2 * 8 * 8, 2))  # noqa: E731 (fresh weights)
    return {
        "idm-queue": lambda: get_objective("dm", depth=2, width=8, augment="none", proxy="trained", proxy_nets=2,
                                           proxy_train=2),
        "dsa": lambda: get_objective("dsa", depth=2, width=8, outer_loop=4, inner_loop=2, net_lr=0.1),
        "itgan": lambda: get_objective("itgan", cls_weight=0.5, reg_weight=0.25, classifier=classifier(),
                                       anchors=torch.zeros(4, 2, 8, 8), depth=2, width=8, proxy="trained",
                                       proxy_nets=2),
    }


@pytest.mark.parametrize("kind", ["idm-queue", "dsa", "itgan"])
def test_stateful_objectives_round_trip_through_safetensors(tmp_path, kind):
    """An objective's state saved as safetensors + JSON and loaded into a fresh one gives the same next loss."""
    from gendistill.objectives import StepContext
    from gendistill.state import load_state, save_state

    make = _objective_states()[kind]
    syn, labels = torch.randn(4, 2, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 0, 1, 1])
    real = {c: torch.randn(6, 2, 8, 8, generator=torch.Generator().manual_seed(1 + c)) for c in (0, 1)}
    gen = torch.Generator().manual_seed(3)
    ctx = lambda step: StepContext(step, gen, (2, 8, 8), 2, torch.device("cpu"), space="pixel")  # noqa: E731
    a = make()
    for step in range(2):
        a(syn.clone().requires_grad_(True), labels, real.__getitem__, ctx(step)).backward()
    save_state(a.state_dict(), tmp_path / "objective.safetensors")
    at = gen.get_state()
    expected = a(syn, labels, real.__getitem__, ctx(2))
    b = make()
    b.load_state_dict(load_state(tmp_path / "objective.safetensors"))
    gen.set_state(at)
    assert torch.equal(b(syn, labels, real.__getitem__, ctx(2)), expected)


# ------------------------------------------------------------------------------------------- SIGTERM, disk full


CHILD = """
import sys, time
from gendistill.objectives import distribution

# slow each class's match a little: the run is still going at SIGTERM
for name, fn in list(distribution.KERNELS.items()):
    def slow(a, b, fn=fn):
        time.sleep(0.02)
        return fn(a, b)
    distribution.KERNELS[name] = slow

from conftest import load_recipe
from gendistill.cli import run_guarded

sys.exit(run_guarded(load_recipe(__import__("pathlib").Path(sys.argv[1])).main, sys.argv[2:]))
"""


@pytest.mark.slow  # spawns a process
def test_sigterm_checkpoints_and_resume_equals_uninterrupted(tmp_path):
    out = tmp_path / "killed"
    args = ["--steps", "60", "--log-with", "csv"]
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(CHILD))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests"),
                                                        os.environ.get("PYTHONPATH", "")]),
           "TQDM_DISABLE": "1"}
    proc = subprocess.Popen([sys.executable, str(script), str(RECIPE), *recipe_argv(out, *args)], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    # the CSV log starts at step 10
    while not (out / "log.csv").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    line = err.strip().splitlines()[-1]
    assert (
        "Traceback" not in err and line.startswith("interrupted at step ") and line.endswith("continue with --resume")
    ), err[-2000:]
    step = int(line.split()[3].rstrip(";"))
    assert 10 <= step < 60 and (out / "checkpoints" / f"step_{step:07d}" / "shared.safetensors").exists()
    assert not (out / "set.safetensors").exists()
    run(out, *args, "--resume")
    assert torch.equal(latents(out), latents(run(tmp_path / "full", *args)))


@pytest.mark.slow  # end to end, over a second of CPU
def test_disk_full_during_a_checkpoint_keeps_the_previous_one(tmp_path, capsys, monkeypatch):
    from gendistill import state as state_module

    real_save, calls = state_module.save_safetensors, {"n": 0}

    def filling(tensors, path, metadata=None):
        calls["n"] += 1
        if calls["n"] >= 3:  # the checkpoint at step 2 (rank + shared files) fits, the one at step 4 does not
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(tensors, path, metadata)

    monkeypatch.setattr(state_module, "save_safetensors", filling)
    code, err = guarded(capsys, tmp_path / "r", "--steps", 6, "--checkpoint-every", 2)
    line = one_line(err)
    assert code == 2 and "No space left on device" in line and "step_0000002 is intact" in line and "--resume" in line
    root = tmp_path / "r" / "checkpoints"
    assert [p.name for p in root.iterdir()] == ["step_0000002"]  # no partial directory left
    monkeypatch.setattr(state_module, "save_safetensors", real_save)
    run(tmp_path / "r", "--steps", 6, "--checkpoint-every", 2, "--resume")
    assert torch.equal(latents(tmp_path / "r"), latents(run(tmp_path / "full", "--steps", 6, "--checkpoint-every", 2)))


# ------------------------------------------------------------------------------------------- output folders


def test_fresh_run_into_an_interrupted_run_is_refused(tmp_path, capsys):
    out = run(tmp_path / "r", "--steps", 2)
    (out / "set.safetensors").unlink()  # as an interrupted run leaves it: a checkpoint, no set
    before = tree(out)
    code, err = guarded(capsys, out, "--steps", 2)
    line = one_line(err)
    assert (
        code == 2 and "interrupted run" in line and "use --resume to continue it or --overwrite to discard it" in line
    )
    assert tree(out) == before


def test_fresh_run_into_a_finished_run_says_it_is_finished(tmp_path, capsys):
    out = run(tmp_path / "r", "--steps", 2)
    before = tree(out)
    code, err = guarded(capsys, out, "--steps", 2)
    line = one_line(err)
    assert code == 2 and "holds a finished run (set.safetensors, checkpoint step_0000002)" in line
    assert "use --resume --steps N to extend it, --overwrite to replace it" in line and tree(out) == before


def test_non_empty_output_is_refused_without_overwrite(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    code, err = guarded(capsys, out, "--steps", 1)
    assert code == 2 and "is not empty" in one_line(err) and "--overwrite" in err
    assert tree(out) == {"notes.txt": b"keep me"}
    code, err = guarded(capsys, out, "--steps", 1, "--resume", "--overwrite")
    assert code == 2 and "pass only one of them" in one_line(err)


@pytest.mark.slow  # end to end (a recipe run, a training or several model loads): a second or more
def test_overwrite_replaces_the_old_content_only_once_the_new_run_is_complete(tmp_path, capsys, monkeypatch):
    from gendistill.objectives import distribution

    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("old")
    with monkeypatch.context() as m:  # the new run fails half way: the old content stays
        for name, fn in list(distribution.KERNELS.items()):
            m.setitem(distribution.KERNELS, name, lambda a, b, fn=fn: fn(a, b) * float("nan"))
        code, err = guarded(capsys, out, "--steps", 3, "--overwrite")
    assert code == 2 and "loss became nan" in one_line(err)
    assert tree(out) == {"notes.txt": b"old"}
    run(out, "--steps", 3, "--overwrite")
    assert not (out / "notes.txt").exists() and (out / "set.safetensors").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no staging folder, no lock file left
    assert torch.equal(latents(out), latents(run(tmp_path / "fresh", "--steps", 3)))


@pytest.mark.slow  # end to end (a recipe run, a training or several model loads): a second or more
def test_overwrite_run_interrupted_is_swapped_in_and_resumes(tmp_path, monkeypatch):
    from gendistill.distill import Interrupted
    from gendistill.objectives import distribution

    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("old")
    calls = {"n": 0}

    def interrupting(fn):
        def loss(a, b):
            calls["n"] += 1
            if calls["n"] == 10 * 2 + 1:  # during step 3: Ctrl-C, the step finishes and is checkpointed
                signal.raise_signal(signal.SIGINT)
            return fn(a, b)
        return loss

    with monkeypatch.context() as m:
        for name, fn in list(distribution.KERNELS.items()):
            m.setitem(distribution.KERNELS, name, interrupting(fn))
        with pytest.raises(Interrupted) as e:
            run(out, "--steps", 5, "--overwrite")
    assert e.value.path == out / "checkpoints" / "step_0000003" and e.value.path.is_dir()
    assert str(e.value) == f"interrupted at step 3; checkpoint saved in {e.value.path}; continue with --resume"
    assert not (out / "notes.txt").exists()  # the user asked to discard it; the new run is resumable in its place
    run(out, "--steps", 5, "--resume")
    assert torch.equal(latents(out), latents(run(tmp_path / "full", "--steps", 5)))


@pytest.mark.parametrize("where", ["equal", "inside"])
def test_recipe_output_may_not_be_or_hold_an_input(tmp_path, capsys, tiny_vae_dir, where):
    backbone = tmp_path / "vae"
    shutil.copytree(tiny_vae_dir, backbone)
    out = backbone if where == "equal" else tmp_path
    before = tree(backbone)
    argv = ["--output", str(out), "--ipc", "2", "--eval-runs", "0", "--steps", "1", "--backbone", str(backbone),
            "--overwrite"]
    code = run_guarded(load_recipe(RECIPE).main, argv)
    line = one_line(capsys.readouterr().err)
    assert code == 2 and ("is the input --backbone" if where == "equal" else "holds the input --backbone") in line
    assert tree(backbone) == before


# ------------------------------------------------------------------------------------------- the lock


def test_lock_refuses_a_second_holder_with_its_pid_and_is_released(tmp_path):
    from gendistill.outputs import OutputLock, lock_path

    out = tmp_path / "run"
    first = OutputLock(out).acquire()
    assert lock_path(out).read_text().strip() == str(os.getpid())
    with pytest.raises(BlockingIOError, match=rf"in use by another run \(pid {os.getpid()}, lock .*\.run\.lock\)"):
        OutputLock(out).acquire()
    first.release()
    assert not lock_path(out).exists()
    with OutputLock(out):
        pass


@pytest.mark.slow  # spawns a process
def test_lock_held_by_another_process(tmp_path, capsys):
    out = tmp_path / "run"
    code = ("import sys, time; from gendistill.outputs import OutputLock; OutputLock(sys.argv[1]).acquire(); "
            "print('locked', flush=True); time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True, cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "locked"
        exit_code, err = guarded(capsys, out, "--steps", 1)
        line = one_line(err)
        assert exit_code == 2 and f"pid {holder.pid}" in line and "in use by another run" in line
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()
    run(out, "--steps", 1)  # the kernel dropped the dead holder's lock


# ------------------------------------------------------------------------------------------- atomic writes


def _fail(code):
    def raising(*args, **kwargs):
        raise OSError(code, os.strerror(code))
    return raising


@pytest.mark.parametrize("failure", ["exchange", "first-rename", "second-rename"])
def test_atomic_dir_failing_mid_swap_never_leaves_the_target_missing(tmp_path, monkeypatch, failure):
    from gendistill import io

    target = tmp_path / "d"
    with io.atomic_dir(target) as tmp:
        (tmp / "old").write_text("1")
    real_replace, calls = os.replace, {"n": 0}

    def flaky(a, b):
        calls["n"] += 1
        if calls["n"] == (1 if failure == "first-rename" else 2):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_replace(a, b)

    with monkeypatch.context() as m:
        if failure == "exchange":  # the atomic exchange itself fails
            m.setattr(io, "exchange", _fail(errno.EIO))
        else:  # no atomic exchange (another OS, a file system without it): two renames, the second undone on failure
            m.setattr(io, "exchange", _fail(errno.ENOTSUP))
            m.setattr(io.os, "replace", flaky)
        with pytest.raises(OSError, match="Input/output error"):
            with io.atomic_dir(target) as tmp:
                (tmp / "new").write_text("2")
    assert tree(target) == {"old": b"1"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # no temporary or set-aside folder left


def test_atomic_dir_swaps_in_one_exchange_or_two_renames(tmp_path, monkeypatch):
    from gendistill import io

    target = tmp_path / "d"
    with io.atomic_dir(target) as tmp:
        (tmp / "a").write_text("1")
    if sys.platform.startswith("linux"):
        used = []
        monkeypatch.setattr(io, "exchange", lambda a, b, real=io.exchange: (used.append(a), real(a, b)))
        with io.atomic_dir(target) as tmp:
            (tmp / "b").write_text("2")
        assert len(used) == 1 and tree(target) == {"b": b"2"}
    monkeypatch.setattr(io, "exchange", _fail(errno.ENOTSUP))
    with io.atomic_dir(target) as tmp, io.atomic_dir(target) as tmp2:  # unique temporary names: no clash
        assert tmp != tmp2
        (tmp / "c").write_text("3")
        (tmp2 / "e").write_text("5")
    assert tree(target) == {"c": b"3"} and sorted(p.name for p in tmp_path.iterdir()) == ["d"]
    with io.atomic_dir(tmp_path / "f") as tmp:  # a file where the folder goes is replaced too
        (tmp_path / "f").write_text("a file")
        (tmp / "x").write_text("x")
    assert tree(tmp_path / "f") == {"x": b"x"}


def test_atomic_writes_are_flushed_to_disk(tmp_path, monkeypatch):
    from gendistill import io

    flushed = []
    real = io.fsync_path
    monkeypatch.setattr(io, "fsync_path", lambda p: (flushed.append(Path(p)), real(p)))
    io.write_json({"a": 1}, tmp_path / "x.json")
    assert flushed[0].name.startswith(".x.json.") and flushed[0].parent == tmp_path and flushed[1] == tmp_path
    flushed.clear()
    with io.atomic_dir(tmp_path / "d") as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "f").write_text("1")
    assert {tmp / "sub" / "f", tmp / "sub", tmp, tmp_path} <= set(flushed)


# ------------------------------------------------------------------------------------------- CLI and other writers


@pytest.fixture
def pixel_set(tmp_path, capsys):
    path = tmp_path / "set.safetensors"
    with pytest.raises(SystemExit) as e:
        cli_main(["init", "--backbone", "pixel", "--ipc", "1", "--out", str(path)])
    assert e.value.code == 0
    capsys.readouterr()
    return path


@pytest.mark.parametrize("command", ["sample", "export", "eval"])
@pytest.mark.parametrize("alias", ["same", "relative", "hardlink"])
def test_cli_output_equal_to_its_input_is_refused(tmp_path, capsys, monkeypatch, pixel_set, command, alias):
    monkeypatch.chdir(tmp_path)
    out = {"same": str(pixel_set), "relative": f"./{pixel_set.name}",
           "hardlink": str(tmp_path / "link.safetensors")}[alias]
    if alias == "hardlink":
        os.link(pixel_set, out)
    before = pixel_set.read_bytes()
    extra = ["--epochs", "1", "--runs", "1"] if command == "eval" else []
    with pytest.raises(SystemExit) as e:
        cli_main([command, str(pixel_set), "--out", out, *extra])
    line = one_line(capsys.readouterr().err)
    assert e.value.code == 2 and "is the input FILE" in line and "choose another --out" in line
    assert pixel_set.read_bytes() == before


def test_cli_export_imagefolder_needs_overwrite_for_an_earlier_export(tmp_path, capsys, pixel_set):
    d = tmp_path / "folder"
    for argv, code in ((["--out", str(d)], 0), (["--out", str(d)], 2), (["--out", str(d), "--overwrite"], 0)):
        with pytest.raises(SystemExit) as e:
            cli_main(["export", str(pixel_set), "--format", "imagefolder", *argv])
        assert e.value.code == code
    assert "is not empty" in capsys.readouterr().err
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "a.txt").write_text("x")
    with pytest.raises(SystemExit) as e:  # --overwrite replaces an earlier export only, never another folder
        cli_main(["export", str(pixel_set), "--format", "imagefolder", "--out", str(tmp_path / "mine"), "--overwrite"])
    assert e.value.code == 2 and (tmp_path / "mine" / "a.txt").read_text() == "x"


def test_write_imagefolder_refuses_a_non_empty_out_and_its_data_dir(tmp_path, capsys, tiny_idx_dir):
    writer = load_recipe(ROOT / "recipes" / "write_imagefolder.py")
    out = tmp_path / "folder"
    args = ["--train-per-class", "1", "--test-per-class", "1"]
    assert run_guarded(writer.main, ["--out", str(out), *args]) == 0
    first = tree(out)
    assert run_guarded(writer.main, ["--out", str(out), *args, "--seed", "1"]) == 2
    assert "is not empty" in one_line(capsys.readouterr().err) and tree(out) == first
    assert run_guarded(writer.main, ["--out", str(out), *args, "--seed", "1", "--overwrite"]) == 0
    assert tree(out) != first and sorted(p.name for p in tmp_path.iterdir()) == ["folder"]
    capsys.readouterr()
    assert run_guarded(writer.main, ["--dataset", "imagefolder", "--data-dir", str(out), "--out", str(out),
                                     "--overwrite"]) == 2
    assert "is the input --data-dir" in one_line(capsys.readouterr().err)


def test_train_backbone_refuses_a_non_empty_output(tmp_path, capsys):
    out = tmp_path / "vae"
    out.mkdir()
    (out / "config.json").write_text("{}")
    code = run_guarded(load_recipe(ROOT / "recipes" / "train_autoencoder.py").main,
                       ["--output", str(out), "--epochs", "1"])
    assert code == 2 and "is not empty" in one_line(capsys.readouterr().err)
    assert tree(out) == {"config.json": b"{}"}
