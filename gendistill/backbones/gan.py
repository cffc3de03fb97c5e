"""A class-conditional GAN generator as backbone (GLaD, IT-GAN): decode = synthesis, encode = GAN inversion.

The latent space is chosen by name when the backbone is loaded (``load_backbone(DIR, latent_space="w+")``):

- ``z``: ``[z, embed(class)]`` (``z_dim + embed_dim`` values), decoded by the mapping network then the synthesis.
  ``decode`` takes no label, so the class embedding is part of the latent (and is optimised with it).
- ``w``: one w (``w_dim``) shared by every synthesis block.
- ``w+``: one w per synthesis block, (``blocks``, ``w_dim``).
- ``f<k>``: GLaD's F-space: the activation after synthesis block ``k`` followed by the ws of the blocks after it,
  flattened into one vector (``C_k*H_k*W_k + (blocks-1-k)*w_dim``), decoded by the remaining blocks. Pushing a w to
  ``f<k>`` and decoding gives the same image as decoding that w.

``encode(x, labels)`` inverts images by optimisation: each latent starts at its class-mean w (the mean of the mapping
over ``MEAN_SAMPLES`` z, drawn from a fixed seed; the mean over classes without labels) expressed in the space, and
Adam minimises pixel MSE + ``invert_feature_weight`` x a relative feature distance under a fixed randomly initialised
ConvNet (seeded, not part of the weights). It is expensive: ``cheap_encode`` is False, so the pipeline never inverts a
whole train split (the real side is matched in pixel space) and initialisers invert only the samples they pick.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..errors import first_line
from .base import BACKBONES, Backbone, class_ids, read_config

if TYPE_CHECKING:
    from .gan_model import ConditionalStyleGenerator

DEFAULT_LATENT_SPACE = "w+"
GENERATOR_CLASS = "ConditionalStyleGenerator"  # gan_model.py (imported when needed: it imports diffusers)
# config keys a generator directory must have, by part (a config.json without them is not one of ours)
MAPPING_KEYS = ("num_classes", "z_dim", "embed_dim", "w_dim", "mapping_layers")
SYNTHESIS_KEYS = ("channels", "base_size", "image_size", "image_channels")


def latent_spaces(num_blocks: int) -> list[str]:
    return ["z", "w", "w+", *(f"f{k}" for k in range(num_blocks))]


class RandomFeatures(nn.Module):
    """A fixed, randomly initialised (seeded) small ConvNet whose activations give the inversion's feature loss."""

    def __init__(self, channels: int, seed: int = 0, widths: tuple[int, ...] = (16, 32, 64)):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        convs, cin = [], channels
        for c in widths:
            conv = nn.Conv2d(cin, c, 3, padding=1)
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * math.sqrt(2.0 / conv.weight[0].numel()))
                conv.bias.zero_()
            convs.append(conv)
            cin = c
        self.convs = nn.ModuleList(convs)
        self.requires_grad_(False).eval()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out, h = [], x * 2 - 1
        for i, conv in enumerate(self.convs):
            h = F.leaky_relu(conv(h), 0.2)
            out.append(h)
            if i < len(self.convs) - 1:
                h = F.avg_pool2d(h, 2)
        return out


@BACKBONES.register("gan")
class GANBackbone(Backbone):
    kind = "gan"
    cheap_encode = False  # encode is an optimisation per image: never for a whole train split
    has_latent_spaces = True
    MEAN_SAMPLES = 2048  # z per class behind the class-mean w
    MEAN_SEED = 0
    # inversion settings (set them on an instance to trade time for quality)
    invert_steps = 300
    invert_lr = 0.05
    invert_batch = 100
    invert_feature_weight = 0.1
    invert_tolerance = 0.01  # mean pixel MSE (PSNR 20 dB) above which encode warns

    def __init__(self, generator: ConditionalStyleGenerator, image_shape=None, source: str = "gan", latent_space: str
                 | None = None):
        """``image_shape`` is accepted like every kind's, but a generator makes one shape: its own (the pipeline
        checks that it is the dataset's)."""
        cfg = generator.config
        super().__init__((cfg.image_channels, cfg.image_size, cfg.image_size), source)
        self.generator = generator.eval().requires_grad_(False)
        space = latent_space or DEFAULT_LATENT_SPACE
        valid = latent_spaces(generator.num_blocks)
        if space not in valid:
            raise ValueError(f"unknown latent space {space!r} for gan backbone {source!r}; valid: {', '.join(valid)}")
        self.latent_space = space
        mean, std = self._class_w_stats()
        self.register_buffer("w_mean", mean, persistent=False)  # (classes, w_dim); not weights: not hashed or saved
        self.register_buffer("w_std", std, persistent=False)
        self.last_inversion_error: torch.Tensor | None = None  # per-image pixel MSE of the last encode
        self._features: dict = {}

    # -- structure -----------------------------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return int(self.generator.config.num_classes)

    @property
    def num_blocks(self) -> int:
        return self.generator.num_blocks

    @property
    def latent_spaces(self) -> list[str]:
        return latent_spaces(self.num_blocks)

    def _f_block(self) -> int | None:
        return int(self.latent_space[1:]) if self.latent_space.startswith("f") else None

    @property
    def latent_shape(self) -> tuple[int, ...]:
        cfg = self.generator.config
        if self.latent_space == "z":
            return (cfg.z_dim + cfg.embed_dim,)
        if self.latent_space == "w":
            return (cfg.w_dim,)
        if self.latent_space == "w+":
            return (self.num_blocks, cfg.w_dim)
        k = self._f_block()
        return (math.prod(self.generator.block_shape(k)) + (self.num_blocks - 1 - k) * cfg.w_dim,)

    @torch.no_grad()
    def _class_w_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(self.MEAN_SEED)
        G = self.generator
        p = next(G.parameters())
        means, stds = [], []
        for c in range(self.num_classes):
            z = torch.randn((self.MEAN_SAMPLES, G.config.z_dim), generator=g).to(p.device, p.dtype)
            w = G.mapping(z, torch.full((len(z),), c, dtype=torch.long, device=p.device))
            means.append(w.mean(0))
            stds.append(w.std(0))
        return torch.stack(means), torch.stack(stds)

    # -- latents <-> images --------------------------------------------------------------------------------------------
    def _split(self, latent: torch.Tensor):
        """(activation entering the first block to run or None, ws of the blocks to run, that block's index)."""
        G, n, B = self.generator, len(latent), self.num_blocks
        if self.latent_space == "z":
            return None, G.map_input(latent).unsqueeze(1).expand(-1, B, -1), 0
        if self.latent_space == "w":
            return None, latent.unsqueeze(1).expand(-1, B, -1), 0
        if self.latent_space == "w+":
            return None, latent, 0
        k = self._f_block()
        shape = G.block_shape(k)
        size = math.prod(shape)
        return latent[:, :size].reshape(n, *shape), latent[:, size:].reshape(n, B - 1 - k, G.config.w_dim), k + 1

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        x, ws, start = self._split(z)
        return (self.generator.synthesis(ws, start, x) + 1) / 2

    def from_w(self, w: torch.Tensor) -> torch.Tensor:
        """Latents in this backbone's space for ws (N, w_dim); the z space has no inverse of the mapping."""
        B = self.num_blocks
        if self.latent_space == "z":
            raise ValueError("a w cannot be expressed in the z space (the mapping network has no inverse)")
        if self.latent_space == "w":
            return w
        ws = w.unsqueeze(1).expand(-1, B, -1)
        if self.latent_space == "w+":
            return ws.clone()
        k = self._f_block()
        feat = self.generator.synthesis(ws[:, : k + 1], 0, None, stop=k + 1)
        return torch.cat([feat.flatten(1), ws[:, k + 1 :].flatten(1)], dim=1)

    def _labels(self, labels, n: int) -> torch.Tensor | None:
        return None if labels is None else class_ids(labels, n, self.num_classes, self.w_mean.device)

    @torch.no_grad()
    def start_latents(self, labels: torch.Tensor | None, n: int | None = None) -> torch.Tensor:
        """The class-mean latent of each label (the mean over classes where labels is None); the inversion's start.

        In the z space: ``[0, embed(class)]`` (the prior's mean z with the class's embedding)."""
        G = self.generator
        if labels is None:
            n = 1 if n is None else n
            if self.latent_space == "z":
                v = torch.cat([self.w_mean.new_zeros(G.config.z_dim), G.embed.weight.mean(0).to(self.w_mean.dtype)])
                return v.expand(n, -1).clone()
            return self.from_w(self.w_mean.mean(0).expand(n, -1))
        labels = self._labels(labels, len(labels))
        if self.latent_space == "z":
            return G.mapping_input(self.w_mean.new_zeros(len(labels), G.config.z_dim), labels)
        return self.from_w(self.w_mean[labels])

    # -- latents a set can start from ----------------------------------------------------------------------------------
    @torch.no_grad()
    def class_mean_latents(self, c: int, n: int, generator: torch.Generator | None = None,
                           noise: float = 0.1) -> torch.Tensor:
        """``n`` latents at the class-mean w of class ``c`` plus ``noise`` x its per-dimension std of Gaussian noise
        (so that the n differ); in the z space, ``[noise * N(0, I), embed(c)]``."""
        G = self.generator
        labels = torch.full((n,), c, dtype=torch.long, device=self.w_mean.device)
        if self.latent_space == "z":
            z = noise * torch.randn((n, G.config.z_dim), generator=generator).to(self.w_mean)
            return G.mapping_input(z, labels)
        eps = torch.randn((n, G.config.w_dim), generator=generator).to(self.w_mean)
        return self.from_w(self.w_mean[c] + noise * self.w_std[c] * eps)

    @torch.no_grad()
    def random_latents(self, c: int, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """The latents of ``n`` random samples of class ``c``: z ~ N(0, I) through the mapping, expressed in the
        space."""
        G = self.generator
        z = torch.randn((n, G.config.z_dim), generator=generator).to(self.w_mean)
        labels = torch.full((n,), c, dtype=torch.long, device=self.w_mean.device)
        if self.latent_space == "z":
            return G.mapping_input(z, labels)
        return self.from_w(G.mapping(z, labels))

    @torch.no_grad()
    def sample_images(self, labels: torch.Tensor, generator: torch.Generator | None = None,
                      batch: int = 500) -> torch.Tensor:
        """Random generated images in [0, 1] (not clamped) of the given classes."""
        labels = self._labels(labels, len(torch.as_tensor(labels).reshape(-1)))
        G = self.generator
        out = []
        for i in range(0, len(labels), batch):
            y = labels[i : i + batch]
            z = torch.randn((len(y), G.config.z_dim), generator=generator).to(self.w_mean)
            out.append((G(z, y) + 1) / 2)
        return torch.cat(out) if out else self.w_mean.new_zeros(0, *self.image_shape)

    # -- GAN inversion -------------------------------------------------------------------------------------------------
    def _feature_fn(self, device, dtype):
        key = (str(device), dtype)
        if key not in self._features:
            self._features[key] = RandomFeatures(self.image_shape[0]).to(device, dtype)
        return self._features[key]

    def encode(self, x: torch.Tensor, labels: torch.Tensor | int | None = None, steps: int | None = None,
               feature_net=None) -> torch.Tensor:
        """Latents whose decodes reconstruct ``x`` (N, C, H, W) in [0, 1], found by optimisation from the class-mean
        latent of ``labels`` (recommended: the GAN is class-conditional) in batches of ``invert_batch``. Warns when the
        mean pixel MSE stays above ``invert_tolerance``; ``last_inversion_error`` keeps the per-image MSE.
        ``feature_net`` (images in [0, 1] -> a tensor or list of tensors, e.g. a classifier's embedding) replaces the
        fixed random ConvNet of the feature loss."""
        steps = self.invert_steps if steps is None else int(steps)
        ref = self.w_mean
        x = x.to(ref.device, ref.dtype)
        labels = self._labels(labels, len(x))
        features = feature_net if feature_net is not None else self._feature_fn(ref.device, ref.dtype)
        batch = max(1, int(self.invert_batch))
        bar = tqdm(total=math.ceil(len(x) / batch) * steps, desc=f"gan inversion ({self.latent_space})",
                   dynamic_ncols=True, leave=False)
        out, errors = [], []
        with torch.enable_grad():
            for i in range(0, len(x), batch):
                z, err = self._invert(x[i : i + batch], None if labels is None else labels[i : i + batch], steps,
                                      features, bar)
                out.append(z)
                errors.append(err)
        bar.close()
        if not out:
            return ref.new_zeros(0, *self.latent_shape)
        self.last_inversion_error = torch.cat(errors).cpu()
        mean = float(self.last_inversion_error.mean())
        if mean > self.invert_tolerance:
            above = int((self.last_inversion_error > self.invert_tolerance).sum())
            warnings.warn(f"GAN inversion ({self.latent_space}) did not converge: mean reconstruction MSE {mean:.4f} > "
                          f"{self.invert_tolerance} after {steps} steps ({above}/{len(x)} images above); raise "
                          f"backbone.invert_steps or use a larger latent space (w+, f<k>)", stacklevel=2)
        return torch.cat(out)

    def _invert(self, x: torch.Tensor, labels: torch.Tensor | None, steps: int, features,
                bar) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.start_latents(labels, len(x)).detach().clone().requires_grad_(True)
        opt = torch.optim.Adam([z], lr=self.invert_lr)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5
                                                  * (1 + math.cos(math.pi * min(s, steps) / max(1, steps))))

        def as_list(f):
            return list(f) if isinstance(f, (list, tuple)) else [f]

        with torch.no_grad():
            targets = as_list(features(x))
            scales = [t.pow(2).flatten(1).mean(1).clamp_min(1e-8) for t in targets]
        for _ in range(steps):
            rec = self.decode(z)
            loss = (rec - x).pow(2).flatten(1).mean(1)
            if self.invert_feature_weight:
                dist = sum((f - t).pow(2).flatten(1).mean(1) / s
                           for f, t, s in zip(as_list(features(rec)), targets, scales))
                loss = loss + self.invert_feature_weight * dist / len(targets)
            opt.zero_grad(set_to_none=True)
            loss.sum().backward()  # per-image losses summed: each latent follows its own image (Adam is per element)
            opt.step()
            sched.step()
            bar.update(1)
        z = z.detach()
        with torch.no_grad():
            err = (self.decode(z) - x).pow(2).flatten(1).mean(1)
        return z, err

    # -- files ---------------------------------------------------------------------------------------------------------
    def save_pretrained(self, directory, extra: dict | None = None) -> None:
        self.generator.save_pretrained(str(directory))
        self.write_info(directory, {"kind": self.kind, "image_shape": list(self.image_shape),
                                    "latent_spaces": self.latent_spaces, **(extra or {})})

    @classmethod
    def from_pretrained(cls, source: str, image_shape=None, latent_space: str | None = None, **_):
        path = Path(source)
        cfg_file = path / "config.json"
        cfg = read_config(cfg_file, source, "a gan backbone is a directory written by recipes/train_gan.py")
        missing = [f"mapping.{k}" for k in MAPPING_KEYS if k not in cfg] + [f"synthesis.{k}" for k in SYNTHESIS_KEYS
                                                                            if k not in cfg]
        if missing:
            raise ValueError(f"{str(cfg_file)!r} lacks the generator structure ({', '.join(missing)} missing); "
                             f"it is not a {GENERATOR_CLASS} config: re-create it with recipes/train_gan.py")
        if latent_space is not None:  # a cheap, early check of the name (the backbone checks it again)
            valid = latent_spaces(len(cfg["channels"]))
            if latent_space not in valid:
                raise ValueError(f"unknown latent space {latent_space!r} for gan backbone {source!r}; valid: "
                                 f"{', '.join(valid)}")
        if cfg.get("_class_name") not in (None, GENERATOR_CLASS):
            raise ValueError(f"{source!r} holds a {cfg.get('_class_name')!r}, not a {GENERATOR_CLASS}; "
                             "pass a directory written by recipes/train_gan.py")
        from .gan_model import ConditionalStyleGenerator

        try:
            generator = ConditionalStyleGenerator.from_pretrained(str(path))
        except (OSError, ValueError, RuntimeError, TypeError) as e:
            raise ValueError(f"could not load the GAN generator from {source!r} ({first_line(e)}); re-create it with "
                             "recipes/train_gan.py") from None
        return cls(generator, image_shape=image_shape, source=source, latent_space=latent_space)
