"""Cards: the README.md of a Hub repo, made from what gendistill records (huggingface_hub ``DatasetCard`` /
``ModelCard``).

- ``dataset_card(set_file, repo_id, eval_result)``: a set's dataset repo: YAML front matter (license, tags,
  task_categories, size_categories, pretty_name) and a body: how to load it in three lines, how it was made, the
  command, the accuracy with its protocol (from eval.json), bytes and budget, the backbone reference with a link, the
  files.
- ``model_card(directory)``: a backbone directory: what it is, its dataset, the training command and the measured
  quality figures its gendistill.json records (``measured``); every ``save_pretrained`` writes it
  (``write_model_card``).
- ``lint_card(text)``: what a dataset card lacks (it must parse with ``DatasetCard`` and carry the required keys).
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import first_line
from .hub import CONFIG_FILE, SET_FILE, record_ref, ref_link, ref_source

REQUIRED_CARD_KEYS = ("license", "tags", "task_categories")
DATASET_LICENSES = {"fashion-mnist": "mit", "mnist": "mit"}  # a distilled set inherits its dataset's licence


def _yaml_card(data, body: str, card_cls):
    return card_cls(f"---\n{data.to_yaml()}\n---\n\n{body.strip()}\n")


def lint_card(path_or_text) -> list[str]:
    """Problems of a dataset card (a README.md path or its text): it must parse with ``DatasetCard`` and have the
    front-matter keys license, tags and task_categories (non-empty) and a body with the loading snippet."""
    from huggingface_hub import DatasetCard

    text = Path(path_or_text).read_text() if isinstance(path_or_text, Path) or (
        isinstance(path_or_text, str) and "\n" not in path_or_text
        and Path(path_or_text).is_file()) else str(path_or_text)
    if not text.startswith("---"):
        return ["no YAML front matter (the card must start with ---)"]
    try:
        card = DatasetCard(text)
    except Exception as e:  # noqa: BLE001
        return [f"DatasetCard cannot parse it ({first_line(e)})"]
    data = card.data.to_dict()
    problems = [f"front matter lacks {k!r}" for k in REQUIRED_CARD_KEYS if not data.get(k)]
    if "load_set(" not in card.text:
        problems.append("the body does not show how to load the set (gendistill.load_set)")
    return problems


def _size_category(n: int) -> str:
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return label
    return "n>1M"


def _command(run: dict) -> str:
    """The shortest command that re-makes a run: the method's recipe with the settings that differ from its defaults."""
    from .recipes import default_settings, has_recipe

    method, config = run.get("method"), dict(run.get("config") or {})
    if method == "init":
        keys = ("dataset", "backbone", "latent_space", "ipc", "init", "init_model", "seed")
        flags = " ".join(f"--{k.replace('_', '-')} {config[k]}" for k in keys if config.get(k) is not None)
        return f"gendistill init {flags} --out {SET_FILE}"
    if not method or not has_recipe(method):
        return "(not recorded)"
    defaults = default_settings(method)
    # this machine's folders: not part of what the run is
    skip = {"output", "resume", "method", "data_dir", "cache_dir"}
    flags = []
    for k, v in config.items():
        if k in skip or k not in defaults or defaults[k] == v:
            continue
        flags.append(f"--{k.replace('_', '-')} {v}")
    return " ".join(["gendistill distill", method, *flags])


def _budget(records: dict, tensors: dict) -> dict:
    """Bytes of the set's tensors and its size in float32 images per class (the field's storage budget)."""
    dataset = records["dataset"]
    shape = dataset.get("image_shape") or []
    classes = int(dataset.get("num_classes") or 0)
    by_tensor = {k: int(v.numel() * v.element_size()) for k, v in tensors.items()}
    image_bytes = 4 * (int(shape[0]) * int(shape[1]) * int(shape[2])) if len(shape) == 3 else 0
    total = sum(by_tensor.values())
    per_class = total / image_bytes / classes if image_bytes and classes else None
    return {"tensor_bytes": by_tensor, "total_bytes": total, "images_per_class": per_class}


def _backbone_bytes(backbone) -> int | None:
    if backbone is None:
        return None
    return int(sum(t.numel() * t.element_size() for t in backbone.state_dict().values()))


def dataset_card(set_path: Path, repo_id: str, eval_result: dict | None, license: str | None = None,
                 backbone=None) -> str:
    """The README.md of a set's dataset repo (``DatasetCard``): YAML front matter + how it was made, the command, the
    accuracy with its protocol, bytes and budget, the backbone reference, how to load it."""
    from huggingface_hub import DatasetCard, DatasetCardData

    from .io import load_safetensors
    from .synthetic import read_metadata

    tensors, meta = load_safetensors(set_path)
    records = read_metadata(set_path, meta)
    b, d, r = records["backbone"], records["dataset"], records["run"]
    ref = record_ref(b)
    labels = tensors["labels"]
    n = len(labels)
    classes = int(d.get("num_classes") or (labels.shape[1] if labels.ndim == 2 else int(labels.max()) + 1))
    hard = labels.argmax(1) if labels.ndim == 2 else labels
    ipc = int(hard.bincount(minlength=classes).max()) if n else 0
    method = r.get("method", "unknown")
    name = d.get("name", "unknown")
    license = license or DATASET_LICENSES.get(name)
    if not license:
        raise ValueError(f"no licence known for dataset {name!r}; pass --license (an SPDX-style id the Hub knows, "
                         "e.g. cc-by-4.0)")
    tags = ["gendistill", "dataset-distillation", "synthetic", f"method:{method}", f"backbone:{b.get('kind')}", name]
    data = DatasetCardData(license=license, tags=tags, task_categories=["image-classification"],
                           size_categories=[_size_category(n)], pretty_name=f"{method} {name} IPC {ipc}")
    cfg = r.get("config") or {}
    made = [f"- method: **{method}**" + (f" (init {r.get('init')})" if r.get("init") else ""),
            f"- dataset: {name}, {classes} classes, images {tuple(d.get('image_shape') or ())}",
            f"- images per class (IPC): {ipc}; {n} latents of shape {tuple(tensors['latents'].shape[1:])}"
            + (", soft labels" if labels.ndim == 2 else "") + (", a learned eval lr" if "lr" in tensors else ""),
            f"- steps: {r.get('steps_done', r.get('steps'))}, seed {r.get('seed')}"
            + (f", match space {cfg['match_space']}" if cfg.get("match_space") else "")
            + (f", {r['distill_seconds']} s of distillation" if r.get("distill_seconds") is not None else ""),
            f"- gendistill {r.get('package_version', '?')}, set format {meta.get('gendistill.format')}"]
    if eval_result:
        s = eval_result.get("settings", {})
        rows = ["| architecture | accuracy (%) | runs |", "| --- | --- | --- |"]
        for arch, a in eval_result.get("archs", {}).items():
            accs = ", ".join(f"{100 * x:.2f}" for x in a.get("accs", []))
            rows.append(f"| {arch} | **{100 * a['mean']:.2f} +- {100 * a['std']:.2f}** ({accs}) | "
                        f"{len(a.get('accs', []))} |")
        accuracy = "\n".join([
            f"Test accuracy on the real {eval_result.get('dataset', name)} test split, protocol "
            f"`{eval_result.get('protocol')}`: fresh networks trained from scratch on the "
            f"{eval_result.get('num_images', n)} decoded images for {s.get('epochs')} epochs (SGD lr "
            f"{eval_result.get('lr_used')}, momentum {s.get('momentum')}, weight decay {s.get('weight_decay')}, batch "
            f"{s.get('batch')}, lr x0.1 at half, {s.get('augment')} augmentation, seed {s.get('seed')}); mean +- std "
            "over runs (from `eval.json`).",
            "", *rows])
    else:
        accuracy = "Not evaluated: no `eval.json` was beside the set. `gendistill eval set.safetensors` measures it."
    budget = _budget(records, tensors)
    decoder = _backbone_bytes(backbone)
    size = [f"- set file: {set_path.stat().st_size:,} bytes; tensors: "
            + ", ".join(f"{k} {tuple(tensors[k].shape)} {str(tensors[k].dtype).replace('torch.', '')} = {v:,} B"
                        for k, v in budget["tensor_bytes"].items())]
    if budget["images_per_class"] is not None:
        size.append(f"- budget: {budget['images_per_class']:.3f} float32 images of "
                    f"{tuple(d.get('image_shape'))} per class (the set's bytes / ({classes} classes x "
                    f"{4 * _prod(d.get('image_shape'))} B))")
    if "gendistill.storage" in meta:
        size.append(f"- storage ledger (set metadata `gendistill.storage`): `{meta['gendistill.storage']}`")
    size.append(f"- decoder: the backbone's weights, {decoder:,} bytes, are needed to decode (not counted above)"
                if decoder is not None
                else "- decoder: the backbone's weights are needed to decode (not counted above)")
    link = ref_link(ref)
    where = {"builtin": "built into gendistill (no weights)",
             "shipped": "ships with gendistill (`pip install gendistill`): nothing to download",
             "hub": f"the Hub model repo [{ref_source(ref)}]({link}), pinned to that revision; `gendistill pull` and "
                    "`load_set` fetch it",
             "local": "a local folder of that name (not published): decode with `--backbone DIR` / `load_set(..., "
                      "backbone=DIR)`"}[ref["type"]]
    backbone_lines = [f"- `{ref_source(ref)}`: {b.get('kind')} backbone, {where}",
                      f"- sha256 of its weights and latent conventions: `{b.get('sha256')}` (checked when the "
                      "set is decoded)",
                      f"- latent shape {tuple(b.get('latent_shape') or ())}"
                      + (f", latent space {b['latent_space']}" if b.get("latent_space") else "")
                      + (f", options {json.dumps(b['options'], sort_keys=True)}" if b.get("options") else "")]
    body = f"""
# {method} {name} IPC {ipc}: a distilled dataset

{n} synthetic training images for {name} ({ipc} per class), stored as latent codes of a generative backbone and decoded
on load, made with gendistill. Train a network on them in place of the real
training split.

## Load it

```python
import gendistill, torch
ds = gendistill.load_set("{repo_id}")  # a torch Dataset of decoded, normalised images (raw=True: [0, 1])
loader = torch.utils.data.DataLoader(ds, batch_size=256, shuffle=True)
```

Or `gendistill pull {repo_id} --out DIR`, then `gendistill sample DIR/{SET_FILE} --out grid.png`,
`gendistill export DIR/{SET_FILE} --format hf --out DIR/hf` (a `datasets.Dataset`), `gendistill eval DIR/{SET_FILE}`.

## How it was made

{chr(10).join(made)}

## Command

```
{_command(r)}
```

Every setting of the run is in `{CONFIG_FILE}`: `gendistill distill {method} --config {CONFIG_FILE}` repeats it.

## Accuracy

{accuracy}

## Size

{chr(10).join(size)}

## Backbone

{chr(10).join(backbone_lines)}

## Files

- `{SET_FILE}`: latents, labels{', lr' if 'lr' in tensors else ''} and metadata (safetensors; no pickle)
- `grid.png`: the decoded set, one row per class
- `{CONFIG_FILE}`: the run's full configuration
{'- `eval.json`: the evaluation result and its settings' if eval_result else ''}
"""
    return str(_yaml_card(data, body, DatasetCard))


def _prod(shape) -> int:
    out = 1
    for s in shape or []:
        out *= int(s)
    return out


def _rows(record: dict, prefix: str = "") -> list[tuple[str, object]]:
    """A nested record flattened to (dotted key, value) rows."""
    rows = []
    for k, v in record.items():
        if isinstance(v, dict):
            rows += _rows(v, f"{prefix}{k}.")
        else:
            rows.append((f"{prefix}{k}", v))
    return rows


def model_card(directory) -> str:
    """The README.md of a backbone directory (``ModelCard``): what it is, its dataset, the training command and the
    quality figures measured for it (gendistill.json ``measured``: ``quality``, ``training``, ``weights_sha256``)."""
    from huggingface_hub import ModelCard, ModelCardData

    from .backbones.base import INFO_FILE

    d = Path(directory)
    info = json.loads((d / INFO_FILE).read_text()) if (d / INFO_FILE).is_file() else {}
    kind = info.get("kind", "vae")
    dataset = info.get("dataset") or {}
    what = {"vae": "A diffusers `AutoencoderKL`", "gan": "A class-conditional style generator "
                                                         "(`ConditionalStyleGenerator`)",
            "diffusion": "A latent diffusion model (`unet/` + `scheduler/`, "
                         + ("text-conditioned)" if info.get("conditioning") == "text"
                            else "class-conditional, on a VAE's latents)")}
    sizes = {p.relative_to(d).as_posix(): p.stat().st_size for p in sorted(d.rglob("*.safetensors"))}
    tags = ["gendistill", "dataset-distillation", f"backbone:{kind}"] + ([dataset["name"]] if dataset.get("name")
                                                                         else [])
    data = ModelCardData(license=info.get("license") or DATASET_LICENSES.get(dataset.get("name"), "other"),
                         library_name="diffusers", tags=tags)
    measured = info.get("measured") or {}
    quality = dict(measured.get("quality") or {})
    qcommand = quality.pop("command", None)
    if quality:
        rows = "\n".join(f"| {k} | {json.dumps(v) if isinstance(v, (list, dict)) else v} |" for k, v in _rows(quality))
        qtext = (f"Measured with `{qcommand}`" if qcommand else "Measured") + (f" ({measured['about']})"
                                                                               if measured.get("about") else "") \
            + ":\n\n| figure | value |\n| --- | --- |\n" + rows
    else:
        qtext = "No measured quality figures are recorded in `gendistill.json` (`measured.quality`) for this backbone."
    training = measured.get("training") or {}
    config = info.get("config") or {}
    command = training.get("command") or (f"python {info['recipe']} --output {d.name}" if info.get("recipe")
                                          else "(not recorded)")
    run = ", ".join(f"{k} {v}" for k, v in training.items() if k != "command")
    vae = info.get("vae") if isinstance(info.get("vae"), dict) else None
    spaces = f"; latent spaces {', '.join(info['latent_spaces'])}" if info.get("latent_spaces") else ""
    class_list = ", ".join(dataset.get("classes") or [])
    config_json = json.dumps(config, sort_keys=True)
    body = f"""
# {d.name}: a gendistill {kind} backbone

{what.get(kind, kind)} for gendistill: datasets are distilled into its latent
codes and decoded through it. Images {tuple(info.get('image_shape') or ())} in [0, 1]{spaces}.
{f"Its UNet models the latents of the VAE `{vae.get('source')}` (sha256 `{vae.get('sha256')}`)." if vae else ""}
{f"Weights sha256 (gendistill's hash): `{measured['weights_sha256']}`." if measured.get('weights_sha256') else ""}

## Use it

```python
from gendistill.backbones import load_backbone
backbone = load_backbone("OWNER/{d.name}", revision="COMMIT")   # or this directory
z = backbone.encode(images)  # images in [0, 1]
x = backbone.decode(z)
```

`gendistill distill dm --backbone OWNER/{d.name}@COMMIT` distils a dataset in its latent space.

## Dataset

{dataset.get('name', 'not recorded')}: {dataset.get('num_classes', '?')} classes ({class_list}),
images {tuple(dataset.get('image_shape') or ())}.

## Training

```
{command}
```

{f"Run: {run}." if run else ""} Recipe `{info.get('recipe', 'not recorded')}`; configuration: `{config_json}`.

## Quality

{qtext}

## Files

{chr(10).join(f'- `{k}`: {v:,} bytes' for k, v in sizes.items())}
- `gendistill.json`: kind, image shape, dataset, recipe, configuration{', measured figures' if measured else ''}
"""
    return str(_yaml_card(data, body, ModelCard))


def write_model_card(directory) -> None:
    """Write README.md (the model card) into a backbone directory."""
    from .io import atomic_path

    with atomic_path(Path(directory) / "README.md") as tmp:
        tmp.write_text(model_card(directory))
