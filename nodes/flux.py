"""The FLUX.1 path of PnP DDIM Inversion, PnP Feature Bank and PnP Sampler (RF-Solver-Edit / FireFlow).

The nodes keep their IDs and inputs; for a FLUX MODEL they call these instead of the DDIM path. What the inputs
mean on FLUX:
- PnP DDIM Inversion: ``solver`` (rf-solver, fireflow, euler) and ``steps`` (the official examples: 25 with
  rf-solver, 8 with fireflow); the inversion runs with the source prompt at FLUX guidance 1 on the official
  schedule. ``inversion_steps`` must be 0 (FLUX inverts on the sampling schedule).
- PnP Feature Bank: ``attention_layers`` = the single-stream blocks whose V is recorded ("auto" = 20-37, the
  official); ``inject_steps`` = how many leading denoising steps inject (-1 = the official default of the
  solver); ``bank_dtype``; ``resblock_layers`` must be "auto" or empty (FLUX has no ResBlocks).
- PnP Sampler: the target prompt's FLUX guidance comes from its conditioning (FluxGuidance; the examples use 2);
  ``cfg``, ``feature_injection`` and ``attention_injection`` are the DDIM path's and not read; the bank's steps
  are all injected.
"""
from __future__ import annotations

import logging

from ..pnp_hooks import flow_solvers, flux_sampling
from ..pnp_hooks.bank import STORAGE_DTYPES, STORED
from ..pnp_hooks.errors import PnPInputError
from ..pnp_hooks.families import flux as flux_family
from ..pnp_hooks.flux_bank import FluxBank, FluxInversion

log = logging.getLogger("comfyui_pnp")

SOLVER_TOOLTIP = (
    "FLUX only (SD inverts with DDIM): rf-solver (RF-Solver-Edit, 2 model calls a step), fireflow (FireFlow, about 1 "
    "a step; its examples use 8 steps) or euler (1 a step, first order).")
INJECT_TOOLTIP = (
    "FLUX only: leading denoising steps that inject the recorded V; -1 = the official default (rf-solver and "
    "euler 3, fireflow 1). SD uses feature_injection / attention_injection.")


def is_flux(model) -> bool:
    return flux_sampling.is_flux(model)


def invert(model, latent: dict, conditioning, steps: int, inversion_steps: int, solver: str):
    """PnP DDIM Inversion on FLUX: (the inversion, its end point as a LATENT)."""
    if inversion_steps not in (0, steps):
        raise PnPInputError(f"FLUX inverts on its sampling schedule: set inversion_steps to 0 (got {inversion_steps}).")
    bank = flux_sampling.invert(model, latent["samples"], conditioning, steps, solver=solver)
    return bank.inversion, flux_sampling.noise_latent(model, bank.inversion)


def check_layers(model, resblock_layers: str, attention_layers: str) -> tuple[int, ...]:
    """The single blocks the layer inputs name on this FLUX (refused before the inversion runs)."""
    layout = flux_sampling.check_model(model)
    if resblock_layers.strip().lower() not in ("auto", ""):
        raise PnPInputError(f"FLUX has no ResBlock sites: set resblock_layers to auto or leave it empty (got "
                            f"{resblock_layers!r}).")
    blocks = flux_family.DEFAULT_BLOCKS if attention_layers.strip().lower() == "auto" else attention_layers
    return flux_family.blocks_of(blocks, layout, "attention_layers")


def record(model, inversion, conditioning, resblock_layers: str, attention_layers: str, bank_dtype: str,
           mode: str, inject_steps: int) -> FluxBank:
    """PnP Feature Bank on FLUX: V at the chosen single blocks for the injecting steps, from the stored inversion."""
    if not isinstance(inversion, FluxInversion):
        raise PnPInputError("This inversion was made with DDIM (an SD model); connect a PnP DDIM Inversion run on "
                            "this FLUX model.")
    if mode != STORED:
        raise PnPInputError("On FLUX the bank is recorded now: set mode to 'stored'.")
    check_layers(model, resblock_layers, attention_layers)
    inject = flux_family.DEFAULT_INJECT[inversion.solver] if inject_steps < 0 else inject_steps
    spec = flux_family.DEFAULT_BLOCKS if attention_layers.strip().lower() == "auto" else attention_layers
    bank = flux_sampling.record_bank(model, inversion, conditioning, blocks=spec, inject=min(inject, inversion.steps),
                                     storage_dtype=STORAGE_DTYPES[bank_dtype])
    log.info("PnP FLUX bank: %s, %d steps, inject %d, single blocks %s: %d bytes", inversion.solver,
             inversion.steps, bank.inject, spec, bank.nbytes)
    return bank


def refuse_flux_bank(features, node: str) -> None:
    """The nodes that read SD banks (file format, PCA pictures, threshold sweep) refuse a FLUX bank by name."""
    if isinstance(features, (FluxBank, FluxInversion)):
        raise PnPInputError(f"{node} takes a bank recorded with an SD model; this one is a FLUX bank, which goes to "
                            f"PnP Sampler.")


def check_sampler_options(negative_prompt=None, mask=None, injection_strength=1.0, start=None, **_) -> None:
    """The PnP Sampler options the FLUX path does not run yet, refused by name."""
    if negative_prompt is not None:
        raise PnPInputError("negative_prompt is for the DDIM path; disconnect it for FLUX.")
    if mask is not None or injection_strength != 1.0:
        raise PnPInputError("mask and injection_strength are not available on FLUX yet: disconnect the mask and "
                            "set injection_strength to 1.")
    if start not in (None, "inverted"):
        raise PnPInputError("On FLUX sampling starts from the inverted noise: set start to 'inverted'.")


def sample(model, positive, features, steps: int) -> dict:
    """PnP Sampler on FLUX: denoise the bank's inverted noise with the target prompt, V put in place."""
    if not isinstance(features, FluxBank):
        raise PnPInputError("This feature bank was recorded with an SD model; connect a PnP Feature Bank made from "
                            "this FLUX model's inversion.")
    if steps not in (0, features.steps):
        raise PnPInputError(f"steps must be 0 or the bank's {features.steps} steps, got {steps}.")
    latent, injected = flux_sampling.sample(model, features, positive, guidance=None)
    log.info("PnP FLUX sampling: %s, %d steps, %d V tensors put in place (%d model calls)", features.solver,
             features.steps, len(injected), flow_solvers.model_calls(features.solver, features.steps))
    return latent
