"""PnP Feature Bank and PnP Generate Guidance nodes: record the source tensors."""
from __future__ import annotations

import logging

from comfy_api.v0_0_2 import io, ui

from ..pnp_hooks import patcher, sampling
from ..pnp_hooks.bank import BANK_MODES, STORAGE_DTYPES
from ..pnp_hooks.families.flux import DEFAULT_EDIT, DEFAULT_QKV_RATIO
from ..pnp_hooks.schedule import recorded_steps
from ..pnp_hooks.sources import BATCH_MEMORY, ONE_FRAME
from . import flux
from .common import LAYER_TEXT_CHECKS, check_inputs, layer_inputs, queue_time_check, resolve_layers
from .types import CATEGORY, PnPFeatures, PnPInversion, pnp_schema

log = logging.getLogger("comfyui_pnp")


def _bank_inputs() -> list:
    """The node's inputs (also what ``check_inputs`` reads: check_lazy_status must not touch the schema)."""
    return [
        io.Model.Input("model", tooltip="The same model as the inversion."),
        PnPInversion.Input("inversion", lazy=True, tooltip=(
            "From PnP DDIM Inversion. Asked for only after the layers are checked against the model.")),
        io.Conditioning.Input("conditioning", tooltip="Source-branch prompt. The paper uses \"\"."),
        *layer_inputs(),
        io.Int.Input("batch_size", default=0, min=0, max=64, tooltip=(
            "Timesteps evaluated per UNet call while recording; the bank is the same for any value (up to fp32 "
            "rounding). 0 = auto: by image size, 16 at 64 px, 4 at 128 px, 1 from 256 px up, within ComfyUI's "
            "memory estimate. Cancel stops a call between its UNet blocks.")),
        io.Combo.Input("mode", options=list(BANK_MODES), default=BANK_MODES[0], optional=True, tooltip=(
            "stored: record the source tensors now (fp16: ~370 MB at 512x512 SD1.5) and sample at the "
            "cost of a plain KSampler. on the fly: store nothing; PnP Sampler runs the source pass of each "
            "injecting step in its own UNet call (1.5x the sampling work while injecting).")),
        io.Combo.Input("batch_memory", options=list(BATCH_MEMORY), default=ONE_FRAME, optional=True, tooltip=(
            "For a batch of guidance images, stored mode: 'one frame at a time' records each frame's bank when "
            "PnP Sampler translates it and frees it after (one frame's tensors in memory; each sampler records "
            "again); 'all frames' records every frame now (frames x the bank's memory, reused by every sampler). "
            "One image: no difference.")),
        io.Int.Input("inject_steps", default=-1, min=-1, max=1000, optional=True, tooltip=flux.INJECT_TOOLTIP),
        io.String.Input("flux_edit", default=DEFAULT_EDIT, optional=True, tooltip=flux.EDIT_TOOLTIP),
        io.String.Input("qkv_ratio", default=DEFAULT_QKV_RATIO, optional=True, tooltip=flux.RATIO_TOOLTIP),
    ]


def _guidance_inputs() -> list:
    """The node's inputs (also what ``check_inputs`` reads)."""
    return [
        io.Model.Input("model", tooltip="The model used by every PnP node of this graph."),
        io.Conditioning.Input("positive", tooltip="The guidance image's prompt (the source prompt)."),
        io.Conditioning.Input("negative", tooltip="Its negative prompt (usually \"\")."),
        io.Latent.Input("latent", tooltip="An Empty Latent Image that sets the size (one image)."),
        io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                     tooltip="Seed of the guidance image's starting noise."),
        io.Int.Input("steps", default=50, min=1, max=1000, tooltip="DDIM steps. Paper: 50."),
        io.Float.Input("cfg", default=5.0, min=0.0, max=100.0, step=0.1, round=0.01,
                       tooltip="CFG scale of the guidance image. The original code's example: 5."),
        *layer_inputs(),
    ]


class PnPFeatureBank(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return pnp_schema(
            node_id="PnP_FeatureBank",
            display_name="PnP Feature Bank (structure)",
            category=CATEGORY,
            description=(
                "Records the guidance image's ResBlock features and self-attention inputs from "
                "UNet(z_t, t, source prompt) at every sampling timestep of the inversion. The bank is "
                "reused by any number of PnP Samplers (one per target prompt) without recording again. A batch "
                "of guidance images gets one bank per image."),
            inputs=_bank_inputs(),
            outputs=[PnPFeatures.Output("features", display_name="features",
                                        tooltip="The feature bank for PnP Sampler.")],
        )

    @classmethod
    def validate_inputs(cls, resblock_layers=None, attention_layers=None):
        return queue_time_check(LAYER_TEXT_CHECKS, resblock_layers=resblock_layers,
                                attention_layers=attention_layers)

    @classmethod
    def check_lazy_status(cls, inversion=None, **inputs) -> list[str]:
        """Before the inversion runs: the numbers, the model and the layers it has (a layer the model lacks is
        refused in seconds, not after minutes of inversion)."""
        if inversion is not None:
            return []
        check_inputs(_bank_inputs(), inputs, LAYER_TEXT_CHECKS)
        if flux.is_flux(inputs["model"]):
            flux.check_layers(inputs["model"], inputs["resblock_layers"], inputs["attention_layers"])
            flux.check_edit(inputs.get("flux_edit", DEFAULT_EDIT), inputs.get("qkv_ratio", DEFAULT_QKV_RATIO))
            return ["inversion"]
        resolve_layers(patcher.model_facts(inputs["model"]), inputs["resblock_layers"], inputs["attention_layers"])
        return ["inversion"]

    @classmethod
    def execute(cls, model, inversion, conditioning, resblock_layers, attention_layers, feature_injection,
                attention_injection, bank_dtype, batch_size, mode=BANK_MODES[0],
                batch_memory=ONE_FRAME, inject_steps=-1, flux_edit=DEFAULT_EDIT,
                qkv_ratio=DEFAULT_QKV_RATIO) -> io.NodeOutput:
        check_inputs(_bank_inputs(), locals(), LAYER_TEXT_CHECKS)  # locals(): the inputs, by name
        if flux.is_flux(model):
            bank, shown = flux.record(model, inversion, conditioning, resblock_layers, attention_layers, bank_dtype,
                                      mode, inject_steps, flux_edit, qkv_ratio)
            return io.NodeOutput(bank, ui=ui.PreviewText(shown))
        flux.refuse_on_sd_model(inversion, "inversion")
        facts = patcher.model_facts(model)
        sites = resolve_layers(facts, resblock_layers, attention_layers)
        feature_steps, attention_steps = recorded_steps(inversion.steps, feature_injection, attention_injection)
        recording = sampling.Recording(sites, feature_steps, attention_steps, STORAGE_DTYPES[bank_dtype], batch_size)
        bank = sampling.record_bank(model, inversion, conditioning, recording, mode, batch_memory)
        log.info("PnP feature bank: %s", bank.describe())
        return io.NodeOutput(bank, ui=ui.PreviewText(bank.summary()))


class PnPGenerateGuidance(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return pnp_schema(
            node_id="PnP_GenerateGuidance",
            display_name="PnP Generate Guidance (structure)",
            category=CATEGORY,
            description=(
                "The paper's generated-guidance mode: samples a guidance image from a prompt and seed "
                "(deterministic DDIM with CFG) and records the feature bank during that generation, so it can "
                "be translated without inverting it."),
            inputs=_guidance_inputs(),
            outputs=[
                PnPFeatures.Output("features", display_name="features", tooltip="The feature bank for PnP Sampler."),
                io.Latent.Output("guidance_latent", display_name="guidance_latent",
                                 tooltip="The generated guidance image (decode it to see it)."),
            ],
        )

    @classmethod
    def validate_inputs(cls, resblock_layers=None, attention_layers=None):
        return queue_time_check(LAYER_TEXT_CHECKS, resblock_layers=resblock_layers,
                                attention_layers=attention_layers)

    @classmethod
    def execute(cls, model, positive, negative, latent, seed, steps, cfg, resblock_layers, attention_layers,
                feature_injection, attention_injection, bank_dtype) -> io.NodeOutput:
        check_inputs(_guidance_inputs(), locals(), LAYER_TEXT_CHECKS)  # locals(): the inputs, by name
        facts = patcher.model_facts(model)
        sites = resolve_layers(facts, resblock_layers, attention_layers)
        feature_steps, attention_steps = recorded_steps(steps, feature_injection, attention_injection)
        bank, image = sampling.generate_guidance(
            model, sampling.Generation(positive, negative, seed, steps, cfg), latent["samples"],
            sampling.Recording(sites, feature_steps, attention_steps, STORAGE_DTYPES[bank_dtype]))
        log.info("PnP feature bank: %s", bank.describe())
        return io.NodeOutput(bank, {"samples": image}, ui=ui.PreviewText(bank.summary()))
