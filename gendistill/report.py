"""Result tables from run directories: what was distilled, how long it took, how big the file is, how well it scores.

    gendistill table outputs/dm-* outputs/mtt-*          # a markdown table, one row per run

Every figure comes from the files a run wrote: the set's metadata (method, backbone, space, IPC, init, steps, the
distillation seconds) and size on disk, and the evaluation JSONs beside it (``eval.json`` from the recipe,
``*.eval.json`` from ``gendistill eval``), merged per architecture; nothing is typed in by hand.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .backbones.base import effective_match_space
from .storage import read_ledger
from .synthetic import read_set_file


def _set_and_evals(path: str | Path) -> tuple[Path, list[Path]]:
    path = Path(path)
    if path.is_dir():
        set_file = path / "set.safetensors"
        evals = sorted(path.glob("*eval.json"))
    else:
        set_file = path
        evals = sorted(path.parent.glob(f"{path.stem}*.eval.json"))
    if not set_file.is_file():
        raise FileNotFoundError(f"{str(set_file)!r} does not exist; pass a run directory holding set.safetensors "
                                "or a set file")
    return set_file, evals


def run_row(path: str | Path) -> dict:
    """One run's facts: method, backbone, spaces, ipc, init, steps, seconds, bytes, the storage ledger's budget and
    decoder bytes, and accuracy per architecture."""
    set_file, evals = _set_and_evals(path)
    tensors, meta, records = read_set_file(set_file)
    backbone, run = records["backbone"], records["run"]
    config = run.get("config", {})
    labels = tensors["labels"]
    ledger = read_ledger(tensors, meta, records["dataset"])
    hard = labels.argmax(1) if labels.ndim == 2 else labels
    archs: dict[str, dict] = {}
    for e in evals:  # later files (sorted by name) win for an architecture both hold
        result = json.loads(e.read_text())
        for arch, r in result.get("archs", {}).items():
            archs[arch] = {**r, "runs": len(r.get("accs", [])), "epochs": result.get("settings", {}).get("epochs")}
    kind = backbone.get("kind", "?")
    space = backbone.get("latent_space")
    others = [r["mean"] for a, r in archs.items() if a != "convnet"]
    # GLaD's cross-architecture question: how much accuracy the set loses when the eval net is not the ConvNet
    drop = archs["convnet"]["mean"] - sum(others) / len(others) if "convnet" in archs and others else None
    return {
        "run": str(path),
        "method": run.get("method", "?"),
        "backbone": f"{kind} {space}" if space else kind,
        # a pixel backbone's latents are images: whatever the config says, matching happened in pixel space
        "match_space": effective_match_space(kind, config.get("match_space", "-")),
        "match_net": f"{config['net']}-{config.get('depth', '?')} w{config.get('width', '?')}" if "net" in config
        else "-",
        # learned soft labels may move a sample's argmax to another class: the recorded IPC is the set's structure
        "ipc": int(run["ipc"]) if "ipc" in run else (int(hard.bincount().max()) if hard.numel() else 0),
        "soft_labels": labels.ndim == 2,
        "init": config.get("init", run.get("init", "-")),
        "steps": run.get("steps_done", config.get("steps", "-")),
        "distill_seconds": run.get("distill_seconds"),
        "bytes": os.path.getsize(set_file),
        "latent_dtype": ledger.get("latents", ledger.get("images", {})).get("dtype", "-"),
        "set_bytes": ledger.get("total_bytes"),
        "budget_ipc": ledger.get("budget_ipc"),
        "decoder_bytes": (ledger.get("decoder") or {}).get("bytes"),
        "archs": archs,
        "convnet_drop": drop,
    }


def _acc(r: dict | None) -> str:
    if not r:
        return "-"
    return f"{100 * r['mean']:.2f} +- {100 * r['std']:.2f} ({r['runs']}x{r['epochs']})"


def markdown_table(rows: list[dict]) -> str:
    """A markdown table of ``run_row`` results; one accuracy column per architecture any run was evaluated on."""
    seen = list(dict.fromkeys(a for row in rows for a in row["archs"]))
    archs = sorted(seen, key=lambda a: (a != "convnet", seen.index(a)))  # the protocol's net first
    drops = any(r.get("convnet_drop") is not None for r in rows)
    head = ["run", "method", "backbone", "match space", "match net", "IPC", "dtype", "budget (img/class)", "init",
            "steps", "distil s", "bytes", "decoder bytes", *[f"{a} %" for a in archs],
            *(["convnet - mean of others (points)"] if drops else [])]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        seconds = "-" if r["distill_seconds"] is None else f"{r['distill_seconds']:.0f}"
        ipc = f"{r['ipc']}{' (soft)' if r['soft_labels'] else ''}"
        budget = "-" if r.get("budget_ipc") is None else f"{r['budget_ipc']:.3g}"
        decoder = "-" if r.get("decoder_bytes") is None else f"{r['decoder_bytes']:,}"
        cells = [r["run"], r["method"], r["backbone"], r["match_space"], r["match_net"], ipc,
                 r.get("latent_dtype", "-"), budget, r["init"], str(r["steps"]), seconds, f"{r['bytes']:,}", decoder,
                 *[_acc(r["archs"].get(a)) for a in archs]]
        if drops:
            cells.append("-" if r.get("convnet_drop") is None else f"{100 * r['convnet_drop']:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
