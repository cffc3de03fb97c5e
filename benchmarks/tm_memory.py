"""Peak memory of one trajectory-matching step: MTT (unrolled graph) vs TESLA (constant-memory reverse pass).

For each method and ``syn_steps`` in 10, 20, 40, 80, a fresh subprocess builds the objective (ConvNet-3, width 128,
on Fashion-MNIST-shaped latents 4x7x7 by default, or images with ``--shape 1,28,28``), an IPC-10 synthetic set of
random data, a learnable lr and one random expert trajectory, then runs one distillation step (objective + backward).
Memory is the process's peak resident set (``ru_maxrss``) on CPU, or ``max_memory_allocated`` on a GPU; the
"step" column is the peak minus what the process held just before the step (the step's own footprint: the
autograd graph for MTT, one step's graph plus the kept parameter vectors for TESLA). The two last lines give the
ratio of peak memory at 80 and at 10 steps.

    python benchmarks/tm_memory.py [--shape 4,7,7] [--ipc 10] [--steps 10 20 40 80] [--device cpu|cuda] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def make_experts(directory: Path, in_shape, num_classes: int, width: int, depth: int):
    """One made-up expert trajectory (3 epochs): memory does not depend on the values."""
    from gendistill.backbones import load_backbone
    from gendistill.experts import ExpertConfig, NetSpec, describe, expert_file, flatten_params, identity, param_layout
    from gendistill.io import save_safetensors, write_json

    net = NetSpec("convnet", depth, width)
    ident = identity("latent", load_backbone("pixel", image_shape=(1, 28, 28)), {"name": "random"}, net, in_shape,
                     num_classes)
    meta = describe(ident, param_layout(net.build(in_shape, num_classes, torch.Generator().manual_seed(0))),
                    ExpertConfig(num_experts=1, epochs=3))
    write_json(meta, directory / "experts.json")
    g = torch.Generator().manual_seed(1)
    base = flatten_params(net.build(in_shape, num_classes, g))
    steps = 0.01 * torch.randn(3, meta["num_params"], generator=g)
    save_safetensors({"trajectory": torch.cat([base[None], base + steps.cumsum(0)])}, expert_file(directory, 0))


def rss_now_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def child(args) -> None:
    from gendistill.experts import load_experts
    from gendistill.objectives import StepContext, get_objective

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    in_shape = tuple(int(s) for s in args.shape.split(","))
    n = args.ipc * args.classes
    obj = get_objective(args.method, experts=load_experts(args.experts), syn_steps=args.syn_steps, expert_epochs=1,
                        max_start_epoch=2)
    g = torch.Generator().manual_seed(0)
    syn = torch.randn(n, *in_shape, generator=g).to(device).requires_grad_(True)
    labels = torch.arange(args.classes).repeat_interleave(args.ipc).to(device)
    lr = torch.nn.Parameter(torch.tensor(0.01, device=device))

    def step():
        ctx = StepContext(0, torch.Generator().manual_seed(1), in_shape, args.classes, device, syn_lr=lr)
        loss = obj(syn, labels, None, ctx)
        loss.backward()
        syn.grad = lr.grad = None
        return float(loss)

    # warm up kernels and allocator with a 1-step unroll, then measure one full step
    full = obj.syn_steps
    obj.syn_steps = 1
    step()
    obj.syn_steps = full
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / 2**20
    else:
        before = rss_now_mib()
    start = time.perf_counter()
    step()
    seconds = time.perf_counter() - start
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"peak": peak, "before": before, "seconds": seconds}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="4,7,7", help="input shape C,H,W (4,7,7: the shipped VAE's latents; "
                                                    "1,28,28: images)")
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--steps", type=int, nargs="+", default=[10, 20, 40, 80])
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads per run (1 is fastest for these small convolutions)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--method", default="mtt", help=argparse.SUPPRESS)
    p.add_argument("--syn-steps", type=int, default=10, help=argparse.SUPPRESS)
    p.add_argument("--experts", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)

    in_shape = tuple(int(s) for s in args.shape.split(","))
    what = "peak RSS" if args.device == "cpu" else "max allocated"
    print(f"one distillation step, IPC {args.ipc} x {args.classes} classes, inputs {in_shape}, ConvNet-{args.depth} "
          f"width {args.width}, device {args.device}; memory in MiB ({what})")
    print(f"{'method':<7} {'syn_steps':>9} {'peak':>9} {'step':>9} {'seconds':>8}")
    peaks: dict[tuple[str, int], float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        make_experts(Path(tmp), in_shape, args.classes, args.width, args.depth)
        for method in ("mtt", "tesla"):
            for steps in args.steps:
                cmd = [sys.executable, __file__, "--child", "--method", method, "--syn-steps", str(steps), "--experts",
                       tmp, "--shape", args.shape, "--ipc", str(args.ipc), "--classes", str(args.classes), "--device",
                       args.device, "--threads", str(args.threads)]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    sys.exit(f"error: {method} with {steps} steps failed: "
                             f"{proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}")
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                peaks[method, steps] = r["peak"]
                print(f"{method:<7} {steps:>9} {r['peak']:>9.1f} {r['peak'] - r['before']:>9.1f} {r['seconds']:>8.2f}",
                      flush=True)
    lo, hi = min(args.steps), max(args.steps)
    for method in ("mtt", "tesla"):
        print(f"{method} {hi}/{lo} memory ratio: {peaks[method, hi] / peaks[method, lo]:.2f}")


if __name__ == "__main__":
    main()
