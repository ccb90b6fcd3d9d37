"""Random-weight vision models for the score nodes, built with ComfyUI's own classes and configs.

- DINOv2: ``comfy.image_encoders.dino2.Dinov2Model`` with ComfyUI's own
  ``dino2_large.json`` (ViT-L/14, 24 layers, 1024 wide, 518 px: the smallest
  DINOv2 that ``comfy.clip_vision.load`` detects, from
  ``encoder.layer.23.layer_scale2.lambda1``).
- CLIP vision: ``comfy.clip_model.CLIPVisionModelProjection`` with ComfyUI's
  ``clip_vision_config_h.json`` (ViT-H/14, 32 layers, projection 1024, 224
  px; detected from ``vision_model.encoder.layers.30.layer_norm1.weight``).
  Its 1024-wide image embedding is the joint space of SD 2.x's text encoder
  (OpenCLIP ViT-H/14), whose projected pooled output CLIPTextEncode carries,
  so the text score runs on the ``sd2_reduced`` checkpoint's CLIP.

For the browser test, which runs the shipped ``pnp_sweep`` workflow on every
frontend, ``workflow_model_files`` stands the random ViT-H in for both of its
vision models (DINOv2 at 518 px costs ~40 s an image on the 2-core CPU, ViT-H
~5 s) and a random SD 2.x text encoder (CLIP-H, projected, 1024: ViT-H's
joint space) in for its ``clip_g``: ComfyUI detects each by its keys, so the
graph runs as shipped, in a smaller joint space.

Torch's default init on every layer; the parameters ComfyUI creates empty
(position embeddings, class/mask tokens, layer scales) are drawn here. Saved
as fp16 safetensors in the plain key layout the loader reads.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from checkpoints import _init_module_weights

BUILDER_VERSION = 1
# DINOv2 layer scale of the random model: keeps each layer's update small against the residual stream, so the
# patch embedding (the image) still shows in the last layer's keys.
DINO_LAYER_SCALE = 0.1
VISION_MODELS = {
    "dinov2": dict(seed=1701, module="comfy.image_encoders.dino2", cls="Dinov2Model",
                   config=("image_encoders", "dino2_large.json")),
    "clip_vision_h": dict(seed=1702, module="comfy.clip_model", cls="CLIPVisionModelProjection",
                          config=("clip_vision_config_h.json",)),
}


def vision_model_name(kind: str) -> str:
    return f"pnp_test_{kind}_v{BUILDER_VERSION}.safetensors"


def _config(kind: str) -> dict:
    import comfy.clip_vision

    path = Path(comfy.clip_vision.__file__).parent.joinpath(*VISION_MODELS[kind]["config"])
    return json.loads(path.read_text())


def build_vision_model(kind: str, path: Path) -> Path:
    import importlib

    import comfy.ops
    from safetensors.torch import save_file

    spec = VISION_MODELS[kind]
    torch.manual_seed(spec["seed"])
    model_class = getattr(importlib.import_module(spec["module"]), spec["cls"])
    model = model_class(_config(kind), torch.float32, "cpu", comfy.ops.disable_weight_init)
    _init_module_weights(model)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("position_embeddings", "cls_token", "mask_token", "class_embedding")):
                param.normal_(0.0, 0.02)
            elif name.endswith("lambda1"):
                param.fill_(DINO_LAYER_SCALE)
    model.half()  # in place, one tensor at a time: no fp32 and fp16 copy of ViT-H side by side while saving
    sd = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    del model
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # per process: both hosts' runs may build it at once
    save_file(sd, str(tmp))
    tmp.replace(path)
    return path


def text_encoder_name() -> str:
    return f"pnp_test_clip_h_text_v{BUILDER_VERSION}.safetensors"


def build_text_encoder(path: Path, seed: int = 1703) -> Path:
    """A random OpenCLIP ViT-H/14 text encoder (SD 2.x's) in the key layout Load CLIP detects as CLIP-H."""
    from comfy.text_encoders.sd2_clip import SD2ClipHModel
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    clip = SD2ClipHModel(device="cpu", dtype=torch.float32)
    _init_module_weights(clip)
    sd = {k[len("transformer."):]: v.detach().to(torch.float16).contiguous()
          for k, v in clip.state_dict().items() if k.startswith("transformer.")}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path))
    return path


def workflow_model_files(folder: Path) -> dict[str, dict[str, Path]]:
    """The random models standing in for ``pnp_sweep``'s score models, by ComfyUI model folder and file name."""
    import workflow_specs

    vit = folder / ensure_vision_model("clip_vision_h", folder)
    if not (folder / text_encoder_name()).exists():
        build_text_encoder(folder / text_encoder_name())
    return {"clip_vision": {workflow_specs.DINOV2: vit, workflow_specs.CLIP_VISION_G: vit},
            "text_encoders": {workflow_specs.CLIP_G: folder / text_encoder_name()}}


def ensure_vision_model(kind: str, folder: Path) -> str:
    """The file name of ``kind``'s random model inside ``folder``, built if missing."""
    name = vision_model_name(kind)
    if not (folder / name).exists():
        build_vision_model(kind, folder / name)
    return name
