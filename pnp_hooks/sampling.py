"""PnP's passes, run with ComfyUI's own sampling machinery.

Every pass goes through ComfyUI's own ``comfy.samplers.CFGGuider`` on a
patched clone, so model loading, LoRA weight patches, ControlNet, hooks,
wrappers, progress bars, previews and Cancel behave as in ComfyUI's samplers.

Latent spaces: LATENT holds raw VAE latents (``latent_format`` scales them);
everything family-specific about time comes from the model's family through
``ModelFacts.schedule`` (``families``): the timesteps of a step count, their
sigmas, how a latent moves between ComfyUI's sampling space and the family's
own (the official one), and the family's inversion step. Here, a pass only
runs ComfyUI's samplers on those sigmas.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import partial

import torch

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview
from comfy.k_diffusion.sampling import trange

from . import batching, live_source, patcher
from .bank import (ON_THE_FLY, SOURCE_CFG, SOURCE_SINGLE, STORED, FeatureBank, Trajectory, TrajectoryBatch,
                   check_model, check_one_frame)
from .errors import PnPInputError
from .injection import Injector, Recorder
from .layers import LayerSites
from .live_source import LiveSource
from .schedule import InjectionPlan
from .sources import BATCH_MEMORY, ONE_FRAME, FrameSources, StoredSource

FINAL_STEPS = ("official", "comfyui")
# Where PnP sampling starts: the bank's inverted x_T (the paper), or Gaussian noise from a seed.
INVERTED, RANDOM_NOISE = "inverted", "random noise"
STARTS = (INVERTED, RANDOM_NOISE)

log = logging.getLogger("comfyui_pnp")


def check_source_latent(samples: torch.Tensor, facts: patcher.ModelFacts, what: str, batch: bool = False) -> None:
    """A LATENT of this model's channels; of one image unless ``batch``."""
    if samples.ndim != 4 or samples.shape[0] == 0:
        raise PnPInputError(f"The {what} is empty or not an image latent (shape {list(samples.shape)}).")
    if samples.shape[0] != 1 and not batch:
        raise PnPInputError(
            f"The {what} holds a batch of {samples.shape[0]}; this node makes one guidance image. Set the batch "
            f"size to 1 (a batch of real images can be translated: PnP DDIM Inversion takes it)."
        )
    channels = facts.latent_format.latent_channels
    if samples.shape[1] != channels:
        raise PnPInputError(
            f"The {what} has {samples.shape[1]} channels but this model's latents have {channels}: encode the "
            f"image with this checkpoint's VAE."
        )


def _progress(model, total: int, progress: tuple[int, int] | None = None):
    """ComfyUI's progress callback (bar and previews) for ``total`` steps; ``progress`` = (done, overall) places
    them within a longer run (the frames of a batch) on one bar."""
    if progress is None:
        return latent_preview.prepare_callback(model, total)
    done, overall = progress
    callback = latent_preview.prepare_callback(model, overall)

    def shifted(step, x0, x, _total):
        callback(done + step, x0, x, overall)

    return shifted


def _disable_pbar() -> bool:
    return not comfy.utils.PROGRESS_BAR_ENABLED


def _cfg_guider(model, positive, negative=None, cfg: float = 1.0) -> comfy.samplers.CFGGuider:
    """ComfyUI's own CFGGuider on ``model`` with its conditionings and CFG (by default one prompt at CFG 1, as
    the inversion and the source pass run)."""
    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(positive, [] if negative is None else negative)
    guider.set_cfg(cfg)
    return guider


@dataclass(frozen=True)
class Recording:
    """What a bank records: its sites, the leading steps per threshold (``schedule.recorded_steps``), the dtype
    its tensors are stored in and, for a source pass, timesteps per UNet call (0 = automatic, ``batching``)."""

    sites: LayerSites
    feature_steps: int
    attention_steps: int
    storage_dtype: torch.dtype
    batch_size: int = 0

    @property
    def steps(self) -> int:
        """Leading steps recorded at all (the larger threshold's)."""
        return max(self.feature_steps, self.attention_steps)

    def recorder(self, branches: str) -> Recorder:
        """A recorder of these sites and steps for ``branches`` (``SOURCE_SINGLE`` / ``SOURCE_CFG``)."""
        return Recorder(self.sites, self.feature_steps, self.attention_steps, branches,
                        comfy.model_management.intermediate_device(), self.storage_dtype)


@dataclass(frozen=True)
class Generation:
    """How PnP Generate Guidance samples its guidance image: prompts, seed, steps and CFG."""

    positive: list
    negative: list
    seed: int
    steps: int
    cfg: float


@torch.no_grad()
def _inversion_pass(model, x, sigmas, extra_args=None, callback=None, disable=None, schedule=None, keep=None,
                    kept=None):
    """KSAMPLER function: the family's inversion (``schedule.inversion_step``) up ``sigmas``, which ascend from
    the clean latent's level.

    ``x`` arrives as the family's latent and moves into sampling space at
    ``sigmas[0]``. Each step evaluates the model on the current latent at the
    current sigma (a wrapper may relabel the call: ``Inversion.next_label``)
    and steps to the next sigma. ``kept[t]`` receives x after landing on the
    sigma index ``i`` with ``keep[i] = t``.
    """
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    x = schedule.to_sampling(x, sigmas[0])
    for i in trange(len(sigmas) - 1, disable=disable):
        comfy.model_management.throw_exception_if_processing_interrupted()
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        x = schedule.inversion_step(x, denoised, sigmas[i], sigmas[i + 1])
        if i + 1 in keep:
            kept[keep[i + 1]] = x.detach().clone()
    return x


def invert(model, samples: torch.Tensor, conditioning, steps: int,
           inversion_steps: int) -> Trajectory | TrajectoryBatch:
    """Invert a LATENT (frames, C, H, W) with the family's inversion and keep it at every sampling timestep: a
    ``Trajectory`` for one image, a ``TrajectoryBatch`` for several, each frame inverted on its own exactly as a
    single image."""
    facts = patcher.model_facts(model)
    check_source_latent(samples, facts, "latent to invert", batch=True)
    inversion = facts.schedule.inversion(steps, inversion_steps)
    frames = samples.shape[0]
    trajectories = []
    for i in range(frames):
        progress = None if frames == 1 else (i * inversion.steps, frames * inversion.steps)
        trajectories.append(_invert_one(model, facts, inversion, samples[i:i + 1], conditioning, progress))
    return trajectories[0] if frames == 1 else TrajectoryBatch(tuple(trajectories))


def _invert_one(model, facts: patcher.ModelFacts, inversion, samples: torch.Tensor, conditioning,
                progress: tuple[int, int] | None) -> Trajectory:
    """Invert one image's LATENT (1, C, H, W) as ``inversion`` (the schedule's ``Inversion``) plans."""
    kept: dict[int, torch.Tensor] = {}
    relabelled = patcher.with_next_timestep_labels(model, inversion.next_label)
    guider = _cfg_guider(relabelled, conditioning)
    options = {"schedule": facts.schedule, "keep": inversion.keep, "kept": kept}
    sampler = comfy.samplers.KSAMPLER(_inversion_pass, extra_options=options)
    guider.sample(torch.zeros_like(samples), samples, sampler, inversion.sigmas,
                  callback=_progress(relabelled, inversion.steps, progress), disable_pbar=_disable_pbar(), seed=0)
    latents = torch.cat([kept[t] for t in inversion.sampling_timesteps])
    latents = facts.latent_format.process_out(latents.float().cpu())
    return Trajectory(facts.identity, inversion.sampling_timesteps, latents, inversion.steps, "inverted")


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
    Cancel is honoured between calls and, on the clone ``record_bank`` makes,
    between the UNet blocks of a call. ``x`` is returned unchanged.
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


def record_bank(model, trajectory: Trajectory | TrajectoryBatch, conditioning, recording: Recording,
                mode: str = STORED, batch_memory: str = ONE_FRAME) -> FeatureBank:
    """Record the bank from ``UNet(z_t_inverted, t, conditioning)`` (pnp-diffusers' source pass).

    ``recording.batch_size``: timesteps per UNet call, 0 = automatic (see ``batching``).
    ``mode`` "on the fly": record nothing; the bank's source is a ``LiveSource``
    that PnP sampling runs per injecting step. A batch of frames gets one
    source per frame (``FrameSources``); stored, ``batch_memory`` says whether
    every frame is recorded now (``ALL_FRAMES``) or each when it is translated
    (``ONE_FRAME``: one frame's tensors in memory at a time). Each frame's source
    is the one its own single-image bank would have.
    """
    facts = patcher.model_facts(model)
    check_model(trajectory.model, facts.identity, "inversion")
    if mode == ON_THE_FLY:
        live_source.check_conditioning(conditioning)
    if batch_memory not in BATCH_MEMORY:
        raise PnPInputError(f"batch_memory must be one of {BATCH_MEMORY}, got {batch_memory!r}.")
    record = _FrameRecording(model, facts, trajectory, conditioning, recording, mode)
    frames = trajectory.frames
    if frames == 1:
        source = record(0)
    elif mode == STORED and batch_memory == ONE_FRAME:
        source = FrameSources(mode, frames, record=record)
    else:
        recorded = recording.steps
        source = FrameSources(mode, frames, held=tuple(record(i, progress=(i * recorded, frames * recorded))
                                                        for i in range(frames)))
    steps = ((trajectory.steps, trajectory.steps) if mode == ON_THE_FLY
             else (recording.feature_steps, recording.attention_steps))
    return FeatureBank(trajectory, recording.sites, SOURCE_SINGLE, *steps, source, recording.storage_dtype,
                       source_conditioning=conditioning)


@dataclass(frozen=True, eq=False)
class _FrameRecording:
    """One frame's source of a bank ``record_bank`` makes (``FrameSources.record`` calls it when a deferred
    frame is translated): a ``LiveSource`` on the fly, else the frame's recorded ``StoredSource``."""

    model: object
    facts: patcher.ModelFacts
    trajectory: Trajectory | TrajectoryBatch
    conditioning: list
    recording: Recording
    mode: str

    def __call__(self, frame: int, progress: tuple[int, int] | None = None) -> LiveSource | StoredSource:
        trajectory = self.trajectory.frame(frame)
        if self.mode == ON_THE_FLY:
            return LiveSource(trajectory, self.recording.sites, self.conditioning)
        recorder = self.recording.recorder(SOURCE_SINGLE)
        if self.recording.steps:
            self._record(trajectory, recorder, progress)
        return StoredSource(recorder.build(), SOURCE_SINGLE)

    def _record(self, trajectory: Trajectory, recorder: Recorder, progress: tuple[int, int] | None) -> None:
        """``_source_pass`` on the recorded steps of ``trajectory``, through a clone that records at the sites."""
        recorded_steps = self.recording.steps
        sigmas = self.facts.schedule.sigmas_at(trajectory.timesteps[:recorded_steps])
        clone = patcher.with_cancel_between_blocks(patcher.with_pnp_sites(self.model, recorder, sigmas))
        sampler = comfy.samplers.KSAMPLER(_source_pass, extra_options={
            "latents": self.facts.latent_format.process_in(trajectory.latents[:recorded_steps]),
            "latent_sigmas": sigmas,
            "rows_per_call": partial(_rows_per_call, clone, trajectory.latent_shape, recorded_steps,
                                     max(0, self.recording.batch_size))})
        guider = _cfg_guider(clone, self.conditioning)
        shape = (1,) + trajectory.latent_shape
        # The sampler's own schedule only sizes the progress bar: one entry per recorded step, then 0.
        guider.sample(torch.zeros(shape), torch.zeros(shape), sampler, torch.cat([sigmas, sigmas.new_zeros(1)]),
                      callback=_progress(clone, recorded_steps, progress), disable_pbar=_disable_pbar(), seed=0)


def generate_guidance(model, generation: Generation, samples: torch.Tensor,
                      recording: Recording) -> tuple[FeatureBank, torch.Tensor]:
    """Generate a guidance image with DDIM + CFG (``generation``) and record the bank (``recording``) during it.

    As the original code does for generated guidance images: features are taken
    from the generation's own UNet calls (uncond and cond branches under CFG),
    starting from x_T ~ N(0, I) in the family's own (official) scale; ``samples``
    sets the size. Returns the bank and the generated image's LATENT.
    """
    facts = patcher.model_facts(model)
    check_source_latent(samples, facts, "latent that sets the guidance image size")
    schedule = facts.schedule
    timesteps = schedule.sampling_timesteps(generation.steps)
    branches = SOURCE_SINGLE if math.isclose(generation.cfg, 1.0) else SOURCE_CFG
    recorder = recording.recorder(branches)
    step_sigmas = schedule.sigmas_at(timesteps)
    clone = patcher.with_pnp_sites(model, recorder, step_sigmas)
    sigmas = torch.cat([step_sigmas, step_sigmas.new_zeros(1)])
    noise = comfy.sample.prepare_noise(samples, generation.seed)
    x_T = facts.latent_format.process_out(schedule.to_sampling(noise, sigmas[0]))
    trajectory_x: dict[int, torch.Tensor] = {}
    progress = _progress(clone, generation.steps)

    def keep_trajectory(step, x0, x, total):
        trajectory_x[step] = x.detach().float().cpu()
        progress(step, x0, x, total)

    guider = _cfg_guider(clone, generation.positive, generation.negative, generation.cfg)
    final = guider.sample(torch.zeros_like(x_T), x_T, comfy.samplers.ksampler("euler"), sigmas,
                          callback=keep_trajectory, disable_pbar=_disable_pbar(), seed=generation.seed)
    latents = facts.latent_format.process_out(torch.cat([trajectory_x[i] for i in range(generation.steps)]))
    trajectory = Trajectory(facts.identity, tuple(timesteps), latents, generation.steps, "generated")
    bank = FeatureBank(trajectory, recording.sites, branches, recording.feature_steps, recording.attention_steps,
                       StoredSource(recorder.build(), branches), recording.storage_dtype,
                       source_conditioning=generation.positive)
    return bank, schedule.from_sampling(final.float().cpu(), sigmas[-1])


@dataclass(frozen=True)
class Target:
    """What PnP Sampler and PnP Guider translate to, for any bank (the guidance image is the bank's): the target
    prompts, CFG, thresholds, strength, the paper's negative prompt and its per-step weights, and the mask's
    weight maps (1 or frames, H, W): one for every frame, or one per frame."""

    positive: list
    negative: list
    cfg: float
    plan: InjectionPlan
    strength: float = 1.0
    masks: torch.Tensor | None = None
    paper_negative: list | None = None
    negative_alphas: list[float] | None = None

    def mask_of(self, frame: int) -> torch.Tensor | None:
        if self.masks is None or self.masks.shape[0] == 1:
            return self.masks
        return self.masks[frame:frame + 1]


def pnp_guider(model, target: Target, bank: FeatureBank, frame: int = 0) -> comfy.samplers.CFGGuider:
    """ComfyUI's own CFGGuider on a clone that injects ``bank`` (of one image; ``frame``: which mask of
    ``target`` is its) below the thresholds of ``target.plan``.

    With ``target.paper_negative`` (the original paper's negative prompt, with
    its per-step ``negative_alphas``) the guider carries it as one more
    conditioning; a live bank's source prompt likewise. Every pre/post-CFG
    hook on the model keeps working: the guider is not subclassed.
    """
    check_one_frame(bank, "PnP Guider")
    facts = patcher.model_facts(model)
    check_model(bank.trajectory.model, facts.identity, "feature bank")
    injector = Injector(bank.sites, bank.source, target.plan, (bank.feature_steps, bank.attention_steps),
                        target.strength, target.mask_of(frame))
    step_sigmas = facts.schedule.sigmas_at(bank.trajectory.timesteps)
    paper_negative = target.paper_negative
    clone = patcher.with_pnp_sites(model, injector, step_sigmas, target.negative_alphas if paper_negative else None)
    guider = comfy.samplers.CFGGuider(clone)
    conds = {"positive": target.positive, "negative": target.negative, **bank.source.guider_conds()}
    if paper_negative is not None:
        conds[patcher.NEGATIVE_COND] = paper_negative
    guider.inner_set_conds(conds)
    guider.set_cfg(target.cfg)
    return guider


def bank_sigmas(model, bank: FeatureBank, final_step: str) -> torch.Tensor:
    """The sigmas PnP samples on: those of the bank's timesteps, then the final one (float32, CPU).

    ``final_step`` "official" ends where the official code does (the schedule's
    ``official_end``; SD: sigma(t=0) = alpha_bar(0)), "comfyui" at 0 (ComfyUI's
    samplers; what PnP Guider outputs).
    """
    if final_step not in FINAL_STEPS:
        raise PnPInputError(f"final_step must be one of {FINAL_STEPS}, got {final_step!r}.")
    facts = patcher.model_facts(model)
    final_sigma = facts.schedule.official_end if final_step == "official" else 0.0
    return torch.cat([facts.schedule.sigmas_at(bank.trajectory.timesteps), torch.tensor([final_sigma])])


def start_latent(model, bank: FeatureBank, start: str, seed: int) -> torch.Tensor:
    """The LATENT (1, C, H, W) PnP sampling of a one-image bank starts from at its first timestep.

    "inverted": the bank's x_T (the paper). "random noise": x_T ~ N(0, I) in the
    family's own (official) scale from ``seed``, moved into sampling space at the
    first timestep's sigma, as PnP Generate Guidance starts; the bank's features
    are injected all the same.
    """
    if start not in STARTS:
        raise PnPInputError(f"start must be one of {STARTS}, got {start!r}.")
    x_T = bank.trajectory.x_T()
    if start == INVERTED:
        return x_T
    facts = patcher.model_facts(model)
    sigma_T = facts.schedule.sigmas_at(bank.trajectory.timesteps[:1])[0]
    noise = comfy.sample.prepare_noise(x_T, seed)
    return facts.latent_format.process_out(facts.schedule.to_sampling(noise, sigma_T))


def translate(model, target: Target, bank: FeatureBank, final_step: str, start: str = INVERTED,
              seed: int = 0, progress: tuple[int, int] | None = None) -> torch.Tensor:
    """PnP sampling of every frame of ``bank``: DDIM (ComfyUI's Euler) on the bank's timesteps from
    ``start_latent``, injecting with ``target``. Returns (frames, C, H, W).

    Frames run one after another, each with its own bank and guider exactly as
    a single image (the same seed for every frame's random start). A bank
    recorded one frame at a time records each frame just before its sampling
    and drops it after; progress runs over all frames on one bar, or at
    ``progress`` = (done, overall) on a longer one (PnP Threshold Sweep's cells).
    """
    sigmas = bank_sigmas(model, bank, final_step)
    schedule = patcher.model_facts(model).schedule
    recording = max(bank.feature_steps, bank.attention_steps) if bank.frames > 1 and bank.source.deferred else 0
    per_frame = recording + bank.steps
    done, overall = progress or (0, bank.frames * per_frame)
    out = []
    for frame in range(bank.frames):
        comfy.model_management.throw_exception_if_processing_interrupted()
        frame_progress = None if progress is None and bank.frames == 1 else (done + frame * per_frame, overall)
        out.append(_translate_frame(model, target, bank, frame, schedule, sigmas, start, seed, recording,
                                    frame_progress))
    return torch.cat(out)


def _translate_frame(model, target: Target, bank: FeatureBank, frame: int, schedule, sigmas: torch.Tensor,
                     start: str, seed: int, recording: int, progress: tuple[int, int] | None) -> torch.Tensor:
    """One frame of ``translate`` (its bank and guider go when it returns: one frame's tensors at a time)."""
    frame_bank = bank.frame(frame, progress=progress) if recording else bank.frame(frame)
    guider = pnp_guider(model, target, frame_bank, frame)
    x_T = start_latent(model, frame_bank, start, seed)
    if progress is not None:
        progress = (progress[0] + recording, progress[1])
    out = guider.sample(torch.zeros_like(x_T), x_T, comfy.samplers.ksampler("euler"), sigmas,
                        callback=_progress(guider.model_patcher, bank.steps, progress), disable_pbar=_disable_pbar(),
                        seed=0)
    # Back to the family's latent at the last sigma (official: SD's last DDIM step lands on alpha_bar(0) and
    # returns z = sqrt(alpha_bar(0)) * x).
    return schedule.from_sampling(out.float().cpu(), float(sigmas[-1]))
