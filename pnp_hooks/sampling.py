"""PnP's passes, run with ComfyUI's own sampling machinery.

Every pass goes through ComfyUI's own ``comfy.samplers.CFGGuider`` on a
patched clone, so model loading, LoRA weight patches, ControlNet, hooks,
wrappers, progress bars, previews and Cancel behave as in ComfyUI's samplers.

Latent spaces: LATENT holds raw VAE latents; inside sampling ComfyUI works in
variance-exploding space x = z / sqrt(alpha_bar) (z the official, scaled VP
latent), sigma = sqrt((1 - alpha_bar) / alpha_bar). A deterministic DDIM step
is then exactly an Euler step x' = x + (sigma' - sigma) * eps.
"""
from __future__ import annotations

import logging
import math
from functools import partial

import torch

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview
from comfy.k_diffusion.sampling import to_d, trange

from . import batching, live_source, patcher
from .bank import ON_THE_FLY, SOURCE_CFG, SOURCE_SINGLE, STORED, FeatureBank, Trajectory, check_model
from .errors import PnPInputError
from .injection import Injector, Recorder
from .layers import LayerSites
from .schedule import InjectionPlan, ddim_timesteps, inversion_timesteps
from .sources import StoredSource

FINAL_STEPS = ("official", "comfyui")
# Where PnP sampling starts: the bank's inverted x_T (the paper), or Gaussian noise from a seed.
INVERTED, RANDOM_NOISE = "inverted", "random noise"
STARTS = (INVERTED, RANDOM_NOISE)

log = logging.getLogger("comfyui_pnp")


def check_source_latent(samples: torch.Tensor, facts: patcher.ModelFacts, what: str) -> None:
    if samples.ndim != 4 or samples.shape[0] == 0:
        raise PnPInputError(f"The {what} is empty or not an image latent (shape {list(samples.shape)}).")
    if samples.shape[0] != 1:
        raise PnPInputError(
            f"The {what} holds a batch of {samples.shape[0]}; PnP works on one guidance image at a time. "
            f"Pick one with 'Latent From Batch'."
        )
    channels = facts.latent_format.latent_channels
    if samples.shape[1] != channels:
        raise PnPInputError(
            f"The {what} has {samples.shape[1]} channels but this model's latents have {channels}: encode the "
            f"image with this checkpoint's VAE."
        )


def _progress(model, total: int):
    return latent_preview.prepare_callback(model, total)


def _disable_pbar() -> bool:
    return not comfy.utils.PROGRESS_BAR_ENABLED


@torch.no_grad()
def _official_ddim_inversion(model, x, sigmas, extra_args=None, callback=None, disable=None, keep=None, kept=None):
    """Official DDIM inversion in sigma space; ``sigmas`` ascend from sigma(t=0).

    The clean latent is taken as z0 at alpha_bar(0) (SD schedulers do not set it
    to one). Each step evaluates eps on the current latent (the model call uses
    the current sigma; a wrapper labels the UNet with the next timestep) and
    moves to the next sigma. ``kept[t]`` receives x after landing on the sigma
    index ``i`` with ``keep[i] = t``.
    """
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    x = x * (1.0 + sigmas[0] ** 2) ** 0.5
    for i in trange(len(sigmas) - 1, disable=disable):
        comfy.model_management.throw_exception_if_processing_interrupted()
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        d = to_d(x, sigmas[i], denoised)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        x = x + d * (sigmas[i + 1] - sigmas[i])
        if i + 1 in keep:
            kept[keep[i + 1]] = x.detach().clone()
    return x


def invert(model, samples: torch.Tensor, conditioning, steps: int, inversion_steps: int) -> Trajectory:
    """DDIM-invert a LATENT (1, C, H, W) and keep it at every sampling timestep."""
    facts = patcher.model_facts(model)
    check_source_latent(samples, facts, "latent to invert")
    sampling_ts = ddim_timesteps(steps)
    inversion_ts = inversion_timesteps(steps, inversion_steps)
    levels = [0] + inversion_ts
    wanted = set(sampling_ts)
    keep = {i + 1: t for i, t in enumerate(inversion_ts) if t in wanted}
    kept: dict[int, torch.Tensor] = {}

    relabelled = patcher.with_next_timestep_labels(model, dict(zip(levels[:-1], levels[1:])))
    guider = comfy.samplers.CFGGuider(relabelled)
    guider.set_conds(conditioning, [])
    guider.set_cfg(1.0)
    sampler = comfy.samplers.KSAMPLER(_official_ddim_inversion, extra_options={"keep": keep, "kept": kept})
    guider.sample(torch.zeros_like(samples), samples, sampler, facts.sigmas_at(levels),
                  callback=_progress(relabelled, len(inversion_ts)), disable_pbar=_disable_pbar(), seed=0)
    latents = torch.cat([kept[t] for t in sampling_ts])
    latents = facts.latent_format.process_out(latents.float().cpu())
    return Trajectory(facts.identity, tuple(sampling_ts), latents, len(inversion_ts), "inverted")


# Largest automatic batch of source timesteps per UNet call (batch_size 0).
AUTO_BATCH_MAX = 16


def _rows_per_call(model, latent_shape: tuple[int, ...], total: int, batch_size: int, device) -> int:
    """Rows per source-pass UNet call (``batching``), never more than ComfyUI's memory estimate
    for this model fits in the free memory, with the margin of its own cond batching."""
    free = comfy.model_management.get_free_memory(device)
    fits = next((rows for rows in range(min(AUTO_BATCH_MAX, total), 1, -1)
                 if model.model.memory_required([rows] + list(latent_shape)) * 1.5 < free), 1)
    return batching.rows_per_call(total, tuple(latent_shape[-2:]), fits, batch_size)


@torch.no_grad()
def _source_pass(model, x, sigmas, extra_args=None, callback=None, disable=None, latents=None,
                 latent_sigmas=None, rows_per_call=None):
    """KSAMPLER function: UNet(z_t, t, cond) on the trajectory latents instead of sampling ``x``.

    ``latents`` (S, C, H, W) are the recorded steps' latents in sampling space at
    ``latent_sigmas`` (S,). Rows are independent given the trajectory, so a call
    batches ``rows_per_call(device)`` timesteps; the handler on the model keeps
    each row's tensors under its own step. Progress moves once per timestep;
    Cancel is honoured between calls. ``x`` is returned unchanged.
    """
    extra_args = {} if extra_args is None else extra_args
    total = len(latent_sigmas)
    batch = rows_per_call(x.device)
    log.debug("PnP source pass: %d timesteps, %d per UNet call", total, batch)
    for start in trange(0, total, batch, disable=disable):
        comfy.model_management.throw_exception_if_processing_interrupted()
        source_x = latents[start:start + batch].to(x)
        sigma = latent_sigmas[start:start + batch].to(x.device)
        denoised = model(source_x, sigma, **extra_args)
        for r in range(source_x.shape[0]):
            if callback is not None:
                callback({"x": source_x[r:r + 1], "i": start + r, "sigma": sigma[r], "sigma_hat": sigma[r],
                          "denoised": denoised[r:r + 1]})
    return x


def record_bank(model, trajectory: Trajectory, conditioning, sites: LayerSites, feature_steps: int,
                attention_steps: int, storage_dtype: torch.dtype, batch_size: int,
                mode: str = STORED) -> FeatureBank:
    """Record the bank from ``UNet(z_t_inverted, t, conditioning)`` (pnp-diffusers' source pass).

    ``batch_size``: timesteps per UNet call, 0 = automatic (see ``batching``).
    ``mode`` "on the fly": record nothing; the bank's source is a ``LiveSource``
    that PnP sampling runs per injecting step.
    """
    facts = patcher.model_facts(model)
    check_model(trajectory.model, facts.identity, "inversion")
    if mode == ON_THE_FLY:
        live_source.check_conditioning(conditioning)
        return FeatureBank(trajectory, sites, SOURCE_SINGLE, trajectory.steps, trajectory.steps,
                           live_source.LiveSource(trajectory, sites, conditioning), storage_dtype,
                           source_conditioning=conditioning)
    recorded_steps = max(feature_steps, attention_steps)
    recorder = Recorder(sites, feature_steps, attention_steps, SOURCE_SINGLE,
                        comfy.model_management.intermediate_device(), storage_dtype)
    if recorded_steps:
        sigmas = facts.sigmas_at(list(trajectory.timesteps[:recorded_steps]))
        clone = patcher.with_pnp_sites(model, recorder, sigmas)
        sampler = comfy.samplers.KSAMPLER(_source_pass, extra_options={
            "latents": facts.latent_format.process_in(trajectory.latents[:recorded_steps]),
            "latent_sigmas": sigmas,
            "rows_per_call": partial(_rows_per_call, clone, trajectory.latent_shape, recorded_steps,
                                     max(0, batch_size))})
        guider = comfy.samplers.CFGGuider(clone)
        guider.set_conds(conditioning, [])
        guider.set_cfg(1.0)
        shape = (1,) + trajectory.latent_shape
        # The sampler's own schedule only sizes the progress bar: one entry per recorded step, then 0.
        guider.sample(torch.zeros(shape), torch.zeros(shape), sampler, torch.cat([sigmas, sigmas.new_zeros(1)]),
                      callback=_progress(clone, recorded_steps), disable_pbar=_disable_pbar(), seed=0)
    resblock, attention = recorder.build()
    return FeatureBank(trajectory, sites, SOURCE_SINGLE, feature_steps, attention_steps,
                       StoredSource(resblock, attention, SOURCE_SINGLE), storage_dtype,
                       source_conditioning=conditioning)


def generate_guidance(model, positive, negative, samples: torch.Tensor, seed: int, steps: int, cfg: float,
                      sites: LayerSites, feature_steps: int, attention_steps: int,
                      storage_dtype: torch.dtype) -> tuple[FeatureBank, torch.Tensor]:
    """Generate a guidance image with DDIM + CFG from a seed and record the bank during it.

    As the original code does for generated guidance images: features are taken
    from the generation's own UNet calls (uncond and cond branches under CFG),
    starting from x_T ~ N(0, I) in the official (variance-preserving) scale.
    Returns the bank and the generated image's LATENT.
    """
    facts = patcher.model_facts(model)
    check_source_latent(samples, facts, "latent that sets the guidance image size")
    timesteps = ddim_timesteps(steps)
    branches = SOURCE_SINGLE if math.isclose(cfg, 1.0) else SOURCE_CFG
    recorder = Recorder(sites, feature_steps, attention_steps, branches,
                        comfy.model_management.intermediate_device(), storage_dtype)
    step_sigmas = facts.sigmas_at(timesteps)
    clone = patcher.with_pnp_sites(model, recorder, step_sigmas)
    sigmas = torch.cat([step_sigmas, step_sigmas.new_zeros(1)])
    noise = comfy.sample.prepare_noise(samples, seed)
    x_T = facts.latent_format.process_out(noise * (1.0 + sigmas[0] ** 2) ** 0.5)
    trajectory_x: dict[int, torch.Tensor] = {}
    progress = _progress(clone, steps)

    def keep_trajectory(step, x0, x, total):
        trajectory_x[step] = x.detach().float().cpu()
        progress(step, x0, x, total)

    guider = comfy.samplers.CFGGuider(clone)
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    final = guider.sample(torch.zeros_like(x_T), x_T, comfy.samplers.ksampler("euler"), sigmas,
                          callback=keep_trajectory, disable_pbar=_disable_pbar(), seed=seed)
    latents = facts.latent_format.process_out(torch.cat([trajectory_x[i] for i in range(steps)]))
    trajectory = Trajectory(facts.identity, tuple(timesteps), latents, steps, "generated")
    resblock, attention = recorder.build()
    bank = FeatureBank(trajectory, sites, branches, feature_steps, attention_steps,
                       StoredSource(resblock, attention, branches), storage_dtype, source_conditioning=positive)
    return bank, final.float().cpu() / (1.0 + sigmas[-1] ** 2) ** 0.5


def pnp_guider(model, positive, negative, bank: FeatureBank, cfg: float, plan: InjectionPlan,
               strength: float = 1.0, mask: torch.Tensor | None = None, paper_negative=None,
               negative_alphas: list[float] | None = None) -> comfy.samplers.CFGGuider:
    """ComfyUI's own CFGGuider on a clone that injects ``bank`` below the thresholds of ``plan``.

    With ``paper_negative`` (the original paper's negative prompt, with its
    per-step ``negative_alphas``) the guider carries it as one more
    conditioning; a live bank's source prompt likewise. Every pre/post-CFG
    hook on the model keeps working: the guider is not subclassed.
    """
    facts = patcher.model_facts(model)
    check_model(bank.trajectory.model, facts.identity, "feature bank")
    injector = Injector(bank.sites, bank.source, plan, (bank.feature_steps, bank.attention_steps), strength, mask)
    step_sigmas = facts.sigmas_at(list(bank.trajectory.timesteps))
    clone = patcher.with_pnp_sites(model, injector, step_sigmas, negative_alphas if paper_negative else None)
    guider = comfy.samplers.CFGGuider(clone)
    conds = {"positive": positive, "negative": negative, **bank.source.guider_conds()}
    if paper_negative is not None:
        conds[patcher.NEGATIVE_COND] = paper_negative
    guider.inner_set_conds(conds)
    guider.set_cfg(cfg)
    return guider


def bank_sigmas(model, bank: FeatureBank, final_step: str) -> torch.Tensor:
    """The sigmas PnP samples on: those of the bank's timesteps, then the final one (float32, CPU).

    ``final_step`` "official" ends at sigma(t=0) (alpha_bar(0), as both official
    codes), "comfyui" at 0 (ComfyUI's samplers; what PnP Guider outputs).
    """
    if final_step not in FINAL_STEPS:
        raise PnPInputError(f"final_step must be one of {FINAL_STEPS}, got {final_step!r}.")
    facts = patcher.model_facts(model)
    final_sigma = facts.sigma(0) if final_step == "official" else 0.0
    return torch.cat([facts.sigmas_at(list(bank.trajectory.timesteps)), torch.tensor([final_sigma])])


def start_latent(model, bank: FeatureBank, start: str, seed: int) -> torch.Tensor:
    """The LATENT (1, C, H, W) PnP sampling starts from at the bank's first timestep.

    "inverted": the bank's x_T (the paper). "random noise": x_T ~ N(0, I) in the
    official (variance-preserving) scale from ``seed``, i.e. sqrt(1 + sigma_T^2)
    times ComfyUI's noise in sampling space, as PnP Generate Guidance starts; the
    bank's features are injected all the same.
    """
    if start not in STARTS:
        raise PnPInputError(f"start must be one of {STARTS}, got {start!r}.")
    x_T = bank.trajectory.x_T()
    if start == INVERTED:
        return x_T
    facts = patcher.model_facts(model)
    sigma_T = facts.sigmas_at([bank.trajectory.timesteps[0]])[0]
    noise = comfy.sample.prepare_noise(x_T, seed)
    return facts.latent_format.process_out(noise * (1.0 + sigma_T ** 2) ** 0.5)


def translate(model, guider: comfy.samplers.CFGGuider, bank: FeatureBank, final_step: str, start: str = INVERTED,
              seed: int = 0) -> torch.Tensor:
    """PnP sampling: DDIM (ComfyUI's Euler) with ``guider`` (``pnp_guider``) on the bank's timesteps from
    ``start_latent``."""
    sigmas = bank_sigmas(model, bank, final_step)
    final_sigma = float(sigmas[-1])
    x_T = start_latent(model, bank, start, seed)
    out = guider.sample(torch.zeros_like(x_T), x_T, comfy.samplers.ksampler("euler"), sigmas,
                        callback=_progress(guider.model_patcher, bank.steps), disable_pbar=_disable_pbar(), seed=0)
    # Official: the last DDIM step lands on alpha_bar(0) and returns z = sqrt(alpha_bar(0)) * x.
    return out.float().cpu() / (1.0 + final_sigma ** 2) ** 0.5
