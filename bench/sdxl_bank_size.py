"""Feature-bank size from the UNet's shapes: SDXL base at 1024x1024 (and SD1.5 at 512x512 beside it).

A bank holds, per recorded step and branch (1 for a real image, 2 for a
generated one recorded under CFG):
- per ResBlock site b: the residual branch of ``output_blocks[b][0]``,
  C_b x h_b x w_b values;
- per attention site (b, j): the attn1 input of that transformer,
  h_b*w_b x C_b values;
where C_b = model_channels * channel_mult[level] and h_b = ceil(H / 2^level)
for the decoder level of block b (``num_res_blocks + 1`` blocks per level,
lowest resolution first). ResBlock sites are kept for
``int(steps * feature_injection) + 1`` leading steps and attention sites for
``int(steps * attention_injection) + 1`` (the bank records enough for either
threshold convention).

``bank_bytes`` is the formula (pure Python); ``decoder_shapes_meta`` runs the
real ComfyUI UNet on PyTorch's meta device (no memory, no weights) and reads
the shapes at the sites, which the tests compare with the formula; the
tests also compare the formula with the bytes of a recorded bank.

Run ``python bench/sdxl_bank_size.py`` (ComfyUI found as the tests find it)
to print the figures.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

PACK_ROOT = Path(__file__).resolve().parent.parent
if str(PACK_ROOT) not in sys.path:
    sys.path.insert(0, str(PACK_ROOT))

from pnp_hooks.layers import DEFAULTS, UNetLayout, resolve_sites  # noqa: E402
from pnp_hooks.schedule import injection_step_count  # noqa: E402

# The SDXL base UNet (stabilityai/stable-diffusion-xl-base-1.0) as ComfyUI builds it.
SDXL_BASE = {
    "model_channels": 320, "channel_mult": [1, 2, 4], "num_res_blocks": [2, 2, 2],
    "transformer_depth": [0, 0, 2, 2, 10, 10], "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
    "transformer_depth_middle": 10, "context_dim": 2048, "adm_in_channels": 2816, "num_head_channels": 64,
}
# The SD1.5 UNet.
SD15 = {
    "model_channels": 320, "channel_mult": [1, 2, 4, 4], "num_res_blocks": [2, 2, 2, 2],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    "transformer_depth_middle": 1, "context_dim": 768, "adm_in_channels": None, "num_head_channels": -1,
}


def decoder_blocks(unet_config: dict, latent_hw: tuple[int, int]) -> list[dict]:
    """Per output block: channels, (h, w) and transformer depth, from the config alone."""
    mults, res_blocks = unet_config["channel_mult"], unet_config["num_res_blocks"]
    depths = list(reversed(unet_config["transformer_depth_output"]))  # ComfyUI pops the list: block 0 is last
    blocks = []
    for level in reversed(range(len(mults))):
        h, w = latent_hw
        for _ in range(level):
            h, w = math.ceil(h / 2), math.ceil(w / 2)
        for _ in range(res_blocks[level] + 1):
            blocks.append({"channels": unet_config["model_channels"] * mults[level], "hw": (h, w),
                           "transformer_depth": depths[len(blocks)]})
    return blocks


def layout_of(unet_config: dict) -> UNetLayout:
    blocks = decoder_blocks(unet_config, (64, 64))
    return UNetLayout((True,) * len(blocks), tuple(b["transformer_depth"] for b in blocks))


def bank_bytes(unet_config: dict, latent_hw: tuple[int, int], resblock_spec: str, attention_spec: str,
               steps: int = 50, feature_injection: float = 0.8, attention_injection: float = 0.5,
               branches: int = 1, bytes_per_value: int = 2) -> dict:
    """Bytes of a bank with these sites and thresholds; also the per-step element counts."""
    sites = resolve_sites(resblock_spec, attention_spec, layout_of(unet_config))
    blocks = decoder_blocks(unet_config, latent_hw)
    feature_steps = injection_step_count(steps, feature_injection, "original") if feature_injection else 0
    attention_steps = injection_step_count(steps, attention_injection, "original") if attention_injection else 0
    res_per_step = sum(blocks[b]["channels"] * math.prod(blocks[b]["hw"]) for b in sites.resblocks)
    attn_per_step = sum(blocks[b]["channels"] * math.prod(blocks[b]["hw"]) for b, _ in sites.attention)
    total = branches * bytes_per_value * (feature_steps * res_per_step + attention_steps * attn_per_step)
    return {"bytes": total, "feature_steps": feature_steps, "attention_steps": attention_steps,
            "resblock_values_per_step": res_per_step, "attention_values_per_step": attn_per_step,
            "sites": sites.describe()}


def decoder_shapes_meta(unet_config: dict, latent_hw: tuple[int, int]) -> dict:
    """Shapes at every decoder site from a forward pass of ComfyUI's UNet on the meta device.

    Returns {("resblock", b): (C, h, w), ("attention", b, j): (tokens, C)}. Needs ComfyUI
    importable (CPU mode set by the caller).
    """
    import torch

    import comfy.ldm.modules.attention as attention
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    config = {"image_size": 32, "in_channels": 4, "out_channels": 4, "use_spatial_transformer": True,
              "legacy": False, "use_checkpoint": False, "use_linear_in_transformer": True, "num_heads": 8,
              "use_temporal_resblock": False, "use_temporal_attention": False, **unet_config}
    if config["adm_in_channels"]:
        config["num_classes"] = "sequential"
    with torch.device("meta"):
        unet = UNetModel(**config, dtype=torch.float32, operations=comfy.ops.disable_weight_init)
    shapes = {}
    for b, block in enumerate(unet.output_blocks):
        block[0].out_layers.register_forward_hook(
            lambda m, args, out, b=b: shapes.__setitem__(("resblock", b), tuple(out.shape[1:])))
        if len(block) > 1 and hasattr(block[1], "transformer_blocks"):
            for j, transformer in enumerate(block[1].transformer_blocks):
                transformer.attn1.register_forward_pre_hook(
                    lambda m, args, b=b, j=j: shapes.__setitem__(("attention", b, j), tuple(args[0].shape[1:])))

    def plain_attention(func, *args, **kwargs):  # CPU sub-quadratic attention asks the device for free memory
        return attention.attention_pytorch(*args, **kwargs)

    meta = {"device": "meta"}
    y = torch.empty(1, config["adm_in_channels"], **meta) if config["adm_in_channels"] else None
    with torch.no_grad():
        unet(torch.empty(1, 4, *latent_hw, **meta), torch.empty(1, **meta),
             torch.empty(1, 77, config["context_dim"], **meta), y=y,
             transformer_options={"optimized_attention_override": plain_attention})
    return shapes


def figures() -> dict:
    """The README/benchmark figures: default-site banks, 50 steps, tau_f 0.8, tau_A 0.5, fp16 and fp32."""
    out = {}
    for name, config, latent, family in (("SDXL base, 1024x1024", SDXL_BASE, (128, 128), "SDXL"),
                                         ("SD1.5, 512x512", SD15, (64, 64), "SD15")):
        res, attn = DEFAULTS[family]
        fp16 = bank_bytes(config, latent, res, attn)
        out[name] = {**fp16, "MiB_fp16": round(fp16["bytes"] / 2 ** 20, 1),
                     "MiB_fp32": round(bank_bytes(config, latent, res, attn, bytes_per_value=4)["bytes"] / 2 ** 20, 1),
                     "MiB_fp16_generated_guidance": round(
                         bank_bytes(config, latent, res, attn, branches=2)["bytes"] / 2 ** 20, 1)}
    every = bank_bytes(SDXL_BASE, (128, 128), "1", "1-2:0-9, 3-5:0-1")
    out["SDXL base, 1024x1024, every transformer of blocks 1-5"] = {**every,
                                                                     "MiB_fp16": round(every["bytes"] / 2 ** 20, 1)}
    return out


if __name__ == "__main__":
    print(json.dumps(figures(), indent=2))
