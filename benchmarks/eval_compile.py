"""The evaluation's training step, plain and under ``torch.compile`` (``gendistill eval --compile``), in one run.

The protocol's network (ConvNet-3 w128, instance norm, average pooling; SGD with momentum and weight decay; DSA; batch
256) trains the same images in both runs, from the same initial weights and generator seed, through
:func:`gendistill.evaluate.train_epoch`, the loop the evaluation runs. The two alternate epoch by epoch so that both
see the same machine. The first compiled epoch holds the compile; the script prints it apart, then each run's steady
seconds a step, the loss each reaches (the same maths, so they agree to float rounding) and
``compile speed ratio R x`` (plain seconds a step over compiled ones).

    python benchmarks/eval_compile.py                      # 2,048 random 1x28x28 images, 4 timed epochs each
    python benchmarks/eval_compile.py --images 1024 --epochs 2 --threads 2
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from gendistill.augment import get_augment
from gendistill.evaluate import EvalConfig, train_epoch
from gendistill.nets import fresh_net


def measure(images: int, epochs: int, shape=(1, 28, 28), num_classes: int = 10, seed: int = 0) -> dict:
    cfg = EvalConfig()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(images, *shape, generator=g)
    y = torch.arange(images) % num_classes
    runs = {}
    for name in ("plain", "compiled"):
        net = fresh_net(cfg.arch, shape, num_classes, torch.Generator().manual_seed(seed))
        opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        step = torch.compile(net, dynamic=False) if name == "compiled" else net
        runs[name] = {"net": net, "step": step, "opt": opt, "gen": torch.Generator().manual_seed(seed), "epochs": []}
    augment = get_augment(cfg.augment)
    steps = -(-images // cfg.batch)
    for _ in range(epochs + 1):  # epoch 0: the compile (and the plain run's warm-up)
        for r in runs.values():
            start = time.perf_counter()
            train_epoch(r["step"], r["opt"], x, y, cfg.batch, augment, r["gen"])
            r["epochs"].append(time.perf_counter() - start)
    out = {"images": images, "steps_per_epoch": steps, "timed_epochs": epochs, "threads": torch.get_num_threads()}
    for name, r in runs.items():
        with torch.no_grad():
            loss = F.cross_entropy(r["net"].eval()(x[:1024]), y[:1024]).item()
        steady = sum(r["epochs"][1:]) / (epochs * steps)
        out[name] = {"first_epoch_s": round(r["epochs"][0], 2), "step_s": round(steady, 4), "loss": round(loss, 5)}
    out["compile_s"] = round(out["compiled"]["first_epoch_s"] - out["compiled"]["step_s"] * steps, 1)
    out["ratio"] = round(out["plain"]["step_s"] / out["compiled"]["step_s"], 3)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=2048)
    p.add_argument("--epochs", type=int, default=4, help="timed epochs of each run, after the first")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", help="write the figures here as JSON")
    args = p.parse_args(argv)
    if args.images < 1 or args.epochs < 1 or args.threads < 1:
        p.error("--images, --epochs and --threads must be at least 1")
    torch.set_num_threads(args.threads)
    r = measure(args.images, args.epochs)
    for name in ("plain", "compiled"):
        print(f"{name}: {r[name]['step_s']:.3f} s a step ({r['steps_per_epoch']} steps an epoch, {r['timed_epochs']} "
              f"epochs timed, {r['threads']} thread(s)); loss after training {r[name]['loss']:.5f}")
    print(f"compile: {r['compile_s']:.1f} s, once a network")
    print(f"compile speed ratio {r['ratio']:.2f} x")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(r, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
