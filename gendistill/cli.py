"""The ``gendistill`` command: work with distilled-set files.

    gendistill init --ipc 10 --out set.safetensors      an initialised (not yet distilled) set
    gendistill init --ipc-budget 1 --latent-dtype float16 --out set.safetensors   as many latents as 1 image/class holds
    gendistill info set.safetensors                      shapes, IPC, backbone, dataset, run config, storage ledger
    gendistill convert set.safetensors --latent-dtype int8 --out small.safetensors   another storage dtype
    gendistill sample set.safetensors --out grid.png     decoded PNG grid, one row per class
    gendistill export set.safetensors --out images.safetensors   (or --format imagefolder|hf --out DIR)
    gendistill eval set.safetensors                      the standard evaluation protocol
    gendistill distill dm --ipc 10 --steps 200           a distillation recipe (dm, dc, dsa, mtt, tesla, datm, itgan)
    gendistill push set.safetensors owner/name           a Hub dataset repo with a card (--dry-run DIR: the folder only)
    gendistill pull owner/name --out DIR                 a pushed set (and its backbone) from the Hub
    gendistill push-backbone DIR owner/name              a backbone directory as a Hub model repo with a card
    gendistill select --method herding --ipc 10 --out coreset.safetensors   a coreset of real samples (docs/plugins.md)
    gendistill prune set.safetensors --ipc 5 --out small.safetensors       YOCO pruning to a smaller IPC
    gendistill relabel set.safetensors --teacher DIR --out soft.safetensors soft labels from a teacher
    gendistill train-backbone --kind vae --dataset fashion-mnist --output DIR   (or --kind gan | diffusion)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .errors import USER_ERRORS, format_error


class Terminated(KeyboardInterrupt):
    """SIGTERM outside the distillation loop: unwind like Ctrl-C (locks released, nothing half-written)."""

    signum = 15


def _terminate(signum, frame):
    raise Terminated


def run_guarded(main, argv=None) -> int:
    """Run ``main``; user errors become one line on stderr and exit code 2 (no traceback). Ctrl-C and SIGTERM stop it
    with one line and exit code 128 + the signal's number (a distillation run first finishes its step and checkpoints).
    Every entry point (this command and every recipe's ``__main__``) goes through here; a bad command line is a
    ``UsageError`` (config.py)."""
    import signal
    import threading

    previous = None
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "SIGTERM"):
        previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return main(argv) or 0
    except USER_ERRORS as e:
        if _rank() == 0:  # every process of a launch raises alike (the loop decides together): one line, from rank 0
            print(format_error(e), file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        if getattr(e, "main", True):  # one line from the main process of a distributed run
            print(str(e) if str(e) else "gendistill: interrupted", file=sys.stderr)
        return 128 + getattr(e, "signum", signal.SIGINT)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


# ----------------------------------------------------------------------------------------------- helpers


def _rank() -> int:
    """This process's rank in a distributed launch (``RANK``, set by torchrun / accelerate launch); 0 otherwise."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def _load_set(args):
    """The set at ``args.file`` and its backbone: ``--backbone`` if given, else the one the file names (shipped assets,
    local Hub cache, Hub, the folders this machine knows; see gendistill.hub), hash-checked."""
    from .hub import find_backbone
    from .synthetic import SyntheticSet

    syn = SyntheticSet.load(args.file)
    backbone = find_backbone(syn.backbone_meta, syn.dataset_meta, explicit=args.backbone, near=args.file,
                             ignore_hash=args.ignore_backbone_hash)
    syn.check_backbone(backbone, ignore_hash=args.ignore_backbone_hash)
    return syn, backbone


def _check_out(args, flag: str = "--out") -> None:
    """Refuse an --out that is the command's input file (or its --backbone): writing it would replace the input."""
    from .outputs import check_not_input

    check_not_input(args.out, [("FILE", getattr(args, "file", None)), ("--backbone", getattr(args, "backbone", None)),
                               ("--data-dir", getattr(args, "data_dir", None)),
                               ("--cache-dir", getattr(args, "cache_dir", None))], flag)


def _device():
    from accelerate import Accelerator

    return Accelerator().device


def _add_backbone_flags(p):
    p.add_argument("--backbone", default=None, help="backbone to decode with (default: the one recorded in the file)")
    p.add_argument("--ignore-backbone-hash", action="store_true",
                   help="decode even if the backbone's weight hash differs from the recorded one")


# ----------------------------------------------------------------------------------------------- commands


def cmd_init(args) -> int:
    import torch

    from .backbones import backbone_options, load_backbone
    from .cache import real_split
    from .data import load_split
    from .io import check_parent
    from .storage import check_ipc_args, get_codec, resolve_ipc
    from .synthetic import set_backbone_options

    check_parent(args.out)
    _check_out(args)
    check_ipc_args(args.ipc, args.ipc_budget)
    get_codec(args.latent_dtype)
    train = load_split(args, "train")
    options = backbone_options(args)
    backbone = load_backbone(args.backbone, image_shape=train.image_shape, latent_space=args.latent_space,
                             options=set_backbone_options(args.backbone, args.init, options), class_names=train.classes)
    args.ipc = resolve_ipc(args.ipc, args.ipc_budget, backbone.latent_shape, train.image_shape, train.num_classes,
                           args.latent_dtype)
    smallest = min(len(train.class_indices(c)) for c in range(train.num_classes))
    if args.ipc > smallest:
        flag = "--ipc-budget" if args.ipc_budget is not None else "--ipc"
        what = (
            f"--ipc-budget {args.ipc_budget:g} asks for {args.ipc} latents per class, "
            if args.ipc_budget is not None
            else f"--ipc {args.ipc} is "
        )
        raise ValueError(f"{what}more than the {smallest} images of the smallest class of {args.dataset}; lower {flag}")
    backbone.to(_device())
    real = real_split(backbone, train, args.cache_dir, log=lambda m: print(m, file=sys.stderr))  # images for a gan
    from .synthetic import SyntheticSet

    run = {"method": "init", "ipc": args.ipc, "ipc_budget": args.ipc_budget, "latent_dtype": args.latent_dtype,
           "steps": 0, "seed": args.seed, "config": {k: v for k, v in vars(args).items() if k != "func"}}
    syn = SyntheticSet.initialise(args.init, real, args.ipc, backbone, train.meta(),
                                  torch.Generator().manual_seed(args.seed), run=run, init_model=args.init_model,
                                  model_options=options, latent_dtype=args.latent_dtype)
    syn.save(args.out)
    ledger = syn.ledger()
    print(f"wrote {args.out}: {len(syn)} latents of shape {tuple(syn.latents.shape[1:])} ({args.latent_dtype}), ipc "
          f"{args.ipc}, init {args.init}, budget {ledger['budget_ipc']:.4g} images per class")
    return 0


def cmd_info(args) -> int:
    from .storage import format_ledger, read_ledger
    from .synthetic import read_set_file

    if Path(args.file).is_dir():
        return _info_experts(args)
    tensors, meta, records = read_set_file(args.file)
    info = {
        "file": args.file,
        "bytes": os.path.getsize(args.file),
        "tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")}
                    for k, v in tensors.items()},
        "decoded": meta.get("gendistill.decoded") == "1",
        **records,
        "storage": read_ledger(tensors, meta, records["dataset"]),
    }
    labels = tensors.get("labels")
    if labels is not None and labels.numel():
        hard = labels.argmax(1) if labels.ndim == 2 else labels
        counts = hard.bincount(minlength=int(records["dataset"].get("num_classes", 0) or 0)).tolist()
        info["ipc"] = max(counts)
        info["per_class"] = counts
        info["soft_labels"] = labels.ndim == 2
    if "lr" in tensors:
        info["lr"] = float(tensors["lr"])
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True, default=str))
        return 0
    b, d, r = records["backbone"], records["dataset"], records["run"]
    print(f"file      {args.file} ({info['bytes']:,} bytes, format "
          f"{meta['gendistill.format']}{', decoded images' if info['decoded'] else ''})")
    for k, v in info["tensors"].items():
        print(f"tensor    {k}: {v['dtype']} {tuple(v['shape'])}")
    print(f"ipc       {info.get('ipc')} per class ({'soft' if info.get('soft_labels') else 'hard'} labels)")
    print(f"backbone  {b.get('kind')} {b.get('source')} sha256 {str(b.get('sha256'))[:16]} latent "
          f"{tuple(b.get('latent_shape', ()))}")
    print(f"dataset   {d.get('name')} {d.get('num_classes')} classes, images {tuple(d.get('image_shape', ()))}")
    print(f"run       method {r.get('method')} steps {r.get('steps')} seed {r.get('seed')} gendistill "
          f"{r.get('package_version')}")
    if "lr" in info:
        print(f"lr        {info['lr']:.6g}")
    for line in format_ledger(info["storage"]):
        print(line)
    print(f"config    {json.dumps(r.get('config', {}), sort_keys=True, default=str)}")
    return 0


def _info_experts(args) -> int:
    from .experts import summary

    info = summary(args.file)
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True, default=str))
        return 0
    t, b, n = info["training"], info["backbone"], info["net"]
    print(f"experts   {args.file}: {info['complete']}/{t['num_experts']} experts x {t['epochs']} epochs, "
          f"{info['space']} space, {info['num_params']:,} parameters")
    print(f"backbone  {b.get('kind')} {b.get('source', '')} sha256 {str(b.get('sha256', '-'))[:16]}")
    print(f"dataset   {info['dataset'].get('name')} {info['num_classes']} classes, input {tuple(info['in_shape'])}")
    print(f"net       {n['name']} depth {n['depth']} width {n['width']}")
    print(f"training  sgd lr {t['lr']} momentum {t['momentum']} weight decay {t['weight_decay']} batch {t['batch']} "
          f"augment {t['augment']} seed {t['seed']}")
    for row in info["files"]:
        acc = f" test acc {row['test_acc']}" if "test_acc" in row else ""
        size = f"{row['bytes']:,} bytes" if row["present"] else "(missing)"
        print(f"file      {row['file']} {size}{acc}")
    return 0


def cmd_sample(args) -> int:
    from .io import check_parent
    from .plots import image_grid, save_png

    check_parent(args.out)
    _check_out(args)
    syn, backbone = _load_set(args)
    backbone.to(_device())
    images = syn.decode(backbone).cpu()
    save_png(image_grid(images, syn.labels, syn.num_classes, per_class=args.per_class, scale=args.scale), args.out)
    print(f"wrote {args.out}: {syn.num_classes} rows x up to {args.per_class or syn.ipc} images")
    return 0


def cmd_export(args) -> int:
    from .io import atomic_dir, check_parent, safe_name, save_safetensors
    from .outputs import refuse_existing

    check_parent(args.out)
    _check_out(args)
    out = Path(args.out)
    marker = {"imagefolder": "metadata.json", "hf": "state.json"}.get(args.format)
    if marker:  # a folder: an earlier export of the same format is replaced only with --overwrite, anything else never
        refuse_existing(out, overwrite=args.overwrite, flag="--out")
        if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / marker).exists())):
            raise ValueError(f"{args.out!r} exists and is not an earlier export; choose a new --out (--overwrite "
                             "replaces only an earlier export)")
    if args.format == "hf":
        try:
            import datasets  # noqa: F401
        except ImportError:
            raise ValueError("--format hf needs the `datasets` package: pip install 'gendistill[hf]'") from None
    syn, backbone = _load_set(args)
    backbone.to(_device())
    images = syn.decode(backbone).float().cpu()
    if args.format == "safetensors":
        meta = syn.metadata() | {"gendistill.decoded": "1"}
        save_safetensors({"images": images, "labels": syn.labels}, args.out, meta)
    elif args.format == "hf":
        from .api import DistilledSet

        records = {"backbone": syn.backbone_meta, "dataset": syn.dataset_meta, "run": syn.run_meta}
        hf = DistilledSet(Path(args.file), syn.latents, syn.labels, records, backbone, raw=True, images=images).to_hf()
        hf.info.description = json.dumps(syn.metadata(), sort_keys=True)  # the set's gendistill metadata travels along
        with atomic_dir(args.out) as tmp:
            hf.save_to_disk(str(tmp))
    else:
        from PIL import Image

        names = syn.dataset_meta.get("classes") or [str(c) for c in range(syn.num_classes)]
        hard = syn.hard_labels.cpu()
        with atomic_dir(args.out) as tmp:
            for c, name in enumerate(names):
                folder = tmp / f"{c:03d}_{safe_name(name)}"
                folder.mkdir()
                for j, i in enumerate((hard == c).nonzero().flatten().tolist()):
                    a = (images[i].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
                    Image.fromarray(a[..., 0] if a.shape[2] == 1 else a).save(folder / f"{j:05d}.png")
            (tmp / "metadata.json").write_text(json.dumps({k: v for k, v in syn.metadata().items()}, indent=2) + "\n")
    print(f"wrote {args.out}: {len(images)} images of shape {tuple(images.shape[1:])} ({args.format})")
    return 0


def cmd_convert(args) -> int:
    from .io import check_parent
    from .storage import get_codec
    from .synthetic import SyntheticSet

    check_parent(args.out)
    get_codec(args.latent_dtype)
    if Path(args.out).resolve() == Path(args.file).resolve():
        raise ValueError(f"--out {args.out!r} is the input file; write the converted set to a new path")
    syn = SyntheticSet.load(args.file)
    before = syn.ledger()
    syn.latent_dtype = args.latent_dtype
    syn.save(args.out, run={"converted_from": {"file": Path(args.file).name,
                                               "latent_dtype": before["latents"]["dtype"]}})
    after = syn.ledger()
    print(f"wrote {args.out}: {len(syn)} latents as {args.latent_dtype}, {after['total_bytes']:,} B (was "
          f"{before['total_bytes']:,} B {before['latents']['dtype']}), budget {after['budget_ipc']:.4g} "
          "images per class")
    return 0


def cmd_eval(args) -> int:
    import torch
    from accelerate import Accelerator

    from .data import DataConfig, load_split
    from .evaluate import EvalConfig, EvalState, evaluate
    from .io import check_parent, write_json
    from .synthetic import read_set_file

    if args.out:
        check_parent(args.out)
        _check_out(args)
    tensors, meta, records = read_set_file(args.file)
    accelerator = Accelerator()  # under `accelerate launch` with several processes the networks are spread over them
    if meta.get("gendistill.decoded") == "1":
        images, labels, lr = tensors["images"].float(), tensors["labels"], None
    else:
        syn, backbone = _load_set(args)
        backbone.to(accelerator.device)
        images, labels = syn.decode(backbone).cpu(), syn.labels
        lr = float(syn.lr.detach()) if syn.lr is not None and not args.ignore_lr else None
        if lr is not None and not (lr > 0 and torch.isfinite(torch.tensor(lr))):
            raise ValueError(f"{args.file!r} holds a learned lr of {lr}, not a positive finite number; "
                             "pass --ignore-lr")
    name = args.dataset or records["dataset"].get("name")
    if not name:
        raise ValueError(f"{args.file!r} does not record its dataset; pass --dataset")
    test = load_split(DataConfig(name, args.data_dir, args.download), "test")
    cfg = EvalConfig(epochs=args.epochs, runs=args.runs, seed=args.seed, compile=args.compile)
    if args.scores:
        from .cli_plugins import check_score_args

        check_score_args(args, labels, name)
    out = args.out or str(Path(args.file).with_suffix("")) + ".eval.json"
    # an interrupted evaluation continues where it stopped when the same command is run again
    state = EvalState.of(out + ".partial", images, labels, test, cfg, lr, every=args.state_every)
    result = evaluate(images, labels, test, cfg, lr=lr, archs=args.arch, progress=accelerator.is_local_main_process,
                      accelerator=accelerator, state=state)
    if not accelerator.is_main_process:
        return 0
    result["set"] = args.file
    if args.scores:  # DD-Ranking's HLR, IOR, LRS, ARS (gendistill.scores)
        from .cli_plugins import eval_scores

        result["scores"] = eval_scores(args, images, labels, lr, name, cfg, args.arch[0], _device())
    write_json(result, out)
    state.clear()
    for arch, r in result["archs"].items():
        print(f"{arch}: {100 * r['mean']:.2f} +- {100 * r['std']:.2f} % over {cfg.runs} runs, {cfg.epochs} epochs "
              f"({name} test split) -> {out}")
    if "scores" in result:
        sc = result["scores"]
        print("scores: " + ", ".join(f"{k.upper()} {sc[k]['mean']:.4f} +- {sc[k]['std']:.4f}"
                                     for k in ("hlr", "ior", "lrs", "ars"))
              + f" over {len(sc['rounds'])} random draws (full data {sc['full_data_accuracy']:.4f})")
    return 0


def cmd_push(args) -> int:
    from .hub import push_set

    info = push_set(args.set, args.repo_id, dry_run=args.dry_run, private=args.private, license=args.license,
                    backbone=args.backbone, ignore_hash=args.ignore_backbone_hash)
    if not info["uploaded"]:
        print(f"wrote {info['folder']}: {', '.join(info['files'])} (dry run: nothing uploaded)")
    else:
        print(f"pushed {', '.join(info['files'])} to {info['url']} (commit {info['commit']})")
    return 0


def cmd_push_backbone(args) -> int:
    from .hub import push_backbone

    info = push_backbone(args.directory, args.repo_id, dry_run=args.dry_run, private=args.private)
    if not info["uploaded"]:
        print(f"wrote {info['folder']}: {', '.join(info['files'])} (dry run: nothing uploaded)")
    else:
        print(f"pushed {', '.join(info['files'])} to {info['url']}; sets made with it record {info['reference']}")
    return 0


def cmd_pull(args) -> int:
    from .hub import pull_set

    info = pull_set(args.repo_id, revision=args.revision, out=args.out)
    print(f"pulled {info['repo_id']}@{info['revision'][:12]} into {info['out']}: {', '.join(info['files'])}; "
          f"{info['backbone']}")
    return 0


def cmd_table(args) -> int:
    from .report import markdown_table, run_row

    rows = [run_row(path) for path in args.runs]
    if args.json:
        print(json.dumps(rows, indent=2, sort_keys=True, default=str))
    else:
        print(markdown_table(rows))
    return 0


def cmd_train_backbone(args, rest) -> int:
    """``gendistill train-backbone [--kind vae|gan|diffusion] FLAGS``: the library's trainer of that kind."""
    from .config import ArgumentParser
    from .training import TRAINERS, train_backbone

    pre = ArgumentParser(prog="gendistill train-backbone", add_help=False)
    pre.add_argument("--kind", default="vae", choices=TRAINERS.names())
    known, flags = pre.parse_known_args(rest)
    return train_backbone(known.kind, flags, description=f"Train a {known.kind} backbone "
                                                         f"(gendistill/training/{known.kind}.py); "
                          f"--kind picks another of {', '.join(TRAINERS.names())}.",
                          prog=f"gendistill train-backbone --kind {known.kind}")


def cmd_distill(argv) -> int:
    from . import recipes

    if not argv or argv[0] in ("-h", "--help"):
        print("usage: gendistill distill METHOD [--config FILE.yaml] [--key value ...]\n\n" + (recipes.__doc__ or "")
              + "\n`gendistill distill METHOD --help` lists a method's settings.")
        return 0 if argv else 2
    return recipes.main(argv[0], argv[1:])


def _arch_list(text: str) -> list[str]:
    """``--arch``: comma-separated network names, each registered or ``tv:NAME`` / ``timm:NAME`` (built later)."""
    from .errors import first_line
    from .nets.registry import get_builder

    archs = [a.strip() for a in text.split(",")]
    for arch in archs:
        try:
            get_builder(arch)
        except ValueError as e:
            raise argparse.ArgumentTypeError(first_line(e)) from None
    return archs


def _seconds(text: str) -> float:
    """``--state-every``: a finite number of seconds, 0 or more."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (0 <= value < float("inf")):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (0 or more, e.g. 60)")
    return value


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .backbones import DEFAULT_BACKBONE
    from .config import ArgumentParser, add_data_flags, checked_type, flag_type
    from .data import DataConfig
    from .distill import DistillConfig
    from .evaluate import EvalConfig
    from .nets import list_nets
    from .pipeline import RecipeConfig
    from .storage import LATENT_DTYPES
    from .synthetic import INITS

    positive = checked_type(int, min=1)
    p = ArgumentParser(prog="gendistill", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"gendistill {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("init", help="write an initialised (not yet distilled) set")
    add_data_flags(s)
    s.add_argument("--backbone", default=DEFAULT_BACKBONE,
                   help="pixel, a shipped name, a VAE, GAN or diffusion directory or a hub id")
    s.add_argument("--latent-space", default=None, help="gan backbones: z, w, w+ or f<k> (default w+)")
    s.add_argument("--ipc", type=flag_type(RecipeConfig, "ipc"), default=None,
                   help="latents per class, count-matched (default 10)")
    s.add_argument("--ipc-budget", type=flag_type(RecipeConfig, "ipc_budget"), default=None,
                   help="storage-matched: as many latents per class as fit in B float32 images per class (labels "
                        "not counted)")
    s.add_argument("--latent-dtype", type=flag_type(RecipeConfig, "latent_dtype"), default="float32",
                   help=f"storage dtype of the latents: {', '.join(LATENT_DTYPES.names())}")
    s.add_argument("--init", default="real", choices=INITS.names())
    s.add_argument("--init-model", default=None,
                   help="--init diffusion*: the diffusion model (default: the backbone if diffusion, else "
                        "fashion-mnist-ldm)")
    s.add_argument("--decode-steps", type=flag_type(RecipeConfig, "decode_steps"), default=None,
                   help="diffusion: DDIM steps of decode (default 10)")
    s.add_argument("--invert-to", type=flag_type(RecipeConfig, "invert_to"), default=None,
                   help="diffusion: timestep of the noise latents (default: full noise)")
    s.add_argument("--guidance-scale", type=flag_type(RecipeConfig, "guidance_scale"), default=None,
                   help="diffusion: classifier-free guidance in [0, 30] (default 1: none)")
    s.add_argument("--prompt-template", default=None,
                   help='text-conditioned diffusion: prompt of a class (default "a photo of a {name}")')
    s.add_argument("--seed", type=flag_type(DistillConfig, "seed"), default=0)
    s.add_argument("--cache-dir", default=None)
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_init)

    s = sub.add_parser("info", help="describe a set or decoded-images file, or an experts directory")
    s.add_argument("file")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("convert", help="rewrite a set with another latent storage dtype (float32, float16, "
                                       "bfloat16, int8, int4, sq4, vq8, vq4)")
    s.add_argument("file")
    s.add_argument("--latent-dtype", required=True, help=f"one of: {', '.join(LATENT_DTYPES.names())}")
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_convert)

    s = sub.add_parser("sample", help="decode a set into a PNG grid (one row per class)")
    s.add_argument("file")
    s.add_argument("--out", required=True)
    s.add_argument("--per-class", type=positive, default=None)
    s.add_argument("--scale", type=positive, default=2)
    _add_backbone_flags(s)
    s.set_defaults(func=cmd_sample)

    s = sub.add_parser("export", help="decode a set into an images file anyone can train on")
    s.add_argument("file")
    s.add_argument("--out", required=True)
    s.add_argument("--format", default="safetensors", choices=["safetensors", "imagefolder", "hf"],
                   help="safetensors: an images file; imagefolder: DIR/<class>/*.png; hf: a datasets.Dataset "
                        "(save_to_disk) in DIR")
    s.add_argument("--overwrite", action="store_true",
                   help="imagefolder, hf: replace an earlier export in --out (once the new one is complete)")
    _add_backbone_flags(s)
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("eval", help="the standard evaluation protocol on a set or decoded-images file")
    s.add_argument("file")
    s.add_argument("--arch", type=_arch_list, default=["convnet"],
                   help=f"comma-separated, from: {', '.join(list_nets())}, or "
                   "tv:NAME (a torchvision model), timm:NAME (if timm is installed)")
    s.add_argument("--epochs", type=flag_type(EvalConfig, "epochs"), default=EvalConfig.epochs)
    s.add_argument("--runs", type=flag_type(EvalConfig, "runs"), default=EvalConfig.runs)
    s.add_argument("--seed", type=flag_type(EvalConfig, "seed"), default=EvalConfig.seed)
    add_data_flags(s, DataConfig(dataset=None), "test split to use (default: the one recorded)", choices=False)
    s.add_argument("--ignore-lr", action="store_true", help="use the protocol's lr even if the set holds a learned one")
    s.add_argument("--compile", action="store_true", help="torch.compile each network's training step: the same "
                   "protocol, 1.19x faster a step at one CPU thread (benchmarks/eval_compile.py) after a "
                   "compile of each network (needs a C compiler)")
    s.add_argument("--out", default=None, help="result JSON (default: FILE.eval.json); OUT.partial/ holds the "
                   "progress until it is written: run the same command again to continue an interrupted evaluation")
    s.add_argument("--state-every", type=_seconds, default=60.0, metavar="SECONDS",
                   help="save each network's training state to OUT.partial/ at the first epoch end after this many "
                   "seconds (default 60; 0: every epoch)")
    _add_backbone_flags(s)
    from .cli_plugins import add_score_flags

    add_score_flags(s)
    s.set_defaults(func=cmd_eval)

    s = sub.add_parser("table", help="a markdown table of runs: method, spaces, IPC, distillation time, bytes, "
                                     "accuracy per arch")
    s.add_argument("runs", nargs="+", help="run directories (holding set.safetensors and eval JSONs) or set files")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_table)

    s = sub.add_parser("push", help="upload a set to a Hub dataset repo with a dataset card")
    s.add_argument("set", help="a set file or a run directory holding set.safetensors (with grid.png, eval.json)")
    s.add_argument("repo_id", help="owner/name of the dataset repo (created if missing)")
    s.add_argument("--dry-run", default=None, metavar="DIR",
                   help="write the exact folder that would be uploaded into DIR; upload nothing")
    s.add_argument("--private", action="store_true")
    s.add_argument("--license", default=None, help="the card's licence (default: the dataset's, e.g. mit for "
                                                   "fashion-mnist)")
    s.add_argument("--backbone", default=None, help="the backbone to check the set against and record (e.g. "
                                                    "owner/name@REVISION for a set made with a local folder since "
                                                    "pushed by push-backbone)")
    s.add_argument("--ignore-backbone-hash", action="store_true",
                   help="push even if the backbone's weight hash differs")
    s.set_defaults(func=cmd_push)

    s = sub.add_parser("push-backbone", help="upload a backbone directory to a Hub model repo with a model card")
    s.add_argument("directory")
    s.add_argument("repo_id", help="owner/name of the model repo (created if missing)")
    s.add_argument("--dry-run", default=None, metavar="DIR",
                   help="write the exact folder that would be uploaded into DIR; upload nothing")
    s.add_argument("--private", action="store_true")
    s.set_defaults(func=cmd_push_backbone)

    s = sub.add_parser("pull", help="download a pushed set (and its backbone when it is a Hub repo) from the Hub")
    s.add_argument("repo_id", help="owner/name of the dataset repo (owner/name@REVISION pins one)")
    s.add_argument("--revision", default=None, help="a branch, tag or commit (default main)")
    s.add_argument("--out", default=None, help="folder to create (default ./NAME); never overwritten")
    s.set_defaults(func=cmd_pull)

    s = sub.add_parser("distill", help="run a distillation recipe: gendistill distill METHOD [--key value ...] "
                                       "(METHOD --help)", add_help=False)

    from .cli_plugins import add_commands  # select, prune, relabel

    add_commands(sub)

    s = sub.add_parser("train-backbone", help="train a backbone: --kind vae (default), gan or diffusion, "
                                              "then its flags", add_help=False)
    s.set_defaults(func=cmd_train_backbone)
    return p


_PARSER: tuple[int, argparse.ArgumentParser] | None = None


def cached_parser() -> argparse.ArgumentParser:
    """:func:`build_parser`, built once per process (parsing does not change it) and again only when a registry has
    gained a name since, as its choices come from the registries."""
    global _PARSER
    from .registry import generation

    if _PARSER is None or _PARSER[0] != generation():
        parser = build_parser()  # may import (and so register) more: note the generation after it
        _PARSER = (generation(), parser)
    return _PARSER[1]


def _main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "train-backbone":
        return cmd_train_backbone(None, argv[1:])
    if argv and argv[0] == "distill":
        return cmd_distill(argv[1:])
    args = cached_parser().parse_args(argv)
    if getattr(args, "ipc", None) is None and getattr(args, "ipc_budget", 0) is None:
        args.ipc = 10  # count-matched by default
    return args.func(args)


def main(argv=None) -> int:
    sys.exit(run_guarded(_main, argv))


if __name__ == "__main__":
    main()
