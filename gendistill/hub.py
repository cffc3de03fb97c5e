"""Sharing sets and backbones: portable backbone references, and the Hugging Face Hub (push / pull with cards).

A set file names its backbone by a **reference** that means the same on every machine (``gendistill.backbone``'s
``ref``; ``source`` is its short string form):

- ``{"type": "builtin", "name": "pixel"}``: a kind that needs no weights;
- ``{"type": "shipped", "name": "fashion-mnist-vae"}``: a backbone shipped in the package (``gendistill/assets``);
- ``{"type": "hub", "repo_id": "org/name", "revision": "<commit>"}``: a Hub model repo, pinned (``org/name@<commit>``);
- ``{"type": "local", "name": "my-vae"}``: a folder of that name; with the record's ``sha256`` it is found again on
  the machine that made it (a per-user list of the folders it has loaded, ``remember_local``), beside the set file or
  in the working directory, and anywhere else through an explicit ``--backbone``.

Never an absolute path: a set made on one machine decodes on another. ``find_backbone`` resolves a record in the
order: an explicit backbone, the shipped assets, the local Hub cache, the Hub (then the local places); the sha256
check stays. Records written by earlier versions (``source`` an absolute path, no ``ref``) are read by the folder's
name and hash.

Hub I/O goes through ``huggingface_hub`` (``snapshot_download``, ``HfApi.create_repo``/``upload_folder``; the cards are
``gendistill.cards``); every failure is a one-line ``ValueError``/``FileNotFoundError`` and nothing is written half-way.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from .errors import USER_ERRORS, first_line

HUB_URL = "https://huggingface.co"
SET_FILE = "set.safetensors"
CARD_FILE = "README.md"
CONFIG_FILE = "config.yaml"
# run-config keys that name folders
PATH_KEYS = {"output", "data_dir", "cache_dir", "experts", "classifier", "config", "out", "file"}
# files of a Hub model repo a backbone never needs (other frameworks' weights, fp16 duplicates, single-file checkpoints)
IGNORE_PATTERNS = ["*.bin", "*.ckpt", "*.pt", "*.pth", "*.msgpack", "*.h5", "*.onnx", "*.onnx_data", "*.pb", "*.ot",
                   "*.fp16.safetensors", "*non_ema*", "*.gguf"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
_FILE_SUFFIXES = {".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".json", ".yaml", ".yml", ".png", ".gz"}
_SNAPSHOT_DIR = re.compile(r"^(models|datasets|spaces)--(.+)$")


# ------------------------------------------------------------------------------------------------- references


def split_revision(source: str) -> tuple[str, str | None]:
    """``org/name@rev`` -> (``org/name``, ``rev``); anything else -> (source, None)."""
    if "@" in source and not Path(source).exists():
        repo, _, rev = source.rpartition("@")
        if _HUB_ID.match(repo) and rev:
            return repo, rev
    return source, None


def is_hub_id(source: str) -> bool:
    """``owner/name`` (optionally ``@revision``) that is not an existing path nor a file name."""
    repo, _ = split_revision(str(source))
    return (not Path(repo).exists() and bool(_HUB_ID.match(repo)) and Path(repo).suffix.lower() not in _FILE_SUFFIXES)


def hub_cache() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def snapshot_origin(path) -> dict | None:
    """The Hub repo a directory inside the Hub cache belongs to: ``{"repo_type", "repo_id", "revision",
    "subfolder"}``."""
    parts = Path(path).resolve().parts
    for i in range(len(parts) - 2):
        m = _SNAPSHOT_DIR.match(parts[i])
        if m and parts[i + 1] == "snapshots":
            return {"repo_type": m.group(1)[:-1], "repo_id": m.group(2).replace("--", "/", 1), "revision": parts[i + 2],
                    "subfolder": "/".join(parts[i + 3:]) or None}
    return None


def shipped_root() -> Path:
    from .backbones import ASSETS

    return Path(ASSETS) / "backbones"


def reference_for(source: str, local: str | os.PathLike | None = None, revision: str | None = None) -> dict:
    """The portable reference of a backbone given as ``source`` and loaded from directory ``local``."""
    from .backbones import BACKBONES

    source = str(source)
    if source in BACKBONES:
        return {"type": "builtin", "name": source}
    path = Path(local or source)
    if path.is_dir():
        try:
            rel = path.resolve().relative_to(shipped_root().resolve())
            return {"type": "shipped", "name": rel.parts[0]}
        except ValueError:
            pass
        origin = snapshot_origin(path)
        if origin and origin["repo_type"] == "model":
            ref = {"type": "hub", "repo_id": origin["repo_id"], "revision": origin["revision"]}
            return {**ref, "subfolder": origin["subfolder"]} if origin["subfolder"] else ref
    if is_hub_id(source):
        repo, rev = split_revision(source)
        return {"type": "hub", "repo_id": repo, "revision": revision or rev}
    return {"type": "local", "name": path.resolve().name if str(path) else source}


def ref_source(ref: dict) -> str:
    """A reference's short string: ``pixel``, ``fashion-mnist-vae``, ``org/name@rev``, ``my-vae``."""
    if ref.get("type") == "hub":
        text = ref["repo_id"] + (f"@{ref['revision']}" if ref.get("revision") else "")
        return text + (f" ({ref['subfolder']})" if ref.get("subfolder") else "")
    return str(ref.get("name"))


def ref_link(ref: dict) -> str | None:
    if ref.get("type") != "hub":
        return None
    tail = f"/tree/{ref['revision']}" + (f"/{ref['subfolder']}" if ref.get("subfolder")
                                         else "") if ref.get("revision") else ""
    return f"{HUB_URL}/{ref['repo_id']}{tail}"


def record_ref(record: dict) -> dict:
    """The reference of a ``gendistill.backbone`` record; records of earlier versions (an absolute ``source``) by
    name."""
    if isinstance(record.get("ref"), dict) and record["ref"].get("type"):
        return record["ref"]
    source = str(record.get("source") or "")
    if record.get("kind") == "pixel" or source == "pixel":
        return {"type": "builtin", "name": "pixel"}
    if is_hub_id(source):
        repo, rev = split_revision(source)
        return {"type": "hub", "repo_id": repo, "revision": rev}
    if not source:
        raise ValueError("the set does not record its backbone; pass --backbone")
    return {"type": "local", "name": Path(source).name, "legacy_path": source}


def portable_backbone(record: dict) -> dict:
    """A ``gendistill.backbone`` record with its ``ref`` (added from the name for records of earlier versions)."""
    if not record or (isinstance(record.get("ref"), dict) and record["ref"].get("type")):
        return dict(record or {})
    if not (record.get("source") or record.get("kind") == "pixel"):
        return dict(record)  # an in-memory set with no known source: loading it will ask for --backbone
    ref = {k: v for k, v in record_ref(record).items() if k != "legacy_path"}
    return {**record, "ref": ref, "source": ref_source(ref)}


def attach_reference(backbone, source: str, local: str, revision: str | None = None):
    """Give a freshly loaded backbone its portable reference (``backbone.reference``, ``backbone.source``); a local
    folder is remembered by its hash so that sets made with it find it again on this machine."""
    ref = reference_for(source, local, revision)
    backbone.reference = ref
    backbone.source = ref_source(ref)
    if ref["type"] == "local":
        remember_local(backbone.weights_sha256(), local)
    return backbone


def portable_run(run: dict) -> dict:
    """A run record with no machine's paths: folder settings by name, any other absolute path by its last part."""

    def clean(key, value):
        if isinstance(value, dict):
            return {k: clean(k, v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(key, v) for v in value]
        if isinstance(value, str) and value and (key in PATH_KEYS or key == "directory" or os.path.isabs(value)
                                                 or value.startswith("~")):
            return Path(value).name or value
        return value

    return clean(None, run)


# ------------------------------------------------------------------------------------ this machine's local folders


HOME_ENV = "GENDISTILL_HOME"  # this user's gendistill state (default ~/.cache/gendistill)


def _index_file() -> Path:
    return Path(os.environ.get(HOME_ENV) or Path.home() / ".cache" / "gendistill") / "local-backbones.json"


def _read_index() -> dict:
    try:
        data = json.loads(_index_file().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def remember_local(sha256: str, directory) -> None:
    """Note that a backbone with ``sha256`` lives in ``directory`` (best effort, this user's cache only)."""
    from .io import write_json

    path = str(Path(directory).resolve())
    index = _read_index()
    if path in index.get(sha256, []):
        return
    index[sha256] = [path] + [p for p in index.get(sha256, []) if p != path][:7]
    try:
        _index_file().parent.mkdir(parents=True, exist_ok=True)
        write_json(index, _index_file())
    except OSError:
        pass


def remembered(sha256: str | None, name: str | None = None) -> list[str]:
    """Folders loaded before on this machine with ``sha256``, then (``name``) other folders of that name."""
    index = _read_index()
    paths = list(index.get(sha256 or "", []))
    if name:
        paths += [p for ps in index.values() for p in ps if Path(p).name == name and p not in paths]
    return [p for p in paths if Path(p).is_dir()]


# ------------------------------------------------------------------------------------------------------- Hub I/O


def _hub_error(e: BaseException, repo_id: str, revision: str | None, repo_type: str) -> Exception:
    """A one-line error for a failed Hub call."""
    from huggingface_hub import errors as E

    what = f"{repo_type} repo {repo_id!r}"
    rev = revision or "main"
    if isinstance(e, E.RevisionNotFoundError):
        return ValueError(f"{what} has no revision {rev!r} on the Hub; pass an existing branch, tag or commit "
                          "with --revision")
    if isinstance(e, E.GatedRepoError):
        return ValueError(f"{what} is gated; accept its conditions on {HUB_URL}/{repo_id} and log in (`hf auth login`)")
    if isinstance(e, E.RepositoryNotFoundError):
        return ValueError(f"no {what} on the Hub (or it is private and you are not logged in); check the id, or log in "
                          "with `hf auth login`")
    if isinstance(e, E.LocalEntryNotFoundError):
        folder = hub_cache() / f"{repo_type}s--{repo_id.replace('/', '--')}"
        if offline():
            if not folder.is_dir():
                local = " (as a local folder it does not exist either)" if repo_type == "model" else ""
                return FileNotFoundError(f"{what} is not in the local Hub cache ({hub_cache()}){local} and "
                                         "HF_HUB_OFFLINE=1 forbids the network; unset HF_HUB_OFFLINE to download it, "
                                         "or fill the cache on a machine with network")
            have = sorted(p.name for p in (folder / "refs").iterdir()) if (folder / "refs").is_dir() else []
            have += (
                sorted(p.name[:12] for p in (folder / "snapshots").iterdir()) if (folder / "snapshots").is_dir() else []
            )
            return FileNotFoundError(f"revision {rev!r} of {what} is not in the local Hub cache (it has: "
                                     f"{', '.join(have) or 'nothing'}) and HF_HUB_OFFLINE=1 forbids the network; pass "
                                     "a cached --revision or unset HF_HUB_OFFLINE")
        return FileNotFoundError(f"cannot reach the Hub for {what} and it is not in the local cache "
                                 f"({first_line(e)[:160]}); check the network, or set HF_HUB_OFFLINE=1 to use "
                                 "the cache only")
    if isinstance(e, E.LocalTokenNotFoundError):
        return ValueError("no Hugging Face token: log in with `hf auth login` or set HF_TOKEN")
    if isinstance(e, E.HfHubHTTPError):
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status in (401, 403):
            return ValueError(f"the Hub refused access to {what} (HTTP {status}): log in with a token that may write "
                              "there (`hf auth login`)")
        return ValueError(f"the Hub failed for {what} ({first_line(e)[:200]})")
    if type(e).__module__.split(".")[0] in ("httpx", "httpx2", "requests",
                                            "urllib3") or isinstance(e, (ConnectionError, TimeoutError)):
        return FileNotFoundError(f"cannot reach the Hub for {what} ({type(e).__name__}: {first_line(e)[:160]}); "
                                 "check the network")
    return ValueError(f"Hub call for {what} failed ({type(e).__name__}: {first_line(e)[:200]})")


def hub_snapshot(repo_id: str, revision: str | None = None, repo_type: str = "model", local_only: bool = False,
                 allow_patterns=None) -> Path:
    """The local folder of ``repo_id`` at ``revision``: from the Hub cache, downloading what is missing unless
    ``local_only`` or HF_HUB_OFFLINE. One-line errors for unknown repos, revisions and no network."""
    from huggingface_hub import snapshot_download

    if not _HUB_ID.match(repo_id):
        raise ValueError(f"{repo_id!r} is not a Hub repo id; use owner/name")
    try:
        path = snapshot_download(repo_id, repo_type=repo_type, revision=revision, local_files_only=local_only,
                                 ignore_patterns=IGNORE_PATTERNS if repo_type == "model" else None,
                                 allow_patterns=allow_patterns)
    except Exception as e:  # noqa: BLE001 - every Hub failure becomes one line
        if isinstance(e, (ValueError, FileNotFoundError)) and not type(e).__module__.startswith("huggingface_hub"):
            raise
        raise _hub_error(e, repo_id, revision, repo_type) from None
    return Path(path)


def resolve_hub_source(source: str, revision: str | None = None) -> str:
    """``org/name[@rev]`` -> the local snapshot folder (downloading into the Hub cache if needed and allowed)."""
    repo, rev = split_revision(source)
    if revision and rev and revision != rev:
        raise ValueError(f"{source!r} names revision {rev!r} but revision={revision!r} was passed; give one")
    return str(hub_snapshot(repo, revision or rev))


def _api():
    from huggingface_hub import HfApi

    return HfApi()


def upload(folder: Path, repo_id: str, repo_type: str, private: bool = False, message: str | None = None) -> str:
    """Create ``repo_id`` if needed and upload ``folder`` as one commit; returns the commit id."""
    api = _api()
    try:
        api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, repo_type=repo_type, folder_path=str(folder),
                                 commit_message=message or "upload with gendistill")
    except Exception as e:  # noqa: BLE001
        raise _hub_error(e, repo_id, None, repo_type) from None
    return getattr(info, "oid", None) or str(info)


# ------------------------------------------------------------------------------------------------- resolution


def find_backbone(record: dict, dataset: dict | None = None, explicit: str | None = None, near=None,
                  ignore_hash: bool = False, revision: str | None = None):
    """The backbone a set's ``record`` names, loaded for its dataset. ``explicit`` (``--backbone``) wins and is returned
    as is (the caller checks its hash, with the override flag); otherwise the candidates are tried in order (shipped
    assets, local Hub cache, Hub, the folders this machine knows by hash, a folder of the name beside the set ``near``
    or in the working directory) and the first with the recorded sha256 is returned."""
    from .backbones import load_backbone

    dataset = dataset or {}
    kwargs = dict(image_shape=tuple(dataset.get("image_shape") or record.get("image_shape") or ()) or None,
                  latent_space=record.get("latent_space"), options=record.get("options"),
                  class_names=dataset.get("classes"))
    if explicit:
        return load_backbone(explicit, revision=revision, **kwargs)
    ref, want = record_ref(record), record.get("sha256")
    tried, other = [], None
    for label, locate in _candidates(ref, want, near):
        try:
            source = locate()
            if source is None:
                tried.append(f"{label}: none")
                continue
            backbone = load_backbone(source, **kwargs)
        except USER_ERRORS as e:
            tried.append(f"{label}: {first_line(e)[:200]}")
            continue
        if want and backbone.weights_sha256() != want and not ignore_hash:
            tried.append(f"{label}: other weights (sha256 {backbone.weights_sha256()[:16]})")
            other = other or backbone
            continue
        return backbone
    if other is not None:  # the name was found, with other weights: the hash check's error and its override
        from .synthetic import HASH_FLAG

        raise ValueError(f"backbone hash mismatch: the set was made with {str(want)[:16]}, {other.source!r} has "
                         f"{other.weights_sha256()[:16]}; pass the recorded backbone (--backbone) or {HASH_FLAG} to "
                         "decode anyway")
    where = "; ".join(tried)
    raise FileNotFoundError(f"the set's backbone {ref_source(ref)!r} ({ref['type']}, sha256 {str(want)[:16]}) was not "
                            f"found ({where}); pass --backbone DIR or REPO_ID (load_set(..., backbone=...))")


def _candidates(ref: dict, sha: str | None, near):
    kind = ref["type"]
    if kind == "builtin":
        yield "built-in", lambda: ref["name"]
        return
    name = ref["repo_id"].split("/")[-1] if kind == "hub" else ref["name"]
    if kind == "local" and ref.get("legacy_path"):
        yield "recorded path", lambda: ref["legacy_path"] if Path(ref["legacy_path"]).is_dir() else None
    shipped = shipped_root() / name
    yield "shipped assets", lambda: str(shipped) if shipped.is_dir() else None
    if kind == "hub":
        def sub(path):
            return str(Path(path) / ref["subfolder"]) if ref.get("subfolder") else str(path)

        yield "local Hub cache", lambda: sub(hub_snapshot(ref["repo_id"], ref.get("revision"), local_only=True))
        if not offline():
            yield "Hub", lambda: sub(hub_snapshot(ref["repo_id"], ref.get("revision")))
        return
    for path in remembered(sha, name):
        yield "a folder loaded before", lambda path=path: path
    if near is not None:
        beside = Path(near).parent / name
        yield "beside the set", lambda: str(beside) if beside.is_dir() else None
    yield "working directory", lambda: name if Path(name).is_dir() else None


# ------------------------------------------------------------------------------------------------ push / pull


def _set_file(path: Path) -> Path:
    path = Path(path)
    if path.is_dir():
        candidate = path / SET_FILE
        if not candidate.is_file():
            raise FileNotFoundError(f"{str(path)!r} holds no {SET_FILE}; pass a set file or a run directory "
                                    "that has one")
        return candidate
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} does not exist; pass a set file or a run directory")
    return path


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{str(out)!r} already exists and is not empty; choose a new folder (nothing is overwritten)")


def stage_set(set_path, repo_id: str, out, license: str | None = None, backbone: str | None = None,
              ignore_hash: bool = False) -> Path:
    """Write the exact folder ``push`` uploads into ``out`` (atomically): the set, grid.png, eval.json, config.yaml
    and README.md (the dataset card, linted). The set must decode here: its backbone is resolved and its grid drawn.
    ``backbone`` (a Hub repo ``org/name@rev`` with the set's weights) re-points a set whose backbone is a local
    folder."""
    import yaml

    from .io import atomic_dir, load_safetensors, save_safetensors, write_json
    from .plots import image_grid, save_png
    from .synthetic import SyntheticSet

    src = _set_file(Path(set_path))
    out = Path(out)
    _check_out(out)
    if not _HUB_ID.match(repo_id):
        raise ValueError(f"{repo_id!r} is not a Hub repo id; use owner/name")
    syn = SyntheticSet.load(src)
    found = find_backbone(syn.backbone_meta, syn.dataset_meta, explicit=backbone, near=src, ignore_hash=ignore_hash)
    syn.check_backbone(found, ignore_hash)
    ref = record_ref(syn.backbone_meta)
    tensors, meta = load_safetensors(src)
    if backbone:  # re-point the set at the backbone that was checked against it
        record = {**syn.backbone_meta, "ref": found.reference, "source": found.source}
        meta = {**meta, "gendistill.backbone": json.dumps(record, sort_keys=True)}
        ref = found.reference
    if ref["type"] == "local":
        raise ValueError(f"the set's backbone {ref_source(ref)!r} is a local folder others cannot fetch; "
                         "publish it with `gendistill push-backbone DIR OWNER/NAME`, then pass --backbone "
                         "OWNER/NAME@REVISION")
    if ref["type"] == "hub" and not ref.get("revision"):
        raise ValueError(f"the set's backbone {ref['repo_id']!r} has no pinned revision; pass --backbone "
                         f"{ref['repo_id']}@COMMIT")
    run = json.loads(meta.get("gendistill.run", "{}"))
    clean_run = portable_run(run)
    meta = {**meta, "gendistill.run": json.dumps(clean_run, sort_keys=True, default=str)}
    eval_file = src.parent / "eval.json" if src.name == SET_FILE else Path(str(src.with_suffix("")) + ".eval.json")
    result = json.loads(eval_file.read_text()) if eval_file.is_file() else None
    with atomic_dir(out) as tmp:
        save_safetensors(tensors, tmp / SET_FILE, meta)
        grid = src.parent / "grid.png" if src.name == SET_FILE else None
        if grid is not None and grid.is_file():
            shutil.copy2(grid, tmp / "grid.png")
        else:
            save_png(image_grid(syn.decode(found).cpu(), syn.labels, syn.num_classes), tmp / "grid.png")
        if result is not None:
            write_json({**result, "set": SET_FILE}, tmp / "eval.json")
        (tmp / CONFIG_FILE).write_text(yaml.safe_dump(clean_run.get("config") or {}, sort_keys=True))
        from .cards import dataset_card, lint_card

        card = dataset_card(tmp / SET_FILE, repo_id, result, license, found)
        problems = lint_card(card)
        if problems:
            raise ValueError(f"the dataset card fails its lint: {'; '.join(problems)}")
        (tmp / CARD_FILE).write_text(card)
    return out


def push_set(set_path, repo_id: str, dry_run=None, private: bool = False, license: str | None = None,
             backbone: str | None = None, ignore_hash: bool = False) -> dict:
    """``gendistill push``: stage the folder (into ``dry_run`` and stop, or a temporary one) and upload it."""
    import tempfile

    if dry_run is not None:
        folder = stage_set(set_path, repo_id, dry_run, license, backbone, ignore_hash)
        return {"folder": str(folder), "files": sorted(p.name for p in folder.iterdir()), "uploaded": False}
    with tempfile.TemporaryDirectory(prefix="gendistill-push-") as tmp:
        folder = stage_set(set_path, repo_id, Path(tmp) / "repo", license, backbone, ignore_hash)
        files = sorted(p.name for p in folder.iterdir())
        commit = upload(folder, repo_id, "dataset", private, f"gendistill: distilled set {Path(set_path).name}")
    return {"repo_id": repo_id, "files": files, "commit": commit, "uploaded": True,
            "url": f"{HUB_URL}/datasets/{repo_id}"}


def stage_backbone(directory, out) -> Path:
    """The folder ``push-backbone`` uploads: the backbone directory (loaded once to check it) plus its model card."""
    from .backbones import load_backbone
    from .backbones.base import INFO_FILE
    from .io import atomic_dir

    src, out = Path(directory), Path(out)
    if not src.is_dir():
        raise FileNotFoundError(f"{str(src)!r} is not a backbone directory")
    _check_out(out)
    info = json.loads((src / INFO_FILE).read_text()) if (src / INFO_FILE).is_file() else {}
    dataset = info.get("dataset") or {}
    backbone = load_backbone(str(src), image_shape=tuple(info["image_shape"]) if info.get("image_shape") else None,
                             class_names=dataset.get("classes"))
    pointer = (info.get("vae") or {}).get("source") if isinstance(info.get("vae"), dict) else None
    if pointer and not (pointer in _shipped_names() or is_hub_id(pointer)
                        or (not os.path.isabs(pointer) and (src / pointer).is_dir())):
        raise ValueError(f"{str(src)!r} points to the VAE {pointer!r}, which others cannot fetch; copy it into "
                         "the directory (and point vae.source at that sub-folder) or publish it and point at "
                         "OWNER/NAME@REVISION")
    with atomic_dir(out) as tmp:
        shutil.copytree(src, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.ckpt", ".*", "__pycache__"))
        from .cards import write_model_card

        write_model_card(tmp)
    del backbone
    return out


def _shipped_names() -> list[str]:
    from .backbones import shipped_backbones

    return shipped_backbones()


def push_backbone(directory, repo_id: str, dry_run=None, private: bool = False) -> dict:
    import tempfile

    if not _HUB_ID.match(repo_id):
        raise ValueError(f"{repo_id!r} is not a Hub repo id; use owner/name")
    if dry_run is not None:
        folder = stage_backbone(directory, dry_run)
        return {"folder": str(folder), "files": sorted(p.name for p in folder.iterdir()), "uploaded": False}
    with tempfile.TemporaryDirectory(prefix="gendistill-push-") as tmp:
        folder = stage_backbone(directory, Path(tmp) / "repo")
        files = sorted(p.name for p in folder.iterdir())
        commit = upload(folder, repo_id, "model", private, f"gendistill: backbone {Path(directory).name}")
    return {"repo_id": repo_id, "files": files, "commit": commit, "uploaded": True, "url": f"{HUB_URL}/{repo_id}",
            "reference": f"{repo_id}@{commit}"}


def fetch_set(repo_id: str, revision: str | None = None) -> Path:
    """A set repo's folder in the Hub cache (downloaded if needed and allowed), checked: a dataset card and a set
    file."""
    folder = hub_snapshot(repo_id, revision, repo_type="dataset")
    if not (folder / CARD_FILE).is_file():
        raise ValueError(f"dataset repo {repo_id!r} has no {CARD_FILE} (dataset card); it was not pushed by "
                         "gendistill push")
    if not (folder / SET_FILE).is_file():
        raise ValueError(f"dataset repo {repo_id!r} has no {SET_FILE}; it is not a gendistill set repo")
    return folder


def pull_set(repo_id: str, revision: str | None = None, out=None) -> dict:
    """``gendistill pull``: the set repo at ``revision`` copied into ``out`` (default ./NAME, atomically) and, when its
    backbone is a Hub repo not shipped here, that backbone into the Hub cache."""
    from .io import atomic_dir, load_safetensors
    from .synthetic import read_metadata

    repo, rev = split_revision(repo_id)
    revision = revision or rev
    out = Path(out or repo.split("/")[-1])
    _check_out(out)
    folder = fetch_set(repo, revision)
    _, meta = load_safetensors(folder / SET_FILE)
    record = read_metadata(folder / SET_FILE, meta)["backbone"]
    ref = record_ref(record)
    backbone_note = f"backbone {ref_source(ref)} ({ref['type']})"
    if ref["type"] == "hub" and not (shipped_root() / ref["repo_id"].split("/")[-1]).is_dir():
        path = hub_snapshot(ref["repo_id"], ref.get("revision"))
        backbone_note += f" in the Hub cache: {path}"
    elif ref["type"] == "local":
        backbone_note += ": a folder of its maker's, not published; decode with --backbone DIR"
    with atomic_dir(out) as tmp:
        for item in folder.iterdir():
            if item.name.startswith("."):
                continue
            (shutil.copytree if item.is_dir() else shutil.copy2)(item, tmp / item.name)
    return {"repo_id": repo, "revision": folder.name, "out": str(out), "files": sorted(p.name for p in out.iterdir()),
            "backbone": backbone_note}
