"""Random-weight FLUX.1 diffusion models built with ComfyUI's own ``comfy.ldm.flux.model.Flux``.

No real weights can be downloaded here, so the tests build seeded random FLUX.1
transformers at reduced width, saved as single safetensors files in the layout of
Black Forest Labs' own releases (``flux1-dev.safetensors``: no prefix, RMSNorm
weights named ``*_norm.scale``), for a ``diffusion_models`` folder: ComfyUI's
``UNETLoader`` / ``comfy.sd.load_diffusion_model`` reads them and its own model
detection (``comfy/model_detection.py``) decides what they are.

What ComfyUI detection fixes and what it reads (v0.3.64 and v0.33.0 alike):
fixed axes_dim [16, 56, 56] (head_dim 128), patch 2, 16 latent channels,
mlp_ratio 4, theta 10000, qkv bias; read from the weights: hidden size
(``img_in``), context width (``txt_in``), pooled width (``vector_in``), the block
counts, and dev vs schnell (``guidance_in`` present or not). So hidden = 128 x
heads. The layouts here:

- ``flux_dev_tiny``: hidden 128 (1 head), 2 double blocks, 38 single blocks
  (FLUX.1's own count: RF-Solver-Edit's default injection sites, single blocks
  20-37, and FireFlow's 0-37 all exist), context 4096 (T5-XXL width), pooled
  768 (CLIP-L width), ``guidance_in`` (guidance-distilled, detected as ``Flux``).
- ``flux_schnell_tiny``: the same without ``guidance_in`` (detected as
  ``FluxSchnell``).

11.38M (dev) and 11.33M (schnell) parameters (FLUX.1: 11.9B); 45 MB as fp32 files. The text
widths are the real ones so that conditioning of FLUX's real shape fits; the
text encoders themselves are not built: ComfyUI's FLUX text encoder
(``DualCLIPLoader`` type ``flux``, ``comfy/text_encoders/flux.py``) is CLIP-L
(fixed by ``sd1_clip_config.json``, 123.7M parameters) plus T5-XXL whose config
is fixed by ``comfy/text_encoders/t5_config_xxl.json`` (d_model 4096, 24 layers,
d_ff 10240: 4.76B parameters, 9.5 GB as a bf16 file, about 19 GB to build in
fp32), and its loader refuses other shapes. That is beyond this machine (2 cores,
24 GB shared by six), so tests feed CONDITIONING tensors directly
(``random_conditioning``: T5-width tokens and a CLIP-L-width pooled vector).

Weights are drawn per tensor from a generator seeded by the layout's seed and the
tensor's name, so the file is the same whichever ComfyUI version builds it (the
module construction order does not matter): torch's default Linear init (weights
and biases uniform in +-1/sqrt(fan_in)), RMSNorm scales 1. Seen with it (v0.33,
fp32, a 16x16 latent of unit variance): |velocity| up to about 2.5 (std 0.55),
nearly constant in t; inversion to t = 1 moves the latent by 0.45 on average.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from pathlib import Path

import torch

# Bump when the builder's output changes, so cached files are rebuilt.
BUILDER_VERSION = 1

# ComfyUI's FluxParams for the tiny layouts (fields a version lacks are dropped).
FLUX_BASE = {
    "in_channels": 16,
    "out_channels": 16,
    "vec_in_dim": 768,
    "context_in_dim": 4096,
    "hidden_size": 128,
    "mlp_ratio": 4.0,
    "num_heads": 1,
    "depth": 2,
    "depth_single_blocks": 38,
    "axes_dim": [16, 56, 56],
    "theta": 10000,
    "patch_size": 2,
    "qkv_bias": True,
    "txt_ids_dims": [],
}

LAYOUTS = {
    "flux_dev_tiny": {"guidance_embed": True, "seed": 1901},
    "flux_schnell_tiny": {"guidance_embed": False, "seed": 1902},
}

# What ComfyUI's loader must detect for each layout: (model config class, ModelType name).
EXPECTED_DETECTION = {
    "flux_dev_tiny": ("Flux", "FLUX"),
    "flux_schnell_tiny": ("FluxSchnell", "FLOW"),
}

# The real FLUX.1 transformer's sizes (for memory figures; never built).
FLUX1_REAL = {"hidden_size": 3072, "num_heads": 24, "depth": 19, "depth_single_blocks": 38,
              "text_tokens_dev": 512, "text_tokens_schnell": 256}


def flux_params(layout: str) -> dict:
    return {**FLUX_BASE, "guidance_embed": LAYOUTS[layout]["guidance_embed"]}


def model_name(layout: str) -> str:
    spec = json.dumps({"params": flux_params(layout), "seed": LAYOUTS[layout]["seed"], "v": BUILDER_VERSION},
                      sort_keys=True)
    digest = hashlib.sha1(spec.encode()).hexdigest()[:8]
    return f"pnp_test_{layout}_{digest}.safetensors"


def comfy_flux_module(layout: str, device: str = "meta"):
    """ComfyUI's own Flux module for the layout (on the meta device by default: shapes and names only)."""
    import comfy.ldm.flux.model as flux_model
    import comfy.ops

    fields = {f.name for f in dataclasses.fields(flux_model.FluxParams)}
    params = {k: v for k, v in flux_params(layout).items() if k in fields}
    return flux_model.Flux(dtype=torch.float32, device=device, operations=comfy.ops.disable_weight_init, **params)


def comfy_model(layout: str, state_dict: dict[str, torch.Tensor]):
    """ComfyUI's own FLUX MODEL of the layout, built from its ``supported_models`` config and ``model_base`` (what
    UNETLoader makes where ComfyUI's detection reads the tiny widths; v0.3.64 detects every FLUX as full size), with
    ``state_dict`` (BFL key names) loaded; fp32 on the CPU."""
    import comfy.ldm.flux.model
    import comfy.model_patcher
    import comfy.supported_models

    config_class = getattr(comfy.supported_models, EXPECTED_DETECTION[layout][0])
    fields = {f.name for f in dataclasses.fields(comfy.ldm.flux.model.FluxParams)}
    unet_config = {k: v for k, v in flux_params(layout).items() if k in fields}
    config = config_class({**unet_config, "image_model": "flux"})
    config.set_inference_dtype(torch.float32, None)
    base = config.get_model({}, device=torch.device("cpu"))
    own = base.diffusion_model.state_dict()
    base.diffusion_model.load_state_dict({k: state_dict[official_key(k)] for k in own}, strict=True)
    return comfy.model_patcher.ModelPatcher(base, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))


# The first ComfyUI whose FLUX blocks call attn1_patch: the pack runs FLUX from it on (below it refuses with one
# line), and its UNETLoader detects the tiny widths.
FLUX_PATCHES_FROM = (0, 33, 0)


def has_flux_patches(host) -> bool:
    """Whether the test ``host`` (``comfy_host.Host``) is a ComfyUI the pack runs FLUX on."""
    from find_comfyui import comfyui_version, version_tuple

    return version_tuple(comfyui_version(host.comfy_path)) >= FLUX_PATCHES_FROM


def load_model(host, layout: str):
    """The tiny FLUX of ``layout`` as a ComfyUI MODEL, as users load it: UNETLoader from the test models'
    diffusion_models folder where the host runs FLUX, else ``comfy_model`` (v0.3.64 detects every FLUX as full
    size); the detected model class checked."""
    import folder_paths
    from harness import run_node
    from safetensors.torch import load_file

    folder = host.checkpoint_dir.parent / "diffusion_models"
    folder_paths.add_model_folder_path("diffusion_models", str(folder), is_default=True)
    name = ensure_model(layout, folder)
    if has_flux_patches(host):
        (model,) = run_node("UNETLoader", unet_name=name, weight_dtype="default")
    else:
        model = comfy_model(layout, load_file(str(folder / name)))
    assert type(model.model.model_config).__name__ == EXPECTED_DETECTION[layout][0]
    return model


class TransformerCalls:
    """Counts the calls (NFE) of a ComfyUI FLUX MODEL's transformer while active (a forward pre-hook, removed on
    exit)."""

    def __init__(self, model):
        self.module, self.count = model.model.diffusion_model, 0

    def __enter__(self):
        self.handle = self.module.register_forward_pre_hook(self._seen)
        return self

    def _seen(self, module, args):
        self.count += 1

    def __exit__(self, *exc):
        self.handle.remove()


def official_key(key: str) -> str:
    """ComfyUI's name of a tensor -> BFL's (RMSNorm ``*_norm.weight`` -> ``*_norm.scale``; v0.3.64 already uses it)."""
    if key.endswith("_norm.weight"):
        return key[: -len(".weight")] + ".scale"
    return key


def _uniform(name: str, shape: tuple[int, ...], fan_in: int, seed: int) -> torch.Tensor:
    """torch's Linear init (uniform +-1/sqrt(fan_in)) from a generator seeded by the layout and the tensor's name."""
    gen = torch.Generator().manual_seed(int.from_bytes(hashlib.sha1(f"{seed}:{name}".encode()).digest()[:7], "big"))
    return (torch.rand(shape, generator=gen) * 2 - 1) / math.sqrt(fan_in)


def build_state_dict(layout: str) -> dict[str, torch.Tensor]:
    """The layout's random weights under BFL's key names (fp32)."""
    seed = LAYOUTS[layout]["seed"]
    shapes = {official_key(k): tuple(v.shape) for k, v in comfy_flux_module(layout).state_dict().items()}
    out = {}
    for name, shape in sorted(shapes.items()):
        if name.endswith("_norm.scale"):
            out[name] = torch.ones(shape)
            continue
        weight_shape = shapes[name[: -len(".bias")] + ".weight"] if name.endswith(".bias") else shape
        out[name] = _uniform(name, shape, weight_shape[1], seed).contiguous()
    return out


def build_model_file(layout: str, path: Path) -> Path:
    """Write the layout's random FLUX.1 (fp32 safetensors, BFL key names) at ``path``."""
    from safetensors.torch import save_file

    sd = build_state_dict(layout)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # per process: both hosts' runs may build it at once
    save_file(sd, str(tmp), metadata={"pnp_test_layout": layout, "builder_version": str(BUILDER_VERSION)})
    tmp.replace(path)
    return path


def ensure_model(layout: str, folder: Path) -> str:
    """The layout's file name inside ``folder`` (a ``diffusion_models`` folder), built if missing."""
    name = model_name(layout)
    path = folder / name
    if not path.exists():
        build_model_file(layout, path)
    return name


def parameter_count(layout: str) -> int:
    return sum(math.prod(p.shape) for p in comfy_flux_module(layout).parameters())


def random_conditioning(prompt: str, text_tokens: int = 8, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Stand-in text embeddings for a prompt: (T5-XXL tokens (B, text_tokens, 4096), CLIP-L pooled (B, 768)).

    Deterministic in the prompt, unit variance like T5's output; what ComfyUI's CONDITIONING holds for FLUX
    (``[[tokens, {"pooled_output": pooled}]]``).
    """
    gen = torch.Generator().manual_seed(int.from_bytes(hashlib.sha1(prompt.encode()).digest()[:7], "big"))
    tokens = torch.randn(batch, text_tokens, FLUX_BASE["context_in_dim"], generator=gen)
    pooled = torch.randn(batch, FLUX_BASE["vec_in_dim"], generator=gen)
    return tokens, pooled


def state_dict_digest(sd: dict[str, torch.Tensor]) -> str:
    """sha1 over the sorted names, shapes and fp32 bytes: pins the builder's output across hosts and torch."""
    h = hashlib.sha1()
    for name in sorted(sd):
        h.update(f"{name}:{tuple(sd[name].shape)}".encode())
        h.update(sd[name].to(torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()
