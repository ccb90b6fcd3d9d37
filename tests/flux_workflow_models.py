"""Random stand-ins for the models the FLUX workflows load, under the file names users have.

The FLUX workflows (``workflow_specs.flux_real_image`` / ``flux_mask``) load FLUX.1 the way its users do:
``UNETLoader`` (``flux1-dev.safetensors``), ``DualCLIPLoader`` type flux (``clip_l.safetensors`` +
``t5xxl_fp16.safetensors``) and ``VAELoader`` (``ae.safetensors``). The test servers get random files
under those names (``model_files``):

- the diffusion model: ``flux_checkpoints``' tiny FLUX.1 dev (hidden 128, 2 double + 38 single blocks,
  context 4096, pooled 768);
- CLIP-L: ComfyUI's own ``SDClipModel`` (full size, fixed by its config), random, fp16;
- T5-XXL: ComfyUI's own ``comfy.text_encoders.t5.T5`` at d_model 4096 (what FLUX's context width needs)
  but one layer of one head (``T5_STAND_IN``): 132M parameters instead of 4.76B, which this machine cannot
  build (``flux_checkpoints``' docstring). ComfyUI builds T5-XXL from its fixed config, so the server loads
  ``tests/server_stand_ins/pnp_test_t5_stand_in`` (``STAND_IN_NODES``), a test-only custom node folder that
  gives ComfyUI's T5-XXL class the reduced config through ComfyUI's own ``t5xxl_model_config`` model option;
  nothing else of the host changes, and it is never part of the pack;
- the VAE: ComfyUI's own ``Encoder`` / ``Decoder`` with 16 latent channels (the FLUX VAE's layout, no
  quant convs), random, fp16.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

import flux_checkpoints
from checkpoints import _init_module_weights

BUILDER_VERSION = 1
UNET = "flux1-dev.safetensors"
CLIP_L = "clip_l.safetensors"
T5XXL = "t5xxl_fp16.safetensors"
VAE = "ae.safetensors"
# The stand-in's T5 config over ComfyUI's t5_config_xxl.json (the test-only custom node sets the same).
T5_STAND_IN = {"num_layers": 1, "num_heads": 1, "d_ff": 64}
STAND_IN_NODES = Path(__file__).resolve().parent / "server_stand_ins" / "pnp_test_t5_stand_in"


def _save(sd: dict[str, torch.Tensor], path: Path) -> Path:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # per process: both hosts' runs may build it at once
    save_file({k: v.detach().to(torch.float16).contiguous() for k, v in sd.items()}, str(tmp),
              metadata={"pnp_test_builder_version": str(BUILDER_VERSION)})
    tmp.replace(path)
    return path


def build_clip_l(path: Path, seed: int = 2001) -> Path:
    """A random CLIP-L text encoder in the key layout of ``clip_l.safetensors``."""
    from comfy.sd1_clip import SDClipModel

    torch.manual_seed(seed)
    clip = SDClipModel(device="cpu", dtype=torch.float32)
    _init_module_weights(clip)
    return _save({k[len("transformer."):]: v for k, v in clip.state_dict().items()
                  if k.startswith("transformer.") and not k.endswith("text_projection.weight")}, path)


def build_t5_stand_in(path: Path, seed: int = 2002) -> Path:
    """A random T5 encoder of T5-XXL's width and vocabulary, one layer of one head (``T5_STAND_IN``)."""
    import json

    import comfy.ops
    import comfy.text_encoders.t5

    config = json.loads((Path(comfy.text_encoders.t5.__file__).parent / "t5_config_xxl.json").read_text())
    torch.manual_seed(seed)
    t5 = comfy.text_encoders.t5.T5({**config, **T5_STAND_IN}, torch.float32, "cpu", comfy.ops.disable_weight_init)
    _init_module_weights(t5)
    with torch.no_grad():
        for name, param in t5.named_parameters():
            if name.endswith("layer_norm.weight"):
                param.fill_(1.0)
    return _save(t5.state_dict(), path)


def build_vae(path: Path, seed: int = 2003) -> Path:
    """A random VAE in the FLUX VAE's layout (16 latent channels, ComfyUI's default SD-style encoder/decoder)."""
    from comfy.ldm.modules.diffusionmodules.model import Decoder, Encoder

    ddconfig = {"double_z": True, "z_channels": 16, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
                "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}
    torch.manual_seed(seed)
    encoder, decoder = Encoder(**ddconfig), Decoder(**ddconfig)
    _init_module_weights(encoder)
    _init_module_weights(decoder)
    sd = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
    sd.update({f"decoder.{k}": v for k, v in decoder.state_dict().items()})
    return _save(sd, path)


def model_files(folder: Path) -> dict[str, dict[str, Path]]:
    """The random files standing in for the FLUX workflows' models, by ComfyUI model folder and file name (built
    into ``folder`` if missing)."""
    unet = folder / flux_checkpoints.ensure_model("flux_dev_tiny", folder)
    files = {}
    for name, build in ((f"pnp_test_clip_l_v{BUILDER_VERSION}.safetensors", build_clip_l),
                        (f"pnp_test_t5_stand_in_v{BUILDER_VERSION}.safetensors", build_t5_stand_in),
                        (f"pnp_test_flux_vae_v{BUILDER_VERSION}.safetensors", build_vae)):
        if not (folder / name).exists():
            build(folder / name)
        files[name] = folder / name
    clip_l, t5, vae = files.values()
    return {"diffusion_models": {UNET: unet}, "text_encoders": {CLIP_L: clip_l, T5XXL: t5}, "vae": {VAE: vae}}
