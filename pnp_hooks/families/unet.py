"""The UNet family: SD 1.x, SD 2.x and SDXL (ComfyUI's openaimodel ``UNetModel``, discrete VP schedule).

Its two kinds of site (``KINDS``: ``RESBLOCK`` and ``ATTENTION``, with their
node inputs, grammar, thresholds and patch points), in ComfyUI/LDM terms:
- a ResBlock site ``b`` is the residual branch of ``output_blocks[b][0]``:
  the output of its ``out_layers`` (after the second conv, before the skip
  add), shape (B, C, h, w); the patch layer hooks that module for one UNet call;
- an attention site ``(b, j)`` is ``attn1`` (self-attention) of transformer
  ``j`` of the SpatialTransformer ``output_blocks[b][1]``; its input hidden
  states (after ``norm1``) have shape (B, h*w, C) and give q and k. ComfyUI's
  ``attn1_patch`` receives them with ``block`` = ("output", b) and
  ``block_index`` = j.

Schedule: SD's discrete variance-preserving one (``vp_schedule.DiscreteVPSchedule``, which ``check``
returns: the official DDIM timesteps 0..999, ComfyUI's sigma table, the factor between ComfyUI's
variance-exploding sampling space and the official latent, the DDIM inversion step). The model must keep
its discrete 1000-step schedule (eps or v prediction).

Pure: reads the objects ComfyUI hands it, imports nothing of ComfyUI.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import PnPInputError
from .kinds import ATTENTION_THRESHOLD, ATTN1_QK_INPUT, FEATURE_THRESHOLD, MODULE_OUTPUT, SiteKind
from .vp_schedule import NUM_TRAIN_TIMESTEPS, DiscreteVPSchedule

# The family's name in bank files.
NAME = "unet"
# The ResBlock site b: the residual branch of output_blocks[b][0], rows (C, h, w), hooked as a module output.
RESBLOCK = SiteKind(
    name="resblock", input="resblock_layers", file_key="resblocks", label="ResBlock", plural="ResBlocks",
    short="ResBlock", indexed=False, example='"4" or "4,7"', threshold=FEATURE_THRESHOLD, patch=MODULE_OUTPUT,
    spatial_dims=2, views=("resblock",), file_rank=5)
# The attention site (b, j): attn1's input of transformer j of output_blocks[b][1], rows (h*w, C), given to
# attn1_patch; injected as q/k input.
ATTENTION = SiteKind(
    name="attention", input="attention_layers", file_key="attention", label="attention", plural="self-attention",
    short="attention", indexed=True, example='"4-11" or "1-5:0"', threshold=ATTENTION_THRESHOLD,
    patch=ATTN1_QK_INPUT, spatial_dims=1, views=("self-attention map", "query", "key", "attention input"),
    file_rank=4)
# The kinds of site the family has (each kind's tensors are named "{kind}.{site}" in bank files).
KINDS = (RESBLOCK, ATTENTION)
# ComfyUI model_config class -> the name users know.
VARIANTS = {"SD15": "SD 1.x", "SD20": "SD 2.x", "SDXL": "SDXL"}
# The paper's choice for the SD 1.x/2.x UNet (12 decoder blocks).
SD_DEFAULT_RESBLOCKS = "4"
SD_DEFAULT_ATTENTION = "4-11"
# SDXL (9 decoder blocks; transformers only in blocks 0-5): see docs/choosing-layers.md.
SDXL_DEFAULT_RESBLOCKS = "1"
SDXL_DEFAULT_ATTENTION = "1-5:0"
# Per variant: the spec "auto" stands for, per kind.
DEFAULTS = {
    "SD15": {"resblock": SD_DEFAULT_RESBLOCKS, "attention": SD_DEFAULT_ATTENTION},
    "SD20": {"resblock": SD_DEFAULT_RESBLOCKS, "attention": SD_DEFAULT_ATTENTION},
    "SDXL": {"resblock": SDXL_DEFAULT_RESBLOCKS, "attention": SDXL_DEFAULT_ATTENTION},
}
# Base weights that identify a checkpoint (LoRAs rarely touch these), as keys of ComfyUI's BaseModel.
FINGERPRINT_KEYS = ("diffusion_model.input_blocks.0.0.weight", "diffusion_model.out.2.weight",
                    "diffusion_model.time_embed.0.weight")
# comfy.model_sampling classes: the schedule PnP needs and the prediction types it runs.
_SAMPLING_MODULE = "comfy.model_sampling"
_DISCRETE = "ModelSamplingDiscrete"
_PREDICTIONS = {"EPS": "eps", "V_PREDICTION": "v"}


@dataclass(frozen=True)
class UNetLayout:
    """Decoder structure, per output block ``b``: whether ``[0]`` is a ResBlock and its output channels,
    the depth of the SpatialTransformer ``[1]`` and its attn1 width, and how many stride-2 downsamplings
    lie between the latent and the block's resolution."""

    has_resblock: tuple[bool, ...]
    transformer_depth: tuple[int, ...]
    resblock_channels: tuple[int, ...]
    attention_channels: tuple[int, ...]
    downsamplings: tuple[int, ...]

    @property
    def num_output_blocks(self) -> int:
        return len(self.has_resblock)

    def resolution(self, block: int, latent_hw: tuple[int, int]) -> tuple[int, int]:
        """(h, w) of output block ``block`` for a (H, W) latent (each downsampling: ceil(x / 2))."""
        h, w = latent_hw
        for _ in range(self.downsamplings[block]):
            h, w = (h + 1) // 2, (w + 1) // 2
        return h, w

    def available(self, kind: str) -> list[int]:
        """The decoder blocks that have a site of ``kind``."""
        if kind == RESBLOCK.name:
            return [b for b in range(self.num_output_blocks) if self.has_resblock[b]]
        return [b for b in range(self.num_output_blocks) if self.transformer_depth[b] > 0]

    def where(self, kind: str) -> str:
        """Where the sites of ``kind`` are, for a message."""
        if kind == RESBLOCK.name:
            last = self.num_output_blocks - 1
            return f"this UNet's decoder has blocks 0-{last} and ResBlocks in {self.available(kind)}"
        return f"this UNet has self-attention only in decoder blocks {self.available(kind)}"

    def depth(self, kind: str, block: int) -> int:
        """How many sites of ``kind`` block ``block`` has (the index range of an indexed kind)."""
        if kind == RESBLOCK.name:
            return int(self.has_resblock[block])
        return self.transformer_depth[block]

    def site_shape(self, kind: str, block: int, latent_hw: tuple[int, int]) -> tuple[int, ...]:
        """Per-row shape at a site: ResBlock (C, h, w), attention (h*w, C)."""
        h, w = self.resolution(block, latent_hw)
        if kind == RESBLOCK.name:
            return self.resblock_channels[block], h, w
        return h * w, self.attention_channels[block]


def layout_of(unet) -> UNetLayout:
    """The decoder structure of a ComfyUI ``UNetModel`` (openaimodel), read from its modules (any device, meta too)."""
    downsamplings = sum(type(block[-1]).__name__ == "Downsample" for block in unet.input_blocks)
    has_resblock, depth, resblock_channels, attention_channels, levels = [], [], [], [], []
    for block in unet.output_blocks:
        resblock = type(block[0]).__name__ == "ResBlock"
        transformers = block[1].transformer_blocks if len(block) > 1 and hasattr(block[1], "transformer_blocks") else []
        has_resblock.append(resblock)
        depth.append(len(transformers))
        resblock_channels.append(block[0].out_layers[-1].out_channels if resblock else 0)
        attention_channels.append(transformers[0].attn1.to_q.in_features if len(transformers) else 0)
        levels.append(downsamplings)
        downsamplings -= type(block[-1]).__name__ == "Upsample"
    return UNetLayout(tuple(has_resblock), tuple(depth), tuple(resblock_channels), tuple(attention_channels),
                      tuple(levels))


def _sampling_classes(sampling) -> list[str]:
    """Names of the comfy.model_sampling classes the model's sampling object is made of (its direct bases)."""
    return [base.__name__ for base in type(sampling).__bases__ if base.__module__ == _SAMPLING_MODULE]


def check(model) -> tuple[str, UNetLayout, DiscreteVPSchedule]:
    """A ComfyUI MODEL of this family that PnP runs: (prediction "eps"/"v", decoder layout, its schedule (the
    sigma table float32 on the CPU)); raises PnPInputError naming what to change otherwise."""
    sampling = model.get_model_object("model_sampling")
    classes = _sampling_classes(sampling)
    prediction = next((_PREDICTIONS[name] for name in classes if name in _PREDICTIONS), None)
    if _DISCRETE not in classes or prediction is None or len(sampling.sigmas) != NUM_TRAIN_TIMESTEPS:
        bases = type(sampling).__bases__
        raise PnPInputError(
            f"PnP needs the model's discrete 1000-step schedule with eps or v prediction; this MODEL samples "
            f"with {type(sampling).__name__} ({', '.join(b.__name__ for b in bases)}). Remove the "
            f"ModelSampling* node that changed it."
        )
    latent_format = model.get_model_object("latent_format")
    unet = model.model.diffusion_model
    if unet.in_channels != latent_format.latent_channels:
        variant = VARIANTS[type(model.model.model_config).__name__]
        raise PnPInputError(
            f"This {variant} UNet takes {unet.in_channels} input channels (an inpainting or "
            f"instruct model); PnP needs a plain text-to-image checkpoint with {latent_format.latent_channels}."
        )
    return prediction, layout_of(unet), DiscreteVPSchedule.of(sampling)


# ---------------------------------------------------------------- sites inside ComfyUI's model

def site_module(unet, kind: str, site) -> torch.nn.Module:
    """The module whose forward output is a ``MODULE_OUTPUT`` site: ResBlock ``b`` is
    ``output_blocks[b][0].out_layers``."""
    if kind != RESBLOCK.name:
        raise KeyError(kind)
    return unet.output_blocks[site][0].out_layers


def site_at(kind: str, extra_options: dict) -> tuple[int, int] | None:
    """The site of ``kind`` an ``attn1_patch`` call runs at: attention (``block`` = ("output", b),
    ``block_index`` = j), or None outside the decoder."""
    block = extra_options.get("block")
    if kind != ATTENTION.name or block is None or block[0] != "output":
        return None
    return block[1], extra_options.get("block_index", 0)


def self_attention(unet, site: tuple[int, int]) -> torch.nn.Module:
    """``attn1`` of attention site ``(b, j)``: its ``to_q``, ``to_k`` and ``heads`` project the stored inputs."""
    block, index = site
    return unet.output_blocks[block][1].transformer_blocks[index].attn1


def query_key(unet, site: tuple[int, int], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """q and k (float32, (..., tokens, heads*dim_head)) of attention site ``site`` for its stored inputs ``x``
    (already on the model's device and in its dtype), and the head count."""
    attn1 = self_attention(unet, site)
    with torch.no_grad():
        return attn1.to_q(x).float(), attn1.to_k(x).float(), int(attn1.heads)

