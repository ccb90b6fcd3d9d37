"""Inputs shared by the nodes that record a feature bank."""
from __future__ import annotations

import torch

from comfy_api.v0_0_2 import io

from ..pnp_hooks.layers import DEFAULTS, LayerSites, resolve_sites
from ..pnp_hooks.patcher import ModelFacts
from ..pnp_hooks.schedule import injection_step_count

BANK_DTYPES = {"fp16": torch.float16, "fp32": torch.float32}


def layer_inputs() -> list:
    return [
        io.String.Input("resblock_layers", default="auto", tooltip=(
            "Decoder blocks whose ResBlock features are injected (output_blocks[b][0], residual branch). "
            "'auto' = the paper's choice: block 4 for SD1.x/2.x; block 1 for SDXL (see README, Choosing layers).")),
        io.String.Input("attention_layers", default="auto", tooltip=(
            "Decoder blocks whose self-attention q and k are injected, as 'block' or 'block:transformer' "
            "(ranges allowed, e.g. '4-11'). 'auto' = the paper's choice: blocks 4-11 for SD1.x/2.x; for SDXL "
            "blocks 1-5, first transformer of each stack ('1-5:0'; see README, Choosing layers).")),
        io.Float.Input("feature_injection", default=0.8, min=0.0, max=1.0, step=0.01, tooltip=(
            "Largest ResBlock injection threshold (tau_f, fraction of steps) a PnP Sampler will use with this "
            "bank: only those leading steps are recorded. Paper: 0.8.")),
        io.Float.Input("attention_injection", default=0.5, min=0.0, max=1.0, step=0.01, tooltip=(
            "Largest self-attention injection threshold (tau_A, fraction of steps) a PnP Sampler will use "
            "with this bank: only those leading steps are recorded. Paper: 0.5.")),
        io.Combo.Input("bank_dtype", options=list(BANK_DTYPES), default="fp16", tooltip=(
            "Precision of the stored features. fp16 halves the memory; fp32 reproduces the official "
            "code bit for bit.")),
    ]


def resolve_layers(facts: ModelFacts, resblock_layers: str, attention_layers: str) -> LayerSites:
    default_res, default_attn = DEFAULTS[facts.identity.family]
    res = default_res if resblock_layers.strip().lower() == "auto" else resblock_layers
    attn = default_attn if attention_layers.strip().lower() == "auto" else attention_layers
    return resolve_sites(res, attn, facts.layout)


def recorded_steps(steps: int, feature_injection: float, attention_injection: float) -> tuple[int, int]:
    """Leading steps to record for the largest thresholds (either convention)."""
    return (injection_step_count(steps, feature_injection, "original") if feature_injection else 0,
            injection_step_count(steps, attention_injection, "original") if attention_injection else 0)
