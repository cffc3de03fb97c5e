"""The backbone interface: images in [0, 1] <-> latent codes.

Every kind maps ``encode(x, labels=None)`` for images (N, *image_shape) in [0, 1] to latents (N, *latent_shape) and
``decode(z)`` back (not clamped, so gradients flow). ``decode_vjp`` pushes d(loss)/d(image) into the latents in
chunks (GLaD): objectives never see latents, backbones never see losses. ``labels`` (class ids) matter only to kinds
whose encode is class-conditional (GAN inversion starts at the class-mean w, DDIM inversion is class-conditioned);
the others ignore them. ``cheap_encode`` says whether encoding a whole train split is affordable (the latent cache);
``latent_space`` names the space of a kind that has several (gan: z, w, w+, f<k>) and is part of the backbone's
identity, as are ``options()``: load-time settings of a kind that change what a latent decodes to (diffusion: DDIM
steps, inversion timestep, guidance), recorded in a set file so that it is decoded with the same ones.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ..io import tensor_sha256
from ..registry import Registry

BACKBONES: Registry = Registry("backbone kind")
INFO_FILE = "gendistill.json"


def effective_match_space(kind: str, match_space: str) -> str:
    """The space an objective really matches in: a pixel backbone's latents are its images, so its space is always
    ``pixel`` whatever ``--match-space`` says (the config keeps the flag as given)."""
    return "pixel" if kind == "pixel" else match_space


def read_config(cfg_file: Path, source: str, what: str) -> dict:
    """A backbone directory's config.json as a dict; a missing or corrupt file is a one-line ValueError (``what``:
    what such a directory should be)."""
    if not cfg_file.is_file():
        raise ValueError(f"{source!r} has no config.json; {what}")
    try:
        return json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{str(cfg_file)!r} is not valid JSON ({e.msg}); re-create the backbone directory") from None


def class_ids(labels, n: int, num_classes: int, device=None) -> torch.Tensor:
    """``labels`` (one id, or ``n`` of them) as an (n,) int64 tensor of class ids in [0, num_classes), checked."""
    labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    if labels.numel() == 1:
        labels = labels.expand(n)
    if len(labels) != n:
        raise ValueError(f"{n} images but {len(labels)} labels")
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"labels must be class ids in [0, {num_classes}); the model has {num_classes} classes")
    return labels if device is None else labels.to(device)


class Backbone(nn.Module):
    kind: str = "base"
    cheap_encode: bool = True  # False: encode is an optimisation (GAN inversion); no latent cache of a whole split
    has_latent_spaces: bool = False  # True: ``from_pretrained(..., latent_space=NAME)`` picks one of several spaces
    latent_space: str | None = None
    option_names: tuple[str, ...] = ()  # load-time settings ``from_pretrained`` takes as keywords (see ``options``)
    reference: dict | None = None  # the portable name a set file records (``gendistill.hub``); set by ``load_backbone``

    def __init__(self, image_shape: tuple[int, int, int], source: str):
        super().__init__()
        self.image_shape = tuple(int(s) for s in image_shape)
        self.source = source
        self._sha256: str | None = None

    # -- the contract ---------------------------------------------------------------------------------
    @property
    def latent_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    def encode(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def scaling(self) -> dict:
        return {}

    def options(self) -> dict:
        """The values of ``option_names`` this backbone was loaded with (part of its identity; empty for most kinds)."""
        return {}

    def decoder_modules(self) -> list[nn.Module]:
        """The modules ``decode`` runs (whose size a set file reports beside its own): the whole backbone unless a kind
        knows better (a VAE: its decoder, not its encoder)."""
        return [self]

    def decoder_params(self) -> int:
        return sum(t.numel() for m in self.decoder_modules() for t in (*m.parameters(), *m.buffers()))

    def decoder_bytes(self) -> int:
        """Bytes of the weights ``decode`` needs, in their dtype (0 for the pixel backbone)."""
        return sum(t.numel() * t.element_size() for m in self.decoder_modules()
                   for t in (*m.parameters(), *m.buffers()))

    def decode_for_grad(self, z: torch.Tensor) -> torch.Tensor:
        """``decode(z)`` as ``decode_vjp`` differentiates it: the same values; a kind whose decode is a long chain
        (diffusion: K UNet calls) recomputes activations in the backward pass (checkpointing) to bound memory."""
        return self.decode(z)

    def decode_vjp(self, z: torch.Tensor, grad_x: torch.Tensor, chunk: int = 64) -> torch.Tensor:
        """d(loss)/d(z) given d(loss)/d(decode(z)), computed ``chunk`` latents at a time (bounded memory)."""
        if grad_x.shape[0] != z.shape[0]:
            raise ValueError(f"decode_vjp: {z.shape[0]} latents but {grad_x.shape[0]} image gradients")
        out = torch.empty_like(z)
        for i in range(0, z.shape[0], max(1, chunk)):
            zc = z[i : i + chunk].detach().requires_grad_(True)
            with torch.enable_grad():
                xc = self.decode_for_grad(zc)
                (g,) = torch.autograd.grad(xc, zc, grad_x[i : i + chunk].to(xc.dtype))
            out[i : i + chunk] = g
        return out

    # -- identity ---------------------------------------------------------------------------------------
    def weights_sha256(self) -> str:
        """sha256 of the weights (names, dtypes, shapes, bytes) and of the latent conventions (scaling, latent space).

        Scaling and the latent space live outside the weights but change what a latent means: they are part of the
        identity (a cache or set made in w+ is never taken for one in f2).
        """
        if self._sha256 is None:
            state = dict(self.state_dict()) or {"pixel": torch.tensor(self.image_shape)}
            scaling = self.scaling()
            if scaling:
                state["__scaling__"] = torch.tensor([float(scaling[k]) for k in sorted(scaling)], dtype=torch.float64)
            if self.latent_space is not None:
                state["__latent_space__"] = torch.tensor(list(self.latent_space.encode()), dtype=torch.uint8)
            if self.options():
                state["__options__"] = torch.tensor(list(json.dumps(self.options(), sort_keys=True).encode()),
                                                    dtype=torch.uint8)
            self._sha256 = tensor_sha256(state)
        return self._sha256

    def describe(self) -> dict:
        """The ``gendistill.backbone`` record of a set file (with ``latent_space`` for kinds that have several). The
        backbone is named portably (``ref``: a shipped name, a Hub repo + revision, or a folder's name; ``source`` its
        short form), never by a path of this machine."""
        from ..hub import ref_source, reference_for

        ref = self.reference or reference_for(self.source)
        record = {
            "kind": self.kind,
            "source": ref_source(ref),
            "ref": ref,
            "sha256": self.weights_sha256(),
            "latent_shape": list(self.latent_shape),
            "image_shape": list(self.image_shape),
            "scaling": self.scaling(),
        }
        if self.latent_space is not None:
            record["latent_space"] = self.latent_space
        if self.options():
            record["options"] = self.options()
        return record

    def save_pretrained(self, directory: str | Path, extra: dict | None = None) -> None:
        raise NotImplementedError

    @staticmethod
    def write_info(directory: str | Path, info: dict) -> None:
        """gendistill.json, then README.md: the model card made from it (``gendistill.cards.model_card``)."""
        from ..cards import write_model_card

        (Path(directory) / INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        write_model_card(directory)
