"""The paper's two scores and the threshold sweep's bookkeeping, pure torch.

- Structure distance (Splice, Tumanyan et al. 2022, used by PnP's Table 1):
  the self-similarity matrix of a ViT's last-layer keys, S[i, j] =
  cos(k_i, k_j) over every pair of tokens (the class token included, heads
  concatenated: (T, heads*dim_head) -> (T, T)), of each image; the distance
  is the mean squared difference of the two matrices (``F.mse_loss`` in
  Splice). 0 for identical images, symmetric, lower = more of the guidance
  structure kept.
- Text fidelity: cosine similarity of an image embedding and a text embedding
  of the same CLIP joint space (higher = follows the prompt more).
- The sweep: the grid of (feature_injection, attention_injection,
  injection_strength) cells and the cells on the trade-off (Pareto) front:
  no other cell keeps more structure (lower distance) and follows the text
  better (higher score) at once.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import PnPInputError, require_finite

# Splice's attn_cosine_sim: the product of the norms is clamped at this value.
COSINE_EPS = 1e-8
MAX_VALUES_PER_AXIS = 16
MAX_CELLS = 64


def self_similarity(tokens: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every pair of tokens: (B, T, D) -> (B, T, T), float32."""
    x = tokens.float()
    norms = x.norm(dim=-1, keepdim=True)
    return (x @ x.transpose(1, 2)) / (norms @ norms.transpose(1, 2)).clamp(min=COSINE_EPS)


def structure_distance(tokens_a: torch.Tensor, tokens_b: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of the self-similarity matrices, per pair of images: (B, T, D) twice -> (B,)."""
    if tokens_a.shape != tokens_b.shape:
        raise PnPInputError(f"Token features of shape {list(tokens_a.shape)} and {list(tokens_b.shape)} cannot be "
                            f"compared: score both images with the same model.")
    return (self_similarity(tokens_a) - self_similarity(tokens_b)).pow(2).mean(dim=(1, 2))


def cosine_scores(image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of each image embedding (B, D) with the text embedding (1 or B, D) -> (B,)."""
    image, text = image_embeds.float(), text_embeds.float()
    if image.shape[-1] != text.shape[-1]:
        raise PnPInputError(f"The image embedding has {image.shape[-1]} values and the text embedding "
                            f"{text.shape[-1]}: they are not of the same CLIP joint space.")
    return torch.nn.functional.cosine_similarity(image, text.expand_as(image), dim=-1, eps=COSINE_EPS)


def pair_rows(guidance: int, images: int) -> list[int]:
    """For each image, the row of the guidance batch it is compared with: one guidance for all, or one each."""
    if guidance == 1:
        return [0] * images
    if guidance == images:
        return list(range(images))
    raise PnPInputError(f"The guidance batch holds {guidance} images and the images to score {images}: connect "
                        f"one guidance image, or as many as there are images (compared in order).")


def pareto_front(distances: list[float], scores: list[float]) -> list[bool]:
    """Per cell, whether no other cell has a distance as low and a score as high, one of them strictly."""
    cells = list(zip(distances, scores))
    return [not any(d <= dc and s >= sc and (d < dc or s > sc) for d, s in cells) for dc, sc in cells]


def parse_values(text: str, name: str, low: float = 0.0, high: float = 1.0) -> tuple[float, ...]:
    """A comma-separated list of numbers in [low, high], e.g. '0.4, 0.6, 0.8' (duplicates dropped, order kept)."""
    parts = [p.strip() for p in str(text).split(",")]
    if not any(parts):
        raise PnPInputError(f"{name} is empty: type one or more values separated by commas, e.g. '0.5, 0.8'.")
    values: list[float] = []
    for part in parts:
        if not part:
            raise PnPInputError(f"{name} has an empty entry: separate values by single commas, e.g. '0.5, 0.8'.")
        try:
            number = float(part)
        except ValueError:
            raise PnPInputError(f"{name}: {part[:40]!r} is not a number; type values such as '0.5, 0.8'.") from None
        number = require_finite(name, number, low, high)
        if number not in values:
            values.append(number)
    if len(values) > MAX_VALUES_PER_AXIS:
        raise PnPInputError(f"{name} lists {len(values)} values; at most {MAX_VALUES_PER_AXIS} per axis.")
    return tuple(values)


@dataclass(frozen=True)
class Cell:
    """One sampling of the sweep."""

    feature_injection: float
    attention_injection: float
    injection_strength: float

    def label(self, with_strength: bool) -> str:
        text = f"f {self.feature_injection:g}  A {self.attention_injection:g}"
        return f"{text}  s {self.injection_strength:g}" if with_strength else text


def sweep_cells(features: tuple[float, ...], attention: tuple[float, ...],
                strengths: tuple[float, ...]) -> list[Cell]:
    """The grid in reading order: one row per (strength, attention) pair, one column per feature_injection."""
    count = len(features) * len(attention) * len(strengths)
    if count > MAX_CELLS:
        raise PnPInputError(f"The sweep has {count} cells (each one sampling); at most {MAX_CELLS}: list fewer "
                            f"values.")
    return [Cell(f, a, s) for s in strengths for a in attention for f in features]


@dataclass(frozen=True)
class ScoredCell:
    cell: Cell
    distance: float
    score: float
    on_front: bool


def score_cells(cells: list[Cell], distances: list[float], scores: list[float]) -> list[ScoredCell]:
    front = pareto_front(distances, scores)
    return [ScoredCell(c, d, s, f) for c, d, s, f in zip(cells, distances, scores, front)]


def format_table(scored: list[ScoredCell], with_strength: bool) -> str:
    """One line per cell: its number (as in the grid and plot), thresholds, both scores, '*' on the front."""
    head = ["cell", "feature_injection", "attention_injection"] + (["strength"] if with_strength else []) + \
        ["structure_distance", "text_score", "front"]
    rows = [head]
    for number, item in enumerate(scored, 1):
        c = item.cell
        rows.append([str(number), f"{c.feature_injection:g}", f"{c.attention_injection:g}"]
                    + ([f"{c.injection_strength:g}"] if with_strength else [])
                    + [f"{item.distance:.6f}", f"{item.score:.4f}", "*" if item.on_front else ""])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(v.rjust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines + ["structure_distance: lower keeps more of the guidance layout; text_score: higher "
                              "follows the prompt more; * = on the trade-off front."])
