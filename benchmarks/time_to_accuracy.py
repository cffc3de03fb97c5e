"""Time to accuracy: pixel DM against the default latent recipe, each evaluated every N steps the same cheap way.

Both runs are ``recipes/latent_dm.py`` configs (the pixel one: ``recipes/configs/dm/fashion-mnist_ipc10_pixel.yaml``,
the latent one: the recipe's defaults, the demo), distilled in segments of ``--eval-every`` steps (the loop resumes
exactly from its checkpoint, so the segments make the same run as one call). After each segment the set is decoded
and evaluated with one fixed cheap protocol (``--eval-epochs`` epochs, ``--eval-runs`` nets, the same seeds for
every point). Two clocks, distillation only (not set-up, latent encoding or evaluation): the process CPU time of the
segments (``--clock cpu``, the default: with one torch thread it is what the steps cost, however busy a shared
machine is) and the loop's wall clock (``TrainState.seconds``, ``--clock wall``: the figure on a machine of one's
own or a GPU). The target is the pixel run's final accuracy; the script prints the distillation time each
run needs to reach it and ``time-to-accuracy ratio R x`` = pixel time / latent time (above 1: latent is faster).

    # 200 steps each, eval every 50, 50 epochs x 1 net
    python benchmarks/time_to_accuracy.py
    # small
    python benchmarks/time_to_accuracy.py --steps 40 --eval-every 20 --eval-epochs 20 --batch-real 16
    # any latent_dm.py flag after --latent
    python benchmarks/time_to_accuracy.py --latent --latent-steps 150 --syn-batch 5
    # latent-space schedules that reach pixel DM's final accuracy (within noise: docs/results.md, section 9)
    python benchmarks/time_to_accuracy.py --eval-runs 3 --latent --match-space latent --pool none --width 32 \
        --augment none --lr 0.1
    python benchmarks/time_to_accuracy.py --eval-runs 3 --latent --match-space latent --pool none --width 64 \
        --augment none --lr 0.1 --latent-metric decoder
    # storage-matched latent set vs pixel IPC 10
    python benchmarks/time_to_accuracy.py --latent --ipc-budget 10 --syn-batch 10
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

from gendistill.config import parse_config
from gendistill.distill import make_accelerator
from gendistill.evaluate import EvalConfig, evaluate
from gendistill.io import write_json
from gendistill.pipeline import build, run_distill
from gendistill.recipes.dm import LatentDMConfig, make_objective

ROOT = Path(__file__).resolve().parents[1]
PIXEL_CONFIG = ROOT / "recipes" / "configs" / "dm" / "fashion-mnist_ipc10_pixel.yaml"


def curve(name: str, argv: list[str], args, workdir: Path) -> dict:
    """Distil with ``latent_dm.py`` flags ``argv`` in segments; the cheap accuracy and loop seconds after each."""
    cfg = parse_config(LatentDMConfig, argv)
    cfg = dataclasses.replace(cfg, output=str(workdir / name), checkpoint_every=0, eval_runs=0, resume=False)
    Path(cfg.output).mkdir(parents=True, exist_ok=True)
    accelerator = make_accelerator("no")
    c0 = time.process_time()
    pieces = build(cfg, "dm", accelerator)  # data, backbone, latent cache (if cold), the set's initialisation
    setup = time.process_time() - c0
    objective = make_objective(cfg)
    ecfg = EvalConfig(epochs=args.eval_epochs, runs=args.eval_runs, seed=0)
    points, total, cpu, wall = [], cfg.steps, 0.0, 0.0
    marks = list(range(0, total, args.eval_every))[1:] + [total]
    for i, upto in enumerate([0] + marks):
        if upto:
            # a copy, not dataclasses.replace: build() resolved --ipc-budget into cfg.ipc, which a re-validation
            # would refuse as both flags given
            seg = copy.copy(cfg)
            seg.steps, seg.resume = upto, i > 1
            accelerator = make_accelerator("no")  # a fresh one per segment: each registers its own optimiser and state
            c0 = time.process_time()
            state = run_distill(seg, pieces, objective, accelerator, Path(cfg.output))
            cpu += time.process_time() - c0
            wall = state.seconds
        seconds = cpu if args.clock == "cpu" else wall
        images = pieces.syn.decode(pieces.backbone).cpu()
        t0 = time.time()
        acc = evaluate(images, pieces.syn.labels.cpu(), pieces.test, ecfg, device=accelerator.device,
                       progress=False)["mean"]
        points.append({"step": upto, "seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2),
                       "wall_seconds": round(wall, 2), "accuracy": acc})
        print(f"{name:6s} step {upto:5d}  distil {cpu:8.1f} s cpu {wall:8.1f} s wall  "
              f"accuracy {100 * acc:6.2f} %  (eval {time.time() - t0:.0f} s)", flush=True)
    print(f"{name:6s} set-up {setup:.1f} s cpu (data, backbone, latent cache, initialisation)", flush=True)
    return {"argv": argv, "config": dataclasses.asdict(cfg), "points": points, "setup_cpu_seconds": round(setup, 2)}


def time_to(points: list[dict], target: float) -> float | None:
    for p in points:
        if p["accuracy"] >= target:
            return p["seconds"]
    return None


SAME = ("ipc", "steps", "batch_real", "eval_epochs", "eval_runs", "clock", "pixel_config")


def reused_pixel(args, pixel_argv: list[str]) -> dict:
    """The pixel curve of an earlier run's JSON, refused unless it was made with the settings this run would use."""
    earlier = json.loads(Path(args.pixel_from).read_text())
    differ = [k for k in SAME if earlier["settings"].get(k) != getattr(args, k)]
    if differ or earlier["pixel"]["argv"] != pixel_argv:
        what = ", ".join(differ) or "argv"
        raise SystemExit(f"error: --pixel-from {args.pixel_from} was made with other settings ({what}); "
                         "rerun without --pixel-from")
    print(f"pixel curve from {args.pixel_from}", flush=True)
    return earlier["pixel"]


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    latent_extra = argv[argv.index("--latent") + 1 :] if "--latent" in argv else []
    argv = argv[: argv.index("--latent")] if "--latent" in argv else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--steps", type=int, default=200, help="distillation steps of each run")
    p.add_argument("--batch-real", type=int, default=64, help="real samples per class per step (both runs)")
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--eval-epochs", type=int, default=50, help="epochs of the cheap evaluation")
    p.add_argument("--eval-runs", type=int, default=1)
    p.add_argument("--pixel-config", default=str(PIXEL_CONFIG))
    p.add_argument("--clock", default="cpu", choices=["cpu", "wall"], help="which distillation time the ratio uses")
    p.add_argument("--out", default=None, help="write both curves and the result to this JSON file")
    p.add_argument("--pixel-from", default=None,
                   help="reuse the pixel curve of an earlier --out JSON (made with the same --ipc, --steps, "
                        "--batch-real, --eval-epochs, --eval-runs, --clock and pixel config): only the latent run")
    p.add_argument("--workdir", default=None, help="where the runs' checkpoints go (default: a temporary directory)")
    args = p.parse_args(argv)
    if args.eval_every < 1 or args.steps < 1:
        p.error("--steps and --eval-every must be at least 1")
    common = ["--steps", str(args.steps), "--batch-real", str(args.batch_real)]
    size = ["--ipc", str(args.ipc)]
    # a storage-matched latent set against pixel DM at --ipc
    latent_size = [] if "--ipc-budget" in latent_extra else size
    pixel_argv = ["--config", args.pixel_config, *size, *common]
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        pixel = reused_pixel(args, pixel_argv) if args.pixel_from else curve("pixel", pixel_argv, args, Path(tmp))
        latent = curve("latent", [*latent_size, *common, *latent_extra], args, Path(tmp))
    target = pixel["points"][-1]["accuracy"]
    t_pixel, t_latent = time_to(pixel["points"], target), time_to(latent["points"], target)
    best = max(p["accuracy"] for p in latent["points"])
    print(f"target: the pixel run's final accuracy {100 * target:.2f} % ({args.eval_epochs} epochs x "
          f"{args.eval_runs} nets)")
    print(f"pixel DM reaches it after {t_pixel:.1f} s ({args.clock}) of distillation")
    if t_latent is None:
        print(f"latent recipe does not reach it in {args.steps} steps ({latent['points'][-1]['seconds']:.1f} s; best "
              f"{100 * best:.2f} %)")
        print("time-to-accuracy ratio n/a x (target not reached)")
    elif t_latent == 0:
        print("latent recipe reaches it at its initialisation (0 s of distillation)")
        print("time-to-accuracy ratio inf x")
    else:
        print(f"latent recipe reaches it after {t_latent:.1f} s ({args.clock}) of distillation")
        print(f"time-to-accuracy ratio {t_pixel / max(t_latent, 1e-9):.1f} x")
    if t_latent is not None and args.clock == "cpu":  # the same comparison with each run's set-up counted
        s_pixel, s_latent = pixel.get("setup_cpu_seconds"), latent["setup_cpu_seconds"]
        if s_pixel is not None:
            print(f"with set-up: pixel {s_pixel + t_pixel:.1f} s, latent {s_latent + t_latent:.1f} s cpu")
            print(f"time-to-accuracy ratio with set-up {(s_pixel + t_pixel) / max(s_latent + t_latent, 1e-9):.1f} x")
        else:
            print(f"with set-up: latent {s_latent + t_latent:.1f} s cpu (the reused pixel curve has no set-up time)")
            print(f"time-to-accuracy ratio with the latent set-up {t_pixel / max(s_latent + t_latent, 1e-9):.1f} x")
    if args.out:
        write_json({"pixel": pixel, "latent": latent, "target": target, "pixel_seconds": t_pixel,
                    "latent_seconds": t_latent, "settings": vars(args), "latent_extra": latent_extra}, args.out)


if __name__ == "__main__":
    main()
