"""The FLUX.1 path of PnP DDIM Inversion, PnP Feature Bank, PnP Sampler and PnP Guider (RF-Solver-Edit / FireFlow).

The nodes keep their IDs and inputs; for a FLUX MODEL they call these instead of the DDIM path. What the inputs
mean on FLUX:
- PnP DDIM Inversion: ``solver`` (rf-solver, fireflow, euler) and ``steps`` (the official examples: 25 with
  rf-solver, 8 with fireflow); the inversion runs with the source prompt at FLUX guidance 1 on the official
  schedule. ``inversion_steps`` must be 0 (FLUX inverts on the sampling schedule).
- PnP Feature Bank: ``attention_layers`` = the single-stream blocks whose V is recorded ("auto" = 20-37, the
  official); ``inject_steps`` = how many leading denoising steps inject (-1 = the official default of the
  solver); ``bank_dtype``; ``mode`` "stored" records V now, "on the fly" records nothing now and computes each
  injected V during sampling (``flux_sampling.live_bank``); ``resblock_layers`` must be "auto" or empty (FLUX has
  no ResBlocks); ``flux_edit`` and ``qkv_ratio`` = FireFlow's ``--editing_strategy`` and ``--qkv_ratio`` (the
  default, replace_v at ratio 1, is ``--reuse_v 1``; anything else ``--reuse_v 0``; ``families.flux.edit_of``).
- PnP Sampler: the target prompt's FLUX guidance comes from its conditioning (FluxGuidance; the examples use 2);
  ``cfg``, ``feature_injection`` and ``attention_injection`` are the DDIM path's and not read; the bank's steps
  are all injected. ``mask`` (with ``outside_mask_strength``) and ``injection_strength`` blend the recorded V with
  the target's own as on SD: per image token (a 2x2 latent patch) the mask's weight, area-averaged, times the
  strength; text tokens the strength times the mask's largest weight (``flux_sampling.token_weights``).
- PnP Guider: ComfyUI's own samplers instead of the flow solvers (``flux_sampling.guider``): the target prompt's
  FLUX guidance, ``mask`` and ``injection_strength`` as for PnP Sampler, ``cfg`` and the thresholds not read;
  ``sigmas`` = the bank's times (1 to 0), ``x_T`` the inverted LATENT and ``noise`` the inverted latent as a NOISE
  (at sigma 1 FLUX starts from the noise, not from latent_image). A sampler evaluating at the bank's times (euler)
  injects there; an rf-solver bank's midpoint V are not read by samplers that never evaluate there. A bank on the
  fly computes each injected V just before the evaluation, as in PnP Sampler.
"""
from __future__ import annotations

import logging

from ..pnp_hooks import flow_solvers, flux_sampling
from ..pnp_hooks.bank import ON_THE_FLY, STORAGE_DTYPES, pixel_size
from ..pnp_hooks.errors import PnPInputError
from ..pnp_hooks.families import flux as flux_family
from ..pnp_hooks.flux_bank import FluxBank, FluxInversion, FluxLiveBank
from ..pnp_hooks.masks import check_mask_form, injection_weight_map

log = logging.getLogger("comfyui_pnp")

SOLVER_TOOLTIP = (
    "FLUX only (SD inverts with DDIM): rf-solver (RF-Solver-Edit, 2 model calls a step), fireflow (FireFlow, about 1 "
    "a step; its examples use 8 steps) or euler (1 a step, first order).")
INJECT_TOOLTIP = (
    "FLUX only: leading denoising steps that inject the recorded V; -1 = the official default (rf-solver and "
    "euler 3, fireflow 1). SD uses feature_injection / attention_injection.")
EDIT_TOOLTIP = (
    f"FLUX only: FireFlow's editing strategies, comma-separated among {', '.join(flux_family.EDIT_STRATEGIES)}. "
    f"replace puts the source's tensor in place of the target's, add adds it; q, k or v (at the single blocks of "
    f"attention_layers). Default {flux_family.DEFAULT_EDIT} (RF-Solver-Edit; FireFlow --reuse_v 1); FireFlow "
    f"suggests add_q where an edit is not followed.")
RATIO_TOOLTIP = (
    "FLUX only: FireFlow's --qkv_ratio, three numbers: the scales of the recorded q, k and v "
    f"(default {flux_family.DEFAULT_QKV_RATIO}).")


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
    return flux_family.blocks_of(_block_spec(attention_layers), layout, "attention_layers")


def check_edit(flux_edit: str, qkv_ratio: str) -> flux_family.FluxEdit:
    """The FireFlow strategy the inputs name (refused before the inversion runs)."""
    return flux_family.edit_of(flux_edit, qkv_ratio)


def _block_spec(attention_layers: str) -> str:
    """The single blocks ``attention_layers`` names ("auto": the official 20-37)."""
    return flux_family.DEFAULT_BLOCKS if attention_layers.strip().lower() == "auto" else attention_layers


def record(model, inversion, conditioning, resblock_layers: str, attention_layers: str, bank_dtype: str,
           mode: str, inject_steps: int, flux_edit: str = flux_family.DEFAULT_EDIT,
           qkv_ratio: str = flux_family.DEFAULT_QKV_RATIO) -> tuple[FluxBank | FluxLiveBank, str]:
    """PnP Feature Bank on FLUX: V (or what ``flux_edit`` names) at the chosen single blocks for the injecting steps,
    recorded now from the stored inversion (mode stored) or during sampling (on the fly); returns the bank and what
    the node shows of it (``summary``)."""
    edit = check_edit(flux_edit, qkv_ratio)
    if not isinstance(inversion, FluxInversion):
        raise PnPInputError("This inversion was made with DDIM (an SD model); connect a PnP DDIM Inversion run on "
                            "this FLUX model.")
    check_layers(model, resblock_layers, attention_layers)
    inject = flux_family.DEFAULT_INJECT[inversion.solver] if inject_steps < 0 else inject_steps
    spec = _block_spec(attention_layers)
    make = flux_sampling.live_bank if mode == ON_THE_FLY else flux_sampling.record_bank
    bank = make(model, inversion, conditioning, blocks=spec, inject=min(inject, inversion.steps),
                storage_dtype=STORAGE_DTYPES[bank_dtype], edit=edit)
    log.info("PnP FLUX bank: %s", bank.summary())
    return bank, summary(bank, bank_dtype, spec)


def summary(bank: FluxBank | FluxLiveBank, bank_dtype: str, blocks: str) -> str:
    """What a FLUX bank holds, as PnP Feature Bank shows it, in the SD bank's form (ResBlock + attention steps of
    the steps, sites, size; then the tensors, layers and strategy, and the image): no ResBlock step. On the fly: the
    peak (one evaluation's tensors) and the extra model calls. ``blocks``: the single blocks as the user named
    them."""
    if isinstance(bank, FluxLiveBank):
        size = (f"on the fly: {bank.peak_nbytes / 1e6:.1f} MB {bank_dtype} at a time, "
                f"+{len(bank.source_keys)} model calls")
    else:
        size = f"{bank.nbytes / 1e6:.1f} MB {bank_dtype}"
    return (f"0 + {bank.inject} of {bank.steps} steps, {len(bank.blocks)} sites, {size}\n"
            f"{bank.edit.tensors()} of single blocks {blocks} ({bank.solver}{_strategy(bank)})\n"
            f"FLUX guidance image, {pixel_size(tuple(bank.inverted.shape))}")


def _strategy(bank: FluxBank | FluxLiveBank) -> str:
    """The FireFlow strategy after the solver, none for the default."""
    return "" if bank.edit == flux_family.FluxEdit() else f"; {bank.edit.describe()}"


FLUX_VALUES = (FluxBank, FluxLiveBank, FluxInversion)


def refuse_flux_bank(features, node: str) -> None:
    """The nodes that read SD banks (file format, PCA pictures, threshold sweep) refuse a FLUX bank by name."""
    if isinstance(features, FLUX_VALUES):
        raise PnPInputError(f"{node} takes a bank recorded with an SD model; this one is a FLUX bank, which goes to "
                            f"PnP Sampler.")


def refuse_on_sd_model(value, what: str) -> None:
    """The DDIM path (an SD MODEL) given a FLUX inversion or bank: refused, naming what to connect."""
    if isinstance(value, FLUX_VALUES):
        raise PnPInputError(f"This {what} was made with a FLUX model, but the MODEL connected is an SD one: connect "
                            f"the FLUX MODEL it was made with, or a {what} made with this SD model.")


def check_sampler_options(negative_prompt=None, mask=None, start=None, **_) -> None:
    """The PnP Sampler and PnP Guider options the FLUX path does not run, refused by name, and the mask's form
    (before the bank)."""
    if negative_prompt is not None:
        raise PnPInputError("negative_prompt is for the DDIM path; disconnect it for FLUX.")
    if mask is not None:
        check_mask_form(mask)
    if start not in (None, "inverted"):
        raise PnPInputError("On FLUX sampling starts from the inverted noise: set start to 'inverted'.")


def _check_bank(features) -> None:
    if not isinstance(features, (FluxBank, FluxLiveBank)):
        raise PnPInputError("This feature bank was recorded with an SD model; connect a PnP Feature Bank made from "
                            "this FLUX model's inversion.")


def _weight_map(features, mask, outside_mask_strength: float):
    """The injection weights of ``mask`` at the bank's latent size (None: no mask)."""
    if mask is None:
        return None
    return injection_weight_map(mask, tuple(features.inverted.shape), outside_mask_strength)


def guider(model, positive, features, mask=None, injection_strength: float = 1.0,
           outside_mask_strength: float = 0.0) -> tuple:
    """PnP Guider on FLUX: (GUIDER, SIGMAS, x_T LATENT, NOISE) for SamplerCustomAdvanced (module docstring)."""
    _check_bank(features)
    cfg_guider = flux_sampling.guider(model, features, positive, _weight_map(features, mask, outside_mask_strength),
                                      injection_strength)
    return (cfg_guider, flux_sampling.bank_sigmas(features), flux_sampling.noise_latent(model, features.inversion),
            flux_sampling.start_noise(features))


def sample(model, positive, features, steps: int, mask=None, injection_strength: float = 1.0,
           outside_mask_strength: float = 0.0) -> dict:
    """PnP Sampler on FLUX: denoise the bank's inverted noise with the target prompt, V put in place (blended by
    ``mask`` and ``injection_strength`` as on SD)."""
    _check_bank(features)
    if steps not in (0, features.steps):
        raise PnPInputError(f"steps must be 0 or the bank's {features.steps} steps, got {steps}.")
    latent, injected = flux_sampling.sample(model, features, positive, guidance=None,
                                            weight_map=_weight_map(features, mask, outside_mask_strength),
                                            strength=injection_strength)
    calls = flow_solvers.model_calls(features.solver, features.steps)
    if isinstance(features, FluxLiveBank):
        calls += len(features.source_keys)  # the source calls of the on-the-fly bank
    log.info("PnP FLUX sampling: %s, %d steps, %d V tensors put in place (%d model calls)", features.solver,
             features.steps, len(injected), calls)
    return latent
