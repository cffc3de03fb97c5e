"""How the cost of a DM step grows with image size: pixel DM vs latent DM (latent match space and decode-through).

Fashion-MNIST resized to S x S (bilinear) for S in --sizes; the latent backbone is an *untrained* AutoencoderKL with
the shipped VAE's architecture (3 levels: downsampling factor 4, 4 latent channels) built for S x S images, or with
``--factor 8|16|auto`` more levels (``auto``: the factor that keeps a 7 x 7 latent grid at every size): what is
measured is cost, which does not depend on the weights. Every method runs the real loop
(``gendistill.distill.distill``) with DM (linear kernel, ConvNet-3 width 128, instance norm, fresh net per step), the
same IPC and real batch per class; pixel DM matches images, latent DM matches (4, S/F, S/F) latents, decode-through
decodes the latents, matches the images and pushes the gradient back through the decoder.

Seconds per step: a tracker stamps every step's log call in the loop, from the end of the warm-up steps to the end of
the last of N timed steps, divided by N; two clocks: the process's CPU time (``time.process_time``; with one torch
thread this is what the step costs, whatever else runs on the machine: the figure to compare on a shared machine) and
wall time. On CUDA only wall time means anything (CPU time then is the launch overhead). Peak memory: on CUDA,
``torch.cuda.max_memory_allocated`` during the steps; on CPU the process's resident set sampled every 5 ms during the
steps, minus the resident set before them. Each (size, method) runs in its own process so one does not inherit
another's allocator pool.

    python benchmarks/scaling.py [--sizes 28 56 112] [--ipc 10] [--batch-real 16] [--steps 3] [--warmup 1] [--factor 4]

Prints one line per size: ``size S: latent/pixel speed ratio R x (decode-through D x)``, where R is pixel seconds per
step / latent seconds per step (above 1: latent DM is faster).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate.tracking import GeneralTracker

METHODS = ("pixel", "latent", "decode-through")


def resized_subset(size: int, per_class: int, seed: int = 0):
    from gendistill.data import ImageDataset, get_dataset

    train = get_dataset("fashion-mnist", "train")
    gen = torch.Generator().manual_seed(seed)
    idx = torch.cat([train.sample_class(c, per_class, gen) for c in range(train.num_classes)])
    x = train.images[idx].float()
    if size != x.shape[-1]:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    images = x.round().clamp(0, 255).to(torch.uint8)
    return ImageDataset(train.name, "train", images, train.labels[idx].clone(), train.classes, train.mean, train.std)


def vae_factor(size: int, factor: str) -> int:
    """The VAE's downsampling factor at ``size``: a number, or ``auto`` = the factor that keeps the shipped VAE's 7 x 7
    latent grid (28 -> 4, 56 -> 8, 112 -> 16: the code stays the same size as the image grows, as a larger image
    dataset's VAE is built to)."""
    f = size // 7 if factor == "auto" else int(factor)
    if f < 1 or f & (f - 1) or size % f:
        raise ValueError(f"--factor {factor} at size {size}: the factor must be a power of two dividing the size")
    return f


def untrained_vae(size: int, factor: int = 4):
    """The shipped VAE's architecture for size x size images, randomly initialised (weights from a fixed seed); a factor
    above its 4 adds levels of its widest block (64 channels)."""
    from diffusers import AutoencoderKL

    from gendistill.backbones import VAEBackbone, resolve_source

    config = json.loads((Path(resolve_source("fashion-mnist-vae")) / "config.json").read_text())
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    config["sample_size"] = size
    levels = factor.bit_length()  # factor 2^(levels - 1)
    widths = list(config["block_out_channels"])
    widths = (widths + [widths[-1]] * levels)[:levels]
    config["block_out_channels"] = widths
    config["down_block_types"] = [config["down_block_types"][0]] * levels
    config["up_block_types"] = [config["up_block_types"][0]] * levels
    with torch.random.fork_rng():
        torch.manual_seed(0)
        vae = AutoencoderKL(**config)
    return VAEBackbone(vae, image_shape=(1, size, size), source=f"untrained-vae-{size}-f{factor}")


class StepClock(GeneralTracker):
    """A tracker that only notes when each step was logged (the loop logs every step with ``log_every=1``)."""

    name = "step-clock"
    requires_logging_directory = False

    def __init__(self):
        super().__init__()
        self.stamps: list[tuple[float, float]] = []  # (wall, process cpu) at the end of each step

    @property
    def tracker(self):
        return self.stamps

    def log(self, values: dict, step: int | None = None, **kwargs):
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()
        self.stamps.append((time.perf_counter(), time.process_time()))


class PeakRSS:
    """Highest resident set size (bytes) seen by a sampling thread while the block runs, minus the one before it."""

    def __init__(self, every: float = 0.02):
        self.every, self.peak, self.base = every, 0, 0

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self):
        self.base = self.peak = self.rss()
        self._stop = threading.Event()

        def watch():
            while not self._stop.is_set():
                self.peak = max(self.peak, self.rss())
                time.sleep(self.every)

        self._thread = threading.Thread(target=watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())

    @property
    def extra(self) -> int:
        return self.peak - self.base


def measure(size: int, method: str, args) -> dict:
    from accelerate import Accelerator

    from gendistill.backbones import PixelBackbone
    from gendistill.cache import LatentSplit, encode_images
    from gendistill.distill import DistillConfig, distill
    from gendistill.objectives import get_objective
    from gendistill.synthetic import SyntheticSet

    clock = StepClock()
    accelerator = Accelerator(cpu=args.device == "cpu", log_with=[clock])
    accelerator.init_trackers("scaling")
    device = accelerator.device
    train = resized_subset(size, max(args.batch_real, args.ipc))
    meta = train.meta()
    images = LatentSplit(train.float_images(), train.labels.clone(), train.num_classes, space="pixel")
    if method == "pixel":
        backbone, real, init_from, space = PixelBackbone((1, size, size)), images, images, "pixel"
    else:
        backbone = untrained_vae(size, vae_factor(size, args.factor)).to(device)
        latents = LatentSplit(encode_images(backbone, train, device=device), train.labels.clone(), train.num_classes)
        real, init_from, space = (latents, latents, "latent") if method == "latent" else (images, latents, "pixel")
    syn = SyntheticSet.initialise("real", init_from, args.ipc, backbone, meta, torch.Generator().manual_seed(0))
    cfg = DistillConfig(steps=args.warmup + args.steps, batch_real=args.batch_real, match_space=space, log_every=1,
                        syn_batch=args.syn_batch)
    if device.type == "cuda":  # the loop's log() is where a step ends: make it wait for the device
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    with PeakRSS() as rss:
        start = (time.perf_counter(), time.process_time())
        distill(syn, get_objective("dm", kernel="linear"), backbone, real, cfg, accelerator, meta)
    stamps = clock.stamps
    if len(stamps) != args.warmup + args.steps:
        raise RuntimeError(f"expected {args.warmup + args.steps} step stamps, got {len(stamps)}")
    first = stamps[args.warmup - 1] if args.warmup else start
    wall, cpu = ((stamps[-1][i] - first[i]) / args.steps for i in (0, 1))
    per_step = wall if device.type == "cuda" else cpu
    peak = torch.cuda.max_memory_allocated() - base if device.type == "cuda" else rss.extra
    return {"size": size, "method": method, "seconds_per_step": per_step, "clock": "wall" if device.type == "cuda"
            else "cpu", "wall_seconds_per_step": wall, "cpu_seconds_per_step": cpu, "peak_bytes": int(peak),
            "ipc": args.ipc, "syn_batch": args.syn_batch, "latent_shape": list(backbone.latent_shape),
            "device": str(device), "threads": torch.get_num_threads()}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[28, 56, 112])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--batch-real", type=int, default=16, help="real samples per class per step")
    p.add_argument("--factor", default="4", help="the VAE's downsampling factor: 4 (the shipped VAE's), 8, 16, or auto "
                   "(a 7 x 7 latent grid at every size)")
    p.add_argument("--syn-batch", type=int, default=0, help="latents per class matched per step (0: all)")
    p.add_argument("--steps", type=int, default=3, help="timed steps")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="auto", choices=["auto", "cpu"])
    # child process: one measurement
    p.add_argument("--one", nargs=2, metavar=("SIZE", "METHOD"), help=argparse.SUPPRESS)
    p.add_argument("--json", default=None, help="also write all measurements to this file")
    args = p.parse_args(argv)
    if args.one:
        print("RESULT " + json.dumps(measure(int(args.one[0]), args.one[1], args)), flush=True)
        return
    for size in args.sizes:
        try:
            vae_factor(size, args.factor)
        except ValueError as e:
            p.error(str(e))
    passed = [a for a in (argv if argv is not None else sys.argv[1:])]
    results = []
    print(f"DM step cost, IPC {args.ipc}, real batch {args.batch_real}/class, syn batch "
          f"{args.syn_batch or 'all'}/class, {args.steps} timed steps after {args.warmup} warm-up, ConvNet-3 width "
          f"128; torch threads {torch.get_num_threads()}",
          flush=True)
    for size in args.sizes:
        row = {}
        for method in args.methods:
            out = subprocess.run([sys.executable, __file__, *passed, "--one", str(size), method], capture_output=True,
                                 text=True)
            lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
            if out.returncode or not lines:
                raise SystemExit(f"size {size} {method} failed: {(out.stderr.strip().splitlines() or ['?'])[-1]}")
            r = json.loads(lines[-1][len("RESULT "):])
            results.append(r)
            row[method] = r
            print(f"  size {size:4d} {method:15s} {r['seconds_per_step']:8.3f} s/step "
                  f"({r['clock']}; wall {r['wall_seconds_per_step']:.3f})  peak {r['peak_bytes'] / 2**20:8.1f} MiB  "
                  f"(latents {tuple(r['latent_shape'])})", flush=True)
        if "pixel" in row and "latent" in row:
            ratio = row["pixel"]["seconds_per_step"] / row["latent"]["seconds_per_step"]
            dt = (" (decode-through "
                  f"{row['pixel']['seconds_per_step'] / row['decode-through']['seconds_per_step']:.2f} x)"
                  if "decode-through" in row else "")
            print(f"size {size}: latent/pixel speed ratio {ratio:.1f} x{dt}", flush=True)
    if args.json:
        from gendistill.io import write_json

        write_json(results, args.json)


if __name__ == "__main__":
    main()
