"""Several processes: class-separable objectives split the classes exactly; runs under a 2-process launch (gloo).

The fast tests simulate P processes in one (each with its own objective and generators, ``ctx.classes`` = its share)
and check that the summed gradient is the 1-process one and that every process's generators end where one process's
do. The slow ones launch 2 CPU processes (``tests/mp_driver.py`` runs recipes in them, with faults on demand).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from conftest import launch, load_recipe
from safetensors.torch import load_file

from gendistill.cache import LatentSplit
from gendistill.objectives import RealBatches, StepContext, get_objective

ROOT = Path(__file__).resolve().parents[1]
DRIVER = ROOT / "tests" / "mp_driver.py"
DM, DC, MTT, EXPERTS = (ROOT / "recipes" / f"{n}.py" for n in ("latent_dm", "latent_dc", "latent_mtt", "train_experts"))
TINY = ["--ipc", "2", "--batch-real", "4", "--depth", "2", "--width", "8", "--steps", "3", "--eval-runs", "0"]
CPU = torch.device("cpu")


# ----------------------------------------------------------------------------- the split, simulated in one process


def _problem(shape, num_classes=3, ipc=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    real = LatentSplit(torch.rand(num_classes * 6, *shape, generator=g), torch.arange(num_classes).repeat_interleave(6),
                       num_classes)
    syn = torch.rand(num_classes * ipc, *shape, generator=g)
    return real, syn, torch.arange(num_classes).repeat_interleave(ipc)


def _simulate(make, processes, shape, space, steps=2):
    """(loss, gradient) per step summed over ``processes`` simulated processes, and every process's generator states."""
    real, syn, labels = _problem(shape)
    k = real.num_classes
    objectives = [make() for _ in range(processes)]
    shared = [torch.Generator().manual_seed(5) for _ in range(processes)]
    data = [torch.Generator().manual_seed(6) for _ in range(processes)]
    out = []
    for step in range(steps):
        loss_sum, grad_sum = 0.0, torch.zeros_like(syn)
        for r in range(processes):
            x = syn.clone().requires_grad_(True)
            classes = tuple(range(r, k, processes)) if processes > 1 else None
            ctx = StepContext(step, shared[r], shape, k, CPU, space=space, classes=classes, processes=processes)
            batches = RealBatches(real, 4, data[r], CPU)
            loss = objectives[r](x, labels, batches, ctx)
            batches.draw()
            if loss.requires_grad:
                loss.backward()
                grad_sum += x.grad
            loss_sum += float(loss.detach())
        out.append((loss_sum, grad_sum))
    return out, [(s.get_state(), d.get_state()) for s, d in zip(shared, data)]


def _classifier():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))


SPLIT_CASES = {
    "dm": (lambda: get_objective("dm", depth=2, width=8), (2, 8, 8), "latent"),
    "mmd-pixel": (lambda: get_objective("mmd", depth=2, width=8), (1, 8, 8), "pixel"),
    "idm+ce": (lambda: get_objective("dm", depth=2, width=8, proxy="trained", proxy_nets=2, proxy_max_steps=1,
                                     ce_weight=0.5), (2, 8, 8), "latent"),
    "dc-inner-loop": (lambda: get_objective("dc", depth=2, width=8, outer_loop=2, inner_loop=1), (2, 8, 8), "latent"),
    "dsa-batchnorm": (lambda: get_objective("dsa", net="convnet-bn", depth=2, width=8, outer_loop=2, inner_loop=1,
                                            bn_real=2), (1, 8, 8), "pixel"),
    "itgan": (lambda: get_objective("itgan", cls_weight=0.5, classifier=_classifier(), depth=2, width=8), (1, 8, 8),
              "pixel"),
}


@pytest.mark.parametrize("name", list(SPLIT_CASES))
def test_split_classes_sum_to_the_one_process_gradient(name):
    """P = 2 and P = 4 (more processes than the 3 classes: one has none) give the 1-process loss and gradient, and
    every process's shared and data generators stay in step with one process's."""
    make, shape, space = SPLIT_CASES[name]
    one, one_states = _simulate(make, 1, shape, space)
    for processes in (2, 4):
        many, states = _simulate(make, processes, shape, space)
        for (loss1, grad1), (loss_p, grad_p) in zip(one, many):
            assert loss_p == pytest.approx(loss1, rel=1e-5)
            torch.testing.assert_close(grad_p, grad1, rtol=1e-5, atol=1e-7)
        for shared, data in states:
            assert torch.equal(shared, one_states[0][0]) and torch.equal(data, one_states[0][1])


def test_real_batches_are_drawn_once_per_step_for_every_class():
    real, _, _ = _problem((1, 2, 2))
    g = torch.Generator().manual_seed(0)
    batches = RealBatches(real, 4, g, CPU)
    first = batches(2)
    assert torch.equal(batches(2), first) and batches.count(2) == 4 and len(first) == 4
    again = RealBatches(real, 4, torch.Generator().manual_seed(0), CPU)
    again.draw()
    assert torch.equal(again(2), first)  # what process 0 draws for class 2 is what any process draws for it
    assert RealBatches(real, 50, g, CPU).count(0) == 6  # a class with fewer samples than --batch-real gives them all


def test_local_generators_differ_per_process_and_repeat_per_step():
    from gendistill.distill import local_generator

    draw = lambda rank, step: torch.rand(4, generator=local_generator(0, rank, step))  # noqa: E731
    assert torch.equal(draw(1, 3), draw(1, 3))
    assert not torch.equal(draw(0, 3), draw(1, 3)) and not torch.equal(draw(1, 3), draw(1, 4))


def test_trajectory_matching_draws_from_the_process_generator():
    """Each process picks its own expert, start epoch and batches: the plan comes from ``ctx.rank_generator``."""
    from gendistill.objectives.trajectory import TrajectoryMatching

    class FakeExperts:
        num_experts, epochs, meta = 50, 10, {"space": "latent"}

        def check_window(self, *a):
            pass

    objective = TrajectoryMatching(experts=FakeExperts(), max_start_epoch=8)
    ctx = lambda local: StepContext(0, torch.Generator().manual_seed(0), (2, 4, 4), 2, CPU, local_generator=local)  # noqa: E731
    plans = [objective.plan(6, ctx(torch.Generator().manual_seed(s)))[:2] for s in range(6)]
    assert len(set(plans)) > 1  # different processes, different draws
    assert objective.plan(6, ctx(None))[:2] == objective.plan(6, ctx(None))[:2]  # one process: the shared generator
    assert TrajectoryMatching.parallel == "replicas" and get_objective("dm").parallel == "classes"


# ------------------------------------------------------------------------------------- 2 processes, launched


def _driver(jobs: list[list], env: dict, timeout: float = 900):
    args = [str(DRIVER)]
    for i, job in enumerate(jobs):
        args += (["::"] if i else []) + [str(a) for a in job]
    return launch(["--mixed_precision", "no", *args], env_extra=env, num_processes=2, timeout=timeout)


def _codes(proc) -> list[int]:
    found = re.search(r"mp_driver exit codes: \[([0-9, ]*)\]", proc.stdout)
    assert found, proc.stdout[-2000:] + proc.stderr[-3000:]
    return [int(c) for c in found.group(1).split(",")]


def _latents(path: Path) -> torch.Tensor:
    return load_file(str(path))["latents"]


def _one_process(recipe: Path, args: list, out: Path) -> Path:
    assert load_recipe(recipe).main([str(a) for a in args] + ["--output", str(out)]) == 0
    return out


IDM = [DM, *TINY, "--match-space", "latent", "--proxy", "trained", "--proxy-nets", 3, "--proxy-max-steps", 2, "--steps",
       6, "--checkpoint-every", 2]
PARITY = {
    "dm-latent": [DM, *TINY, "--match-space", "latent"],
    "dm-pixel": [DM, *TINY, "--match-space", "pixel"],
    "dc-pixel": [DC, *TINY, "--match-space", "pixel", "--outer-loop", 2, "--inner-loop", 1],
    # storage-matched: a subsample of the set per step (the same rows on both processes) and a latent warm-up
    "dm-subsampled": [DM, *TINY, "--match-space", "pixel", "--syn-batch", 1, "--latent-steps", 1],
}


@pytest.fixture(scope="module")
def mp_env(tmp_path_factory, tiny_idx_dir):
    root = tmp_path_factory.mktemp("mp")
    return root, {"GENDISTILL_CACHE": str(root / "cache"), "GENDISTILL_FASHION_MNIST_DIR": str(tiny_idx_dir)}


@pytest.fixture(scope="module")
def two_process_runs(mp_env, tiny_vae_dir):
    """One 2-process launch: the parity runs, an uninterrupted IDM run, experts and a trajectory-matching run."""
    root, env = mp_env
    vae = ["--backbone", tiny_vae_dir]
    jobs = [["--dump", root / f"{name}-ranks", *args, *vae, "--output", root / name] for name, args in PARITY.items()]
    jobs[0] += ["--eval-runs", 2, "--eval-epochs", 1]  # evaluation spread over the processes
    jobs.append([*IDM, *vae, "--output", root / "idm-full"])
    jobs.append([EXPERTS, *vae, "--output", root / "experts", "--num-experts", 2, "--epochs", 3, "--batch", 64,
                 "--depth", 2, "--width", 8])
    jobs.append(["--dump", root / "mtt-ranks", MTT, *vae, "--experts", root / "experts", "--match-space", "latent",
                 "--ipc", 2, "--steps", 3, "--eval-runs", 0, "--syn-steps", 2, "--expert-epochs", 1,
                 "--max-start-epoch", 2, "--depth", 2, "--width", 8, "--output", root / "mtt"])
    proc = _driver(jobs, env)
    assert proc.returncode == 0 and _codes(proc) == [0] * len(jobs), proc.stderr[-3000:]
    return root


@pytest.mark.slow
@pytest.mark.parametrize("name", list(PARITY))
def test_two_processes_give_the_one_process_set(two_process_runs, tmp_path, tiny_vae_dir, name):
    root = two_process_runs
    recipe, *args = PARITY[name]
    extra = ["--eval-runs", 2, "--eval-epochs", 1] if name == "dm-latent" else []
    one = _one_process(recipe, [*args, "--backbone", tiny_vae_dir, *extra], tmp_path / "one")
    a, b = _latents(one / "set.safetensors"), _latents(root / name / "set.safetensors")
    assert (a - b).abs().max().item() < 1e-5  # DM and DC split the classes: the 1-process gradient, to float tolerance
    assert torch.equal(_latents(root / f"{name}-ranks" / "rank0.safetensors"),
                       _latents(root / f"{name}-ranks" / "rank1.safetensors"))
    if name == "dm-latent":  # the two processes trained one evaluation net each: the accuracies are one process's
        import json

        one_eval, two_eval = (json.loads((d / "eval.json").read_text()) for d in (one, root / name))
        assert two_eval["archs"]["convnet"]["accs"] == one_eval["archs"]["convnet"]["accs"]


@pytest.mark.slow
def test_trajectory_matching_runs_on_two_processes_with_one_set(two_process_runs):
    root = two_process_runs
    assert (root / "experts" / "expert_0001.safetensors").is_file()  # rank 1 trained the second expert
    r0, r1 = _latents(root / "mtt-ranks" / "rank0.safetensors"), _latents(root / "mtt-ranks" / "rank1.safetensors")
    assert torch.equal(r0, r1) and torch.equal(r0, _latents(root / "mtt" / "set.safetensors"))


@pytest.mark.slow
def test_two_process_kill_or_interrupt_then_resume_equals_uninterrupted(two_process_runs, mp_env, tiny_vae_dir):
    root, env = mp_env
    vae = ["--backbone", tiny_vae_dir]
    killed, interrupted = root / "idm-killed", root / "idm-interrupted"
    proc = _driver([["--fault", "kill", "--rank", 1, "--step", 5, *IDM, *vae, "--output", killed]], env)
    assert proc.returncode != 0 and not (killed / "set.safetensors").exists()
    assert [p.name for p in (killed / "checkpoints").glob("step_*")] == ["step_0000004"]

    proc = _driver([[*IDM, *vae, "--output", killed, "--resume"],
                    # one process only
                    ["--fault", "sigint", "--rank", 1, "--step", 2, *IDM, *vae, "--output", interrupted],
                    [*IDM, *vae, "--output", interrupted, "--resume"]], env)
    assert _codes(proc) == [0, 130, 0], proc.stderr[-3000:]
    stops = [line for line in proc.stderr.splitlines() if line.startswith("interrupted")]
    # both finished step 3, then stopped together
    assert len(stops) == 1 and stops[0].startswith("interrupted at step 3;")
    full = _latents(root / "idm-full" / "set.safetensors")
    assert torch.equal(_latents(killed / "set.safetensors"), full)
    assert torch.equal(_latents(interrupted / "set.safetensors"), full)


@pytest.mark.slow
def test_nan_on_one_process_stops_both_with_one_line(mp_env, tiny_vae_dir):
    root, env = mp_env
    out = root / "nan"
    proc = _driver([["--fault", "nan", "--rank", 1, "--step", 2, DM, *TINY, "--backbone", tiny_vae_dir, "--steps", 6,
                     # a hang fails here, it does not block
                     "--checkpoint-every", 1, "--output", out]], env, timeout=300)
    assert proc.returncode != 0 and _codes(proc) == [2]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "loss became nan at step 2" in errors[0] and "step_0000002" in errors[0]
    # no traceback through our code (the launcher reports its own)
    assert not re.search(r'File ".*gendistill', proc.stderr)
    assert [p.name for p in (out / "checkpoints").glob("step_*")] == ["step_0000002"]
    assert not (out / "set.safetensors").exists()
