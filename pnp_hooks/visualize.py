"""PCA pictures of the tensors PnP records (the paper's Figs. 2-3), pure torch.

As the original code's ``run_features_pca.py`` / ``run_self_attn_pca.py``:
every spatial position (token) of one layer is a sample, the first three
principal components of its feature vector become R, G and B. Feature
vectors per token:

- ``resblock``: the C channels of ``output_blocks[b][0]``'s residual branch,
  from (S, C, h, w);
- ``query`` / ``key``: q or k of ``attn1`` with all heads concatenated (the
  original's ``'h n d -> n (h d)'``), from (S, h*w, heads*dim_head);
- ``self-attention map``: the token's row of softmax(q k^T / sqrt(dim_head))
  of every head, concatenated (the original's ``'h n m -> n (h m)'``),
  (S, h*w, heads*h*w), computed a few rows at a time;
- ``attention input``: n, the attn1 input after norm1 the bank stores.

S is the number of chosen sampling steps. The original fits one PCA per
timestep and min-max normalizes each picture by itself, so a colour means
something different at every step; ``fit="across steps"`` fits one basis on
all chosen steps and normalizes each component over all of them, so colours
are comparable along the row. ``fit="per step"`` is the original's way.

The fit uses ``torch.pca_lowrank`` on the CPU under a forked, seeded RNG
(repeatable, the caller's RNG untouched) on at most ``budget`` matrix
elements: larger inputs (self-attention maps of the upper layers) are fit on
evenly spaced tokens, then every token is projected.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

from . import indices
from .errors import PnPInputError

FIT_MODES = ("across steps", "per step")
UPSCALE_MODES = ("nearest", "bilinear")
COMPONENTS = 3
# Largest fit matrix / projection chunk, in float32 elements (128 MiB).
DEFAULT_BUDGET = 2 ** 25
_SEED = 0


class TokenFeatures(Protocol):
    """Per-step token features, read a few rows at a time: ``rows(step, index) -> (len(index), dim)``."""

    @property
    def steps(self) -> int: ...

    @property
    def tokens(self) -> int: ...

    @property
    def dim(self) -> int: ...

    def rows(self, step: int, index: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class DenseFeatures:
    """Features already held as (S, N, D)."""

    values: torch.Tensor

    @property
    def steps(self) -> int:
        return self.values.shape[0]

    @property
    def tokens(self) -> int:
        return self.values.shape[1]

    @property
    def dim(self) -> int:
        return self.values.shape[2]

    def rows(self, step: int, index: torch.Tensor) -> torch.Tensor:
        return self.values[step].index_select(0, index.to(self.values.device)).float()


@dataclass(frozen=True)
class AttentionMaps:
    """Self-attention maps softmax(q k^T / sqrt(dim_head)) per head, from q, k of shape (S, N, heads*dim_head)."""

    q: torch.Tensor
    k: torch.Tensor
    heads: int

    def __post_init__(self):
        if self.q.shape != self.k.shape or self.q.shape[-1] % self.heads:
            raise ValueError(f"q {tuple(self.q.shape)} and k {tuple(self.k.shape)} do not split into "
                             f"{self.heads} heads")

    @property
    def steps(self) -> int:
        return self.q.shape[0]

    @property
    def tokens(self) -> int:
        return self.q.shape[1]

    @property
    def dim(self) -> int:
        return self.heads * self.tokens

    def rows(self, step: int, index: torch.Tensor) -> torch.Tensor:
        d = self.q.shape[-1] // self.heads
        q = self.q[step].index_select(0, index.to(self.q.device)).float()
        q = q.view(len(index), self.heads, d).transpose(0, 1)  # (heads, r, d)
        k = self.k[step].float().view(self.tokens, self.heads, d).transpose(0, 1)  # (heads, N, d)
        maps = torch.softmax(q @ k.transpose(1, 2) * d ** -0.5, dim=-1)  # (heads, r, N)
        return maps.transpose(0, 1).reshape(len(index), self.dim)


def resblock_tokens(features: torch.Tensor) -> DenseFeatures:
    """(S, C, h, w) ResBlock features -> (S, h*w, C) token features."""
    return DenseFeatures(features.flatten(2).transpose(1, 2))


@dataclass(frozen=True)
class PCABasis:
    mean: torch.Tensor  # (D,)
    components: torch.Tensor  # (D, 3); missing components (rank < 3) are zero columns


def fit_pca(samples: torch.Tensor, components: int = COMPONENTS) -> PCABasis:
    """PCA of (m, D) samples with ``torch.pca_lowrank``; repeatable, signs fixed.

    Runs on the CPU in float32 under a forked RNG seeded with a constant, so
    the same samples always give the same basis and the caller's RNG state is
    untouched. Each component's sign makes its largest-magnitude loading
    positive (sklearn's convention, up to which side it reads).
    """
    x = samples.detach().to(device="cpu", dtype=torch.float32)
    mean = x.mean(dim=0)
    x = x - mean
    m, dim = x.shape
    rank = min(components, m, dim)
    basis = torch.zeros(dim, components)
    if rank > 0 and bool(x.abs().max() > 0):
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(_SEED)
            _, _, v = torch.pca_lowrank(x, q=min(rank + 7, m, dim), center=False, niter=6)
        v = v[:, :rank]
        peak = v.abs().argmax(dim=0)
        signs = torch.sign(v[peak, torch.arange(rank)])
        basis[:, :rank] = v * torch.where(signs == 0, torch.ones_like(signs), signs)
    return PCABasis(mean, basis)


def _row_chunks(tokens: int, dim: int, budget: int) -> list[torch.Tensor]:
    per = max(1, budget // max(dim, 1))
    return [torch.arange(s, min(s + per, tokens)) for s in range(0, tokens, per)]


def _fit_samples(features: TokenFeatures, steps: list[int], budget: int) -> torch.Tensor:
    """Token features of ``steps`` stacked, or of evenly spaced tokens when over ``budget`` elements."""
    total = len(steps) * features.tokens
    keep = min(total, max(COMPONENTS + 1, budget // max(features.dim, 1)))
    picked = torch.linspace(0, total - 1, keep).round().long().unique()
    parts = []
    for i, step in enumerate(steps):
        lo = i * features.tokens
        mine = picked[(picked >= lo) & (picked < lo + features.tokens)] - lo
        for chunk in _row_chunks(len(mine), features.dim, budget):
            if len(chunk):
                parts.append(features.rows(step, mine[chunk]).cpu())
    return torch.cat(parts)


def _project(features: TokenFeatures, step: int, basis: PCABasis, budget: int) -> torch.Tensor:
    """(N, 3) coordinates of one step's tokens in ``basis``."""
    out = []
    for chunk in _row_chunks(features.tokens, features.dim, budget):
        rows = features.rows(step, chunk)
        out.append((rows - basis.mean.to(rows.device)) @ basis.components.to(rows.device))
    return torch.cat(out).cpu()


def _normalize(coords: torch.Tensor) -> torch.Tensor:
    """Min-max scale each component (last dim) over all leading dims to [0, 1]."""
    flat = coords.reshape(-1, coords.shape[-1])
    lo, hi = flat.min(dim=0).values, flat.max(dim=0).values
    return ((coords - lo) / torch.clamp(hi - lo, min=1e-12)).clamp(0.0, 1.0)


def pca_rgb(features: TokenFeatures, fit: str = "across steps", budget: int = DEFAULT_BUDGET) -> torch.Tensor:
    """(S, N, 3) colours in [0, 1]: the first three principal components of every token."""
    if fit not in FIT_MODES:
        raise PnPInputError(f"fit must be one of {FIT_MODES}, got {fit!r}.")
    steps = list(range(features.steps))
    if fit == "across steps":
        basis = fit_pca(_fit_samples(features, steps, budget))
        return _normalize(torch.stack([_project(features, s, basis, budget) for s in steps]))
    frames = []
    for s in steps:
        basis = fit_pca(_fit_samples(features, [s], budget))
        frames.append(_normalize(_project(features, s, basis, budget)))
    return torch.stack(frames)


def token_grid(latent_hw: tuple[int, int], tokens: int) -> tuple[int, int]:
    """(h, w) of a layer with ``tokens`` positions in a UNet fed a (H, W) latent (stride-2 downsamples)."""
    height, width = latent_hw
    for level in range(8):
        h, w = height, width
        for _ in range(level):
            h, w = (h + 1) // 2, (w + 1) // 2
        if h * w == tokens:
            return h, w
    raise ValueError(f"{tokens} tokens do not tile a {height}x{width} latent at any UNet level")


def to_images(rgb: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
    """(S, N, 3) -> (S, h, w, 3), row-major tokens as the UNet flattens them."""
    return rgb.reshape(rgb.shape[0], grid_hw[0], grid_hw[1], 3)


def upscale(images: torch.Tensor, size_hw: tuple[int, int], mode: str = "nearest") -> torch.Tensor:
    """(S, h, w, 3) -> (S, H, W, 3) by nearest or bilinear interpolation, kept in [0, 1]."""
    if mode not in UPSCALE_MODES:
        raise PnPInputError(f"upscale must be one of {UPSCALE_MODES}, got {mode!r}.")
    x = images.permute(0, 3, 1, 2)
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    x = F.interpolate(x, size=tuple(size_hw), mode=mode, **kwargs)
    return x.permute(0, 2, 3, 1).clamp(0.0, 1.0).contiguous()


def grid(images: torch.Tensor, columns: int = 0, padding: int = 4, pad_value: float = 1.0) -> torch.Tensor:
    """(S, H, W, 3) -> (1, H', W', 3): the frames left to right, ``columns`` per row (0 = one row)."""
    count, height, width, channels = images.shape
    columns = count if columns <= 0 else min(columns, count)
    rows = math.ceil(count / columns)
    out = images.new_full((rows * height + (rows - 1) * padding, columns * width + (columns - 1) * padding,
                           channels), pad_value)
    for i in range(count):
        r, c = divmod(i, columns)
        y, x = r * (height + padding), c * (width + padding)
        out[y:y + height, x:x + width] = images[i]
    return out.unsqueeze(0)


_EVERY = re.compile(r"every(\d{1,%d})" % indices.MAX_DIGITS)
_STEPS_EXAMPLE = '"auto", "all", "every 10" or "0,10,20"'


def check_steps_spec(spec: str) -> None:
    """Syntax only (no bank needed; for queue-time checks)."""
    text = spec.strip().lower().replace(" ", "")
    if text in ("", "auto", "all"):
        return
    every = _EVERY.fullmatch(text)
    if every:
        if int(every.group(1)) < 1:
            raise PnPInputError(f"steps {indices.excerpt(spec)}: the stride of 'every N' must be at least 1.")
        return
    for item in indices.items(text):
        indices.parse_range(item, "steps", spec, _STEPS_EXAMPLE)


def parse_steps(spec: str, available: int, total: int) -> list[int]:
    """Sampling-step indices to show.

    ``auto``: up to 5 evenly spaced among the first ``available`` steps;
    ``all``: every one of them; ``every N``: 0, N, 2N, ... below ``available``;
    otherwise a list of indices or ranges (``"0,10,20"``, ``"0-4"``) below ``total``.
    """
    check_steps_spec(spec)
    text = spec.strip().lower().replace(" ", "")
    if available <= 0:
        available = total
    if text in ("", "auto"):
        count = min(5, available)
        return sorted({round(i * (available - 1) / max(count - 1, 1)) for i in range(count)})
    if text == "all":
        return list(range(available))
    every = _EVERY.fullmatch(text)
    if every:
        return list(range(0, available, int(every.group(1))))
    steps: list[int] = []
    seen: set[int] = set()
    for item in indices.items(text):
        lo_hi = indices.parse_range(item, "steps", spec, _STEPS_EXAMPLE)
        indices.check_below(lo_hi, total, "steps", f"the bank has {total} sampling steps (indices 0-{total - 1})")
        for s in range(lo_hi[0], lo_hi[1] + 1):
            if s not in seen:
                seen.add(s)
                steps.append(s)
    if not steps:
        raise PnPInputError(f"steps names no step; write e.g. {_STEPS_EXAMPLE}.")
    return steps
