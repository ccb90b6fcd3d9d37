"""PnP Sampler and PnP Guider nodes: translate the guidance image to a target prompt.

PnP Sampler runs the whole translation; PnP Guider hands ComfyUI's custom sampling nodes
(SamplerCustomAdvanced) the same patched guider, the bank's sigmas, its x_T and the noise to start from.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from comfy_api.v0_0_2 import io

from ..pnp_hooks import patcher, sampling
from ..pnp_hooks.bank import StartNoise, check_steps
from ..pnp_hooks.masks import check_mask_form, injection_weight_map
from ..pnp_hooks.schedule import NEGATIVE_SCHEDULES, THRESHOLD_CONVENTIONS, InjectionPlan, negative_prompt_alphas
from . import flux
from .common import check_inputs
from .types import CATEGORY, PnPFeatures, pnp_schema


def _head_inputs() -> list:
    return [
        io.Model.Input("model", tooltip="The same model the bank was recorded with (LoRAs may be added)."),
        io.Conditioning.Input("positive", tooltip="The target prompt (ControlNet may be applied to it)."),
        io.Conditioning.Input("negative", tooltip=(
            "The unconditional branch. pnp-diffusers uses \"ugly, blurry, black, low res, unrealistic\".")),
        PnPFeatures.Input("features", lazy=True, tooltip=(
            "From PnP Feature Bank or PnP Generate Guidance. Asked for only after the numbers, the mask and the "
            "model are checked.")),
        io.Float.Input("cfg", default=7.5, min=0.0, max=100.0, step=0.1, round=0.01, tooltip=(
            "Classifier-free guidance scale. pnp-diffusers: 7.5; the original's real-image config: 10.")),
        io.Float.Input("feature_injection", default=0.8, min=0.0, max=1.0, step=0.01, tooltip=(
            "tau_f: inject ResBlock features during this leading fraction of the steps. Higher keeps "
            "more of the guidance structure. Paper: 0.8.")),
        io.Float.Input("attention_injection", default=0.5, min=0.0, max=1.0, step=0.01, tooltip=(
            "tau_A: inject self-attention q/k during this leading fraction of the steps. Paper: 0.5.")),
    ]


def _convention_input():
    return io.Combo.Input("threshold_convention", options=list(THRESHOLD_CONVENTIONS), default="pnp-diffusers",
                          tooltip=("pnp-diffusers injects while step < int(steps * tau); the original code while "
                                   "step <= int(steps * tau), one step more."))


def _option_inputs() -> list:
    return [
        io.Conditioning.Input("negative_prompt", optional=True, tooltip=(
            "The original paper's negative prompting: a description of the guidance image, pushed away "
            "from. Helps most for textureless guidance (silhouettes, sketches).")),
        io.Float.Input("negative_alpha", default=1.0, min=0.0, max=1.0, step=0.01, optional=True,
                       tooltip=("Weight of the plain uncond against the negative prompt at the first "
                                "step (lower = stronger negative prompting).")),
        io.Combo.Input("negative_schedule", options=list(NEGATIVE_SCHEDULES), default="linear",
                       optional=True, tooltip=(
            "How negative_alpha moves over the steps: linear (to 0), constant, exp(-6t). "
            "alpha 1 with constant disables negative prompting.")),
        io.Mask.Input("mask", optional=True, tooltip=(
            "Where to inject (1) and where not (0), e.g. the subject from a SAM node, Load Image's "
            "alpha or a painted mask: the subject keeps the guidance structure, the background follows "
            "the prompt. One mask, the guidance image's size (or its latent size); for a batch of guidance "
            "images one for every frame or one per frame. Resized to each injected layer.")),
        io.Float.Input("injection_strength", default=1.0, min=0.0, max=1.0, step=0.01, optional=True,
                       tooltip=("Blend between the target's own tensors (0) and the guidance image's "
                                "(1 = the paper's replacement) at the injected layers and steps.")),
        io.Float.Input("outside_mask_strength", default=0.0, min=0.0, max=1.0, step=0.01, optional=True,
                       tooltip=("Injection weight outside the mask, relative to inside (0 = no "
                                "injection outside, 1 = the mask has no effect). Used only when a mask "
                                "is connected.")),
    ]


def _sampler_inputs() -> list:
    """The node's inputs (also what ``check_inputs`` reads: check_lazy_status must not touch the schema)."""
    return [
        *_head_inputs(),
        io.Int.Input("steps", default=0, min=0, max=1000, tooltip=(
            "0 = the bank's step count. Any other value must equal it (a check for wired graphs).")),
        _convention_input(),
        io.Combo.Input("final_step", options=list(sampling.FINAL_STEPS), default="official", tooltip=(
            "official: the last DDIM step ends at alpha_bar(t=0), as both official codes; comfyui: it "
            "ends at sigma 0 (the clean prediction), as ComfyUI's samplers.")),
        *_option_inputs(),
        io.Combo.Input("start", options=list(sampling.STARTS), default=sampling.INVERTED, optional=True, tooltip=(
            "inverted: start from the bank's x_T, the guidance image's inverted noise (the paper). random noise: "
            "start from Gaussian noise of start_seed, still injecting the bank's features (a user's scheme 1: "
            "freer backgrounds, but unstable and very seed-dependent).")),
        io.Int.Input("start_seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, optional=True, tooltip=(
            "Seed of the starting noise when start is 'random noise' (unused for 'inverted'). Not randomized after "
            "each run, so a re-queued graph reuses the cached result.")),
    ]


def _guider_inputs() -> list:
    """The node's inputs (also what ``check_inputs`` reads: check_lazy_status must not touch the schema)."""
    return [*_head_inputs(), _convention_input(), *_option_inputs()]


def _check_before_the_bank(inputs: list, values: dict) -> list[str]:
    """What PnP Sampler and PnP Guider check before their (lazy) bank is made: the numbers (NaN passes ComfyUI's
    own min/max checks), the mask's form and the model. Returns the input to ask for next."""
    check_inputs(inputs, values)
    if flux.is_flux(values["model"]):
        flux.check_sampler_options(**values)
        return ["features"]
    patcher.model_facts(values["model"])
    if values.get("mask") is not None:
        check_mask_form(values["mask"])
    return ["features"]


@dataclass(frozen=True)
class TargetInputs:
    """The inputs PnP Sampler and PnP Guider turn into a ``sampling.Target`` (their node input names)."""

    positive: list
    negative: list
    cfg: float
    feature_injection: float
    attention_injection: float
    threshold_convention: str
    negative_prompt: list | None
    negative_alpha: float
    negative_schedule: str
    mask: torch.Tensor | None
    injection_strength: float
    outside_mask_strength: float

    @classmethod
    def of(cls, inputs: dict) -> TargetInputs:
        """Picked by name from a node's inputs (its ``locals()``)."""
        return cls(**{field.name: inputs[field.name] for field in dataclasses.fields(cls)})

    def target(self, features) -> sampling.Target:
        """The injection plan, negative-prompt weights and mask weight maps these inputs ask for, for the bank
        ``features``."""
        plan = InjectionPlan.from_thresholds(features.steps, self.feature_injection, self.attention_injection,
                                             self.threshold_convention)
        alphas = None
        if self.negative_prompt is not None:
            alphas = negative_prompt_alphas(features.steps, self.negative_schedule, self.negative_alpha)
        weights = None
        if self.mask is not None:
            weights = injection_weight_map(self.mask, features.trajectory.latent_shape, self.outside_mask_strength,
                                           features.frames)
        return sampling.Target(self.positive, self.negative, self.cfg, plan, self.injection_strength, weights,
                               self.negative_prompt, alphas)


class PnPSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return pnp_schema(
            node_id="PnP_Sampler",
            display_name="PnP Sampler (Plug-and-Play translation)",
            category=CATEGORY,
            description=(
                "Plug-and-Play translation: deterministic DDIM from the bank's x_T (or, with start 'random "
                "noise', from seeded noise) on the bank's timesteps, replacing the target's ResBlock features and "
                "self-attention q/k by the guidance image's in every guidance branch while the step is below the "
                "thresholds."),
            inputs=_sampler_inputs(),
            outputs=[io.Latent.Output("latent", display_name="latent", tooltip="The translated image's latent.")],
        )

    @classmethod
    def check_lazy_status(cls, features=None, **inputs) -> list[str]:
        return [] if features is not None else _check_before_the_bank(_sampler_inputs(), inputs)

    @classmethod
    def execute(cls, model, positive, negative, features, cfg, feature_injection, attention_injection, steps,
                threshold_convention, final_step, negative_prompt=None, negative_alpha=1.0,
                negative_schedule="linear", mask=None, injection_strength=1.0, outside_mask_strength=0.0,
                start=sampling.INVERTED, start_seed=0) -> io.NodeOutput:
        check_inputs(_sampler_inputs(), locals())  # locals(): the inputs, by name
        if flux.is_flux(model):
            flux.check_sampler_options(negative_prompt=negative_prompt, mask=mask, start=start)
            return io.NodeOutput(flux.sample(model, positive, features, steps, mask, injection_strength,
                                             outside_mask_strength))
        flux.refuse_on_sd_model(features, "feature bank")
        check_steps(features.steps, steps, "feature bank")
        target = TargetInputs.of(locals()).target(features)
        samples = sampling.translate(model, target, features, final_step, start, start_seed)
        return io.NodeOutput({"samples": samples})


class PnPGuider(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return pnp_schema(
            node_id="PnP_Guider",
            display_name="PnP Guider",
            category=CATEGORY,
            description=(
                "PnP for ComfyUI's custom sampling nodes: the GUIDER that injects the bank (as PnP Sampler does), "
                "the SIGMAS of the bank's steps, its x_T and the NOISE to start from, for SamplerCustomAdvanced "
                "(noise = this noise, latent_image = x_T). SD: the ddim sampler then gives exactly PnP Sampler's "
                "result (final_step comfyui). FLUX: FLUX guidance from the target prompt (FluxGuidance), cfg and "
                "the thresholds not read; the euler sampler on an euler bank gives PnP Sampler's result. "
                "Injection follows the sigma: evaluations at sigmas that are not the bank's steps inject nothing."),
            inputs=_guider_inputs(),
            outputs=[
                io.Guider.Output("guider", display_name="guider", tooltip="For SamplerCustomAdvanced's guider input."),
                io.Sigmas.Output("sigmas", display_name="sigmas", tooltip=(
                    "SD: the sigmas of the bank's timesteps, then 0 (ComfyUI's last step, to the clean prediction). "
                    "FLUX: the bank's times, 1 to 0. Split them with SplitSigmas to hand the last steps to another "
                    "guider.")),
                io.Latent.Output("x_T", display_name="x_T", tooltip=(
                    "The bank's x_T (the inverted latent at its first timestep), for SamplerCustomAdvanced's "
                    "latent_image.")),
                io.Noise.Output("noise", display_name="noise", tooltip=(
                    "For SamplerCustomAdvanced's noise input. SD: no noise (as DisableNoise; the start is x_T). "
                    "FLUX: the inverted latent, which a flow sampler starts from at sigma 1.")),
            ],
        )

    @classmethod
    def check_lazy_status(cls, features=None, **inputs) -> list[str]:
        return [] if features is not None else _check_before_the_bank(_guider_inputs(), inputs)

    @classmethod
    def execute(cls, model, positive, negative, features, cfg, feature_injection, attention_injection,
                threshold_convention, negative_prompt=None, negative_alpha=1.0, negative_schedule="linear",
                mask=None, injection_strength=1.0, outside_mask_strength=0.0) -> io.NodeOutput:
        check_inputs(_guider_inputs(), locals())  # locals(): the inputs, by name
        if flux.is_flux(model):
            flux.check_sampler_options(negative_prompt=negative_prompt, mask=mask)
            return io.NodeOutput(*flux.guider(model, positive, features, mask, injection_strength,
                                              outside_mask_strength))
        flux.refuse_on_sd_model(features, "feature bank")
        target = TargetInputs.of(locals()).target(features)
        guider = sampling.pnp_guider(model, target, features)
        sigmas = sampling.bank_sigmas(model, features, "comfyui")
        return io.NodeOutput(guider, sigmas, {"samples": features.trajectory.x_T()}, StartNoise())
