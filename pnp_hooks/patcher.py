"""The only module that touches ComfyUI's ModelPatcher.

It reads model facts (family, prediction type, noise schedule, latent format,
decoder layout, a fingerprint of the base weights), asking the model's family
(``families``) for everything family-specific, and returns patched *clones*;
the MODEL a node was given is never changed.

PnP patches on a clone, all under the key ``comfyui_pnp``:
- a PREDICT_NOISE wrapper: once per sampling evaluation it finds the rows'
  steps from the sigmas (``schedule.steps_of_sigmas``), asks the handler (an
  ``injection.Injector`` or ``injection.Recorder``) for the step's context and
  puts it, with the paper's negative-prompt weight of the step, in
  ``transformer_options`` for the UNet calls of that evaluation;
- a DIFFUSION_MODEL wrapper: once per UNet call the context plans the call
  from ``cond_or_uncond`` and, for that call only, the family's module of
  each site of a ``MODULE_OUTPUT`` kind (``site_module``; the UNet's ResBlock
  site: ``output_blocks[b][0].out_layers``, the residual branch before the
  skip add) is hooked. Hooks and plan are removed in ``finally``;
- an ``attn1_patch``: at the sites of an ``ATTN1_QK_INPUT`` kind (the
  family's ``site_at`` of the call; the UNet's attention site) it hands ``n``
  (the attn1 input after norm1, (rows, h*w, C)) to the call and returns the
  result as the q/k input, keeping the target's own ``n`` for v. Attention itself stays
  ComfyUI's optimized attention, and any attn1 replace patch another node put
  on the model still runs (it receives the injected q and k);
- with negative prompting, a CALC_COND_BATCH wrapper: the guider's
  [cond, uncond] batch gets the paper's negative prompt evaluated as an uncond
  (its own UNet call) and its uncond output replaced by the blend, before
  any pre-CFG hook (APG, TCFG, ...) and ComfyUI's CFG see it.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import partial
from types import ModuleType

import torch

import comfy.model_management
import comfy.samplers
import comfy.utils
from comfy.patcher_extension import WrappersMP

from . import families
from .bank import ModelIdentity
from .families import ATTN1_QK_INPUT, MODULE_OUTPUT
from .schedule import steps_of_sigmas

PATCH_KEY = "comfyui_pnp"
# transformer_options key of the planned site call of one UNet call.
CALL_KEY = f"{PATCH_KEY}.call"
# Key of the paper's negative prompt among the sampler guider's conditionings.
NEGATIVE_COND = "pnp_negative"



@dataclass(frozen=True)
class ModelFacts:
    identity: ModelIdentity
    layout: object  # the family's layout (``layout_of``): its sites and their shapes
    schedule: object  # the family's noise schedule (``check``): timesteps, their sigmas, latent moves, inversion step
    latent_format: object  # comfy.latent_formats: process_in (LATENT -> model space), process_out
    family: ModuleType | None = field(default=None, compare=False, repr=False)  # its module of ``families``


def model_facts(model) -> ModelFacts:
    """Check the model is one PnP supports and describe it; raises PnPInputError otherwise."""
    family = families.family_of(model)
    prediction, layout, schedule = family.check(model)
    identity = ModelIdentity(families.variant_of(model), prediction, fingerprint(model, family.FINGERPRINT_KEYS),
                             schedule.digest)
    return ModelFacts(identity, layout, schedule, model.get_model_object("latent_format"), family)


def fingerprint(model, keys: tuple[str, ...]) -> str:
    """Hash of a few base (un-LoRA'd) weights (the family's ``keys``), from the patcher's backup when patched in
    place."""
    digest = hashlib.sha256()
    for key in keys:
        backup = model.backup.get(key)
        weight = backup.weight if backup is not None else comfy.utils.get_attr(model.model, key)
        digest.update(weight.detach().to(device="cpu", dtype=torch.float16).numpy().tobytes())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class _NegativeStep:
    """The paper's negative prompting at one step: ``alpha`` weighs the guider's ``uncond`` against ``prompt``."""

    alpha: float
    prompt: list  # the guider's processed NEGATIVE_COND
    uncond: list  # the guider's processed uncond (the list sampling_function hands calc_cond_batch)


@dataclass(frozen=True)
class _StepContext:
    """What PnP's wrappers know about the current sampling evaluation (in ``transformer_options``)."""

    sites: object  # the handler's step context (``injection.InjectingStep`` / ``RecordingStep``) or None
    negative: _NegativeStep | None


@dataclass(frozen=True)
class Evaluation:
    """One sampling evaluation (predict_noise) of a PnP clone, as a live source needs it."""

    guider: object  # the comfy.samplers.CFGGuider sampling (its processed conds, its inner model)
    x: torch.Tensor
    sigma: torch.Tensor
    model_options: dict
    patch: "_SitePatch"

    def latent_in(self, latents: torch.Tensor) -> torch.Tensor:
        """LATENT-unit latents in the model's sampling space, on the evaluation's device and dtype."""
        return self.guider.inner_model.process_latent_in(latents).to(self.x)

    def run_alone(self, cond_key: str, x: torch.Tensor, sites) -> torch.Tensor:
        """Evaluate the guider's cond ``cond_key`` on ``x`` (one row) at this sigma, in its own UNet call.

        ``sites``: the step context for the call (e.g. an ``injection.RecordingStep``).
        Other packs' attention and block patches are left out: they are meant
        for the target's rows, not for PnP's source pass.
        """
        options = dict(self.model_options)
        transformer_options = dict(options.get("transformer_options", {}))
        transformer_options[PATCH_KEY] = _StepContext(sites, None)
        transformer_options["patches"] = {"attn1_patch": [self.patch.attn1_patch]}
        transformer_options.pop("patches_replace", None)
        options["transformer_options"] = transformer_options
        return comfy.samplers.calc_cond_batch(self.guider.inner_model, [self.guider.conds[cond_key]], x,
                                              self.sigma[:1], options)


class _SitePatch:
    """Wires a handler (Injector or Recorder) to the UNet sites and the sampler's evaluations."""

    def __init__(self, family, handler, step_sigmas: torch.Tensor, negative_alphas: list[float] | None):
        self.family = family
        self.handler = handler
        self.step_sigmas = step_sigmas
        self.negative_alphas = negative_alphas
        sites = handler.sites
        self._hooked = tuple((kind, site) for kind, kind_sites in sites.items() if kind.patch == MODULE_OUTPUT
                             for site in kind_sites)
        self._attn1_sites = tuple((kind, frozenset(kind_sites)) for kind, kind_sites in sites.items()
                                  if kind.patch == ATTN1_QK_INPUT)

    def __deepcopy__(self, memo):
        # ModelPatcher.clone deep-copies model_options; share the handler (and the bank) instead.
        return self

    def predict_noise_wrapper(self, executor, x, timestep, model_options={}, *args, **kwargs):
        steps = steps_of_sigmas(self.step_sigmas, timestep)
        guider = executor.class_obj
        sites = self.handler.step_context(steps, Evaluation(guider, x, timestep, model_options, self))
        negative = self._negative_step(guider, steps[0])
        if sites is None and negative is None:
            return executor(x, timestep, model_options, *args, **kwargs)
        transformer_options = {**model_options.get("transformer_options", {}),
                               PATCH_KEY: _StepContext(sites, negative)}
        return executor(x, timestep, {**model_options, "transformer_options": transformer_options}, *args, **kwargs)

    def _negative_step(self, guider, step: int | None) -> _NegativeStep | None:
        if self.negative_alphas is None or step is None or self.negative_alphas[step] == 1.0:
            return None
        return _NegativeStep(self.negative_alphas[step], guider.conds[NEGATIVE_COND], guider.conds.get("negative"))

    def calc_cond_batch_wrapper(self, executor, model, conds, x, timestep, model_options, *args, **kwargs):
        """The paper's negative prompting on the guider's [cond, uncond] evaluation (see the module docstring).

        ``e_tilde = a * e(uncond) + (1 - a) * e(negative)`` on ComfyUI's
        denoised outputs (the weights sum to one, so it is the same blend of eps).
        The negative prompt runs as an uncond of its own call, so patches that
        read ``cond_or_uncond`` treat it as the uncond branch it replaces.
        """
        out = executor(model, conds, x, timestep, model_options, *args, **kwargs)
        context = model_options.get("transformer_options", {}).get(PATCH_KEY)
        negative = context.negative if context is not None else None
        if negative is None or len(conds) != 2 or conds[1] is None or conds[1] is not negative.uncond:
            return out
        negative_out = executor(model, [None, negative.prompt], x, timestep, model_options, *args, **kwargs)[1]
        return [out[0], negative.alpha * out[1] + (1.0 - negative.alpha) * negative_out]

    def diffusion_model_wrapper(self, executor, x, timesteps, context, y, control, transformer_options, **kwargs):
        step = transformer_options.get(PATCH_KEY)
        cond_or_uncond = transformer_options.get("cond_or_uncond")
        if step is None or step.sites is None or not cond_or_uncond:
            return executor(x, timesteps, context, y, control, transformer_options, **kwargs)
        call = step.sites.plan_call(list(cond_or_uncond), x.shape[0])
        diffusion_model = executor.class_obj
        hooks = []
        try:
            transformer_options[CALL_KEY] = call
            for kind, site in self._hooked:
                hook = partial(self._output_hook, kind, site, call)
                hooks.append(self.family.site_module(diffusion_model, kind.name, site).register_forward_hook(hook))
            return executor(x, timesteps, context, y, control, transformer_options, **kwargs)
        finally:
            for hook in hooks:
                hook.remove()
            transformer_options.pop(CALL_KEY, None)

    def _output_hook(self, kind, site, call, module, args, output):
        return call.at(kind, site, output, output.shape[-2:])

    def attn1_patch(self, n, context_attn1, value_attn1, extra_options):
        call = extra_options.get(CALL_KEY)
        if call is None:
            return n, context_attn1, value_attn1
        for kind, sites in self._attn1_sites:
            site = self.family.site_at(kind.name, extra_options)
            if site is not None and site in sites:
                qk_input = call.at(kind, site, n, tuple(extra_options["activations_shape"][-2:]))
                if qk_input is n:
                    break
                return qk_input, qk_input, value_attn1
        return n, context_attn1, value_attn1


def with_pnp_sites(model, handler, step_sigmas: torch.Tensor, negative_alphas: list[float] | None = None):
    """A clone of ``model`` whose sampling evaluations go through ``handler`` at the PnP sites.

    ``step_sigmas``: the sigma of each step of the handler's trajectory (how
    evaluations find their step). ``negative_alphas``: per step, the paper's
    negative-prompt weight (the guider then carries the negative prompt as
    ``NEGATIVE_COND``).
    """
    clone = model.clone()
    patch = _SitePatch(families.family_of(model), handler, step_sigmas, negative_alphas)
    clone.set_model_attn1_patch(patch.attn1_patch)
    for kind, wrapper in ((WrappersMP.PREDICT_NOISE, patch.predict_noise_wrapper),
                          (WrappersMP.DIFFUSION_MODEL, patch.diffusion_model_wrapper)):
        clone.add_wrapper_with_key(kind, PATCH_KEY, wrapper)
    if negative_alphas is not None:
        clone.add_wrapper_with_key(WrappersMP.CALC_COND_BATCH, PATCH_KEY, patch.calc_cond_batch_wrapper)
    return clone


def _cancel_after_input_block(h, transformer_options):
    comfy.model_management.throw_exception_if_processing_interrupted()
    return h


def _cancel_before_output_block(h, hsp, transformer_options):
    comfy.model_management.throw_exception_if_processing_interrupted()
    return h, hsp


def with_attn1_patch(model, attn1_patch, predict_noise_wrapper=None, outer_sample_wrapper=None):
    """A clone of ``model`` with ``attn1_patch`` set (the FLUX guider's V patch) and, if given, a PREDICT_NOISE
    wrapper (its on-the-fly source calls) and an OUTER_SAMPLE wrapper (its per-run reset) under ``PATCH_KEY``;
    ``model`` itself is left as it is."""
    clone = model.clone()
    clone.set_model_attn1_patch(attn1_patch)
    for kind, wrapper in ((WrappersMP.PREDICT_NOISE, predict_noise_wrapper),
                          (WrappersMP.OUTER_SAMPLE, outer_sample_wrapper)):
        if wrapper is not None:
            clone.add_wrapper_with_key(kind, PATCH_KEY, wrapper)
    return clone


def with_attn1_patch_and_sampling(model, attn1_patch, model_sampling):
    """A clone of ``model`` with ``attn1_patch`` set and its model_sampling object replaced (the FLUX path's V
    patch and velocity sampling); ``model`` itself is left as it is."""
    clone = with_attn1_patch(model, attn1_patch)
    clone.add_object_patch("model_sampling", model_sampling)
    return clone


def with_cancel_between_blocks(model):
    """A clone whose UNet calls honour Cancel after every input block and before every output block
    (``input_block_patch``, ``output_block_patch``, tensors passed through unchanged): a call that carries
    several timesteps stops within one block of it, not at its end."""
    clone = model.clone()
    clone.set_model_input_block_patch(_cancel_after_input_block)
    clone.set_model_output_block_patch(_cancel_before_output_block)
    return clone


def with_next_timestep_labels(model, next_label: dict[int, int]):
    """A clone whose UNet sees timestep ``next_label[t]`` where ComfyUI derived ``t``.

    The official DDIM inversion evaluates eps on the current latent (scaled and
    converted with the current sigma, as ComfyUI does) but labels the UNet with
    the next timestep; only the label changes.
    """
    clone = model.clone()

    def relabel(executor, x, timesteps, *args, **kwargs):
        labels = [next_label.get(int(round(t)), t) for t in timesteps.detach().float().cpu().tolist()]
        timesteps = torch.tensor(labels, dtype=timesteps.dtype, device=timesteps.device)
        return executor(x, timesteps, *args, **kwargs)

    clone.add_wrapper_with_key(WrappersMP.DIFFUSION_MODEL, f"{PATCH_KEY}.inversion", relabel)
    return clone

