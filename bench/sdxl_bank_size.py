"""Feature-bank size from the UNet's shapes: SDXL base at 1024x1024 (and SD1.5 at 512x512 beside it).

A bank holds, per recorded step and branch (1 for a real image, 2 for a
generated one recorded under CFG), C x h x w values per ResBlock site and
h*w x C per attention site, for the leading steps either threshold convention
may inject (``schedule.recorded_steps``). The formula is the pack's own
(``layers.bank_nbytes``); here it is applied to the real SDXL base and SD1.5
UNets, whose decoder layouts are read (``families.unet.layout_of``) from
ComfyUI's ``UNetModel`` built on PyTorch's meta device (no memory, no
weights). ``decoder_shapes_meta`` also runs that UNet on the meta device and
reads the shapes at the sites, which the tests compare with the layout's.

Run ``python bench/sdxl_bank_size.py`` (ComfyUI found as the tests find it)
to print the figures. The pack's pure modules come through ``tests/pure.py``:
``tests/`` is on ``sys.path`` in a bench script (``bench_env``) and under
pytest (``tests/host/test_sdxl.py`` loads this file by path).
"""
from __future__ import annotations

import json

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


def pnp_hooks(module: str):
    """A pure module of the pack (tests/pure.py: imported without putting the pack root on sys.path)."""
    from pure import pure

    return pure(module)


def meta_unet(unet_config: dict):
    """ComfyUI's UNetModel for ``unet_config`` on the meta device (needs ComfyUI importable)."""
    import torch

    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    config = {"image_size": 32, "in_channels": 4, "out_channels": 4, "use_spatial_transformer": True,
              "legacy": False, "use_checkpoint": False, "use_linear_in_transformer": True, "num_heads": 8,
              "use_temporal_resblock": False, "use_temporal_attention": False, **unet_config}
    if config["adm_in_channels"]:
        config["num_classes"] = "sequential"
    with torch.device("meta"):
        return UNetModel(**config, dtype=torch.float32, operations=comfy.ops.disable_weight_init)


def bank_bytes(unet_config: dict, latent_hw: tuple[int, int], resblock_spec: str, attention_spec: str,
               steps: int = 50, feature_injection: float = 0.8, attention_injection: float = 0.5,
               branches: int = 1, bytes_per_value: int = 2, recorded: tuple[int, int] | None = None) -> dict:
    """Bytes of a bank with these sites and thresholds (the pack's formula on the real layout).

    ``recorded``: (ResBlock steps, attention steps) instead of what the thresholds make a bank record.
    """
    layers, schedule, unet = pnp_hooks("layers"), pnp_hooks("schedule"), pnp_hooks("families.unet")
    layout = unet.layout_of(meta_unet(unet_config))
    sites = layers.resolve_sites({"resblock": resblock_spec, "attention": attention_spec}, layout, unet.KINDS)
    feature_steps, attention_steps = recorded or schedule.recorded_steps(steps, feature_injection,
                                                                         attention_injection)
    total = layers.bank_nbytes(layout, sites, latent_hw, feature_steps, attention_steps, branches, bytes_per_value)
    return {"bytes": total, "feature_steps": feature_steps, "attention_steps": attention_steps,
            "sites": sites.describe()}


def decoder_shapes_meta(unet_config: dict, latent_hw: tuple[int, int]) -> dict:
    """Shapes at every decoder site from a forward pass of ComfyUI's UNet on the meta device.

    Returns {("resblock", b): (C, h, w), ("attention", b, j): (tokens, C)}.
    """
    import torch

    import comfy.ldm.modules.attention as attention

    unet = meta_unet(unet_config)
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
    adm = unet_config["adm_in_channels"]
    with torch.no_grad():
        unet(torch.empty(1, 4, *latent_hw, **meta), torch.empty(1, **meta),
             torch.empty(1, 77, unet_config["context_dim"], **meta),
             y=torch.empty(1, adm, **meta) if adm else None,
             transformer_options={"optimized_attention_override": plain_attention})
    return shapes


def figures() -> dict:
    """The README/benchmark figures: default-site banks, 50 steps, tau_f 0.8, tau_A 0.5, fp16 and fp32."""
    defaults = pnp_hooks("families.unet").DEFAULTS
    out = {}
    for name, config, latent, family in (("SDXL base, 1024x1024", SDXL_BASE, (128, 128), "SDXL"),
                                         ("SD1.5, 512x512", SD15, (64, 64), "SD15")):
        res, attn = defaults[family]["resblock"], defaults[family]["attention"]
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
    import sys

    import bench_env  # noqa: F401  (first: the environment before torch, tests/ on sys.path)

    import torch
    from find_comfyui import find_comfyui

    sys.path.insert(0, str(find_comfyui()))
    import comfy.cli_args

    comfy.cli_args.args.cpu = not torch.cuda.is_available()  # before comfy.model_management is imported
    print(json.dumps(figures(), indent=2))
