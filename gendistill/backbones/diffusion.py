"""A latent diffusion model as backbone: decode = K deterministic DDIM steps from a noise latent, then the VAE decoder;
encode = the VAE encoder, then DDIM inversion up to timestep T.

Two directory layouts are accepted, both diffusers-native:

- class-conditional (``recipes/train_diffusion.py``; the shipped ``fashion-mnist-ldm``): ``unet/`` holds a
  ``UNet2DModel`` with ``num_class_embeds = classes + 1`` (the last id is the null class of classifier-free guidance),
  ``scheduler/`` a ``DDIMScheduler``, and ``gendistill.json`` the kind "diffusion", the classes and a pointer to the VAE
  backbone whose latents the UNet was trained on (``vae.source``: a path relative to the directory or a shipped name;
  ``vae.sha256``: that backbone's hash, checked at load).
- text-conditioned (the Stable Diffusion layout): ``unet/`` (``UNet2DConditionModel``), ``text_encoder/`` (transformers
  ``CLIPTextModel``), ``tokenizer/``, ``vae/`` (``AutoencoderKL``) and ``scheduler/``. The dataset's class names become
  prompts through ``prompt_template`` ("a photo of a {name}"); the empty prompt is the null condition.

Latent: ``[x_T flattened, condition weights (classes + 1)]``. ``decode`` takes no label, so, as in the gan's z space,
the condition is part of the latent: the UNet is conditioned on ``weights @ table`` (the class-embedding rows, or the
prompts' text embeddings), one-hot where a latent is made (``encode(x, labels)``, the initialisers) and optimised with
x_T afterwards. Options (``load_backbone(..., options={...})``; recorded in a set file and part of the hash):
``decode_steps`` K (10), ``invert_to`` T (the last training timestep: full noise), ``guidance_scale`` (1: none; 0: the
null condition alone) and, for text-conditioned models, ``prompt_template``.

Schedule: the K timesteps ``round(T (K - i) / K)`` (diffusers' "trailing" spacing when T is the last training timestep),
then the clean end (alpha-bar 1). Each step is DDIM's update with eta 0, written out here so that it is differentiable
and exactly reversible: inversion runs the same updates upwards and re-solves each one's implicit equation with
``invert_refine`` fixed-point iterations (one UNet call each), so decoding an inversion gives the latent back closely.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..errors import first_line
from .base import BACKBONES, INFO_FILE, Backbone, class_ids, read_config
from .vae import VAEBackbone

DEFAULT_DECODE_STEPS = 10
DEFAULT_PROMPT_TEMPLATE = "a photo of a {name}"
MAX_GUIDANCE = 30.0
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
TEXT_PARTS = ("text_encoder", "tokenizer", "vae")
LOAD_ERRORS = (OSError, ValueError, RuntimeError, TypeError, KeyError)


class SoftClassEmbedding(nn.Embedding):
    """``nn.Embedding`` that also takes condition weights (N, num_embeddings) and gives ``weights @ table``: a one-hot
    row is that class's embedding, any other row a mixture. It replaces a ``UNet2DModel``'s class embedding (the same
    weight, the same state-dict key), so a latent's condition weights reach the UNet differentiably."""

    @classmethod
    def wrap(cls, emb: nn.Embedding) -> SoftClassEmbedding:
        return cls(emb.num_embeddings, emb.embedding_dim, _weight=emb.weight.data)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_floating_point():
            return x.to(self.weight.dtype) @ self.weight
        return super().forward(x)


def soft_class_unet(unet: nn.Module) -> nn.Module:
    """``unet`` with its class embedding (if it has an ``nn.Embedding`` one) taking condition weights too."""
    emb = getattr(unet, "class_embedding", None)
    if isinstance(emb, nn.Embedding) and not isinstance(emb, SoftClassEmbedding):
        unet.class_embedding = SoftClassEmbedding.wrap(emb)
    return unet


def unet_multiple(unet: nn.Module) -> int:
    """The side a ``UNet2DModel``'s input must be a multiple of (it cannot upsample to odd sizes); 1 for the others."""
    if type(unet).__name__ != "UNet2DModel":
        return 1  # UNet2DConditionModel upsamples to the skip connections' sizes itself
    return 2 ** (len(unet.config.block_out_channels) - 1)


def run_unet(unet: nn.Module, x: torch.Tensor, t, **cond) -> torch.Tensor:
    """The UNet's output for ``x`` at timestep(s) ``t`` (an int or a tensor); inputs are zero-padded on the bottom and
    right to a multiple of ``unet_multiple`` and the output is cropped back (training and sampling share this)."""
    h, w = x.shape[-2:]
    m = unet_multiple(unet)
    pad_h, pad_w = (-h) % m, (-w) % m
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h))
    if not torch.is_tensor(t):
        t = torch.tensor(int(t), device=x.device)
    return unet(x, t, **cond).sample[..., :h, :w]


def eps_and_x0(out: torch.Tensor, x: torch.Tensor, alpha_bar: float,
               prediction_type: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The noise and clean-latent estimates of a model output for ``x`` at a level with cumulative alpha
    ``alpha_bar``."""
    a, b = math.sqrt(alpha_bar), math.sqrt(1.0 - alpha_bar)
    if prediction_type == "epsilon":
        return out, (x - b * out) / a
    if prediction_type == "v_prediction":
        return a * out + b * x, a * x - b * out
    return (x - a * out) / b, out  # "sample"


def _load(what: str, where, loader):
    try:
        return loader()
    except LOAD_ERRORS as e:
        raise ValueError(f"could not load the {what} from {str(where)!r} ({first_line(e)}); re-create the "
                         "diffusion directory") from None


@BACKBONES.register("diffusion")
class DiffusionBackbone(Backbone):
    kind = "diffusion"
    cheap_encode = False  # encode is K x (1 + invert_refine) UNet calls per image: no latent cache of a whole split
    option_names = ("decode_steps", "invert_to", "guidance_scale", "prompt_template")
    invert_refine = 2  # fixed-point iterations per inversion step (set on an instance to trade time for exactness)
    batch = 256  # images per call in encode / sample_images

    def __init__(self, unet, scheduler, vae: VAEBackbone, classes, source: str = "diffusion", text_encoder=None,
                 tokenizer=None, vae_pointer: str | None = None, decode_steps: int | None = None, invert_to: int
                 | None = None, guidance_scale: float | None = None, prompt_template: str | None = None):
        """``unet`` (diffusers ``UNet2DModel`` with class embeddings, or ``UNet2DConditionModel`` with ``text_encoder``
        and ``tokenizer``), ``scheduler`` (its noise schedule and prediction type), ``vae`` the VAE backbone of its
        latents, ``classes`` the class names; ``vae_pointer`` is how a saved directory names that VAE."""
        super().__init__(vae.image_shape, source)
        self.unet = soft_class_unet(unet).eval().requires_grad_(False)
        self.scheduler = scheduler
        self.vae = vae
        self.classes = [str(c) for c in classes]
        self.vae_pointer = vae_pointer
        self.text_encoder = None if text_encoder is None else text_encoder.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.prediction_type = scheduler.config.prediction_type
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"{source!r}: scheduler prediction_type {self.prediction_type!r} is not one of "
                             f"{', '.join(PREDICTION_TYPES)}")
        self._alpha_bars = [float(a) for a in scheduler.alphas_cumprod]
        self.register_buffer("alpha_bars", scheduler.alphas_cumprod.detach().clone().float())  # in the hash, not used
        self._set_options(decode_steps, invert_to, guidance_scale, prompt_template)
        if self.text_conditioned:
            self.register_buffer("prompt_embeds", self._embed_prompts())  # (classes + 1, tokens, width): in the hash
        elif unet.config.num_class_embeds != len(self.classes) + 1:
            raise ValueError(f"{source!r}: the UNet has {unet.config.num_class_embeds} class embeddings, not "
                             f"{len(self.classes)} classes + 1 null class; re-create it with "
                             "recipes/train_diffusion.py")

    # -- options -------------------------------------------------------------------------------------------------------
    def _set_options(self, decode_steps, invert_to, guidance_scale, prompt_template) -> None:
        last = self.num_train_timesteps - 1
        T = last if invert_to is None else invert_to
        if int(T) != T or not 1 <= T <= last:
            raise ValueError(f"--invert-to {invert_to} is out of range: a timestep in [1, {last}] of {self.source!r}'s "
                             f"scheduler ({last}: full noise, the default)")
        K = DEFAULT_DECODE_STEPS if decode_steps is None else decode_steps
        if int(K) != K or not 1 <= K <= T:
            raise ValueError(f"--decode-steps {K} is out of range: 1 to {int(T)} (the --invert-to timestep); each "
                             "step is one UNet call (two with guidance)")
        s = 1.0 if guidance_scale is None else float(guidance_scale)
        if not (math.isfinite(s) and 0.0 <= s <= MAX_GUIDANCE):
            raise ValueError(f"--guidance-scale {guidance_scale} is out of range: [0, {MAX_GUIDANCE:g}] (1: no "
                             "guidance, 0: the null condition alone)")
        if prompt_template is not None and not self.text_conditioned:
            raise ValueError("--prompt-template applies to text-conditioned diffusion models; "
                             f"{self.source!r} is class-conditional (UNet2DModel class embeddings): leave it unset")
        template = DEFAULT_PROMPT_TEMPLATE if prompt_template is None else str(prompt_template)
        try:
            ok = "{name}" in template and template.format(name="x") is not None
        except (KeyError, IndexError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"--prompt-template {template!r} must hold {{name}} (the class name) and no other field, "
                             f"e.g. {DEFAULT_PROMPT_TEMPLATE!r}")
        self.invert_to, self.decode_steps, self.guidance_scale, self.prompt_template = int(T), int(K), s, template

    def options(self) -> dict:
        opts = {"decode_steps": self.decode_steps, "invert_to": self.invert_to, "guidance_scale": self.guidance_scale}
        if self.text_conditioned:
            opts["prompt_template"] = self.prompt_template
        return opts

    # -- structure -----------------------------------------------------------------------------------------------------
    @property
    def text_conditioned(self) -> bool:
        return self.text_encoder is not None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler.config.num_train_timesteps)

    @property
    def prompts(self) -> list[str]:
        """The text condition of every class, then the null condition (the empty prompt)."""
        return [self.prompt_template.format(name=name) for name in self.classes] + [""]

    @property
    def noise_shape(self) -> tuple[int, ...]:
        return tuple(self.vae.latent_shape)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return (math.prod(self.noise_shape) + self.num_classes + 1,)

    def timesteps(self, start: int | None = None) -> list[int]:
        """The K decode timesteps, from ``start`` (default ``invert_to``) down; the clean end follows the last."""
        T, K = self.invert_to if start is None else start, self.decode_steps
        return [round(T * (K - i) / K) for i in range(K)]

    def alpha_bar(self, t: int) -> float:
        return self._alpha_bars[t] if t >= 0 else 1.0

    def split(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(noise latents (N, *noise_shape), condition weights (N, classes + 1)) of latents (N, *latent_shape)."""
        n = math.prod(self.noise_shape)
        return z[:, :n].reshape(len(z), *self.noise_shape), z[:, n:]

    def join(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.flatten(1), weights.to(x.dtype)], dim=1)

    def condition_weights(self, labels, n: int) -> torch.Tensor:
        """One-hot condition weights (n, classes + 1) of class ids ``labels`` (None: the null condition)."""
        p = next(self.unet.parameters())
        ids = (
            torch.full((n,), self.num_classes, device=p.device)
            if labels is None
            else class_ids(labels, n, self.num_classes, p.device)
        )
        return F.one_hot(ids, self.num_classes + 1).to(p.dtype)

    # -- the UNet ------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def _embed_prompts(self) -> torch.Tensor:
        limit = int(self.text_encoder.config.max_position_embeddings)
        length = min(int(getattr(self.tokenizer, "model_max_length", limit) or limit), limit)
        ids = self.tokenizer(self.prompts, padding="max_length", max_length=length, truncation=True,
                             return_tensors="pt").input_ids
        return self.text_encoder(ids.to(self.text_encoder.device))[0].float()

    def _condition(self, weights: torch.Tensor) -> dict:
        if self.text_conditioned:
            table = self.prompt_embeds.to(weights.dtype)
            return {"encoder_hidden_states": torch.einsum("nk,kld->nld", weights, table)}
        return {"class_labels": weights}

    def _output(self, x: torch.Tensor, t: int, weights: torch.Tensor) -> torch.Tensor:
        """The model output with classifier-free guidance: ``out(null) + s (out(weights) - out(null))``."""
        s = self.guidance_scale
        if s == 1.0:
            return run_unet(self.unet, x, t, **self._condition(weights))
        null = self.condition_weights(None, len(x)).to(weights.dtype)
        if s == 0.0:
            return run_unet(self.unet, x, t, **self._condition(null))
        out_c, out_u = run_unet(self.unet, torch.cat([x, x]), t, **self._condition(torch.cat([weights, null]))).chunk(2)
        return out_u + s * (out_c - out_u)

    def _eps_x0(self, x: torch.Tensor, t: int, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return eps_and_x0(self._output(x, t, weights), x, self.alpha_bar(t), self.prediction_type)

    # -- latents <-> images --------------------------------------------------------------------------------------------
    def denoise(self, z: torch.Tensor, start: int | None = None, grad_checkpoint: bool = False) -> torch.Tensor:
        """The VAE latents that K deterministic DDIM steps (eta 0) make of latents ``z`` (differentiable; with
        ``grad_checkpoint`` each UNet call's activations are recomputed in the backward pass instead of kept)."""
        x, weights = self.split(z)
        steps = self.timesteps(start)
        for i, t in enumerate(steps):
            a_next = self.alpha_bar(steps[i + 1]) if i + 1 < len(steps) else 1.0
            if grad_checkpoint:
                eps, x0 = checkpoint(self._eps_x0, x, t, weights, use_reentrant=False)
            else:
                eps, x0 = self._eps_x0(x, t, weights)
            x = math.sqrt(a_next) * x0 + math.sqrt(1.0 - a_next) * eps
        return x

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(self.denoise(z))

    def decoder_modules(self):
        return [self.unet, *self.vae.decoder_modules(), *([self.text_encoder] if self.text_encoder is not None else [])]

    def decode_for_grad(self, z: torch.Tensor) -> torch.Tensor:
        return checkpoint(self.vae.decode, self.denoise(z, grad_checkpoint=True), use_reentrant=False)

    @torch.no_grad()
    def invert(self, z0: torch.Tensor, labels=None) -> torch.Tensor:
        """Latents whose decode gives back the VAE latents ``z0``: DDIM's updates run upwards to ``invert_to``,
        conditioned on ``labels`` (class ids; None: the null condition)."""
        weights = self.condition_weights(labels, len(z0)).to(z0.dtype)
        x, a_cur = z0, 1.0
        for t in reversed(self.timesteps()):
            x, a_cur = self._invert_step(x, a_cur, t, weights), self.alpha_bar(t)
        return self.join(x, weights)

    def _invert_step(self, x: torch.Tensor, a_cur: float, t: int, weights: torch.Tensor) -> torch.Tensor:
        """The x_t that the DDIM step from t maps back to ``x`` (at level ``a_cur``): x_t = up(x, eps(x_t, t)), solved
        by ``invert_refine`` fixed-point iterations from plain DDIM inversion's eps(x, t)."""
        a = self.alpha_bar(t)
        guess = x
        for _ in range(1 + max(0, int(self.invert_refine))):
            eps, _ = self._eps_x0(guess, t, weights)
            x0 = (x - math.sqrt(1.0 - a_cur) * eps) / math.sqrt(a_cur)
            guess = math.sqrt(a) * x0 + math.sqrt(1.0 - a) * eps
        return guess

    @torch.no_grad()
    def encode(self, x: torch.Tensor, labels=None) -> torch.Tensor:
        """Latents of images ``x`` in [0, 1]: the VAE's posterior means inverted to ``invert_to``, conditioned on the
        class ids ``labels`` (recommended: the model is class-conditional; None: the null condition)."""
        p = next(self.unet.parameters())
        labels = None if labels is None else class_ids(labels, len(x), self.num_classes)
        out = []
        for i in range(0, len(x), self.batch):
            z0 = self.vae.encode(x[i : i + self.batch].to(p.device))
            out.append(self.invert(z0, None if labels is None else labels[i : i + self.batch]))
        return torch.cat(out) if out else p.new_zeros(0, *self.latent_shape)

    # -- latents a set can start from ----------------------------------------------------------------------------------
    @torch.no_grad()
    def sample_latents(self, labels, generator: torch.Generator | None = None) -> torch.Tensor:
        """Latents of random samples of classes ``labels``: x_T ~ N(0, I) at full noise; at an earlier ``invert_to``,
        a full-noise sample's VAE latent noised to that level (q(x_T | x_0))."""
        p = next(self.unet.parameters())
        n = len(torch.as_tensor(labels).reshape(-1))
        weights = self.condition_weights(labels, n)
        x = torch.randn((n, *self.noise_shape), generator=generator).to(p.device, p.dtype)
        last = self.num_train_timesteps - 1
        if self.invert_to < last:
            z0 = self.denoise(self.join(x, weights), start=last)
            a = self.alpha_bar(self.invert_to)
            x = math.sqrt(a) * z0 + math.sqrt(1.0 - a) * torch.randn(x.shape, generator=generator).to(x)
        return self.join(x, weights)

    def random_latents(self, c: int, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` random samples of class ``c`` (the ``noise`` initialiser)."""
        return self.sample_latents(torch.full((n,), c, dtype=torch.long), generator)

    @torch.no_grad()
    def sample_images(self, labels, generator: torch.Generator | None = None, batch: int | None = None) -> torch.Tensor:
        """Random generated images in [0, 1] (not clamped) of classes ``labels``."""
        labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
        batch = batch or self.batch
        out = [self.decode(self.sample_latents(labels[i : i + batch], generator)) for i in range(0, len(labels), batch)]
        return torch.cat(out) if out else torch.zeros(0, *self.image_shape)

    @torch.no_grad()
    def to_backbone(self, z: torch.Tensor, target: Backbone, labels=None) -> torch.Tensor:
        """Latents ``z`` of this model as latents of ``target``: themselves for this very backbone, their denoised VAE
        latents for its VAE, else ``target.encode`` of their decoded images."""
        if target.weights_sha256() == self.weights_sha256():
            return z
        if target.kind == "vae" and target.weights_sha256() == self.vae.weights_sha256():
            return self.denoise(z)
        images = self.decode(z).clamp(0, 1)
        device = next(target.parameters(), images).device
        return target.encode(images.to(device), labels=None if labels is None else torch.as_tensor(labels))

    # -- files ---------------------------------------------------------------------------------------------------------
    def save_pretrained(self, directory, extra: dict | None = None) -> None:
        d = Path(directory)
        self.unet.save_pretrained(str(d / "unet"))
        self.scheduler.save_pretrained(str(d / "scheduler"))
        info = {"kind": self.kind, "image_shape": list(self.image_shape), "classes": self.classes,
                "conditioning": "text" if self.text_conditioned else "class"}
        if self.text_conditioned:
            self.text_encoder.save_pretrained(str(d / "text_encoder"))
            self.tokenizer.save_pretrained(str(d / "tokenizer"))
            self.vae.vae.save_pretrained(str(d / "vae"))
        else:
            info["vae"] = {"source": self.vae_pointer or self.vae.source, "sha256": self.vae.weights_sha256()}
        self.write_info(d, {**info, **(extra or {})})

    @classmethod
    def from_pretrained(cls, source: str, image_shape=None, class_names=None, **options):
        path = Path(source)
        if not path.is_dir():
            raise ValueError(f"{source!r} is not a directory; a diffusion backbone is a local directory with unet/ "
                             "and scheduler/")
        missing = [f"{d}/" for d in ("unet", "scheduler") if not (path / d).is_dir()]
        if missing:
            raise ValueError(f"{source!r} is not a diffusion directory: no {' or '.join(missing)}; make one with "
                             "recipes/train_diffusion.py or pass a Stable Diffusion layout")
        name = read_config(path / "unet" / "config.json", f"{source}/unet",
                           "a diffusion backbone's unet/ is a diffusers UNet").get("_class_name")
        from diffusers import DDIMScheduler

        scheduler = _load("DDIMScheduler", path / "scheduler",
                          lambda: DDIMScheduler.from_pretrained(str(path), subfolder="scheduler"))
        if name == "UNet2DConditionModel":
            return cls._text_conditioned(path, source, scheduler, image_shape, class_names, options)
        if name == "UNet2DModel":
            return cls._class_conditional(path, source, scheduler, image_shape, class_names, options)
        raise ValueError(f"{source}/unet holds a {name!r}; a diffusion backbone needs a UNet2DModel with "
                         "class embeddings (recipes/train_diffusion.py) or a UNet2DConditionModel with a text encoder")

    @classmethod
    def _class_conditional(cls, path: Path, source: str, scheduler, image_shape, class_names, options):
        from diffusers import UNet2DModel

        info_file = path / INFO_FILE
        info = json.loads(info_file.read_text()) if info_file.is_file() else {}
        pointer = info.get("vae")
        if not isinstance(pointer, dict) or not pointer.get("source") or not pointer.get("sha256"):
            raise ValueError(f"{source!r} has no VAE pointer ({INFO_FILE} with vae.source and vae.sha256); a "
                             "class-conditional diffusion directory is written by recipes/train_diffusion.py")
        classes = info.get("classes") or []
        if class_names is not None and len(class_names) != len(classes):
            raise ValueError(f"{source!r} was trained on {len(classes)} classes, the dataset has "
                             f"{len(class_names)}; train one for this dataset with recipes/train_diffusion.py")
        vae = VAEBackbone.from_pretrained(resolve_vae(path, pointer["source"]), image_shape=image_shape
                                          or info.get("image_shape"))
        have, want = vae.weights_sha256(), pointer["sha256"]
        if have != want:
            raise ValueError(f"the VAE {pointer['source']!r} that {source!r} points to has sha256 {have[:16]}, but "
                             f"the UNet was trained on the latents of one with {want[:16]}; restore that VAE or "
                             "retrain with recipes/train_diffusion.py")
        unet = _load("UNet2DModel", path / "unet", lambda: UNet2DModel.from_pretrained(str(path), subfolder="unet"))
        if unet.config.num_class_embeds is None:
            raise ValueError(f"{source}/unet is an unconditional UNet2DModel (no num_class_embeds); the diffusion "
                             "backbone needs class embeddings (recipes/train_diffusion.py)")
        return cls(unet, scheduler, vae, classes, source=source, vae_pointer=pointer["source"], **options)

    @classmethod
    def _text_conditioned(cls, path: Path, source: str, scheduler, image_shape, class_names, options):
        missing = [f"{d}/" for d in TEXT_PARTS if not (path / d).is_dir()]
        if missing:
            raise ValueError(f"{source!r} has a text-conditioned UNet but no {', '.join(missing)}; a Stable "
                             "Diffusion layout holds unet/, text_encoder/, tokenizer/, vae/ and scheduler/")
        if not class_names:
            raise ValueError(f"{source!r} is text-conditioned: its prompts need the dataset's class names (pass "
                             "class_names)")
        from diffusers import UNet2DConditionModel

        try:
            from transformers import AutoTokenizer, CLIPTextModel
        except ImportError:
            raise ValueError(f"{source!r} is text-conditioned: its text encoder needs `transformers` (pip install "
                             "'gendistill[text]')") from None

        tokenizer = _load("tokenizer", path / "tokenizer",
                          lambda: AutoTokenizer.from_pretrained(str(path / "tokenizer")))
        text_encoder = _load("CLIPTextModel", path / "text_encoder",
                             lambda: CLIPTextModel.from_pretrained(str(path / "text_encoder")))
        unet = _load("UNet2DConditionModel", path / "unet",
                     lambda: UNet2DConditionModel.from_pretrained(str(path), subfolder="unet"))
        width, cross = int(text_encoder.config.hidden_size), unet.config.cross_attention_dim
        if cross != width:
            raise ValueError(f"{source!r}: the UNet attends to {cross}-wide text embeddings but text_encoder/ makes "
                             f"{width}-wide ones; one CLIP text encoder matching the UNet is supported "
                             "(not SDXL's two)")
        vae = VAEBackbone.from_pretrained(str(path / "vae"), image_shape=image_shape)
        return cls(unet, scheduler, vae, class_names, source=source, text_encoder=text_encoder, tokenizer=tokenizer,
                   **options)


def resolve_vae(directory: Path, pointer: str) -> str:
    """A VAE pointer of a diffusion directory: a path relative to it when one exists there, else a shipped name or
    path."""
    local = directory / pointer
    if not Path(pointer).is_absolute() and local.is_dir():
        return str(local)
    from .loading import resolve_source

    resolved = resolve_source(pointer)
    if not Path(resolved).is_dir():
        raise ValueError(f"the VAE {pointer!r} that {str(directory)!r} points to is neither a directory next to it "
                         "nor a shipped backbone; restore it or retrain with recipes/train_diffusion.py")
    return resolved
