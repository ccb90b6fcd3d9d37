"""The threshold sweep: PnP sampling over a grid of thresholds from one bank, each result scored.

Each cell is exactly PnP Sampler's ``sampling.translate`` with the cell's
feature_injection, attention_injection and injection_strength, from the same
bank (nothing is inverted or recorded again: N cells cost N samplings), then
VAE-decoded. The results are scored against the guidance image (structure
distance, ``scoring.last_layer_keys``) and the prompt (text score); the
cells on the trade-off front are marked in the grid's table and plot.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

import comfy.model_management

from . import charts, metrics, sampling, scoring
from .bank import FeatureBank, check_one_frame
from .errors import PnPInputError
from .injection import check_plan_fits
from .schedule import InjectionPlan


@dataclass(frozen=True)
class SweepResult:
    latents: torch.Tensor  # (N, C, h, w) LATENT units, one per cell in reading order
    images: torch.Tensor  # (N, H, W, 3) decoded
    scored: list[metrics.ScoredCell]
    grid: torch.Tensor  # (1, H', W', 3) labelled
    plot: torch.Tensor  # (1, 540, 720, 3)
    table: str


def decode(vae, samples: torch.Tensor) -> torch.Tensor:
    """As ComfyUI's VAE Decode: (B, C, h, w) latents -> (B, H, W, 3) images."""
    images = vae.decode(samples)
    if images.ndim == 5:
        images = images.reshape(-1, *images.shape[-3:])
    return images


@dataclass(frozen=True)
class CellSampling:
    """What every cell shares with PnP Sampler: the prompts, cfg, the threshold convention and the last step."""

    positive: list
    negative: list
    cfg: float
    convention: str
    final_step: str


@dataclass(frozen=True)
class CellScoring:
    """How the cells are decoded and scored: the VAE, the guidance image (1, H, W, 3), the structure and text
    vision models, the prompt the text score reads, and whether the vision models' input is center-cropped."""

    vae: object
    guidance: torch.Tensor
    structure_model: object
    text_model: object
    text_prompt: list
    crop: bool


def run_sweep(model, bank: FeatureBank, cells: list[metrics.Cell], shared: CellSampling,
              scorer: CellScoring) -> SweepResult:
    """Sample, decode and score every cell; see the module docstring."""
    check_one_frame(bank, "PnP Threshold Sweep")
    scoring.check_images(scorer.guidance, "guidance image")
    if scorer.guidance.shape[0] != 1:
        raise PnPInputError(f"The sweep scores every cell against one guidance image; the guidance input holds "
                            f"{scorer.guidance.shape[0]}: pick one with Image From Batch.")
    plans = [InjectionPlan.from_thresholds(bank.steps, c.feature_injection, c.attention_injection, shared.convention)
             for c in cells]
    for plan in plans:  # every cell must fit the bank
        check_plan_fits(plan, (bank.feature_steps, bank.attention_steps))
    scoring.last_attention(scorer.structure_model)  # the scoring models fit, before anything samples
    scoring.check_text_model(scorer.text_model)
    scoring.text_embedding(scorer.text_prompt)
    total = len(cells) * bank.steps
    latents, images = [], []
    for index, (cell, plan) in enumerate(zip(cells, plans)):
        comfy.model_management.throw_exception_if_processing_interrupted()
        target = sampling.Target(shared.positive, shared.negative, shared.cfg, plan, cell.injection_strength)
        samples = sampling.translate(model, target, bank, shared.final_step, progress=(index * bank.steps, total))
        latents.append(samples)
        images.append(decode(scorer.vae, samples).float().cpu())
    latents_all, images_all = torch.cat(latents), torch.cat(images)
    guidance_keys = scoring.last_layer_keys(scorer.structure_model, scorer.guidance, scorer.crop)
    distances = scoring.structure_distances(guidance_keys,
                                            scoring.last_layer_keys(scorer.structure_model, images_all, scorer.crop))
    scores = scoring.text_scores(scorer.text_model, images_all, scorer.text_prompt, scorer.crop)
    scored = metrics.score_cells(cells, distances, scores)
    with_strength = len({c.injection_strength for c in cells}) > 1
    columns = len({c.feature_injection for c in cells})
    labels = [f"{n}: {c.label(with_strength)}" + (" *" if s.on_front else "")
              for n, (c, s) in enumerate(zip(cells, scored), 1)]
    return SweepResult(latents_all, images_all, scored, charts.labelled_grid(images_all, labels, columns),
                       charts.tradeoff_plot(scored), metrics.format_table(scored, with_strength))
