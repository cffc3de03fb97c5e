"""Sharing sets and backbones: portable references, every backbone kind from a Hub repo id, model and dataset cards,
``gendistill push`` (the dry-run folder; the upload through a fake Hub behind huggingface_hub's HTTP client) and
``gendistill pull`` (offline, from a populated Hub cache), and the one-line errors of bad input.

No test reaches the network: HF_HUB_OFFLINE=1 (conftest); the upload tests turn it off and give huggingface_hub an
``httpx2`` client whose transport is the fake Hub (``set_client_factory``), so only the HTTP layer is replaced.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from conftest import NUM_CLASSES, ROOT, fast_first, save_tiny_vae
from huggingface_hub import DatasetCard, ModelCard, constants
from safetensors import safe_open
from test_cli import assert_ok, assert_user_error, cli

import gendistill
import gendistill.hub
from gendistill.backbones import GANBackbone, load_backbone, shipped_backbones
from gendistill.cards import lint_card, model_card
from gendistill.data import FASHION_CLASSES, get_dataset
from gendistill.hub import ref_source, reference_for, split_revision
from gendistill.synthetic import SyntheticSet

REV = "1" * 40
REV2 = "2" * 40
ASSETS = Path(gendistill.__file__).parent / "assets" / "backbones"


# ------------------------------------------------------------------------------------------------------ helpers


class HubCache:
    """A Hub cache folder laid out as huggingface_hub writes it: blobs, snapshots/<commit>/ (links), refs/<branch>."""

    def __init__(self, root: Path):
        self.root = root

    def add(self, repo_type: str, repo_id: str, folder: Path, revision: str = REV, branch: str | None = "main") -> str:
        repo = self.root / f"{repo_type}s--{repo_id.replace('/', '--')}"
        snap = repo / "snapshots" / revision
        for f in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
            data = f.read_bytes()
            blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
            blob.parent.mkdir(parents=True, exist_ok=True)
            blob.write_bytes(data)
            link = snap / f.relative_to(folder)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(Path("../" * (len(f.relative_to(folder).parts) + 1)) / "blobs" / blob.name)
        if branch:
            (repo / "refs").mkdir(parents=True, exist_ok=True)
            (repo / "refs" / branch).write_text(revision)
        return revision


@pytest.fixture
def hub(tmp_path, monkeypatch) -> HubCache:
    root = tmp_path / "hf-cache"
    root.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(root))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return HubCache(root)


class FakeHub:
    """The Hub's HTTP API as far as create_repo / upload_folder / snapshot_download use it: records every request,
    keeps committed files; ``fail`` makes one endpoint answer an error (or raise a connection error)."""

    def __init__(self):
        self.requests: list[tuple[str, str]] = []
        self.files: dict[str, bytes] = {}
        self.fail: dict[str, object] = {}

    def __call__(self, request):
        import httpx2

        path = request.url.path
        self.requests.append((request.method, path))
        for key, answer in self.fail.items():
            if key in path:
                if answer == "connect":
                    raise httpx2.ConnectError("connection refused", request=request)
                status, code = answer
                return httpx2.Response(status, headers={"X-Error-Code": code} if code else {},
                                       json={"error": f"{code or status}"}, request=request)
        if path == "/api/repos/create":
            return httpx2.Response(200, json={"url": "https://huggingface.co/datasets/me/x"}, request=request)
        if path == "/api/validate-yaml":  # as the Hub does: the card's YAML must parse and hold our keys
            meta = yaml.safe_load(json.loads(request.content)["content"].split("---")[1])
            missing = [k for k in ("license", "tags", "task_categories") if not meta.get(k)]
            errors = [{"message": f"missing {k}"} for k in missing]
            return httpx2.Response(400 if errors else 200, json={"errors": errors, "warnings": []}, request=request)
        if "/preupload/" in path:
            files = json.loads(request.content)["files"]
            return httpx2.Response(200, json={"files": [{"path": f["path"], "uploadMode": "regular",
                                                         "shouldIgnore": False} for f in files]},
                                   request=request)
        if "/commit/" in path:
            for line in request.content.decode().splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    self.files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            return httpx2.Response(200, json={"commitUrl": "https://huggingface.co/datasets/me/x/commit/" + "c" * 40,
                                              "commitOid": "c" * 40},
                                   request=request)
        return httpx2.Response(404, json={"error": "not here"}, request=request)


@pytest.fixture
def fake_hub(monkeypatch):
    import httpx2
    from huggingface_hub.utils import _http

    fake = FakeHub()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    _http.set_client_factory(lambda: httpx2.Client(transport=httpx2.MockTransport(fake)))
    yield fake
    _http.set_client_factory(_http.default_client_factory)


@pytest.fixture(scope="module")
def fmnist_meta() -> dict:
    return get_dataset("fashion-mnist", "train").meta()


def write_set(path: Path, backbone, dataset: dict, per_class: int = 2, seed: int = 0, run: dict | None = None) -> Path:
    """A set of random latents of ``backbone`` (any latent decodes), saved as a set file."""
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn((NUM_CLASSES * per_class, *backbone.latent_shape), generator=g)
    labels = torch.arange(NUM_CLASSES).repeat_interleave(per_class)
    run = run or {"method": "dm", "ipc": per_class, "steps": 3, "seed": seed,
                  "config": {"dataset": "fashion-mnist", "ipc": per_class, "steps": 3, "backbone": backbone.source,
                             "output": str(path.parent.resolve()), "data_dir": str(path.parent.resolve() / "data")}}
    SyntheticSet(latents, labels, backbone=backbone.describe(), dataset=dataset, run=run).save(path)
    return path


def metadata(path) -> dict:
    with safe_open(str(path), framework="pt") as f:
        return f.metadata()


def decoded(path, **kw) -> torch.Tensor:
    return gendistill.load_set(path, raw=True, **kw).decode()


@pytest.fixture
def hub_vae(hub, tiny_vae_dir) -> str:
    """The tiny VAE as the Hub model repo ``org/tiny-vae`` at commit REV (in the cache)."""
    hub.add("model", "org/tiny-vae", tiny_vae_dir)
    return f"org/tiny-vae@{REV}"


# ------------------------------------------------------------------------------------------------ references


def test_reference_forms(hub, hub_vae, tiny_vae_dir):
    assert split_revision("org/x@abc") == ("org/x", "abc") and split_revision("org/x") == ("org/x", None)
    shipped = load_backbone("fashion-mnist-vae")
    assert shipped.reference == {"type": "shipped",
                                 "name": "fashion-mnist-vae"} and shipped.source == "fashion-mnist-vae"
    assert reference_for("pixel") == {"type": "builtin", "name": "pixel"}
    local = load_backbone(str(tiny_vae_dir))
    assert local.reference == {"type": "local", "name": tiny_vae_dir.name}
    for source, revision in (("org/tiny-vae", None), ("org/tiny-vae", REV), (hub_vae, None)):
        b = load_backbone(source, revision=revision)
        assert b.reference == {"type": "hub", "repo_id": "org/tiny-vae", "revision": REV}  # pinned to the commit
        assert ref_source(b.reference) == hub_vae and b.weights_sha256() == local.weights_sha256()
    with pytest.raises(ValueError, match="give one"):
        load_backbone(hub_vae, revision=REV2)
    with pytest.raises(ValueError, match="applies to Hub repos"):
        load_backbone("fashion-mnist-vae", revision=REV)


def _test_module(name: str):
    """A test module of tests/backbones/ for its tiny-model helpers (imported once, under a name of its own)."""
    import importlib.util
    import sys

    key = f"_hub_helpers_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, ROOT / "tests" / "backbones" / f"{name}.py")
        sys.modules[key] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules[key]


def _gan_dir(d: Path) -> Path:
    GANBackbone(_test_module("test_gan").tiny_generator()).save_pretrained(d)
    return d


def _ldm_dir(d: Path, vae_dir: Path) -> Path:
    """A class-conditional diffusion directory whose VAE lives inside it (vae.source "vae": relative, portable)."""
    _test_module("test_diffusion").tiny_backbone(vae_dir).save_pretrained(d)
    shutil.copytree(vae_dir, d / "vae")
    info = json.loads((d / "gendistill.json").read_text())
    info["vae"]["source"] = "vae"
    (d / "gendistill.json").write_text(json.dumps(info))
    return d


def _sd_dir(d: Path) -> Path:
    return _test_module("test_diffusion").save_tiny_sd(d)


@pytest.mark.parametrize("kind", fast_first(["vae", "gan", "diffusion", "text-diffusion"]))
def test_every_kind_loads_from_a_hub_repo_id_and_its_sets_name_it(hub, tmp_path, tiny_vae_dir, fmnist_meta, kind):
    make = {"vae": lambda d: save_tiny_vae(d), "gan": _gan_dir, "diffusion": lambda d: _ldm_dir(d, tiny_vae_dir),
            "text-diffusion": _sd_dir}
    folder = make[kind](tmp_path / kind)
    kwargs = dict(image_shape=(1, 28, 28), class_names=FASHION_CLASSES, options={"decode_steps": 2}
                  if "diffusion" in kind else None)
    local = load_backbone(str(folder), **kwargs)
    hub.add("model", f"org/{kind}", folder)
    b = load_backbone(f"org/{kind}", revision=REV, **kwargs)
    assert b.kind == kind.split("-")[-1] and b.weights_sha256() == local.weights_sha256()
    assert b.reference == {"type": "hub", "repo_id": f"org/{kind}", "revision": REV}
    if kind == "text-diffusion":
        assert b.text_conditioned
    # a set made with it names the pinned repo, and decodes from the cache alone
    path = write_set(tmp_path / "set.safetensors", b, fmnist_meta, per_class=1)
    record = json.loads(metadata(path)["gendistill.backbone"])
    assert record["source"] == f"org/{kind}@{REV}" and str(tmp_path) not in json.dumps(record)
    x = decoded(path)
    assert x.shape == (NUM_CLASSES, 1, 28, 28) and torch.isfinite(x).all()


@pytest.mark.parametrize("kind", ["vae", "gan", "diffusion"])
def test_save_pretrained_writes_a_model_card(tmp_path, tiny_vae_dir, kind):
    make = {"vae": lambda d: save_tiny_vae(d), "gan": _gan_dir, "diffusion": lambda d: _ldm_dir(d, tiny_vae_dir)}
    folder = make[kind](tmp_path / f"my-{kind}")
    card = ModelCard.load(folder / "README.md")
    assert "gendistill" in card.data.tags and f"backbone:{kind}" in card.data.tags and card.data.license
    assert f"gendistill {kind} backbone" in card.text and "## Quality" in card.text and "## Training" in card.text
    assert "No measured quality figures are recorded" in card.text  # a random test model has none: the card says so


@pytest.mark.parametrize("name", ["fashion-mnist-vae", "fashion-mnist-vae-c2", "fashion-mnist-vae-e12",
                                  "fashion-mnist-vae-e24", "fashion-mnist-gan", "fashion-mnist-ldm"])
def test_shipped_backbones_carry_their_card_and_measured_quality(name):
    d = ASSETS / name
    measured = json.loads((d / "gendistill.json").read_text())["measured"]
    assert (d / "README.md").read_text() == model_card(d)  # the committed card is the one the code writes
    card = ModelCard.load(d / "README.md")
    quality = measured["quality"]
    assert quality["command"] in card.text and measured["training"]["command"] in card.text
    for key in ("classifier_acc_real_test", "psnr_db", "classifier_acc_generated"):
        if key in quality:
            assert f"| {key} | {quality[key]} |" in card.text
    assert "fashion-mnist" in card.text and card.data.license == "mit"
    assert name in shipped_backbones()


# ----------------------------------------------------------------------------------------- portable set files


def test_a_set_file_records_no_path_of_this_machine(capsys, tmp_path, tiny_vae_dir, tiny_idx_dir):
    out = tmp_path / "deep" / "folder" / "s.safetensors"
    out.parent.mkdir(parents=True)
    assert_ok(cli(capsys, "init", "--backbone", tiny_vae_dir, "--data-dir", tiny_idx_dir, "--ipc", 1, "--out", out))
    text = json.dumps(metadata(out))
    assert str(tmp_path) not in text and str(tiny_vae_dir) not in text and str(tiny_idx_dir) not in text
    run = json.loads(metadata(out)["gendistill.run"])
    assert run["config"]["out"] == "s.safetensors" and run["config"]["data_dir"] == tiny_idx_dir.name  # folders by name


@pytest.mark.slow  # end to end (a recipe run, a training or several model loads): a second or more
def test_a_set_of_an_earlier_version_with_an_absolute_path_still_loads(capsys, tmp_path, fmnist_meta):
    shipped = load_backbone("fashion-mnist-vae")
    path = write_set(tmp_path / "new.safetensors", shipped, fmnist_meta, per_class=1)
    old = tmp_path / "old.safetensors"
    record = json.loads(metadata(path)["gendistill.backbone"])
    record.pop("ref")
    record["source"] = "/home/someone/gendistill/assets/backbones/fashion-mnist-vae"  # as earlier versions wrote it
    tensors = SyntheticSet.load(path)
    from safetensors.torch import save_file

    save_file({"latents": tensors.latents.detach(), "labels": tensors.labels}, str(old),
              {**metadata(path), "gendistill.backbone": json.dumps(record)})
    torch.testing.assert_close(decoded(old), decoded(path))
    assert_ok(cli(capsys, "sample", old, "--out", tmp_path / "g.png"))
    # re-saving it writes the portable reference
    SyntheticSet.load(old).save(tmp_path / "resaved.safetensors")
    assert json.loads(metadata(tmp_path / "resaved.safetensors")["gendistill.backbone"])["ref"] == {
        "type": "local",
        "name": "fashion-mnist-vae",
    }
    assert decoded(tmp_path / "resaved.safetensors").shape == (NUM_CLASSES, 1, 28, 28)


@pytest.mark.slow  # end to end (a recipe run, a training or several model loads): a second or more
def test_a_local_backbone_is_found_by_name_and_hash_elsewhere(capsys, tmp_path, monkeypatch, tiny_vae_dir, fmnist_meta):
    made = shutil.copytree(tiny_vae_dir, tmp_path / "machine-a" / "my-vae")
    path = write_set(tmp_path / "machine-a" / "set.safetensors", load_backbone(str(made)), fmnist_meta)
    want = decoded(path)
    monkeypatch.setenv("GENDISTILL_HOME", str(tmp_path / "other-user"))  # another machine: nothing loaded there before
    b = tmp_path / "machine-b"
    shutil.move(str(tmp_path / "machine-a"), b)
    torch.testing.assert_close(decoded(b / "set.safetensors"), want)  # the folder beside the set, by name + sha256
    assert b.joinpath("my-vae").resolve() == Path(
        gendistill.hub.remembered(load_backbone(str(made_b := b / "my-vae")).weights_sha256())[0]
    )
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(b / "set.safetensors", alone / "set.safetensors")
    monkeypatch.setenv("GENDISTILL_HOME", str(tmp_path / "third-user"))  # the set alone on a third machine
    line = assert_user_error(cli(capsys, "sample", alone / "set.safetensors", "--out", alone / "g.png"),
                             "'my-vae' (local", "not found", "--backbone")
    assert not (alone / "g.png").exists() and "beside the set: none" in line
    # a folder of that name with other weights: the hash check, with its override
    save_tiny_vae(alone / "my-vae", seed=5)
    assert_user_error(cli(capsys, "sample", alone / "set.safetensors", "--out", alone / "h.png"), "hash mismatch",
                      "--ignore-backbone-hash")
    assert_ok(cli(capsys, "sample", alone / "set.safetensors", "--out", alone / "h.png", "--ignore-backbone-hash"))
    # the right folder, named explicitly; from then on this machine knows it by its hash
    assert_ok(cli(capsys, "sample", alone / "set.safetensors", "--out", alone / "g.png", "--backbone", made_b))
    torch.testing.assert_close(decoded(alone / "set.safetensors"), want)


# ------------------------------------------------------------------------------------------------------- push


@pytest.fixture
def run_dir(capsys, tmp_path, hub_vae, fmnist_meta) -> Path:
    """A run directory as a recipe leaves it: a set made with the Hub VAE, its grid and a real (tiny) evaluation."""
    d = tmp_path / "run"
    d.mkdir()
    write_set(d / "set.safetensors", load_backbone(hub_vae), fmnist_meta)
    assert_ok(cli(capsys, "sample", d / "set.safetensors", "--out", d / "grid.png"))
    assert_ok(cli(capsys, "eval", d / "set.safetensors", "--epochs", 2, "--runs", 2, "--out", d / "eval.json"))
    return d


def test_push_dry_run_writes_the_exact_folder_with_a_card_that_passes_the_lint(capsys, tmp_path, run_dir, hub_vae):
    out = tmp_path / "to-upload"
    assert_ok(cli(capsys, "push", run_dir, "me/fmnist-dm", "--dry-run", out))
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.yaml", "eval.json", "grid.png",
                                                     "set.safetensors"]
    card = DatasetCard.load(out / "README.md")
    assert lint_card(out / "README.md") == []
    assert (
        card.data.license == "mit"
        and "gendistill" in card.data.tags
        and card.data.task_categories == ["image-classification"]
    )
    result = json.loads((run_dir / "eval.json").read_text())
    text = card.text
    assert f"{100 * result['mean']:.2f} +- {100 * result['std']:.2f}" in text and result["protocol"] in text
    assert "gendistill distill dm" in text and "--steps 3" in text  # the command, from the recorded config
    assert hub_vae in text and f"https://huggingface.co/org/tiny-vae/tree/{REV}" in text
    assert 'gendistill.load_set("me/fmnist-dm")' in text and "DataLoader" in text
    assert (
        f"{(out / 'set.safetensors').stat().st_size:,} bytes" in text
        and "float32 images of (1, 28, 28) per class" in text
    )
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["ipc"] == 2 and config["output"] == "run" and str(tmp_path) not in (out / "config.yaml").read_text()
    assert json.loads((out / "eval.json").read_text())["set"] == "set.safetensors"
    torch.testing.assert_close(decoded(out), decoded(run_dir / "set.safetensors"))
    # the folder is never replaced
    assert_user_error(cli(capsys, "push", run_dir, "me/fmnist-dm", "--dry-run", out), "already exists")


def test_push_bad_input_is_one_line_and_writes_nothing(capsys, tmp_path, tiny_vae_dir, fmnist_meta, hub, hub_vae):
    local = write_set(tmp_path / "local.safetensors", load_backbone(str(tiny_vae_dir)), fmnist_meta)
    out = tmp_path / "out"
    assert_user_error(cli(capsys, "push", local, "me/x", "--dry-run", out), "local folder", "push-backbone")
    assert_user_error(cli(capsys, "push", local, "not-a-repo-id", "--dry-run", out), "not a Hub repo id")
    assert_user_error(cli(capsys, "push", tmp_path / "missing", "me/x", "--dry-run", out), "does not exist")
    assert not out.exists()
    # a set made with a local folder, re-pointed at the same weights published on the Hub
    assert_ok(cli(capsys, "push", local, "me/x", "--dry-run", out, "--backbone", hub_vae))
    assert json.loads(metadata(out / "set.safetensors")["gendistill.backbone"])["ref"]["repo_id"] == "org/tiny-vae"
    assert_user_error(cli(capsys, "push", local, "me/y", "--dry-run", tmp_path / "o2", "--backbone",
                          "fashion-mnist-vae"), "makes (4, 7, 7)")


def test_card_lint_names_what_is_missing():
    assert lint_card("no front matter") == ["no YAML front matter (the card must start with ---)"]
    problems = lint_card("---\ntags: [gendistill]\n---\n\n# x\n")
    assert "front matter lacks 'license'" in problems and "front matter lacks 'task_categories'" in problems
    assert any("load_set" in p for p in problems)


@pytest.mark.slow  # end to end (a recipe run, a training or several model loads): a second or more
def test_push_uploads_the_dry_run_folder_through_the_hub_http_api(capsys, tmp_path, run_dir, fake_hub):
    assert_ok(cli(capsys, "push", run_dir, "me/fmnist-dm", "--dry-run", tmp_path / "dry"))
    out = assert_ok(cli(capsys, "push", run_dir, "me/fmnist-dm"))
    assert "c" * 40 in out and "https://huggingface.co/datasets/me/fmnist-dm" in out
    calls = [c for c in fake_hub.requests if not c[1].startswith("/api/agent")]
    assert ("POST", "/api/repos/create") in calls and ("POST", "/api/datasets/me/fmnist-dm/commit/main") in calls
    assert sorted(fake_hub.files) == sorted(p.name for p in (tmp_path / "dry").iterdir())
    for name, data in fake_hub.files.items():  # the dry-run folder's content (a safetensors header's key order varies)
        if name.endswith(".safetensors"):
            (tmp_path / "uploaded.safetensors").write_bytes(data)
            a, b = safe_open(str(tmp_path / "uploaded.safetensors"), "pt"), safe_open(str(tmp_path / "dry" / name),
                                                                                      "pt")
            assert a.metadata() == b.metadata() and all(torch.equal(a.get_tensor(k), b.get_tensor(k)) for k in b.keys())
        else:
            assert data == (tmp_path / "dry" / name).read_bytes(), name
    assert lint_card(fake_hub.files["README.md"].decode()) == []


@pytest.mark.slow  # end to end (a recipe run, a training or several model loads): a second or more
def test_push_http_failures_are_one_line(capsys, run_dir, fake_hub):
    fake_hub.fail["/api/repos/create"] = (401, None)
    assert_user_error(cli(capsys, "push", run_dir, "me/x"), "refused access", "hf auth login")
    fake_hub.fail["/api/repos/create"] = "connect"
    assert_user_error(cli(capsys, "push", run_dir, "me/x"), "cannot reach the Hub")
    assert not fake_hub.files


def test_push_backbone_dry_run_and_a_pointer_others_cannot_fetch(capsys, tmp_path, tiny_vae_dir):
    out = tmp_path / "vae-repo"
    assert_ok(cli(capsys, "push-backbone", tiny_vae_dir, "me/tiny-vae", "--dry-run", out))
    assert {"README.md", "config.json", "diffusion_pytorch_model.safetensors",
            "gendistill.json"} <= {p.name for p in out.iterdir()}
    assert ModelCard.load(out / "README.md").data.tags[0] == "gendistill"
    assert load_backbone(str(out)).weights_sha256() == load_backbone(str(tiny_vae_dir)).weights_sha256()
    ldm = tmp_path / "ldm"
    # its VAE pointer is an absolute path of this machine
    _test_module("test_diffusion").tiny_backbone(tiny_vae_dir).save_pretrained(ldm)
    assert_user_error(cli(capsys, "push-backbone", ldm, "me/ldm", "--dry-run", tmp_path / "ldm-repo"),
                      "others cannot fetch")
    assert not (tmp_path / "ldm-repo").exists()


# ------------------------------------------------------------------------------------------------------- pull


@pytest.fixture
def pushed(capsys, tmp_path, run_dir, hub) -> str:
    """The dry-run folder of ``run_dir`` as the Hub dataset repo ``me/fmnist-dm`` at REV (in the cache)."""
    assert_ok(cli(capsys, "push", run_dir, "me/fmnist-dm", "--dry-run", tmp_path / "dry"))
    hub.add("dataset", "me/fmnist-dm", tmp_path / "dry")
    return "me/fmnist-dm"


@pytest.mark.slow  # end to end (a recipe run, a training or several model loads): a second or more
def test_pull_offline_from_the_cache_and_load_by_repo_id(capsys, tmp_path, monkeypatch, run_dir, pushed):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GENDISTILL_HOME", str(tmp_path / "fresh-user"))
    out = assert_ok(cli(capsys, "pull", pushed))
    assert "in the Hub cache" in out and (tmp_path / "fmnist-dm" / "set.safetensors").is_file()
    assert sorted(p.name for p in (tmp_path / "fmnist-dm").iterdir()) == sorted(
        p.name for p in (tmp_path / "dry").iterdir()
    )
    want = decoded(run_dir / "set.safetensors")
    torch.testing.assert_close(decoded(tmp_path / "fmnist-dm"), want)
    torch.testing.assert_close(decoded(pushed), want)  # straight from the cache
    torch.testing.assert_close(decoded(f"{pushed}@{REV}"), want)
    assert_ok(cli(capsys, "pull", pushed, "--revision", REV, "--out", tmp_path / "pinned"))
    assert_ok(cli(capsys, "sample", tmp_path / "pinned" / "set.safetensors", "--out", tmp_path / "g.png"))


@pytest.mark.slow  # end to end (a recipe run, a training or several model loads): a second or more
def test_pull_bad_input_is_one_line_and_writes_nothing(capsys, tmp_path, monkeypatch, hub, pushed):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "o"
    assert_user_error(cli(capsys, "pull", "me/unknown", "--out", out), "'me/unknown' is not in the local Hub cache",
                      "HF_HUB_OFFLINE")
    assert_user_error(cli(capsys, "pull", pushed, "--revision", "v9", "--out", out), "revision 'v9'",
                      "not in the local Hub cache")
    card_less = tmp_path / "card-less"
    card_less.mkdir()
    shutil.copy(tmp_path / "dry" / "set.safetensors", card_less / "set.safetensors")
    hub.add("dataset", "me/card-less", card_less)
    assert_user_error(cli(capsys, "pull", "me/card-less", "--out", out), "no README.md")
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    assert_user_error(cli(capsys, "pull", pushed, "--out", out), "already exists")
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    shutil.rmtree(out)
    # the set's backbone is neither shipped nor cached: offline, no fetch
    shutil.rmtree(hub.root / "models--org--tiny-vae")
    assert_user_error(cli(capsys, "pull", pushed, "--out", out),
                      "model repo 'org/tiny-vae' is not in the local Hub cache")
    assert not out.exists()
    with pytest.raises(FileNotFoundError, match="neither a file"):
        gendistill.load_set("nowhere.safetensors")


def test_pull_hub_answers_are_one_line(capsys, tmp_path, fake_hub, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    out = tmp_path / "o"
    fake_hub.fail["/api/datasets/me/gone"] = (404, "RepoNotFound")
    assert_user_error(cli(capsys, "pull", "me/gone", "--out", out), "no dataset repo 'me/gone' on the Hub")
    fake_hub.fail["/api/datasets/me/there"] = (404, "RevisionNotFound")
    assert_user_error(cli(capsys, "pull", "me/there", "--revision", "v9", "--out", out), "has no revision 'v9'")
    fake_hub.fail["/api/datasets/me/far"] = "connect"
    assert_user_error(cli(capsys, "pull", "me/far", "--out", out), "cannot reach the Hub")
    assert not out.exists()
