"""Model families: everything PnP knows about one kind of diffusion model, in one module each.

A family module (``unet``: SD 1.x, SD 2.x, SDXL; ``flux``: FLUX.1 dev and schnell) says how its models are
recognised and checked, their layout (which sites exist, each tensor's
shape), the paper's default sites per variant, how a site's tensor is
reached inside ComfyUI's model (the modules and patch points the patch layer,
``patcher``, hooks), how latents move between ComfyUI's sampling space and the
family's own schedule, and its checkpoint fingerprint. The rest of the pack
asks the family of a MODEL (``family_of``) or of a recorded identity
(``family_named``) and never names a model's modules itself.

What a family module provides (see ``unet`` for the reference):
- ``NAME`` (bank files record it, with its kinds' names); ``KINDS``: its
  ``SiteKind``s (``families.kinds``); ``VARIANTS``: ComfyUI model_config class name ->
  name shown to users; ``DEFAULTS``: variant -> {kind name: the paper's
  default layer spec};
- ``check(model) -> (prediction, layout, schedule)``: refuses a model of the
  family PnP cannot run (raises ``PnPInputError`` naming what to change);
  ``layout_of(diffusion_model)``: a layout with ``available(kind)``,
  ``where(kind)``, ``num_output_blocks``, ``depth(kind, block)`` and
  ``site_shape(kind, block, latent_hw)`` (the per-row tensor shape);
  ``FINGERPRINT_KEYS``: base weights that identify a checkpoint;
- site access, per the kind's ``patch``: ``site_module(diffusion_model, kind,
  site)`` (the module whose forward output is a ``MODULE_OUTPUT`` site),
  ``site_at(kind, extra_options)`` (the site of that kind an ``attn1_patch``
  call is at, or None), ``query_key(diffusion_model, site, x)`` (q, k and the
  head count of an attention site's projections, for the PCA views);
- the schedule ``check`` returns (the UNet family's: ``vp_schedule.DiscreteVPSchedule``), all the
  sampling passes know of time: ``sampling_timesteps(steps)`` (the official
  timesteps of a step count, noisiest first), ``sigmas_at(timesteps)`` (their
  sigmas in ComfyUI's sampling space, float32 CPU), ``official_end`` (the sigma
  the official sampler ends at), ``to_sampling(z, sigma)`` /
  ``from_sampling(x, sigma)`` (a latent between the family's own space and
  ComfyUI's), ``inversion(steps, inversion_steps)`` (the timesteps, sigmas,
  kept levels and model labels of an inversion, ``vp_schedule.Inversion``),
  ``inversion_step(x, denoised, sigma, sigma_next)`` and ``digest`` (tells a
  changed schedule apart in ``bank.ModelIdentity``).
FLUX's ``check`` refuses these passes (its own path, ``flux_sampling``, runs the
flow schedule ``flux.schedule`` with sigma = t).
Adding a kind of site to a family touches only the family module: the core
(layers, injection, sources, bank, bank files, the patch layer, PCA) reads
every kind-specific fact from its ``SiteKind``; a kind without a node input
of its own takes its family's default spec. Only a patch point ``patcher``
does not wire yet (``SiteKind.patch``) needs its wiring there.
Pure: no ComfyUI imports (a family reads the objects ComfyUI hands it).
"""
from __future__ import annotations

from types import ModuleType

from ..errors import PnPInputError
from . import flux, unet
from .kinds import (ATTENTION_THRESHOLD, ATTN1_QK_INPUT, FEATURE_THRESHOLD, MODULE_OUTPUT,  # noqa: F401
                    SiteKind, kinds_named)

FAMILIES: tuple[ModuleType, ...] = (unet, flux)


def variant_of(model) -> str:
    """The model's ComfyUI model_config class name (e.g. "SD15")."""
    return type(model.model.model_config).__name__


def family_named(variant: str) -> ModuleType:
    """The family module of a variant name (as a ``bank.ModelIdentity`` records it)."""
    for family in FAMILIES:
        if variant in family.VARIANTS:
            return family
    raise KeyError(variant)


def family_of(model) -> ModuleType:
    """The family module of a ComfyUI MODEL; raises PnPInputError for a model no family supports."""
    variant = variant_of(model)
    try:
        return family_named(variant)
    except KeyError:
        supported = [name for family in FAMILIES for name in family.VARIANTS.values()]
        raise PnPInputError(
            f"PnP supports {', '.join(supported)} checkpoints; the MODEL connected is "
            f"{variant}. Load an SD 1.x, SD 2.x or SDXL (base) checkpoint, or a FLUX.1 dev or schnell model."
        ) from None
