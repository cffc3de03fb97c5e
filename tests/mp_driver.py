"""Run recipes in each process of a launch, optionally with a fault on one process (the multi-process tests).

    accelerate launch --multi_gpu --num_processes 2 tests/mp_driver.py \
        [--fault nan|sigint|kill --rank R --step S] [--dump DIR] RECIPE.py [recipe flags ...] [:: next job ...]

Jobs separated by ``::`` run one after the other in the same processes (one launch, several runs). ``--fault`` wraps
the job's objective: on process ``--rank`` its loss becomes NaN from step ``--step`` on (nan), or at that step a SIGINT
reaches that process alone (sigint) or it is killed outright (kill). ``--dump DIR`` writes each process's final latents
to ``DIR/rank<r>.safetensors`` (to check that every process ends with the same set). Rank 0 prints the jobs' exit codes
as ``mp_driver exit codes: [...]``; the driver exits with the first non-zero one.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import load_recipe  # noqa: E402


class Faulty:
    """An objective that misbehaves on one process at one step; everything else is the wrapped objective's."""

    def __init__(self, objective, fault: str, rank: int, step: int):
        self._objective, self._fault, self._rank, self._step = objective, fault, rank, step

    def __getattr__(self, name):
        return getattr(self._objective, name)

    def __call__(self, syn, syn_labels, real, ctx):
        loss = self._objective(syn, syn_labels, real, ctx)
        if int(os.environ.get("RANK", "0")) == self._rank:
            if self._fault == "nan" and ctx.step >= self._step:
                loss = loss * float("nan")
            elif self._fault == "sigint" and ctx.step == self._step:
                signal.raise_signal(signal.SIGINT)
            elif self._fault == "kill" and ctx.step == self._step:
                os.kill(os.getpid(), signal.SIGKILL)
        return loss


def run_job(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--fault", choices=("nan", "sigint", "kill"))
    p.add_argument("--rank", type=int, default=1)
    p.add_argument("--step", type=int, default=2)
    p.add_argument("--dump")
    p.add_argument("recipe")
    args, rest = p.parse_known_args(argv)

    from safetensors.torch import save_file

    import gendistill.pipeline as pipeline
    from gendistill.cli import run_guarded

    real_distill = pipeline.distill

    def distill(syn, objective, *a, **k):
        if args.fault:
            objective = Faulty(objective, args.fault, args.rank, args.step)
        state = real_distill(syn, objective, *a, **k)
        if args.dump:
            Path(args.dump).mkdir(parents=True, exist_ok=True)
            save_file({"latents": syn.latents.detach().cpu().contiguous()},
                      str(Path(args.dump) / f"rank{os.environ.get('RANK', '0')}.safetensors"))
        return state

    pipeline.distill = distill
    try:
        return run_guarded(load_recipe(Path(args.recipe)).main, rest)
    finally:
        pipeline.distill = real_distill


def main() -> int:
    import torch

    torch.set_num_threads(1)
    jobs, job = [], []
    for arg in sys.argv[1:]:
        if arg == "::":
            jobs.append(job)
            job = []
        else:
            job.append(arg)
    jobs.append(job)
    # a recipe ends with accelerator.end_training(), which destroys the process group: keep it for the next job
    from accelerate.state import PartialState

    destroy = PartialState.destroy_process_group
    PartialState.destroy_process_group = lambda self, group=None: None
    try:
        codes = [run_job(j) for j in jobs]
    finally:
        PartialState.destroy_process_group = destroy
    PartialState().destroy_process_group()
    if os.environ.get("RANK", "0") == "0":
        print(f"mp_driver exit codes: {codes}", flush=True)
    return next((c for c in codes if c), 0)


if __name__ == "__main__":
    sys.exit(main())
