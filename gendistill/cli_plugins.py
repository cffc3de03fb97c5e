"""The plug-in commands of ``gendistill``: coreset selection, YOCO pruning and soft-label relabelling.

    gendistill select --method herding --ipc 10 --out coreset.safetensors     random | herding | kcenter | kmeans |
                                                                               forgetting
    gendistill prune set.safetensors --ipc 5 --out set-ipc5.safetensors        YOCO: low LBPE score, balanced per class
    gendistill relabel --train-teacher --teacher teachers/fmnist               a ConvNet trained on the real data
    gendistill relabel set.safetensors --teacher teachers/fmnist --out soft.safetensors
"""

from __future__ import annotations

import sys
from dataclasses import asdict

import torch

from .storage import LABEL_DTYPES


def _log(message: str) -> None:
    print(message, file=sys.stderr)


def _net_training(args, **defaults):
    from .teacher import NetTraining

    values = {k: getattr(args, f"net_{k}") for k in ("arch", "width", "depth", "epochs", "lr", "batch", "augment",
                                                     "seed")
              if getattr(args, f"net_{k}", None) is not None}
    return NetTraining(**{**defaults, **values})


def _add_net_flags(p, what: str, epochs: int, augment: str, width: int = 128) -> None:
    from .config import flag_type
    from .nets import list_nets
    from .teacher import NetTraining

    def typed(name):  # each flag holds to NetTraining's limits for the field
        return flag_type(NetTraining, name)

    g = p.add_argument_group(f"the network trained for {what}")
    g.add_argument("--net-arch", type=typed("arch"), default=None,
                   help=f"registered net (default convnet; one of {', '.join(list_nets())})")
    g.add_argument("--net-width", type=typed("width"), default=None, help=f"(default {width})")
    g.add_argument("--net-depth", type=typed("depth"), default=None, help="(default 3)")
    g.add_argument("--net-epochs", type=typed("epochs"), default=None, help=f"(default {epochs})")
    g.add_argument("--net-lr", type=typed("lr"), default=None, help="(default 0.01)")
    g.add_argument("--net-batch", type=typed("batch"), default=None, help="(default 256)")
    g.add_argument("--net-augment", default=None, choices=["none", "dsa"], help=f"(default {augment})")
    g.add_argument("--net-seed", type=typed("seed"), default=None, help="(default: --seed)")


# ---------------------------------------------------------------------------------------------- select


def cmd_select(args) -> int:
    from .backbones import load_backbone
    from .cache import real_split
    from .cli import _check_out, _device
    from .data import get_dataset
    from .io import check_parent
    from .select import Pool, select_indices, selected_set

    check_parent(args.out)
    _check_out(args)
    train = get_dataset(args.dataset, "train", args.data_dir, args.download)
    net = _net_training(args, epochs=5, width=32, seed=args.seed)
    backbone = load_backbone(args.backbone, image_shape=train.image_shape, latent_space=args.latent_space,
                             class_names=train.classes)
    device = _device()
    backbone.to(device)
    real = real_split(backbone, train, args.cache_dir, log=_log)
    pool = Pool(real, train, features=args.features, net=net, device=device)
    idx = select_indices(args.method, pool, args.ipc, torch.Generator().manual_seed(args.seed), keep=args.keep)
    record = {"method": args.method, "features": args.features, "selected": pool.order()[idx].tolist()}
    if args.method == "forgetting" or args.features == "net":
        record["net"] = asdict(net)
    if args.method == "forgetting":
        record["keep"] = args.keep
    run = {"method": "select", "init": args.method, "ipc": args.ipc, "steps": 0, "seed": args.seed, "select": record,
           "config": {k: v for k, v in vars(args).items() if k != "func"}}
    syn = selected_set(pool, idx, backbone, run)
    syn.save(args.out)
    print(f"wrote {args.out}: {len(syn)} real samples ({args.method}, {args.ipc} per class) as latents of shape "
          f"{tuple(syn.latents.shape[1:])}")
    return 0


# ----------------------------------------------------------------------------------------------- prune


def cmd_prune(args) -> int:
    from .cli import _check_out, _device, _load_set
    from .io import check_parent
    from .select import LBPEConfig, lbpe_record, lbpe_scores, prune_indices, pruned_set

    check_parent(args.out)
    _check_out(args)
    syn, backbone = _load_set(args)
    if args.ipc >= syn.ipc:
        raise ValueError(f"--ipc {args.ipc} is not below the set's IPC {syn.ipc}; pruning keeps fewer "
                         "samples per class")
    cfg = LBPEConfig(net=_net_training(args, epochs=100, augment="dsa", seed=args.seed), top_k=args.top_k,
                     nets=args.nets)
    device = _device()
    g = torch.Generator().manual_seed(args.seed)
    if args.rule == "random":
        scores = torch.zeros(len(syn))
    else:
        backbone.to(device)
        images = syn.decode(backbone).cpu()
        meta = syn.dataset_meta
        scores = lbpe_scores(images, syn.labels.detach().cpu(), syn.num_classes, meta["mean"], meta["std"], cfg, device)
    keep = prune_indices(scores, syn.hard_labels.cpu(), args.ipc, syn.num_classes, args.rule, g)
    record = {**lbpe_record(cfg, args.rule), "kept": keep.tolist(), "scores": [round(float(s), 6) for s in scores]}
    if args.rule == "random":
        record = {"score": "none", "rule": "random", "balanced": True, "kept": keep.tolist(), "seed": args.seed}
    out = pruned_set(syn, keep, record)
    out.save(args.out)
    how = (
        "random"
        if args.rule == "random"
        else f"{args.rule} LBPE ({cfg.net.epochs} epochs, top {cfg.top_k}, {cfg.nets} net(s))"
    )
    print(f"wrote {args.out}: {len(out)} of {len(syn)} samples, {args.ipc} per class by {how}")
    return 0


# --------------------------------------------------------------------------------------------- relabel


def cmd_relabel(args) -> int:
    from .cli import _check_out, _device
    from .data import get_dataset
    from .evaluate import EvalConfig, last_batch
    from .io import check_parent
    from .outputs import check_not_input, refuse_existing
    from .teacher import load_teacher, save_teacher, train_teacher

    device = _device()
    if args.train_teacher:
        if args.file:
            raise ValueError("--train-teacher trains and saves a teacher only; run relabel on the set in a "
                             "second command")
        check_parent(args.teacher)
        check_not_input(args.teacher, [("--data-dir", args.data_dir)], "--teacher")
        refuse_existing(args.teacher, overwrite=args.overwrite, flag="--teacher")
        train = get_dataset(args.dataset, "train", args.data_dir, args.download)
        test = get_dataset(args.dataset, "test", args.data_dir, args.download) if args.test_teacher else None
        teacher = train_teacher(train, _net_training(args, epochs=5, seed=args.seed), device, test=test)
        save_teacher(teacher, args.teacher)
        acc = (
            f", test accuracy {100 * teacher.measured['test_accuracy']:.2f} %"
            if "test_accuracy" in teacher.measured
            else ""
        )
        print(f"wrote teacher {args.teacher}: {teacher.training.arch} trained {teacher.training.epochs} epochs on "
              f"{train.name}{acc}")
        return 0
    if not args.file or not args.out:
        raise ValueError("relabel needs a set file and --out (or --train-teacher to make a teacher)")
    check_parent(args.out)
    _check_out(args)
    check_not_input(args.out, [("--teacher", args.teacher)])
    teacher = load_teacher(args.teacher, device)
    images, labels, save, budget_of = _images_of(args)
    dataset = teacher.dataset
    if tuple(images.shape[1:]) != tuple(dataset["image_shape"]):
        raise ValueError(f"the teacher {args.teacher!r} was trained on {dataset['name']} images of shape "
                         f"{tuple(dataset['image_shape'])}, the set holds {tuple(images.shape[1:])}; use a teacher of "
                         "the set's dataset")
    probs = teacher.probs(images, device, temperature=args.temperature).to(LABEL_DTYPES[args.label_dtype])
    if (labels.ndim == 2 and labels.shape[1] != probs.shape[1]) or (labels.ndim == 1 and len(labels)
                                                                    and int(labels.max()) >= probs.shape[1]):
        raise ValueError(f"the teacher has {probs.shape[1]} classes, the set's labels do not fit them; use a teacher "
                         "of the set's dataset")
    hard = labels.argmax(1) if labels.ndim == 2 else labels
    keep = None if args.ipc_budget is None else _fit_budget(args, budget_of, probs, hard)
    if keep is not None:
        probs, labels, hard = probs[keep], labels[keep], hard[keep]
    record = {"teacher": teacher.record(), "temperature": args.temperature, "label_dtype": args.label_dtype,
              "label_bytes": probs.numel() * probs.element_size(),
              "previous_label_bytes": labels.numel() * labels.element_size(),
              "agreement": float((probs.argmax(1) == hard).float().mean()) if len(hard) else 1.0}
    if keep is not None:
        kept_hard = hard.bincount(minlength=budget_of["num_classes"])
        record.update(ipc_budget=args.ipc_budget, ipc=int(kept_hard.max()), kept=keep.tolist(),
                      source_count=len(images))
    save(probs, record, keep)
    trimmed = "" if keep is None else (f"; kept the first {record['ipc']} latents of each class ({len(keep)} of "
                                       f"{len(images)}) to fit --ipc-budget {args.ipc_budget:g}")
    if keep is not None and len(keep) > EvalConfig.batch and (last := last_batch(len(keep))) < 32:
        trimmed += (f" (under the protocol's batch {EvalConfig.batch} each epoch ends with a step on {last} images, "
                    "which costs accuracy: docs/protocol.md)")
    print(f"wrote {args.out}: {len(probs)} soft labels ({probs.shape[1]} classes, {args.label_dtype}: "
          f"{record['label_bytes']:,} bytes; the labels it replaced took {record['previous_label_bytes']:,}); the "
          f"teacher's argmax agrees with the old labels on {100 * record['agreement']:.1f} %{trimmed}")
    return 0


def _fit_budget(args, budget_of: dict | None, probs: torch.Tensor, hard: torch.Tensor) -> torch.Tensor | None:
    """``relabel --ipc-budget``: the indices of the first k samples of each class (in the set's order), k the most
    that fit the budget with their soft labels counted (``gendistill.storage.latents_per_class``); None when the whole
    set fits."""
    from .storage import latents_per_class

    if budget_of is None:
        raise ValueError("--ipc-budget trims a set file (latents); a decoded-images file has no latents to count, "
                         "relabel the set instead")
    c = budget_of["num_classes"]
    k = latents_per_class(args.ipc_budget, budget_of["latent_shape"], budget_of["image_shape"], c,
                          budget_of["dtype"], label_bytes=probs.shape[1] * probs.element_size(),
                          extra_bytes=budget_of["lr_bytes"])
    per_class = [torch.nonzero(hard == i).flatten() for i in range(c)]
    if all(len(p) <= k for p in per_class):
        return None  # it fits as it is
    return torch.cat([p[:k] for p in per_class]).sort().values


def _images_of(args):
    """A set's (or decoded-images file's) images in [0, 1], labels, a ``save(new_labels, record, keep=None)`` writing
    --out (the samples ``keep`` only, when given) and what ``--ipc-budget`` needs to size a set (None for images)."""
    import json

    from .cli import _device, _load_set
    from .io import load_safetensors, save_safetensors
    from .select import derived_set
    from .storage import tensor_bytes
    from .synthetic import read_metadata

    tensors, meta = load_safetensors(args.file)
    read_metadata(args.file, meta)
    if meta.get("gendistill.decoded") == "1":
        if "images" not in tensors or "labels" not in tensors:
            raise ValueError(f"{args.file!r} is marked decoded but lacks 'images' or 'labels'; re-export it")

        def save_decoded(labels, record, keep=None):
            from .storage import LEDGER_KEY, make_ledger

            run = {**json.loads(meta.get("gendistill.run", "{}")), "relabel": record}
            new = {**tensors, "labels": labels}
            dataset = json.loads(meta.get("gendistill.dataset", "{}"))
            ledger = make_ledger(new, int(dataset.get("num_classes") or labels.shape[1]), dataset.get("image_shape"))
            save_safetensors(new, args.out, {**meta, "gendistill.run": json.dumps(run, sort_keys=True, default=str),
                                             LEDGER_KEY: json.dumps(ledger, sort_keys=True)})

        return tensors["images"].float(), tensors["labels"], save_decoded, None
    syn, backbone = _load_set(args)
    backbone.to(_device())
    images = syn.decode(backbone).cpu()

    def save_set(labels, record, keep=None):
        run = {**syn.run_meta, "relabel": record}
        if keep is not None:
            run["ipc"] = record["ipc"]
        derived_set(syn, run, keep=keep, labels=labels).save(args.out)

    budget_of = {"latent_shape": tuple(syn.latents.shape[1:]), "image_shape": syn.dataset_meta["image_shape"],
                 "num_classes": syn.num_classes, "dtype": syn.latent_dtype,
                 "lr_bytes": tensor_bytes(syn.stored_tensors().get("lr"))}
    return images, syn.labels.detach().cpu(), save_set, budget_of


# ---------------------------------------------------------------------------------------- eval --scores


def add_score_flags(p) -> None:
    """``gendistill eval``'s flags for the DD-Ranking scores (gendistill.scores)."""
    from .config import checked_type, flag_type
    from .scores import ScoreConfig

    g = p.add_argument_group("DD-Ranking scores (--scores; docs/plugins.md)")
    g.add_argument("--scores", action="store_true",
                   help="add HLR, IOR, LRS and ARS (and every accuracy behind them) to the JSON")
    g.add_argument("--score-draws", type=flag_type(ScoreConfig, "draws"), default=3,
                   help="random-real draws = evaluation rounds (at least 3)")
    g.add_argument("--val-per-class", type=flag_type(ScoreConfig, "val_per_class"), default=100,
                   help="validation images per class held out of the train split (lr choice)")
    g.add_argument("--lr-grid", default="0.001,0.005,0.01,0.05,0.1",
                   help="comma-separated lrs tried on the validation split")
    g.add_argument("--full-data", default=None, metavar="JSON",
                   help="the full-data accuracy: read from this file if it exists, else computed (--compute-full-data) "
                        "and written to it")
    g.add_argument("--compute-full-data", action="store_true",
                   help="train on the whole train split for the full-data accuracy (expensive)")
    g.add_argument("--full-data-epochs", type=checked_type(int, min=1), default=None,
                   help="epochs of that training (default: --epochs)")
    g.add_argument("--teacher", default=None, help="soft-label sets: the teacher that labels the random baseline")
    g.add_argument("--lrs-weight", type=flag_type(ScoreConfig, "w"), default=0.5,
                   help="LRS: w, the weight of IOR against HLR")
    g.add_argument("--ars-weight", type=flag_type(ScoreConfig, "gamma"), default=0.5,
                   help="ARS: gamma, the weight of the augmented difference")


def _lr_grid(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"--lr-grid {text!r} is not a comma-separated list of numbers (e.g. 0.01,0.05)") from None


def _read_full_data(path, dataset: str) -> dict:
    import json

    try:
        record = json.loads(path.read_text())
        acc = float(record["accuracy"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, UnicodeDecodeError):
        raise ValueError(f"--full-data {str(path)!r} is not a JSON object with a numeric \"accuracy\" (a fraction); "
                         "delete it and pass --compute-full-data") from None
    if not 0.0 <= acc <= 1.0:
        raise ValueError(f"--full-data {str(path)!r}: accuracy {acc} is not a fraction in [0, 1]")
    if record.get("dataset", dataset) != dataset:
        raise ValueError(f"--full-data {str(path)!r} is for {record['dataset']}, the set is {dataset}")
    return {**record, "accuracy": acc, "source": str(path)}


def _full_data(args, train, test, cfg, scfg, arch, device) -> dict:
    from dataclasses import replace
    from pathlib import Path

    from .io import check_parent, write_json
    from .scores import full_data_accuracy

    path = Path(args.full_data) if args.full_data else None
    if path is not None and path.is_file():
        return _read_full_data(path, train.name)
    if not args.compute_full_data:
        raise ValueError("--scores needs the full-data accuracy: pass --full-data FILE.json (holding "
                         "{\"accuracy\": 0.9}) or --compute-full-data (trains on the whole train split; add "
                         "--full-data FILE.json to keep it)")
    if path is not None:
        check_parent(path)
    fcfg = replace(cfg, epochs=args.full_data_epochs or cfg.epochs)
    record = full_data_accuracy(train, test, fcfg, scfg, device, arch)
    if path is not None:
        write_json(record, path)
    return {**record, "source": "computed" + (f" (written to {path})" if path is not None else "")}


def check_score_args(args, labels, dataset: str) -> None:
    """The cheap checks of ``--scores``' inputs, run before any network is trained, so a bad flag costs nothing."""
    from pathlib import Path

    from .io import check_parent
    from .scores import ScoreConfig
    from .teacher import load_teacher

    ScoreConfig(draws=args.score_draws, val_per_class=args.val_per_class, lr_grid=_lr_grid(args.lr_grid),
                w=args.lrs_weight, gamma=args.ars_weight, seed=args.seed)
    if labels.ndim == 2 and not args.teacher:
        raise ValueError("the set has soft labels: pass --teacher DIR (the teacher that made them) so that the "
                         "random baseline gets soft labels the same way")
    if args.teacher:
        load_teacher(args.teacher)
    if not (args.full_data and Path(args.full_data).is_file()) and not args.compute_full_data:
        raise ValueError("--scores needs the full-data accuracy: pass --full-data FILE.json (holding "
                         "{\"accuracy\": 0.9}) or --compute-full-data (trains on the whole train split; add "
                         "--full-data FILE.json to keep it)")
    if args.full_data and Path(args.full_data).is_file():
        _read_full_data(Path(args.full_data), dataset)
    elif args.full_data:
        check_parent(args.full_data)


def eval_scores(args, images, labels, lr, dataset: str, cfg, arch: str, device) -> dict:
    """``gendistill eval --scores``: the DD-Ranking scores of the evaluated images, for the JSON."""
    from .data import get_dataset
    from .scores import ScoreConfig, dd_scores
    from .teacher import load_teacher

    check_score_args(args, labels, dataset)
    scfg = ScoreConfig(draws=args.score_draws, val_per_class=args.val_per_class, lr_grid=_lr_grid(args.lr_grid),
                       w=args.lrs_weight, gamma=args.ars_weight, seed=args.seed)
    teacher = load_teacher(args.teacher, device) if args.teacher else None
    train = get_dataset(dataset, "train", args.data_dir, args.download)
    test = get_dataset(dataset, "test", args.data_dir, args.download)
    full = _full_data(args, train, test, cfg, scfg, arch, device)
    result = dd_scores(images, labels, train, test, full["accuracy"], cfg, scfg, device, lr=lr, teacher=teacher,
                       arch=arch)
    result["full_data"] = full
    if teacher is not None:
        result["teacher"] = teacher.record()
    return result


def add_commands(sub) -> None:
    """Register ``select``, ``prune`` and ``relabel`` on the ``gendistill`` sub-parsers."""
    from .backbones import DEFAULT_BACKBONE
    from .config import checked_type
    from .data import list_datasets
    from .select import FEATURES, KEEP, PRUNE_RULES, SELECTORS

    positive, seed = checked_type(int, min=1), checked_type(int, min=0)

    s = sub.add_parser("select", help="a coreset of real samples (random, herding, k-center, k-means, forgetting) "
                                      "as a set file")
    s.add_argument("--method", default="herding", choices=SELECTORS.names())
    s.add_argument("--ipc", type=positive, required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--dataset", default="fashion-mnist", choices=list_datasets())
    s.add_argument("--data-dir", default=None)
    s.add_argument("--download", action="store_true")
    s.add_argument("--backbone", default=DEFAULT_BACKBONE,
                   help="the set's space: pixel, a shipped name, a VAE or GAN directory")
    s.add_argument("--latent-space", default=None, help="gan backbones: z, w, w+ or f<k>")
    s.add_argument("--features", default="raw", choices=FEATURES,
                   help="herding / kcenter / kmeans work on raw (the flattened latents or pixels) or net (a trained "
                        "net's features)")
    s.add_argument("--keep", default="most", choices=KEEP,
                   help="forgetting: keep the most (Toneva et al.) or least forgotten")
    s.add_argument("--seed", type=seed, default=0)
    s.add_argument("--cache-dir", default=None)
    _add_net_flags(s, "forgetting scores and --features net", epochs=5, augment="none", width=32)
    s.set_defaults(func=cmd_select)

    s = sub.add_parser("prune", help="YOCO: keep --ipc samples per class of a set by their LBPE score")
    s.add_argument("file")
    s.add_argument("--ipc", type=positive, required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--rule", default="low", choices=PRUNE_RULES,
                   help="low LBPE (YOCO's rule), high, or random (a baseline)")
    s.add_argument("--top-k", type=positive, default=3,
                   help="LBPE: average over the k epochs of highest training accuracy")
    s.add_argument("--nets", type=positive, default=1, help="LBPE: average over this many networks")
    s.add_argument("--seed", type=seed, default=0)
    s.add_argument("--backbone", default=None, help="backbone to decode with (default: the one recorded in the file)")
    s.add_argument("--ignore-backbone-hash", action="store_true")
    _add_net_flags(s, "the LBPE score", epochs=100, augment="dsa")
    s.set_defaults(func=cmd_prune)

    s = sub.add_parser("relabel", help="soft labels (probabilities) from a teacher trained on the real data; "
                                       "--train-teacher makes one")
    s.add_argument("file", nargs="?", help="a set or decoded-images file")
    s.add_argument("--teacher", required=True, help="teacher directory (teacher.safetensors + teacher.json)")
    s.add_argument("--out", default=None)
    s.add_argument("--temperature", type=checked_type(float, above=0), default=1.0, help="softmax(logits / T)")
    s.add_argument("--label-dtype", default="float32", choices=list(LABEL_DTYPES),
                   help="how the probabilities are stored (float16 / bfloat16: half the bytes of float32)")
    s.add_argument("--ipc-budget", type=checked_type(float, above=0), default=None,
                   help="keep the first k latents of each class, k the most that fit this many float32 images per "
                        "class with the soft labels counted (docs/storage.md)")
    s.add_argument("--train-teacher", action="store_true",
                   help="train a teacher on the dataset's train split and save it to --teacher")
    s.add_argument("--test-teacher", action="store_true", help="with --train-teacher: record its test-split accuracy")
    s.add_argument("--overwrite", action="store_true",
                   help="with --train-teacher: replace the teacher in --teacher (once the new one is saved)")
    s.add_argument("--dataset", default="fashion-mnist", choices=list_datasets())
    s.add_argument("--data-dir", default=None)
    s.add_argument("--download", action="store_true")
    s.add_argument("--seed", type=seed, default=0)
    s.add_argument("--backbone", default=None, help="backbone to decode with (default: the one recorded in the file)")
    s.add_argument("--ignore-backbone-hash", action="store_true")
    _add_net_flags(s, "--train-teacher", epochs=5, augment="none")
    s.set_defaults(func=cmd_relabel)
