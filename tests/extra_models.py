"""Random-weight ControlNet and LoRA files for the reduced SD1.5 checkpoint, built with ComfyUI's own classes.

- ControlNet: ``comfy.cldm.cldm.ControlNet`` with the reduced UNet's config
  (channel_mult 1,1,1,1) and 3 hint channels, saved in the plain (no prefix)
  single-file layout that ``comfy.controlnet.load_controlnet`` detects from
  ``zero_convs.0.0.weight``. Torch's default init everywhere, the zero convs
  scaled down (not zero) so the control changes the output but keeps it bounded.
- LoRA: kohya-style keys (``lora_unet_<ldm key with _>.lora_down/lora_up/alpha``,
  the format ``comfy.lora.model_lora_keys_unet`` maps) on the self- and
  cross-attention projections of the decoder transformers.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from checkpoints import _init_module_weights, unet_config

BUILDER_VERSION = 1
ZERO_CONV_GAIN = 0.05
LORA_RANK = 4
LORA_BLOCKS = range(3, 12)  # output_blocks[b][1].transformer_blocks[0]
LORA_TARGETS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn2.to_q", "attn2.to_k", "attn2.to_v")


def controlnet_name() -> str:
    return f"pnp_test_controlnet_sd15_reduced_v{BUILDER_VERSION}.safetensors"


def lora_name() -> str:
    return f"pnp_test_lora_sd15_reduced_v{BUILDER_VERSION}.safetensors"


def build_controlnet(path: Path, seed: int = 1601) -> Path:
    import comfy.ops
    from comfy.cldm.cldm import ControlNet
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    cfg = unet_config("sd15_reduced")
    cfg.pop("out_channels")
    net = ControlNet(hint_channels=3, **cfg, dtype=torch.float32, device="cpu",
                     operations=comfy.ops.disable_weight_init)
    _init_module_weights(net)
    with torch.no_grad():
        for conv in list(net.zero_convs) + [net.middle_block_out]:
            conv[0].weight.mul_(ZERO_CONV_GAIN)
            conv[0].bias.zero_()
    sd = {k: v.detach().to(torch.float16).contiguous() for k, v in net.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # per process: both hosts' runs may build it at once
    save_file(sd, str(tmp))
    tmp.replace(path)
    return path


def lora_keys() -> list[str]:
    """The kohya LoRA base names this file patches (one per targeted Linear)."""
    return [f"lora_unet_output_blocks_{b}_1_transformer_blocks_0_{t.replace('.', '_')}"
            for b in LORA_BLOCKS for t in LORA_TARGETS]


def build_lora(path: Path, seed: int = 1602, channels: int = 320, context_dim: int = 768) -> Path:
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for key in lora_keys():
        fan_in = context_dim if "attn2_to_k" in key or "attn2_to_v" in key else channels
        sd[f"{key}.lora_down.weight"] = torch.randn(LORA_RANK, fan_in, generator=gen) / fan_in ** 0.5
        sd[f"{key}.lora_up.weight"] = torch.randn(channels, LORA_RANK, generator=gen) * 0.1
        sd[f"{key}.alpha"] = torch.tensor(float(LORA_RANK))
    sd = {k: v.to(torch.float16).contiguous() for k, v in sd.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path))
    return path


def ensure(folder: Path, name: str, build) -> str:
    path = folder / name
    if not path.exists():
        build(path)
    return name
