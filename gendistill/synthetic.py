"""The synthetic set: latents (a parameter), labels (hard ids or soft), an optional learnable eval lr.

File contract (``*.safetensors``): tensors ``latents`` (in the set's storage dtype; int8 adds ``latents_scale`` and
``latents_zero_point``, int4 those and ``latents_shape``, sq4 ``latents_levels`` and ``latents_shape``, vq8/vq4
``latents_codebook`` and ``latents_shape``, see ``gendistill.storage``), ``labels`` and optional ``lr``;
string metadata ``gendistill.format``, ``gendistill.backbone`` / ``gendistill.dataset`` / ``gendistill.run`` and the
storage ledger ``gendistill.storage`` (JSON). Files written before the ledger existed load all the same (it is
computed on reading).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from . import __version__
from .backbones import Backbone
from .cache import LatentSplit
from .io import load_safetensors, save_safetensors
from .registry import Registry
from .sampler import lloyd
from .storage import LATENT_DTYPES, LEDGER_KEY, codec_of, decoder_record, get_codec, make_ledger, read_ledger
from .validate import check_records, check_set_tensors

FORMAT_VERSION = "1"
INITS: Registry = Registry("initialisation")
HASH_FLAG = "--ignore-backbone-hash"
DEFAULT_INIT_MODEL = "fashion-mnist-ldm"  # the diffusion model of --init diffusion / diffusion-prototype


class SyntheticSet(nn.Module):
    def __init__(self, latents: torch.Tensor, labels: torch.Tensor, lr: float | torch.Tensor | None = None,
                 backbone: dict | None = None, dataset: dict | None = None, run: dict | None = None,
                 latent_dtype: str = "float32", decoder: dict | None = None):
        super().__init__()
        if labels.ndim not in (1, 2) or len(labels) != len(latents):
            raise ValueError(f"{len(latents)} latents but labels of shape {tuple(labels.shape)}; "
                             f"expected ({len(latents)},) or ({len(latents)}, classes)")
        self.latents = nn.Parameter(latents.detach().clone().float())
        self.register_buffer("labels", labels.detach().clone())
        self.lr = (
            None if lr is None else nn.Parameter(torch.as_tensor(lr, dtype=torch.float32).detach().clone().reshape(()))
        )
        self.backbone_meta = dict(backbone or {})
        self.dataset_meta = dict(dataset or {})
        self.run_meta = dict(run or {})
        # the storage dtype the set is written in (optimised in float32)
        self.latent_dtype = get_codec(latent_dtype).name
        # the decoder's size (``storage.decoder_record``), for the ledger
        self.decoder = dict(decoder) if decoder else None

    # -- views ----------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.latents)

    @property
    def soft(self) -> bool:
        return self.labels.ndim == 2

    @property
    def hard_labels(self) -> torch.Tensor:
        return self.labels.argmax(1) if self.soft else self.labels

    @property
    def num_classes(self) -> int:
        if "num_classes" in self.dataset_meta:
            return int(self.dataset_meta["num_classes"])
        return self.labels.shape[1] if self.soft else int(self.labels.max()) + 1

    @property
    def ipc(self) -> int:
        counts = torch.bincount(self.hard_labels, minlength=self.num_classes)
        return int(counts.max())

    def class_indices(self, c: int) -> torch.Tensor:
        return torch.nonzero(self.hard_labels == c).flatten()

    # -- creation ---------------------------------------------------------------------------------------
    @classmethod
    def initialise(cls, method: str, real: LatentSplit, ipc: int, backbone: Backbone, dataset: dict,
                   generator: torch.Generator | None = None, run: dict | None = None,
                   init_model: str | Backbone | None = None, model_options: dict | None = None,
                   latent_dtype: str = "float32") -> SyntheticSet:
        """``ipc`` latents per class by an INITS method, from ``real``: the cached latents of the train split, or its
        images (``real.space == "pixel"``, a backbone without a latent cache) of which only the picked ones are encoded.
        A method that samples a generative model (``--init diffusion``) gets ``init_model`` (see
        ``load_init_model``)."""
        if ipc < 1:
            raise ValueError(f"--ipc must be at least 1, got {ipc}")
        make = INITS.get(method)
        extra = {}
        if getattr(make, "uses_model", False):
            extra["model"] = load_init_model(init_model, backbone, dataset, model_options)
            run = {**(run or {}), "init_model": {"source": extra["model"].source,
                                                 "sha256": extra["model"].weights_sha256(),
                                                 "options": extra["model"].options()}}
        latents = torch.cat([make(real, c, ipc, generator, backbone=backbone, **extra).detach().cpu()
                             for c in range(real.num_classes)])
        labels = torch.arange(real.num_classes).repeat_interleave(ipc)
        if real.space == "pixel" and getattr(make, "selects_real", False):  # picked images: encode them, in one go
            device = next(backbone.parameters(), latents).device
            with torch.no_grad():
                latents = backbone.encode(latents.to(device), labels=labels).detach().cpu()
        return cls(latents, labels, backbone=backbone.describe(), dataset=dataset, run={"init": method, **(run or {})},
                   latent_dtype=latent_dtype, decoder=decoder_record(backbone))

    # -- decoding -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def decode(self, backbone: Backbone, batch: int = 256, clamp: bool = True) -> torch.Tensor:
        """Images in [0, 1] (N, C, H, W), decoded ``batch`` latents at a time."""
        device = next(backbone.parameters(), self.latents).device
        out = [backbone.decode(self.latents[i : i + batch].to(device)).float() for i in range(0, len(self), batch)]
        x = torch.cat(out)
        return x.clamp(0, 1) if clamp else x

    # -- files --------------------------------------------------------------------------------------------
    def metadata(self, run: dict | None = None) -> dict[str, str]:
        """The file's metadata; the backbone named portably and the run config without this machine's paths (hub)."""
        from .hub import portable_backbone, portable_run

        return {
            "gendistill.format": FORMAT_VERSION,
            "gendistill.backbone": json.dumps(portable_backbone(self.backbone_meta), sort_keys=True),
            "gendistill.dataset": json.dumps(self.dataset_meta, sort_keys=True),
            "gendistill.run": json.dumps(portable_run({"package_version": __version__, **self.run_meta, **(run or {})}),
                                         sort_keys=True, default=str),
        }

    def stored_tensors(self) -> dict[str, torch.Tensor]:
        """The tensors a set file holds: the latents in the storage dtype (int8 with its scales), labels, lr."""
        tensors = {**get_codec(self.latent_dtype).encode(self.latents.detach().float().cpu()),
                   "labels": self.labels.detach().cpu()}
        if self.lr is not None:
            tensors["lr"] = self.lr.detach().reshape(()).cpu()
        return tensors

    def ledger(self, tensors: dict[str, torch.Tensor] | None = None) -> dict:
        """The storage ledger (``gendistill.storage``) of the set as written: bytes by part, budget, decoder beside."""
        return make_ledger(tensors or self.stored_tensors(), self.num_classes, self.dataset_meta.get("image_shape"),
                           self.decoder)

    @torch.no_grad()
    def round_trip_(self) -> SyntheticSet:
        """Replace the latents by what the file will hold (quantised to the storage dtype and read back), so that what
        is evaluated is what is saved. A no-op for float32."""
        if self.latent_dtype != "float32":
            codec = get_codec(self.latent_dtype)
            self.latents.copy_(codec.decode(codec.encode(self.latents.detach().float().cpu())).to(self.latents.device))
        return self

    def save(self, path: str | Path, run: dict | None = None) -> None:
        tensors = self.stored_tensors()
        meta = self.metadata(run)
        meta[LEDGER_KEY] = json.dumps(self.ledger(tensors), sort_keys=True)
        save_safetensors(tensors, path, meta)

    @classmethod
    def load(cls, path: str | Path, backbone: Backbone | None = None, ignore_hash: bool = False) -> SyntheticSet:
        tensors, meta, records = read_set_file(path)
        if meta.get("gendistill.decoded") == "1":
            raise ValueError(f"{str(path)!r} holds decoded images, not latents; train on it directly "
                             "(or pass the set it was exported from)")
        codec, latents = stored_latents(path, tensors)
        ledger = read_ledger(tensors, meta, records["dataset"])
        s = cls(latents, tensors["labels"], tensors.get("lr"), records["backbone"], records["dataset"], records["run"],
                latent_dtype=codec.name, decoder=ledger.get("decoder"))
        if backbone is not None:
            s.check_backbone(backbone, ignore_hash)
        return s

    def check_backbone(self, backbone: Backbone, ignore_hash: bool = False) -> None:
        space, have_space = self.backbone_meta.get("latent_space"), backbone.latent_space
        if space != have_space:
            fix = f"load it with --latent-space {space}" if space else "load a backbone with a single latent space"
            raise ValueError(f"the set's latents are in latent space {space!r} but backbone {backbone.source!r} was "
                             f"loaded with latent space {have_space!r}; {fix}")
        if tuple(self.latents.shape[1:]) != tuple(backbone.latent_shape):
            raise ValueError(f"the set's latents have shape {tuple(self.latents.shape[1:])} but backbone "
                             f"{backbone.source!r} makes {tuple(backbone.latent_shape)}; "
                             f"use the backbone the set was made with ({self.backbone_meta.get('source')})")
        want, have = self.backbone_meta.get("sha256"), backbone.weights_sha256()
        if want != have and not ignore_hash:
            raise ValueError(f"backbone hash mismatch: the set was made with {str(want)[:16]}, "
                             f"{backbone.source!r} has {have[:16]}; "
                             f"pass the recorded backbone ({self.backbone_meta.get('source')}) or {HASH_FLAG} to "
                             "decode anyway")


def read_set_file(path) -> tuple[dict[str, torch.Tensor], dict[str, str], dict]:
    """Tensors, raw metadata and parsed records of a set file or a decoded-images file, every field checked
    (gendistill/validate.py): a damaged or hand-edited file is refused in one line naming the field."""
    tensors, meta = load_safetensors(path)
    records = read_metadata(path, meta)
    decoded = meta.get("gendistill.decoded") == "1"
    view = tensors
    if not decoded and "latents" in tensors:  # checked as the set holds them: float32, read back from the storage dtype
        view = {**tensors, "latents": stored_latents(path, tensors)[1]}
    check_set_tensors(path, view, records, decoded=decoded)
    return tensors, meta, records


def stored_latents(path, tensors: dict[str, torch.Tensor]):
    """``(codec, float32 latents)``: a set file's latents read back from their storage dtype (gendistill.storage)."""
    try:
        codec = codec_of(tensors)
    except ValueError as e:
        if "latents_codebook" in tensors or tensors["latents"].dtype == torch.uint8:  # a damaged int4/vq file
            raise ValueError(f"{str(path)!r}: {e}") from None
        dtype = str(tensors["latents"].dtype).replace("torch.", "")
        raise ValueError(f"{str(path)!r}: tensor 'latents' is stored as {dtype}, which gendistill does not read "
                         f"(supported: {', '.join(LATENT_DTYPES.names())}); re-create the file") from None
    return codec, codec.decode(tensors, where=repr(str(path)))


def read_metadata(path, meta: dict[str, str]) -> dict:
    """The parsed ``gendistill.*`` records of a file, with one-line errors for missing or unknown versions or records
    of the wrong type."""
    if "gendistill.format" not in meta:
        raise ValueError(f"{str(path)!r} has no gendistill metadata; it was not written by gendistill (use `gendistill "
                         "init` or a recipe)")
    if meta["gendistill.format"] != FORMAT_VERSION:
        raise ValueError(f"{str(path)!r} has format version {meta['gendistill.format']!r}; "
                         f"this gendistill reads version {FORMAT_VERSION!r}; upgrade gendistill or re-create the file")
    out = {}
    for key in ("backbone", "dataset", "run"):
        try:
            out[key] = json.loads(meta.get(f"gendistill.{key}", "{}"))
        except json.JSONDecodeError:
            raise ValueError(f"{str(path)!r}: metadata gendistill.{key} is not valid JSON; "
                             "re-create the file") from None
    check_records(path, out)
    return out


# -------------------------------------------------------------------------------------------- initialisers


# An initialiser is ``init(real, c, ipc, generator=None, backbone=None) -> (ipc, *latent_shape)``. One marked
# ``selects_real`` returns rows of ``real``: from an image split (a backbone without a latent cache) those are images,
# and ``SyntheticSet.initialise`` encodes them, all classes in one call, so that only the chosen images are inverted.


def selects_real(fn):
    fn.selects_real = True
    return fn


def _needs_cache(method: str, real: LatentSplit, backbone: Backbone | None) -> None:
    if real.space != "latent":
        kind = backbone.kind if backbone is not None else "this"
        raise ValueError(f"init {method!r} uses the statistics of cached latents, which a {kind} backbone "
                         "does not build; use --init classmean, real or noise")


@INITS.register("real")
@selects_real
def init_real(real: LatentSplit, c: int, ipc: int, generator=None, backbone=None) -> torch.Tensor:
    """Random real samples of the class (their cached latents, or the inversions of just those images)."""
    return real.latents[real.sample_class(c, ipc, generator)]


@INITS.register("mean")
def init_mean(real: LatentSplit, c: int, ipc: int, generator=None, backbone=None) -> torch.Tensor:
    """The class-mean latent, plus a little noise so the ipc copies differ."""
    _needs_cache("mean", real, backbone)
    z = real.latents[real.class_indices(c)]
    mean, std = z.mean(0), z.std(0)
    return mean + 0.1 * std * torch.randn((ipc, *z.shape[1:]), generator=generator)


@INITS.register("classmean")
def init_classmean(real: LatentSplit, c: int, ipc: int, generator=None, backbone=None) -> torch.Tensor:
    """A generator's class-mean w (GLaD) in the backbone's latent space, plus 0.1 std of noise so the ipc differ."""
    if backbone is None or not hasattr(backbone, "class_mean_latents"):
        kind = backbone.kind if backbone is not None else "this"
        raise ValueError(f"init 'classmean' needs a generator backbone (gan); with a {kind} backbone use --init mean")
    return backbone.class_mean_latents(c, ipc, generator).cpu()


@INITS.register("noise")
def init_noise(real: LatentSplit, c: int, ipc: int, generator=None, backbone=None) -> torch.Tensor:
    """Random samples: a generator's random z of the class, else Gaussian noise with the real latents' statistics."""
    if backbone is not None and hasattr(backbone, "random_latents"):
        return backbone.random_latents(c, ipc, generator).cpu()
    _needs_cache("noise", real, backbone)
    z = real.latents
    return z.mean(0) + z.std(0) * torch.randn((ipc, *z.shape[1:]), generator=generator)


def kmeans(x: torch.Tensor, k: int, iters: int = 20, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means on rows of ``x`` (N, D): centres (k, D) and assignments (N,)."""
    return lloyd(x, x[torch.randperm(len(x), generator=generator)[:k]].clone(), iters)


@INITS.register("kmeans")
@selects_real
def init_kmeans(real: LatentSplit, c: int, ipc: int, generator=None, backbone=None) -> torch.Tensor:
    """Representative real samples (DREAM): the member nearest each of ``ipc`` k-means centres of the class (k-means
    of the images for a backbone without a latent cache, then only the chosen ones are encoded)."""
    idx = real.class_indices(c)
    if ipc > len(idx):
        raise ValueError(f"class {c} has {len(idx)} real samples, fewer than the {ipc} asked for; lower --ipc")
    z = real.latents[idx].flatten(1)
    centres, _ = kmeans(z, ipc, generator=generator)
    d = torch.cdist(centres, z)
    chosen = []
    for j in range(ipc):  # nearest member not already taken, so the ipc latents are distinct
        for i in d[j].argsort():
            if int(i) not in chosen:
                chosen.append(int(i))
                break
    return real.latents[idx[torch.tensor(chosen)]]


@INITS.register("herding")
@selects_real
def init_herding(real: LatentSplit, c: int, ipc: int, generator=None, backbone=None) -> torch.Tensor:
    """Coreset by herding (``gendistill.select.herding``) on the class's flattened latents (images without a cache)."""
    from .select import herding

    idx = real.class_indices(c)
    return real.latents[idx[herding(real.latents[idx].flatten(1), ipc)]]


@INITS.register("kcenter")
@selects_real
def init_kcenter(real: LatentSplit, c: int, ipc: int, generator=None, backbone=None) -> torch.Tensor:
    """Coreset by greedy k-center (``gendistill.select.kcenter``) on the class's flattened latents (or images)."""
    from .select import kcenter

    idx = real.class_indices(c)
    return real.latents[idx[kcenter(real.latents[idx].flatten(1), ipc)]]


# ---------------------------------------------------------------------------------- generative initialisers


# An initialiser marked ``uses_model`` samples a diffusion model (DiffusionBackbone) and gets it as ``model``; what it
# returns is expressed in the set's backbone space (``model.to_backbone``): the noise latents for that very model, the
# denoised VAE latents for its VAE, otherwise the backbone's encoding of the generated images (pixel: the images).


def uses_model(fn):
    fn.uses_model = True
    return fn


def set_backbone_options(source: str, init: str, options: dict | None) -> dict | None:
    """The load-time options (diffusion settings) for a set's backbone ``source``: all of ``options``, unless that
    backbone takes none and ``init`` samples a model, which then gets them (``--init diffusion --guidance-scale 2``)."""
    from .backbones import BACKBONES, backbone_kind, resolve_source

    if not any(v is not None for v in (options or {}).values()) or not getattr(INITS.get(init), "uses_model", False):
        return options
    return options if BACKBONES.get(backbone_kind(resolve_source(source))).option_names else None


def load_init_model(init_model: str | Backbone | None, backbone: Backbone, dataset: dict, options: dict
                    | None = None) -> Backbone:
    """The diffusion model a ``uses_model`` initialiser samples: ``init_model`` (a loaded backbone, or a source loaded
    with ``options`` and the dataset's image shape and class names); if None, the set's backbone when it is a diffusion
    one, else the shipped ``fashion-mnist-ldm``. On the set's backbone's device."""
    from .backbones import load_backbone, shipped_backbones

    if isinstance(init_model, Backbone):
        model = init_model
    elif init_model is None and backbone.kind == "diffusion":
        model = backbone
    else:
        source = init_model or DEFAULT_INIT_MODEL
        if source == DEFAULT_INIT_MODEL and not Path(source).exists() and source not in shipped_backbones():
            raise FileNotFoundError(f"the default --init-model {DEFAULT_INIT_MODEL!r} is not in "
                                    "gendistill/assets/backbones; make it with python recipes/train_diffusion.py "
                                    f"--output gendistill/assets/backbones/{DEFAULT_INIT_MODEL}, or pass "
                                    "--init-model DIR")
        shape = tuple(dataset["image_shape"]) if dataset.get("image_shape") else None
        model = load_backbone(source, image_shape=shape, options=options, class_names=dataset.get("classes"))
    if model.kind != "diffusion":
        raise ValueError(f"--init-model {model.source!r} is a {model.kind} backbone; --init diffusion samples a "
                         "diffusion model (a directory with unet/ and scheduler/)")
    classes = dataset.get("num_classes")
    if classes is not None and model.num_classes != int(classes):
        raise ValueError(f"--init-model {model.source!r} has {model.num_classes} classes, the dataset {classes}; use a "
                         "model trained on it")
    return model.to(next(backbone.parameters(), torch.empty(0)).device)


@INITS.register("diffusion")
@uses_model
def init_diffusion(real: LatentSplit, c: int, ipc: int, generator=None, backbone=None, model=None) -> torch.Tensor:
    """Class-conditioned samples of a diffusion model (``--init-model``), in the set's backbone space."""
    with torch.no_grad():
        return model.to_backbone(model.random_latents(c, ipc, generator), backbone, labels=c).cpu()


def model_vae_latents(model, real: LatentSplit, c: int, backbone: Backbone, batch: int = 256) -> torch.Tensor:
    """Class ``c`` of ``real`` as latents of ``model``'s VAE: the cached latents when the set's backbone is that VAE,
    else its images (decoded from the backbone's latents where ``real`` holds latents) encoded by the VAE."""
    data = real.latents[real.class_indices(c)]
    if real.space == "latent" and backbone.weights_sha256() == model.vae.weights_sha256():
        return data
    device = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for i in range(0, len(data), batch):
            x = data[i : i + batch].to(device)
            if real.space == "latent":
                x = backbone.decode(x).clamp(0, 1)
            out.append(model.vae.encode(x).cpu())
    return torch.cat(out)


@INITS.register("diffusion-prototype")
@uses_model
def init_diffusion_prototype(real: LatentSplit, c: int, ipc: int, generator=None, backbone=None,
                             model=None) -> torch.Tensor:
    """Diffusion prototypes: the ``ipc`` k-means centres of the class's real VAE latents, DDIM-inverted to noise under
    the class's condition and re-decoded (the set's backbone space: the noise latents for the model itself)."""
    z0 = model_vae_latents(model, real, c, backbone)
    if ipc > len(z0):
        raise ValueError(f"class {c} has {len(z0)} real samples, fewer than the {ipc} asked for; lower --ipc")
    centres, _ = kmeans(z0.flatten(1).float(), ipc, generator=generator)
    device = next(model.parameters()).device
    with torch.no_grad():
        z = model.invert(centres.reshape(ipc, *z0.shape[1:]).to(device), labels=c)
        return model.to_backbone(z, backbone, labels=c).cpu()
