"""The paper's scores on ComfyUI's own vision models (CLIP_VISION from CLIPVisionLoader).

Structure: the keys of the ViT's last self-attention layer, as Splice takes
them from DINO ViT-B/8. ComfyUI's ``ClipVisionModel.encode_image`` resizes and
normalizes the images as the model expects (DINOv2: 518 px, 37x37 patches + the
class token = 1370 tokens; CLIP ViT-L/H/14: 224 px, 257 tokens) and returns
``penultimate_hidden_states``, the input of the last layer; its keys are that
layer's own ``norm1`` then ``key`` projection (DINOv2:
``encoder.layer[-1].norm1`` / ``.attention.attention.key``; CLIP:
``vision_model.encoder.layers[-1].layer_norm1`` / ``.self_attn.k_proj``),
giving (B, T, 1024) for DINOv2-L, (B, 257, 1280) for CLIP ViT-H.

Text: ``image_embeds`` of a CLIP vision model (its class token after
``post_layernorm`` and ``visual_projection``: the joint space) against the
``pooled_output`` the prompt's CLIP Text Encode carries, which is the joint
space only where ComfyUI projects it (SD 2.x's OpenCLIP ViT-H/14 and SDXL's
CLIP-G; see ``text_embedding``).
"""
from __future__ import annotations

import torch

import comfy.model_management
from comfy.clip_model import CLIPVisionModelProjection
from comfy.image_encoders.dino2 import Dinov2Model

from . import charts, metrics
from .background import RGB_CHANNELS, check_image
from .errors import PnPInputError

# Images per encode_image call: Cancel is honoured and progress moves between chunks.
CHUNK = 4
# ComfyUI's CLIP-L text encoders (SD 1.x, Flux, SD3's L) return the pooled output before CLIP's text projection.
UNPROJECTED_CLIP_L_WIDTH = 768


def last_attention(clip_vision) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The last layer's pre-attention norm and key projection, or a PnPInputError naming what fits."""
    model = clip_vision.model
    if isinstance(model, Dinov2Model):
        layer = model.encoder.layer[-1]
        return layer.norm1, layer.attention.attention.key
    if isinstance(model, CLIPVisionModelProjection) and not clip_vision.return_all_hidden_states:
        layer = model.vision_model.encoder.layers[-1]
        return layer.layer_norm1, layer.self_attn.k_proj
    name = type(model).__name__
    hint = " (ComfyUI's encode_image returns no penultimate hidden states for DINOv3)" if "DINOv3" in name else ""
    raise PnPInputError(f"The structure score needs a DINOv2 or CLIP ViT vision model; the CLIP_VISION connected is "
                        f"{name}{hint}. Load a DINOv2 file (e.g. dinov2_vitl14) with Load CLIP Vision.")


def _chunks(images: torch.Tensor):
    for start in range(0, images.shape[0], CHUNK):
        comfy.model_management.throw_exception_if_processing_interrupted()
        yield images[start:start + CHUNK]


def check_images(images: torch.Tensor, what: str) -> None:
    """An IMAGE batch the vision models can read (RGB or RGBA), or a PnPInputError naming ``what``."""
    check_image(images, what, RGB_CHANNELS)


@torch.no_grad()
def last_layer_keys(clip_vision, images: torch.Tensor, crop: bool) -> torch.Tensor:
    """Keys of the vision model's last self-attention layer, class token first: (B, T, D) float32 on the CPU."""
    norm, key = last_attention(clip_vision)
    keys = []
    for chunk in _chunks(images):
        hidden = clip_vision.encode_image(chunk, crop=crop)["penultimate_hidden_states"]
        x = hidden.to(device=clip_vision.load_device, dtype=torch.float32)
        keys.append(key(norm(x)).float().to(comfy.model_management.intermediate_device()))
    return torch.cat(keys)


def structure_distances(guidance_keys: torch.Tensor, keys: torch.Tensor) -> list[float]:
    """Per image, its distance to its guidance image (one guidance for all, or one each)."""
    rows = metrics.pair_rows(guidance_keys.shape[0], keys.shape[0])
    return [float(metrics.structure_distance(guidance_keys[r:r + 1], keys[i:i + 1])[0]) for i, r in enumerate(rows)]


def structure_maps(guidance_keys: torch.Tensor, keys: torch.Tensor, distances: list[float]) -> torch.Tensor:
    """One picture per image: both self-similarity matrices (class token left out) and their difference."""
    rows = metrics.pair_rows(guidance_keys.shape[0], keys.shape[0])
    pictures = []
    for i, r in enumerate(rows):
        guidance = metrics.self_similarity(guidance_keys[r:r + 1, 1:])[0]
        image = metrics.self_similarity(keys[i:i + 1, 1:])[0]
        pictures.append(charts.similarity_maps(guidance, image, f"image {i + 1}: structure distance "
                                                                f"{distances[i]:.6f} ({keys.shape[1]} tokens)"))
    return torch.cat(pictures)


def text_embedding(conditioning) -> torch.Tensor:
    """The prompt's pooled text embedding (1, D) from a CLIP Text Encode output, if it is a projected one."""
    if not isinstance(conditioning, list) or len(conditioning) != 1:
        raise PnPInputError("The text score needs the prompt's own conditioning: connect the CLIP Text Encode "
                            "output of the target prompt (one prompt, not combined or concatenated).")
    pooled = conditioning[0][1].get("pooled_output")
    if pooled is None:
        raise PnPInputError("This conditioning carries no pooled text embedding: connect a CLIP Text Encode "
                            "output.")
    pooled = pooled.float().reshape(-1, pooled.shape[-1])[:1]
    if pooled.shape[-1] == UNPROJECTED_CLIP_L_WIDTH:
        raise PnPInputError(
            "This prompt's pooled embedding is 768 wide: ComfyUI's CLIP-L text encoders (SD 1.x checkpoints, "
            "Flux) give it before CLIP's text projection, so it is not in any CLIP joint space. Encode the prompt "
            "with a text encoder ComfyUI projects and its vision model: SDXL's CLIP (or clip_g via Load CLIP) "
            "with clip_vision_g, or SD 2.x's with clip_vision_h (see docs/choosing-thresholds.md).")
    return pooled


def check_text_model(clip_vision) -> None:
    """A CLIP vision model with a projection into CLIP's joint space, or a PnPInputError."""
    model = clip_vision.model
    if not isinstance(model, CLIPVisionModelProjection) or not isinstance(model.visual_projection, torch.nn.Module):
        raise PnPInputError(f"The text score needs a CLIP vision model with a projection into CLIP's joint space "
                            f"(clip_vision_g, clip_vision_h, ViT-L/14); the CLIP_VISION connected is "
                            f"{type(model).__name__}.")


@torch.no_grad()
def image_embeddings(clip_vision, images: torch.Tensor, crop: bool) -> torch.Tensor:
    """``image_embeds`` of a CLIP vision model (B, D), float32 on the CPU."""
    check_text_model(clip_vision)
    embeds = [clip_vision.encode_image(chunk, crop=crop)["image_embeds"].float().cpu() for chunk in _chunks(images)]
    return torch.cat(embeds)


def text_scores(clip_vision, images: torch.Tensor, conditioning, crop: bool) -> list[float]:
    text = text_embedding(conditioning)
    embeds = image_embeddings(clip_vision, images, crop)
    if embeds.shape[-1] != text.shape[-1]:
        raise PnPInputError(
            f"The vision model's image embedding has {embeds.shape[-1]} values, the prompt's text embedding "
            f"{text.shape[-1]}: use the vision model of the prompt's text encoder (1280: SDXL / clip_g with "
            f"clip_vision_g; 1024: SD 2.x with clip_vision_h).")
    return [float(v) for v in metrics.cosine_scores(embeds, text)]
