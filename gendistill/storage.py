"""What a distilled set costs to store: latent storage dtypes, the storage ledger and the ``--ipc-budget`` arithmetic.

A set is compared with others by the bytes it holds, not only by its count of samples (IPC). The unit is the
*image equivalent per class*: ``budget = bytes / (num_classes x bytes of one float32 image of the dataset)``, so a
Fashion-MNIST set of budget 1 holds 784 float32 numbers per class: one image, or four 4x7x7 float32 latents, or eight
float16 ones. Following FreD, GLaD and D4M, the budget counts the set's *data* (the latents, with the scales an int8
set needs to be read back) and leaves out the decoder, which is reported beside it; the label bytes (and a learned lr)
are shown too, and a second budget figure counts them (``budget_ipc_with_labels``), but ``--ipc-budget`` sizes the set
by its data alone.

Storage dtypes (``LATENT_DTYPES``): ``float32``, ``float16``, ``bfloat16`` (a cast), ``int8`` (affine per channel:
for each index of the latents' dimension 1, ``q = clamp(round(z / scale) + zero_point, -128, 127)``; the file holds
``latents`` int8, ``latents_scale`` float32 (C,) and ``latents_zero_point`` int32 (C,); ``z ~ (q - zero_point) *
scale``, off by at most ``scale / 2``) and ``int4`` (the same with 16 levels, ``q`` in 0..15, two codes a byte: the
file's ``latents`` is uint8 (N, ceil(D / 2)) for D numbers per latent, low nibble first, and ``latents_shape`` int32
holds the latent's shape to unpack it); ``sq4`` (int4's packed codes, but each channel's 16 levels fitted to its
numbers by Lloyd's algorithm, ``latents_levels`` float32 (C, 16), instead of even steps from min to max). ``vq8``
and ``vq4`` quantise *vectors*: the C numbers of a latent at one
spatial position (dimension 1 of an (N, C, H, W) latent) are replaced by the nearest of K learned vectors (K = 256 for
``vq8``, one byte a position; K = 16 for ``vq4``, half a byte, packed as int4), the codebook (K, C) float32 fitted
to the set's own vectors by k-means when it is written (``latents_codebook``, counted in the set's bytes); a 4x7x7
code takes 49 bytes as vq8 against 98 as int4, and the VAE's channels are correlated enough that its images stay
close (docs/storage.md). Latents are always optimised in float32; the dtype applies when the set is written.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import torch

from .registry import Registry

LEDGER_KEY = "gendistill.storage"
LEDGER_VERSION = 1
BUDGET_COUNTS = "latents"  # what --ipc-budget counts: the latents (+ their int8 scales), not labels, lr or decoder
QUANTISATION_KEYS = ("latents_scale", "latents_zero_point", "latents_shape", "latents_codebook",  # int8/int4/vq/sq
                     "latents_levels")
FLOAT32_BYTES = 4
LATENT_DTYPES: Registry = Registry("latent dtype")
LABEL_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}  # soft labels' storage


@dataclass(frozen=True)
class Codec:
    """How latents are written in one storage dtype: ``encode`` gives the file's tensors, ``decode`` float32 latents."""

    name: str
    dtype: torch.dtype  # of the ``latents`` tensor in the file

    @property
    def bits(self) -> int:
        """Bits a stored latent number takes."""
        return torch.empty((), dtype=self.dtype).element_size() * 8

    def overhead_bytes(self, latent_shape) -> int:
        """Bytes the set holds besides the latents themselves to read them back (int8: scales and zero points)."""
        return 0

    def latent_bytes(self, latent_shape) -> int:
        """Bytes one latent of ``latent_shape`` (without the batch dimension) takes in the file."""
        return math.ceil(math.prod(int(s) for s in latent_shape) * self.bits / 8)

    def claims(self, tensors: dict[str, torch.Tensor]) -> bool:
        """Whether a file's tensors were written by this codec."""
        return tensors["latents"].dtype == self.dtype and not {"latents_codebook", "latents_levels"} & tensors.keys()

    def encode(self, latents: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"latents": latents.detach().to(self.dtype)}

    def decode(self, tensors: dict[str, torch.Tensor], where: str = "the set") -> torch.Tensor:
        return tensors["latents"].float()


for _name, _dtype in (("float32", torch.float32), ("float16", torch.float16), ("bfloat16", torch.bfloat16)):
    LATENT_DTYPES.register(_name)(Codec(_name, _dtype))


class Int8Codec(Codec):
    """Affine per-channel int8 (channel = dimension 1 of the latents): a float32 scale and an int32 zero point each."""

    QMIN, QMAX = -128, 127

    def overhead_bytes(self, latent_shape) -> int:
        return int(latent_shape[0]) * (4 + 4) if len(latent_shape) else 8

    def params(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = latents.detach().double()
        flat = z.transpose(0, 1).reshape(z.shape[1], -1) if z.ndim > 1 else z.reshape(1, -1)
        lo, hi = flat.min(1).values, flat.max(1).values
        scale = (hi - lo) / (self.QMAX - self.QMIN)
        zero = torch.round(self.QMIN - lo / scale.clamp_min(1e-300))
        # a constant channel v: scale |v| / QMAX and q - zero point = QMAX * sign(v); zero point 0, except for a
        # negative v with unsigned codes (int4: q = 0, zero point QMAX)
        const = scale <= 0
        scale = torch.where(const, torch.where(lo != 0, lo.abs() / self.QMAX, torch.ones_like(lo)), scale)
        negative_zero = self.QMAX if self.QMIN >= 0 else 0
        zero = torch.where(const, torch.where(lo < 0, torch.full_like(zero, negative_zero), torch.zeros_like(zero)),
                           zero)
        return scale.float(), zero.to(torch.int32)

    @staticmethod
    def _view(t: torch.Tensor, ndim: int) -> torch.Tensor:
        return t.reshape(1, -1, *([1] * (ndim - 2))) if ndim > 1 else t.reshape(())

    def encode(self, latents: torch.Tensor) -> dict[str, torch.Tensor]:
        if latents.numel() == 0:
            raise ValueError("an empty set cannot be stored as int8; use --latent-dtype float32")
        scale, zero = self.params(latents)
        s, zp = self._view(scale.double(), latents.ndim), self._view(zero.double(), latents.ndim)
        q = torch.clamp(torch.round(latents.detach().double() / s) + zp, self.QMIN, self.QMAX).to(torch.int8)
        return {"latents": q, "latents_scale": scale, "latents_zero_point": zero}

    def decode(self, tensors: dict[str, torch.Tensor], where: str = "the set") -> torch.Tensor:
        missing = [k for k in ("latents_scale", "latents_zero_point") if k not in tensors]
        if missing:
            raise ValueError(f"{where} holds int8 latents but no {' or '.join(repr(k) for k in missing)} tensor to "
                             "read them back; the file is incomplete: re-save the set (--latent-dtype int8 "
                             "writes both)")
        q, scale, zero = (
            tensors["latents"],
            tensors["latents_scale"].double().flatten(),
            tensors["latents_zero_point"].double().flatten(),
        )
        channels = q.shape[1] if q.ndim > 1 else 1
        if len(scale) != channels or len(zero) != channels:
            raise ValueError(f"{where}: int8 latents with {channels} channels but {len(scale)} scales and {len(zero)} "
                             "zero points; the file is inconsistent, re-save the set")
        return ((q.double() - self._view(zero, q.ndim)) * self._view(scale, q.ndim)).float()


LATENT_DTYPES.register("int8")(Int8Codec("int8", torch.int8))


def pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    """(N, D) codes in 0..15 as (N, ceil(D / 2)) uint8 bytes, two a byte, low nibble first."""
    q = q.to(torch.uint8).reshape(len(q), -1)
    if q.shape[1] % 2:
        q = torch.cat([q, q.new_zeros(len(q), 1)], 1)
    return (q[:, 0::2] | (q[:, 1::2] << 4)).contiguous()


def unpack_nibbles(packed: torch.Tensor, count: int) -> torch.Tensor:
    """The first ``count`` 4-bit codes of each row of :func:`pack_nibbles`' bytes, as uint8 (N, count)."""
    return torch.stack([packed & 0x0F, packed >> 4], 2).reshape(len(packed), -1)[:, :count]


def require(tensors: dict[str, torch.Tensor], keys, dtype: str, where: str) -> list[int]:
    """The latent shape a packed file's ``latents_shape`` holds ([] when it is not integers), after a one-line error
    naming any of ``keys`` the file lacks."""
    missing = [k for k in keys if k not in tensors]
    if missing:
        raise ValueError(f"{where} holds {dtype} latents but no {' or '.join(repr(k) for k in missing)} tensor to read "
                         f"them back; the file is incomplete: re-save the set (--latent-dtype {dtype} writes them)")
    shape = tensors["latents_shape"]
    return [int(d) for d in shape.flatten().tolist()] if shape.dtype in (torch.int32, torch.int64) else []


class Int4Codec(Int8Codec):
    """Affine per-channel 4-bit codes (0..15), packed two to a byte per latent, with the latent's shape beside."""

    QMIN, QMAX = 0, 15

    @property
    def bits(self) -> int:
        return 4

    def overhead_bytes(self, latent_shape) -> int:
        return super().overhead_bytes(latent_shape) + 4 * len(latent_shape)  # + latents_shape, int32

    def encode(self, latents: torch.Tensor) -> dict[str, torch.Tensor]:
        if latents.numel() == 0:
            raise ValueError("an empty set cannot be stored as int4; use --latent-dtype float32")
        if latents.ndim < 2:
            raise ValueError(f"int4 stores latents of shape (N, C, ...), got {tuple(latents.shape)}")
        stored = super().encode(latents)  # q in 0..15 as int8
        return {**stored, "latents": pack_nibbles(stored["latents"]),
                "latents_shape": torch.tensor(list(latents.shape[1:]), dtype=torch.int32)}

    def decode(self, tensors: dict[str, torch.Tensor], where: str = "the set") -> torch.Tensor:
        dims = require(tensors, ("latents_shape", "latents_scale", "latents_zero_point"), "int4", where)
        packed, shape = tensors["latents"], tensors["latents_shape"]
        numbers = math.prod(dims) if dims else 0
        if packed.ndim != 2 or not dims or min(dims) < 1 or packed.shape[1] != (numbers + 1) // 2:
            raise ValueError(f"{where}: int4 latents of {tuple(packed.shape)} bytes do not hold latents of shape "
                             f"{tuple(shape.tolist())}; the file is inconsistent, re-save the set")
        unpacked = unpack_nibbles(packed, numbers).to(torch.int16).reshape(len(packed), *dims)
        return super().decode({**tensors, "latents": unpacked}, where)


LATENT_DTYPES.register("int4")(Int4Codec("int4", torch.uint8))


def fit_codebook(vectors: torch.Tensor, k: int, iters: int = 25, fit_at_most: int = 200_000, chunk: int = 65_536,
           seed: int = 0) -> torch.Tensor:
    """A (k, D) codebook of ``vectors`` (M, D) by Lloyd's k-means in float64: starts at ``k`` distinct vectors drawn
    with a fixed seed, refits on at most ``fit_at_most`` of them, and moves an emptied centre to the vector farthest
    from its own. Deterministic for a given input. Fewer than ``k`` distinct vectors give those vectors, each exactly,
    with the rest of the rows repeating the first (so a codebook always has ``k`` rows)."""
    v = vectors.detach().double().reshape(len(vectors), -1)
    g = torch.Generator().manual_seed(seed)
    distinct = torch.unique(v, dim=0)
    if len(distinct) <= k:
        return torch.cat([distinct, distinct[:1].expand(k - len(distinct), -1)]).float()
    fit = v[torch.randperm(len(v), generator=g)[:fit_at_most]] if len(v) > fit_at_most else v
    pool = torch.unique(fit, dim=0)
    pool = pool if len(pool) >= k else distinct
    centres = pool[torch.randperm(len(pool), generator=g)[:k]].clone()
    for _ in range(iters):
        dist, assign = nearest(fit, centres, chunk)
        counts = torch.bincount(assign, minlength=k)
        sums = torch.zeros_like(centres).index_add_(0, assign, fit)
        moved = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centres)
        for j in torch.nonzero(counts == 0).flatten().tolist():  # an empty centre takes the worst-served vector
            far = int(dist.argmax())
            moved[j], dist[far] = fit[far], -1.0
        if torch.equal(moved, centres):
            break
        centres = moved
    return centres.float()


def nearest(v: torch.Tensor, centres: torch.Tensor, chunk: int = 65_536) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared distance to, and index of, the nearest row of ``centres`` for each row of ``v``, in chunks."""
    c = centres.to(v.dtype)
    dists, idx = [], []
    for part in v.split(chunk):
        d = torch.cdist(part, c).square()
        m = d.min(1)
        dists.append(m.values)
        idx.append(m.indices)
    return torch.cat(dists), torch.cat(idx)


class VQCodec(Codec):
    """Vector quantisation per spatial position: each latent's (C,) vector at each position of its (H, W, ...) grid is
    stored as the index of the nearest of ``2 ** index_bits`` codebook vectors, fitted by k-means to the set's own
    vectors when it is written; 8-bit indices are bytes, 4-bit ones are packed two a byte (low nibble first)."""

    def __init__(self, name: str, index_bits: int):
        super().__init__(name, torch.uint8)
        object.__setattr__(self, "index_bits", index_bits)

    @property
    def size(self) -> int:
        return 2 ** self.index_bits

    @property
    def bits(self) -> int:  # per stored number is not defined for vectors; per position: index_bits
        return self.index_bits

    def latent_bytes(self, latent_shape) -> int:
        self._check_shape(latent_shape)
        return math.ceil(math.prod(int(s) for s in latent_shape[1:]) * self.index_bits / 8)

    def overhead_bytes(self, latent_shape) -> int:
        return self.size * int(latent_shape[0]) * FLOAT32_BYTES + 4 * len(latent_shape)  # codebook + latents_shape

    def claims(self, tensors: dict[str, torch.Tensor]) -> bool:
        book = tensors.get("latents_codebook")
        return tensors["latents"].dtype == self.dtype and book is not None and book.ndim == 2 and len(book) == self.size

    def _check_shape(self, shape) -> None:
        if len(shape) < 2:
            raise ValueError(f"{self.name} quantises the vector at each position of latents of shape (C, H, W), got "
                             f"{tuple(int(s) for s in shape)}; use --latent-dtype int4 or int8 for flat latents")

    def encode(self, latents: torch.Tensor) -> dict[str, torch.Tensor]:
        if latents.numel() == 0:
            raise ValueError(f"an empty set cannot be stored as {self.name}; use --latent-dtype float32")
        self._check_shape(latents.shape[1:])
        z = latents.detach().float().cpu()
        channels = z.shape[1]
        vectors = z.movedim(1, -1).reshape(-1, channels)
        book = fit_codebook(vectors, self.size)
        q = nearest(vectors.double(), book.double())[1].to(torch.uint8).reshape(len(z), -1)
        if self.index_bits == 4:
            q = pack_nibbles(q)
        return {"latents": q.contiguous(), "latents_codebook": book.contiguous(),
                "latents_shape": torch.tensor(list(latents.shape[1:]), dtype=torch.int32)}

    def decode(self, tensors: dict[str, torch.Tensor], where: str = "the set") -> torch.Tensor:
        dims = require(tensors, ("latents_shape", "latents_codebook"), self.name, where)
        q, book = tensors["latents"], tensors["latents_codebook"]
        positions = math.prod(dims[1:]) if len(dims) >= 2 else 0
        stored = math.ceil(positions * self.index_bits / 8)
        if (q.ndim != 2 or len(dims) < 2 or min(dims) < 1 or q.shape[1] != stored or book.ndim != 2
                or tuple(book.shape) != (self.size, dims[0])):
            raise ValueError(f"{where}: {self.name} latents of {tuple(q.shape)} bytes with a codebook of "
                             f"{tuple(book.shape)} do not hold latents of shape {tuple(dims)}; the file is "
                             "inconsistent, re-save the set")
        if self.index_bits == 4:
            q = unpack_nibbles(q, positions)
        vectors = book.float()[q.long()]  # (N, positions, C)
        return vectors.movedim(-1, 1).reshape(len(q), *dims).contiguous()


LATENT_DTYPES.register("vq8")(VQCodec("vq8", 8))
LATENT_DTYPES.register("vq4")(VQCodec("vq4", 4))


def fit_levels(values: torch.Tensor, k: int, iters: int = 100) -> torch.Tensor:
    """``k`` ascending levels for the numbers ``values`` by Lloyd's algorithm in one dimension (the Lloyd-Max
    quantiser): starts at the ``(i + 1/2) / k`` quantiles, assigns each number to its nearest level (the midpoints are
    the boundaries), moves each level to the mean of its numbers, until nothing moves. Deterministic. Fewer than ``k``
    distinct numbers give those numbers, each exactly, the last repeated."""
    v = values.detach().double().flatten()
    distinct = torch.unique(v)
    if len(distinct) <= k:
        return torch.cat([distinct, distinct[-1:].expand(k - len(distinct))]).float()
    probs = (torch.arange(k, dtype=torch.float64) + 0.5) / k
    # torch.quantile refuses more than 2^24 numbers: the sorted values give the same quantiles
    ranks = (probs * (len(v) - 1)).round().long()
    levels = torch.sort(v).values[ranks]
    for _ in range(iters):
        which = torch.bucketize(v, (levels[1:] + levels[:-1]) / 2)
        counts = torch.bincount(which, minlength=k)
        sums = torch.zeros(k, dtype=torch.float64).index_add_(0, which, v)
        moved = torch.where(counts > 0, sums / counts.clamp_min(1), levels)
        moved = torch.sort(moved).values
        if torch.equal(moved, levels):
            break
        levels = moved
    return levels.float()


class SQCodec(Codec):
    """Scalar quantisation with fitted levels per channel (dimension 1 of the latents): each number is stored as the
    4-bit index of the nearest of 16 levels of its channel, fitted to the set's own numbers by Lloyd's algorithm when
    it is written (the Lloyd-Max quantiser), packed two a byte like int4. The same bytes as int4 (plus 16 float32
    levels a channel instead of a scale and zero point), with the levels where the numbers are: int4's even steps
    from the minimum to the maximum spend most of their 16 levels on the tails of a bell-shaped channel."""

    LEVELS = 16

    @property
    def bits(self) -> int:
        return 4

    def overhead_bytes(self, latent_shape) -> int:
        return self.LEVELS * int(latent_shape[0]) * FLOAT32_BYTES + 4 * len(latent_shape)  # levels + latents_shape

    def claims(self, tensors: dict[str, torch.Tensor]) -> bool:
        return tensors["latents"].dtype == self.dtype and "latents_levels" in tensors

    def encode(self, latents: torch.Tensor) -> dict[str, torch.Tensor]:
        if latents.numel() == 0:
            raise ValueError(f"an empty set cannot be stored as {self.name}; use --latent-dtype float32")
        if latents.ndim < 2:
            raise ValueError(f"{self.name} stores latents of shape (N, C, ...), got {tuple(latents.shape)}")
        z = latents.detach().float().cpu()
        channels = z.transpose(0, 1).reshape(z.shape[1], -1)
        levels = torch.stack([fit_levels(c, self.LEVELS) for c in channels])  # (C, 16), each row ascending
        bounds = (levels[:, 1:].double() + levels[:, :-1].double()) / 2
        q = torch.stack([torch.bucketize(c.double(), b) for c, b in zip(channels, bounds)])  # (C, N * rest)
        q = q.reshape(z.shape[1], len(z), -1).transpose(0, 1).reshape(len(z), -1)
        return {"latents": pack_nibbles(q), "latents_levels": levels.contiguous(),
                "latents_shape": torch.tensor(list(latents.shape[1:]), dtype=torch.int32)}

    def decode(self, tensors: dict[str, torch.Tensor], where: str = "the set") -> torch.Tensor:
        dims = require(tensors, ("latents_shape", "latents_levels"), self.name, where)
        packed, levels = tensors["latents"], tensors["latents_levels"]
        numbers = math.prod(dims) if dims else 0
        if (packed.ndim != 2 or not dims or min(dims) < 1 or packed.shape[1] != (numbers + 1) // 2
                or levels.ndim != 2 or tuple(levels.shape) != (dims[0], self.LEVELS)):
            raise ValueError(f"{where}: {self.name} latents of {tuple(packed.shape)} bytes with levels of "
                             f"{tuple(levels.shape)} do not hold latents of shape {tuple(dims)}; the file is "
                             "inconsistent, re-save the set")
        q = unpack_nibbles(packed, numbers).long().reshape(len(packed), dims[0], -1)  # (N, C, rest)
        channel = torch.arange(dims[0]).view(1, -1, 1)
        return levels.float()[channel, q].reshape(len(packed), *dims).contiguous()


LATENT_DTYPES.register("sq4")(SQCodec("sq4", torch.uint8))
FITTED_DTYPES = ("vq8", "vq4", "sq4")  # their codebook or levels are fitted to the whole set when it is written


def get_codec(name: str) -> Codec:
    """The storage codec of ``name``; an unknown one is a one-line error naming the choices."""
    if name not in LATENT_DTYPES:
        raise ValueError(f"unknown --latent-dtype {name!r}; choose one of: {', '.join(LATENT_DTYPES.names())}")
    return LATENT_DTYPES.get(name)


def codec_of(tensors: dict[str, torch.Tensor]) -> Codec:
    """The codec a file's ``latents`` tensor was written with (from its dtype)."""
    dtype = tensors["latents"].dtype
    if dtype == torch.uint8 and not any(k in tensors for k in QUANTISATION_KEYS[:2] + QUANTISATION_KEYS[3:]):
        raise ValueError("the set holds packed uint8 latents but no 'latents_scale' (int4), 'latents_codebook' (vq8, "
                         "vq4) or 'latents_levels' (sq4) to read them back; the file is incomplete: re-save the set")
    for name in LATENT_DTYPES.names():
        if LATENT_DTYPES.get(name).claims(tensors):
            return LATENT_DTYPES.get(name)
    if "latents_codebook" in tensors:
        book = tensors["latents_codebook"]
        raise ValueError(f"a codebook of {tuple(book.shape)} vectors matches no vq storage dtype (vq8: 256 rows, vq4: "
                         "16); the file is inconsistent, re-save the set")
    raise ValueError(f"latents stored as {str(dtype).replace('torch.', '')}, which gendistill does not read; "
                     f"supported: {', '.join(LATENT_DTYPES.names())}")


# ------------------------------------------------------------------------------------------------ budget arithmetic


def image_bytes(image_shape) -> int:
    """Bytes of one float32 image of the dataset: the unit of the budget."""
    return math.prod(int(s) for s in image_shape) * FLOAT32_BYTES


def latent_bytes(latent_shape, dtype: str) -> int:
    return get_codec(dtype).latent_bytes(latent_shape)


def latents_per_class(budget: float, latent_shape, image_shape, num_classes: int, dtype: str = "float32",
                      label_bytes: int = 0, extra_bytes: int = 0) -> int:
    """How many latents per class fit in ``budget`` float32 images per class at storage ``dtype``: the set's latents
    (with int8's per-channel scales, which the set holds once) may not take more than ``budget x num_classes`` images'
    bytes. Hard labels are not counted (see the module docstring); a soft-labelled set counts ``label_bytes`` per
    latent and ``extra_bytes`` once (its lr), as ``gendistill relabel --ipc-budget`` does. An impossible budget is a
    one-line ValueError."""
    if not (isinstance(budget, (int, float)) and math.isfinite(budget) and budget > 0):
        raise ValueError(f"--ipc-budget must be a positive number of float32 images per class, got {budget!r}")
    codec = get_codec(dtype)
    per_latent = latent_bytes(latent_shape, dtype) + label_bytes
    fixed = codec.overhead_bytes(latent_shape) + extra_bytes
    allowed = budget * num_classes * image_bytes(image_shape)
    n = math.floor((allowed - fixed) / (num_classes * per_latent) + 1e-9)
    if n < 1:
        need = (num_classes * per_latent + fixed) / (num_classes * image_bytes(image_shape))
        what = f"{tuple(latent_shape)} {dtype} latent" + (f" and its {label_bytes} B label" if label_bytes else "")
        raise ValueError(f"--ipc-budget {budget:g} holds {budget * image_bytes(image_shape):,.0f} bytes per class, "
                         f"less than one {what} ({per_latent:,} bytes); use --ipc-budget "
                         f"{math.ceil(need * 1000) / 1000:g} or more, or a smaller --latent-dtype")
    return n


# ------------------------------------------------------------------------------------------------------- the ledger


def tensor_bytes(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.numel() * t.element_size()


def make_ledger(tensors: dict[str, torch.Tensor], num_classes: int, image_shape, decoder: dict | None = None) -> dict:
    """The storage ledger of a set file's ``tensors`` (as written: ``latents`` in its storage dtype, int8's scales,
    ``labels``, optional ``lr``), or of a decoded-images file (``images`` instead of ``latents``)."""
    what = "images" if "images" in tensors and "latents" not in tensors else "latents"
    data = tensors[what]
    codec = codec_of(tensors) if what == "latents" else LATENT_DTYPES.get("float32")
    extra = sum(tensor_bytes(tensors.get(k)) for k in QUANTISATION_KEYS)
    labels = tensors.get("labels")
    soft = labels is not None and labels.ndim == 2
    unit = num_classes * image_bytes(image_shape) if num_classes and image_shape else None
    data_bytes = tensor_bytes(data) + extra
    label_bytes, lr_bytes = tensor_bytes(labels), tensor_bytes(tensors.get("lr"))
    total = data_bytes + label_bytes + lr_bytes
    hard = (labels.argmax(1) if soft else labels) if labels is not None and labels.numel() else None
    return {
        "version": LEDGER_VERSION,
        what: {"count": int(data.shape[0]), "shape": [int(d) for d in tensors["latents_shape"].flatten().tolist()]
               if "latents_shape" in tensors and what == "latents" else list(data.shape[1:]),  # int4: packed bytes
               "dtype": codec.name if what == "latents" else str(data.dtype).replace("torch.", ""),
               "bytes": tensor_bytes(data), "quantisation_bytes": extra},
        "labels": {"kind": "soft" if soft else "hard", "dtype": str(labels.dtype).replace("torch.", "")
                   if labels is not None else None, "bytes": label_bytes},
        "lr_bytes": lr_bytes,
        "total_bytes": total,
        "num_classes": int(num_classes) if num_classes else None,
        "per_class": int(hard.bincount(minlength=num_classes or 0).max()) if hard is not None else 0,
        "image_bytes": image_bytes(image_shape) if image_shape else None,
        "budget_counts": BUDGET_COUNTS,
        "budget_ipc": data_bytes / unit if unit else None,
        "budget_ipc_with_labels": total / unit if unit else None,
        "decoder": decoder,  # beside the budget, never inside it: {"bytes", "params"} or None when unknown
    }


def decoder_record(backbone) -> dict:
    """The decoder's size as the ledger reports it: bytes and parameter count of what ``decode`` runs."""
    return {"bytes": int(backbone.decoder_bytes()), "params": int(backbone.decoder_params())}


def read_ledger(tensors: dict[str, torch.Tensor], meta: dict[str, str], dataset: dict) -> dict:
    """A file's ledger: the recorded one, or (older files) computed from its tensors, with ``computed`` True and the
    decoder's size unknown."""
    if LEDGER_KEY in meta:
        try:
            ledger = json.loads(meta[LEDGER_KEY])
        except json.JSONDecodeError:
            ledger = None
        if isinstance(ledger, dict):
            return {**ledger, "computed": False}
    return {**make_ledger(tensors, int(dataset.get("num_classes") or 0), dataset.get("image_shape")), "computed": True}


def _kb(n) -> str:
    return "-" if n is None else f"{n:,} B"


def format_ledger(ledger: dict) -> list[str]:
    """The ledger as the lines ``gendistill info`` prints."""
    what = "images" if "images" in ledger else "latents"
    d, lab = ledger[what], ledger["labels"]
    extra = {"vq": "codebook", "sq": "levels"}.get(str(d["dtype"])[:2], "scales")
    q = f" + {d['quantisation_bytes']:,} B {d['dtype']} {extra}" if d.get("quantisation_bytes") else ""
    lines = [f"storage   {what} {d['count']} x {tuple(d['shape'])} {d['dtype']}: {d['bytes']:,} B{q}",
             f"          labels ({lab['kind']}, {lab['dtype']}): {lab['bytes']:,} B; lr: {ledger['lr_bytes']:,} B; "
             f"total {ledger['total_bytes']:,} B"]
    if ledger.get("budget_ipc") is not None:
        lines.append(f"budget    {ledger['budget_ipc']:.4g} float32 images per class ({ledger['image_bytes']:,} B "
                     f"each) counting the {what}; {ledger['budget_ipc_with_labels']:.4g} with labels and lr")
    dec = ledger.get("decoder")
    lines.append(f"decoder   {_kb(dec['bytes'])} ({dec['params']:,} parameters), beside the budget" if dec else
                 "decoder   unknown (the file records no ledger: written before gendistill stored one)")
    return lines


def resolve_ipc(ipc: int | None, budget: float | None, latent_shape, image_shape, num_classes: int,
                dtype: str = "float32", default: int = 10) -> int:
    """Latents per class: ``ipc`` (count-matched) or what ``budget`` allows (storage-matched); both is an error."""
    check_ipc_args(ipc, budget)
    if budget is not None:
        return latents_per_class(budget, latent_shape, image_shape, num_classes, dtype)
    return default if ipc is None else int(ipc)


def check_ipc_args(ipc: int | None, budget: float | None) -> None:
    """``--ipc`` and ``--ipc-budget`` exclude each other."""
    if ipc is not None and budget is not None:
        raise ValueError(f"--ipc {ipc} (count-matched) and --ipc-budget {budget:g} (storage-matched) were both "
                         "given; keep one (a config file's ipc is dropped with --ipc none)")
