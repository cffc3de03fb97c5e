"""The two measured targets of the plug-ins (docs/plugins.md), with the screening evaluation of screening.py.

1. YOCO: prune an IPC-10 distilled set (LatentDD, the crossover's distilled curve) and a budget-10 one (LatentDD
   ``--ipc-budget 10``: 40 latents per class) to IPC 5 with the LBPE rule (``gendistill prune --rule low``) and
   compare with random real images at IPC 5 (pixel backbone, ``--draws`` draws, 10 by default: one draw moves by
   several points); the high-LBPE rule and random pruning inside the set are measured beside it. Target: pruned >=
   random + 5 points.
2. DREAM: the same LatentDD run from random real latents (``--dream-init real``; ``noise`` starts from Gaussian
   noise with the real latents' statistics, where the step count matters far more) with
   ``--real-sampler uniform`` and ``dream``, each evaluated after every step count in ``--dream-steps`` (one run,
   extended with ``--resume --steps``). Target: DREAM reaches uniform's accuracy at the last step count in <= 60% of
   the steps.

Both print their target lines at the end (margin over random real; DREAM's share of the steps), from every result
in ``OUT/plugin_targets.json`` (reruns skip what is there).

    python benchmarks/plugin_targets.py [--out outputs/plugins] [--only prune|dream] [--nets 2] [--iters 300]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
from screening import Data, Results, Screening, latent_dm, logger, run, screen, set_images, settings_of

PRUNE_SOURCES = {  # results-key prefix -> (folder, latent_dm.py size flags): the IPC-10 set and the budget-10 one
    "prune": ("dm-ipc10", (10,)),
    "prune-budget10": ("dm-budget10", ("none", "--ipc-budget", 10)),
}


def prune_study(args, data: Data, cfg: Screening, res: Results, log) -> None:
    out = Path(args.out)
    sources = [(p, *PRUNE_SOURCES[p]) for p in args.prune_sources.split(",") if p]
    sources += [(f"prune-{name}", None, path) for name, path in (item.split("=", 1) for item in args.prune_set)]
    for prefix, folder, size in sources:
        if folder is None:  # --prune-set NAME=PATH: an existing IPC-10 set file
            src, folder, skey = Path(size), prefix, f"{prefix}/source"
        else:
            src = latent_dm(out / folder, size[0], args.distill_steps, log, *size[1:])
            skey = f"{prefix}/source-{folder[3:]}"
        if not res.has(skey):
            res.put(skey, {**screen(*set_images(src), data, cfg), "set": str(src)})
            log(f"{skey}: {100 * res.get(skey)['mean']:.2f}")
        for rule in ("low", "random", "high"):
            key = f"{prefix}/{rule}-ipc5"
            if res.has(key):
                continue
            path = out / f"{folder}-pruned-{rule}-ipc5.safetensors"
            if not path.exists():
                run([sys.executable, "-m", "gendistill.cli", "prune", src, "--ipc", 5, "--rule", rule, "--out", path],
                    log)
            res.put(key, {**screen(*set_images(path), data, cfg), "set": str(path)})
            log(f"{key}: {100 * res.get(key)['mean']:.2f}")
    train = data.train
    for d in range(args.draws):
        key = f"prune/random-real-ipc5-draw{d}"
        if res.has(key):
            continue
        idx = torch.cat([train.sample_class(c, 5, torch.Generator().manual_seed(1000 + d * 10 + c)) for c in range(10)])
        res.put(key, {**screen(train.float_images(idx), train.labels[idx], data, cfg), "draw": d})
        log(f"{key}: {100 * res.get(key)['mean']:.2f}")


def summary(res: Results, args) -> list[str]:
    """The targets' lines, from whatever has finished: YOCO's margin over random real IPC 5 and DREAM's step ratio."""
    rows, lines = res.data["rows"], []
    draws = [100 * rows[k]["mean"] for k in sorted(rows) if k.startswith("prune/random-real-ipc5-draw")]
    if draws:
        rand = statistics.fmean(draws)
        spread = f" +- {statistics.stdev(draws):.2f}" if len(draws) > 1 else ""
        lines.append(f"random real IPC 5: {rand:.2f}{spread} over {len(draws)} draws")
        for prefix in [*PRUNE_SOURCES, *(f"prune-{i.split('=', 1)[0]}" for i in getattr(args, "prune_set", []))]:
            for rule in ("low", "random", "high"):
                key = f"{prefix}/{rule}-ipc5"
                if key in rows:
                    acc = 100 * rows[key]["mean"]
                    met = "met" if acc - rand >= 5 else "not met"
                    lines.append(f"YOCO {prefix} --rule {rule}: {acc:.2f}, {acc - rand:+.2f} over random real IPC 5 "
                                 f"(target +5: {met})")
    steps = [int(s) for s in args.dream_steps.split(",")]
    tag = "dream" if args.dream_init == "real" else f"dream-{args.dream_init}"
    final = rows.get(f"{tag}/uniform-{steps[-1]}")
    if final:
        goal = 100 * final["mean"]
        reached = [n for n in steps if f"{tag}/dream-{n}" in rows and 100 * rows[f"{tag}/dream-{n}"]["mean"] >= goal]
        if reached:
            ratio = reached[0] / steps[-1]
            lines.append(f"DREAM ({tag}): uniform reaches {goal:.2f} at {steps[-1]} steps; dream reaches it at "
                         f"{reached[0]} steps = {100 * ratio:.0f}% of the steps (target <= 60%: "
                         f"{'met' if ratio <= 0.6 else 'not met'})")
        elif all(f"{tag}/dream-{n}" in rows for n in steps):
            lines.append(f"DREAM ({tag}): uniform reaches {goal:.2f} at {steps[-1]} steps; dream does not reach it "
                         f"within {steps[-1]} steps (target <= 60%: not met)")
    return lines


def dream_study(args, data: Data, cfg: Screening, res: Results, log) -> None:
    out = Path(args.out)
    steps = [int(s) for s in args.dream_steps.split(",")]
    tag = "dream" if args.dream_init == "real" else f"dream-{args.dream_init}"  # results key and folder prefix
    if not res.has(f"{tag}/start-0"):  # step 0 for both: the set the runs start from (the same draw)
        path = out / f"{tag}-study-start.safetensors"
        if not path.exists():
            run([sys.executable, "-m", "gendistill.cli", "init", "--ipc", 10, "--init", args.dream_init, "--seed", 0,
                 "--out", path], log)
        res.put(f"{tag}/start-0", {**screen(*set_images(path), data, cfg), "steps": 0})
        log(f"{tag}/start-0: {100 * res.get(f'{tag}/start-0')['mean']:.2f}")
    for sampler in ("uniform", "dream"):
        run_dir = out / f"{tag}-study-{sampler}"
        for _i, n in enumerate(steps):
            key = f"{tag}/{sampler}-{n}"
            if res.has(key):
                continue
            done = (run_dir / "set.safetensors").exists()
            extra = ["--resume"] if done else ["--overwrite"]
            run([sys.executable, "recipes/latent_dm.py", "--config",
                 "recipes/configs/dm/fashion-mnist_ipc10_vae-latent-real.yaml", "--init", args.dream_init, "--steps", n,
                 "--eval-runs", 0, "--real-sampler", sampler, "--output", run_dir, *extra], log)
            res.put(key, {**screen(*set_images(run_dir / "set.safetensors"), data, cfg), "steps": n,
                          "sampler": sampler})
            log(f"{key}: {100 * res.get(key)['mean']:.2f}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="outputs/plugins")
    p.add_argument("--only", choices=["prune", "dream"], default=None)
    p.add_argument("--protocol", choices=["screening", "standard"], default="screening")
    p.add_argument("--iters", type=int, default=300)
    p.add_argument("--nets", type=int, default=2)
    p.add_argument("--draws", type=int, default=10, help="random real IPC-5 draws (a draw moves by several points)")
    p.add_argument("--prune-sources", default="prune,prune-budget10",
                   help="sets pruned to IPC 5: prune (LatentDD IPC 10), prune-budget10 (LatentDD budget 10, 40/class)")
    p.add_argument("--prune-set", action="append", default=[], metavar="NAME=PATH",
                   help="also prune this set file (e.g. the best IPC-10 set of another recipe); results key prune-NAME")
    p.add_argument("--distill-steps", type=int, default=200, help="LatentDD steps of the IPC-10 set that is pruned")
    p.add_argument("--dream-steps", default="40,80,120,200")
    p.add_argument("--dream-init", default="real",
                   help="the DREAM runs' --init (real: random real latents; noise: where steps matter more)")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = Screening(protocol=args.protocol, iters=args.iters, nets=args.nets)
    log = logger(out / "plugin_targets.log")
    res = Results(out / "plugin_targets.json", settings_of(cfg, distill_steps=args.distill_steps,
                                                           dream_steps=args.dream_steps,
                                                            draws=args.draws))
    log(f"evaluation: {cfg.label()}")
    data = Data()
    if args.only in (None, "prune"):
        prune_study(args, data, cfg, res, log)
    if args.only in (None, "dream"):
        dream_study(args, data, cfg, res, log)
    for line in summary(res, args):
        log(line)
    log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
