"""The crossover study: does distillation beat selection beyond small IPC? Fashion-MNIST at IPC 1 ... 500.

Curves, each point one set evaluated with screening.py's evaluation (SCREENING settings by default: ConvNet-3 w32,
a fixed number of SGD iterations, a test subset; ``--protocol standard`` for the real protocol, far slower):

- distilled: LatentDD, the cheapest of the project's distillations (M3D's MMD on the shipped VAE's latents from
  k-means centres, ``dm/fashion-mnist_ipc10_vae-latent.yaml``) at ``--distill-steps`` steps (screening: 200 of the
  config's 500), at every IPC. Its images are VAE decodings: the VAE's fidelity bounds it.
- best coreset: real images (pixel backbone) chosen by ``gendistill select`` with each of ``--coresets``
  (default kmeans and herding; ``--coresets kmeans,herding,kcenter,forgetting`` for more); per IPC the best is the
  curve.
- random: random real images (pixel backbone), ``--draws`` draws at IPC <= 10 and one draw above.
- random latents (dashed, a reference): random real images' VAE latents, decoded (the storage class of the distilled
set).

Work is ordered by priority (every curve at small IPC before any at large IPC; the reference curve last), each result
is written to ``OUT/crossover.json`` when it finishes and a rerun skips what is done, so the study can be stopped and
resumed; the table (``OUT/crossover.md``) and plot (``OUT/crossover.png``) are redrawn from whatever has finished.

    nohup python benchmarks/crossover.py > outputs/plugins/crossover.out 2>&1 &
    python benchmarks/crossover.py --report-only        # table and plot from what has finished
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
from screening import Data, Results, Screening, latent_dm, logger, run, screen, set_images, settings_of

from gendistill.backbones import load_backbone
from gendistill.cache import cached_latents
from gendistill.plots import line_plot, save_png

CURVES = ("distilled (LatentDD)", "best coreset (real images)", "random real images", "random VAE latents")


def tasks(ipcs, coresets, draws_small):
    for ipc in ipcs:
        yield ipc, "random", [f"random/ipc{ipc}/draw{d}" for d in range(draws_small if ipc <= 10 else 1)]
        for m in coresets:
            yield ipc, f"coreset:{m}", [f"coreset/{m}/ipc{ipc}"]
        yield ipc, "distilled", [f"distilled/ipc{ipc}"]
    for ipc in ipcs:
        yield ipc, "latent-random", [f"latent-random/ipc{ipc}"]


def measure(kind: str, key: str, ipc: int, args, data: Data, cfg: Screening, log, vae_cache: dict) -> dict:
    out = Path(args.out)
    train = data.train
    if kind == "random":
        d = int(key.rsplit("draw", 1)[1])
        idx = torch.cat([train.sample_class(c, ipc, torch.Generator().manual_seed(7000 + 100 * d + c))
                         for c in range(10)])
        return {**screen(train.float_images(idx), train.labels[idx], data, cfg), "draw": d}
    if kind.startswith("coreset:"):
        method = kind.split(":", 1)[1]
        path = out / f"coreset-{method}-ipc{ipc}.safetensors"
        if not path.exists():
            run([sys.executable, "-m", "gendistill.cli", "select", "--method", method, "--ipc", ipc, "--backbone",
                 "pixel", "--out", path], log)
        return {**screen(*set_images(path), data, cfg), "set": str(path)}
    if kind == "distilled":
        path = latent_dm(out / f"dm-ipc{ipc}", ipc, args.distill_steps, log)
        return {**screen(*set_images(path), data, cfg), "set": str(path)}
    if kind == "latent-random":
        if "vae" not in vae_cache:
            vae = load_backbone("fashion-mnist-vae", image_shape=train.image_shape, class_names=train.classes)
            vae_cache["vae"], vae_cache["real"] = vae, cached_latents(vae, train, log=log)
        vae, real = vae_cache["vae"], vae_cache["real"]
        idx = torch.cat([real.sample_class(c, ipc, torch.Generator().manual_seed(7000 + c)) for c in range(10)])
        with torch.no_grad():
            images = vae.decode(real.latents[idx]).float().clamp(0, 1)
        return screen(images, real.labels[idx], data, cfg)
    raise ValueError(kind)


def report(res: Results, ipcs, coresets, out: Path) -> str:
    rows = res.data["rows"]

    def mean_of(keys):
        vals = [rows[k]["mean"] for k in keys if k in rows]
        return (100 * statistics.fmean(vals), len(vals)) if vals else (None, 0)

    table, series = [], {name: [] for name in CURVES}
    for ipc in ipcs:
        dist, _ = mean_of([f"distilled/ipc{ipc}"])
        cores = {m: mean_of([f"coreset/{m}/ipc{ipc}"])[0] for m in coresets}
        cores = {m: v for m, v in cores.items() if v is not None}
        best = max(cores, key=cores.get) if cores else None
        rand, n_rand = mean_of([k for k in rows if k.startswith(f"random/ipc{ipc}/")])
        lat, _ = mean_of([f"latent-random/ipc{ipc}"])
        for name, v in zip(CURVES, (dist, cores.get(best) if best else None, rand, lat)):
            if v is not None:
                series[name].append((ipc, v))

        def cell(v):
            return "-" if v is None else f"{v:.2f}"

        core_cells = ", ".join(f"{m} {v:.2f}" for m, v in cores.items()) or "-"
        lead = {"distilled": dist, "coreset": cores.get(best) if best else None, "random": rand}
        lead = {k: v for k, v in lead.items() if v is not None}
        winner = max(lead, key=lead.get) if len(lead) == 3 else "-"
        table.append(f"| {ipc} | {cell(dist)} | {cell(cores.get(best) if best else None)} ({best or '-'}) | "
                     f"{core_cells} | {cell(rand)}{f' ({n_rand} draws)' if n_rand > 1 else ''} | {cell(lat)} "
                     f"| {winner} |")
    head = ("| IPC | distilled (LatentDD) | best coreset (method) | coresets | random real | random VAE latents "
            "| highest |\n| --- | --- | --- | --- | --- | --- | --- |")
    text = f"{res.data['settings']['label']}\n\n{head}\n" + "\n".join(table) + "\n"
    (out / "crossover.md").write_text(text)
    plotted = {k: v for k, v in series.items() if v}
    if plotted:
        kind = res.data["settings"]["label"].split(":")[0].lower()  # "screening" or "standard protocol"
        save_png(line_plot(plotted, title=f"Fashion-MNIST: accuracy (%) vs IPC, {kind} evaluation",
                           xlabel="images per class", ylabel="test acc. %", logx=True, dashed=(CURVES[3],)), out
                 / "crossover.png")
    return text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="outputs/plugins")
    p.add_argument("--ipcs", default="1,10,50,100,200,500")
    p.add_argument("--coresets", default="kmeans,herding")
    p.add_argument("--draws", type=int, default=3, help="random draws at IPC <= 10 (one above)")
    p.add_argument("--protocol", choices=["screening", "standard"], default="screening")
    p.add_argument("--iters", type=int, default=300, help="screening: SGD iterations of every evaluation network")
    p.add_argument("--nets", type=int, default=1)
    p.add_argument("--distill-steps", type=int, default=200)
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ipcs = [int(v) for v in args.ipcs.split(",")]
    coresets = [m for m in args.coresets.split(",") if m]
    cfg = Screening(protocol=args.protocol, iters=args.iters, nets=args.nets)
    res = Results(out / "crossover.json", settings_of(cfg, distill_steps=args.distill_steps, coresets=coresets,
                                                      ipcs=ipcs))
    log = logger(out / "crossover.log")
    if not args.report_only:
        log(f"crossover: {cfg.label()}; distillation {args.distill_steps} steps")
        data, vae_cache = Data(), {}
        for ipc, kind, keys in tasks(ipcs, coresets, args.draws):
            for key in keys:
                if res.has(key):
                    continue
                try:
                    row = measure(kind, key, ipc, args, data, cfg, log, vae_cache)
                except (RuntimeError, ValueError) as e:
                    log(f"{key}: FAILED {str(e).splitlines()[0]}")
                    continue
                res.put(key, {**row, "ipc": ipc, "kind": kind})
                log(f"{key}: {100 * row['mean']:.2f} ({row['seconds']} s)")
                report(res, ipcs, coresets, out)
    print(report(res, ipcs, coresets, out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
