"""DM step time on 1 vs 2 processes (CPU, gloo), and how far the 2-process set is from the 1-process one.

Launches itself twice with ``accelerate launch`` (1 process: ``--cpu``; 2 processes: ``--multi_gpu`` with
``ACCELERATE_USE_CPU=1``, i.e. torchrun on gloo), each process with one thread. Each run times the real loop
(`gendistill.distill.distill`) as benchmarks/dm_speed.py does (a warm-up run subtracted from a longer one) and saves
its final set; DM splits the classes over the processes, so the two sets should agree to float tolerance.
``--device cuda``: both runs on the GPU(s), the 2 processes sharing one GPU if there is one (with ``--backend gloo``,
the default there: NCCL refuses two ranks on one GPU); benchmarks/gpu_check.sh runs it so.

    python benchmarks/dm_multiprocess.py [--match-space pixel|latent] [--ipc 10] [--batch-real 64] [--steps 10]
        [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def child(args) -> None:
    import torch
    from safetensors.torch import save_file

    from gendistill.backbones import load_backbone
    from gendistill.cache import LatentSplit, encode_images
    from gendistill.data import ImageDataset, get_dataset
    from gendistill.distill import DistillConfig, distill, make_accelerator
    from gendistill.objectives import get_objective
    from gendistill.synthetic import SyntheticSet

    torch.set_num_threads(1)
    if args.device == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState

        PartialState(backend=args.backend)  # the shared state the accelerator below uses
    accelerator = make_accelerator("no")
    full = get_dataset("fashion-mnist", "train")
    gen = torch.Generator().manual_seed(0)
    idx = torch.cat([full.sample_class(c, max(args.batch_real, args.ipc), gen) for c in range(full.num_classes)])
    train = ImageDataset(full.name, "train", full.images[idx].clone(), full.labels[idx].clone(), full.classes,
                         full.mean, full.std)
    meta = train.meta()
    vae = load_backbone(args.backbone, image_shape=train.image_shape).to(accelerator.device)
    latents = LatentSplit(encode_images(vae, train), train.labels.clone(), train.num_classes)
    real = LatentSplit(train.float_images(), train.labels.clone(),
                       train.num_classes) if args.match_space == "pixel" else latents
    times, syn = [], None
    for steps in (args.warmup, args.warmup + args.steps):
        syn = SyntheticSet.initialise("real", latents, args.ipc, vae, meta, torch.Generator().manual_seed(0))
        cfg = DistillConfig(steps=steps, batch_real=args.batch_real, match_space=args.match_space, lr=0.01,
                            log_every=10**9)
        accelerator.wait_for_everyone()
        start = time.perf_counter()
        distill(syn, get_objective("dm", kernel="gaussian"), vae, real, cfg, accelerator, meta)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        accelerator.wait_for_everyone()
        times.append(time.perf_counter() - start)
    if accelerator.is_main_process:
        out = Path(args.child)
        save_file({"latents": syn.latents.detach().cpu().contiguous()}, str(out / "set.safetensors"))
        result = {"processes": accelerator.num_processes, "device": str(accelerator.device),
                  "seconds_per_step": (times[1] - times[0]) / args.steps}
        (out / "result.json").write_text(json.dumps(result))


def launch(processes: int, out: Path, argv: list[str], device: str = "cpu") -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    if processes == 1:
        mode = ["--cpu", "--num_processes", "1"] if device == "cpu" else ["--num_processes", "1"]
    else:
        mode = ["--multi_gpu", "--num_processes", str(processes)]
        if device == "cpu":
            env["ACCELERATE_USE_CPU"] = "1"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *mode, "--num_machines", "1", "--dynamo_backend", "no",
           "--mixed_precision", "no", __file__, *argv, "--child", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"error: the {processes}-process run failed:\n{proc.stderr[-3000:]}")
    return json.loads((out / "result.json").read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--match-space", default="pixel", choices=("pixel", "latent"))
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--batch-real", type=int, default=64)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--backbone", default="fashion-mnist-vae")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--backend", default="gloo", help="--device cuda, 2 processes: the process group's backend")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    import torch
    from safetensors.torch import load_file

    argv = sys.argv[1:]
    with tempfile.TemporaryDirectory() as tmp:
        runs = {}
        for n in (1, 2):
            (Path(tmp) / str(n)).mkdir()
            runs[n] = launch(n, Path(tmp) / str(n), argv, args.device)
        a, b = (load_file(str(Path(tmp) / str(n) / "set.safetensors"))["latents"] for n in (1, 2))
        diff = (a - b).abs().max().item()
    one, two = runs[1]["seconds_per_step"], runs[2]["seconds_per_step"]
    print(f"DM ({args.match_space} match space, {args.backbone}), ipc {args.ipc}, real batch {args.batch_real}/class, "
          f"{args.steps} timed steps, 1 thread per process, {os.cpu_count()} CPUs, device {runs[2].get('device')} "
          f"(torch {torch.__version__})")
    print(f"1 process: {one * 1000:.1f} ms/step; 2 processes: {two * 1000:.1f} ms/step")
    print(f"2-process step time / 1-process: {two / one:.2f} x")
    print(f"2-process vs 1-process set: max abs difference {diff:.3g}")


if __name__ == "__main__":
    main()
