"""Random-weight Stable Diffusion checkpoints built with ComfyUI's own classes.

No real weights can be downloaded here, so the tests build seeded random
checkpoints in the single-file layout ComfyUI's CheckpointLoaderSimple reads
(`model.diffusion_model.*`, `cond_stage_model.*`, `first_stage_model.*`) and
let ComfyUI's own model detection decide what they are.

Layouts:
- ``sd15``: the real SD1.5 UNet (channel_mult 1,2,4,4; 859.5M parameters).
- ``sd15_reduced``: SD1.5 with channel_mult 1,1,1,1 (111.5M). ComfyUI still
  detects SD15 and the block layout is the same: 12 output blocks,
  ``output_blocks[3..11][1]`` SpatialTransformers, ``output_blocks[4][0]`` a
  ResBlock.
- ``sd2_reduced`` / ``sd2v_reduced``: SD2.x (context 1024, linear
  projections, 64-channel heads) with the same reduction; the v variant draws
  ``output_blocks.11.1.transformer_blocks.0.norm1.bias`` wide, which is how
  ComfyUI tells v-prediction from eps.
- ``sdxl_reduced``: SDXL base with channel_mult 1,1,1 (320 channels at every
  level instead of 320/640/1280) and a middle block of depth 1 instead of 10
  (254.5M parameters instead of 2567.5M). ComfyUI matches SDXL on
  model_channels 320, linear projections, context 2048, a label_emb of 2816
  inputs and the *encoder* depths [0,0,2,2,10,10] (kept); it reads
  channel_mult, the middle depth and the decoder depths from the weights
  without checking them. The decoder is SDXL's: 9 output blocks, transformer
  stacks of depth 10 in blocks 0-2 and 2 in blocks 3-5, none in 6-8.

The text encoder is full size (its config is fixed by ComfyUI); the VAE is
TAESD (ComfyUI picks it up from its key names), which keeps files small.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import torch

# Bump when the builder's output changes, so cached files are rebuilt.
BUILDER_VERSION = 3

UNET_BASE = {
    "image_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 320,
    "num_res_blocks": [2, 2, 2, 2],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    "transformer_depth_middle": 1,
    "use_spatial_transformer": True,
    "legacy": False,
    "use_checkpoint": False,
    "adm_in_channels": None,
    "use_temporal_resblock": False,
    "use_temporal_attention": False,
}

LAYOUTS = {
    "sd15": dict(channel_mult=[1, 2, 4, 4], context_dim=768, use_linear_in_transformer=False,
                 num_heads=8, num_head_channels=-1, clip="sd1", v_prediction=False, seed=1501),
    "sd15_reduced": dict(channel_mult=[1, 1, 1, 1], context_dim=768, use_linear_in_transformer=False,
                         num_heads=8, num_head_channels=-1, clip="sd1", v_prediction=False, seed=1502),
    # Same layout, other seed: "another checkpoint of the same family".
    "sd15_reduced_alt": dict(channel_mult=[1, 1, 1, 1], context_dim=768, use_linear_in_transformer=False,
                             num_heads=8, num_head_channels=-1, clip="sd1", v_prediction=False, seed=1503),
    "sd2_reduced": dict(channel_mult=[1, 1, 1, 1], context_dim=1024, use_linear_in_transformer=True,
                        num_heads=-1, num_head_channels=64, clip="sd2", v_prediction=False, seed=2001),
    "sd2v_reduced": dict(channel_mult=[1, 1, 1, 1], context_dim=1024, use_linear_in_transformer=True,
                         num_heads=-1, num_head_channels=64, clip="sd2", v_prediction=True, seed=2002),
    "sdxl_reduced": dict(channel_mult=[1, 1, 1], context_dim=2048, use_linear_in_transformer=True,
                         num_heads=-1, num_head_channels=64, clip="sdxl", v_prediction=False, seed=3001,
                         unet=dict(num_res_blocks=[2, 2, 2], transformer_depth=[0, 0, 2, 2, 10, 10],
                                   transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10],
                                   transformer_depth_middle=1, adm_in_channels=2816, num_classes="sequential")),
}

# The real SDXL base UNet, for shapes only (bank sizes, parameter counts); never built with weights.
SDXL_BASE_UNET = dict(channel_mult=[1, 2, 4], transformer_depth_middle=10)

# What ComfyUI's loader must detect for each layout: (model config class, ModelType name).
EXPECTED_DETECTION = {
    "sd15": ("SD15", "EPS"),
    "sd15_reduced": ("SD15", "EPS"),
    "sd15_reduced_alt": ("SD15", "EPS"),
    "sd2_reduced": ("SD20", "EPS"),
    "sd2v_reduced": ("SD20", "V_PREDICTION"),
    "sdxl_reduced": ("SDXL", "EPS"),
}

# Output-layer gain: keeps CFG drift bounded so latents stay of order 1 over 50 steps.
UNET_OUT_GAIN = 0.3


def unet_config(layout: str) -> dict:
    spec = LAYOUTS[layout]
    cfg = dict(UNET_BASE)
    for key in ("channel_mult", "context_dim", "use_linear_in_transformer", "num_heads", "num_head_channels"):
        cfg[key] = spec[key]
    cfg.update(spec.get("unet", {}))
    if spec["clip"] == "sd2":
        cfg["attn_precision"] = torch.float32
    return cfg


def sdxl_base_unet_config() -> dict:
    """The full SDXL base UNet config (channel_mult 1,2,4; middle depth 10): for shapes only."""
    return {**unet_config("sdxl_reduced"), **SDXL_BASE_UNET}


def checkpoint_name(layout: str) -> str:
    spec = json.dumps({"layout": LAYOUTS[layout], "v": BUILDER_VERSION, "gain": UNET_OUT_GAIN}, sort_keys=True)
    digest = hashlib.sha1(spec.encode()).hexdigest()[:8]
    return f"pnp_test_{layout}_{digest}.safetensors"


def _init_module_weights(module: torch.nn.Module) -> None:
    """ComfyUI's disable_weight_init ops skip init: call torch's own on every layer."""
    for m in module.modules():
        for base in (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.GroupNorm,
                     torch.nn.LayerNorm, torch.nn.Embedding):
            if isinstance(m, base):
                base.reset_parameters(m)
                break


def _build_unet(layout: str) -> dict[str, torch.Tensor]:
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    cfg = unet_config(layout)
    unet = UNetModel(**cfg, dtype=torch.float32, device="cpu", operations=comfy.ops.disable_weight_init)
    _init_module_weights(unet)
    with torch.no_grad():
        unet.out[2].weight.mul_(UNET_OUT_GAIN)
        unet.out[2].bias.zero_()
        if LAYOUTS[layout]["v_prediction"]:
            bias = unet.output_blocks[11][1].transformer_blocks[0].norm1.bias
            bias.normal_(0.0, 0.2)
    return {f"model.diffusion_model.{k}": v for k, v in unet.state_dict().items()}


def _build_clip(kind: str) -> dict[str, torch.Tensor]:
    # Each encoder is drawn in fp32, then halved in place, one tensor at a time (the same fp16 values as
    # halving its state dict, without an fp32 and an fp16 copy of SDXL's 818M parameters side by side).
    if kind == "sd1":
        from comfy.sd1_clip import SDClipModel

        clip = SDClipModel(device="cpu", dtype=torch.float32)
        _init_module_weights(clip)
        clip.half()
        sd = {f"cond_stage_model.{k}": v for k, v in clip.state_dict().items()}
        for k in ("cond_stage_model.transformer.text_projection.weight", "cond_stage_model.logit_scale"):
            sd.pop(k, None)
        return sd
    if kind == "sd2":
        import comfy.supported_models
        from comfy.text_encoders.sd2_clip import SD2ClipHModel

        clip = SD2ClipHModel(device="cpu", dtype=torch.float32)
        _init_module_weights(clip)
        clip.half()
        sd = {f"clip_h.{k}": v for k, v in clip.state_dict().items()}
        model_config = comfy.supported_models.SD20(unet_config("sd2_reduced"))
        return model_config.process_clip_state_dict_for_saving(sd)
    if kind == "sdxl":
        import comfy.supported_models
        from comfy.sdxl_clip import SDXLClipModel

        clip = SDXLClipModel(device="cpu", dtype=torch.float32)
        _init_module_weights(clip)
        clip.half()
        model_config = comfy.supported_models.SDXL(unet_config("sdxl_reduced"))
        return model_config.process_clip_state_dict_for_saving(clip.state_dict())
    raise ValueError(kind)


def _build_taesd() -> dict[str, torch.Tensor]:
    from comfy.taesd.taesd import TAESD

    vae = TAESD(latent_channels=4)
    _init_module_weights(vae)
    return {f"first_stage_model.{k}": v for k, v in vae.state_dict().items()}


def build_checkpoint(layout: str, path: Path) -> Path:
    """Build the layout's random checkpoint (fp16 file) at ``path`` and return it."""
    from safetensors.torch import save_file

    spec = LAYOUTS[layout]
    torch.manual_seed(spec["seed"])
    sd = {}
    # Halve each part as soon as it is built: keeps the peak memory low for SDXL's 818M-parameter text encoders.
    for build in (lambda: _build_unet(layout), lambda: _build_clip(spec["clip"]), _build_taesd):
        sd.update({k: v.detach().to(torch.float16).contiguous() for k, v in build().items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # per process: both hosts' runs may build it at once
    save_file(sd, str(tmp), metadata={"pnp_test_layout": layout, "builder_version": str(BUILDER_VERSION)})
    tmp.replace(path)
    return path


def ensure_checkpoint(layout: str, folder: Path) -> str:
    """Return the checkpoint's file name inside ``folder``, building it if missing."""
    name = checkpoint_name(layout)
    path = folder / name
    if not path.exists():
        build_checkpoint(layout, path)
    return name


def unet_parameter_count(layout: str) -> int:
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    import comfy.ops

    with torch.device("meta"):
        unet = UNetModel(**unet_config(layout), dtype=torch.float32, operations=comfy.ops.disable_weight_init)
    return sum(math.prod(p.shape) for p in unet.parameters())
