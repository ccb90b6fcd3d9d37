"""Spatial injection weights from a user's MASK (pure torch, no ComfyUI).

A ComfyUI MASK is (B, H, W) (or (H, W)) in [0, 1]. PnP accepts one mask
(batch 1; for a batch of guidance images, one for every frame or one per
frame) at the guidance image's pixel size (latent size x ``bank.LATENT_TO_PIXELS``)
or at its latent size. It becomes a weight map (B, H, W):
``w = outside + (1 - outside) * mask``, so the mask's inside injects fully and
its outside with weight ``outside`` (0 = not at all). ``injection.Injector``
resizes the map to each site's (h, w) (``mask_at_resolution``) and multiplies
it by the injection strength.
"""
from __future__ import annotations

import torch

from .bank import LATENT_TO_PIXELS
from .errors import PnPInputError


def check_mask_form(mask: torch.Tensor, what: str = "mask") -> torch.Tensor:
    """``mask`` as (B, H, W) if it is a MASK of finite values: what can be checked before the bank exists (or the
    image it belongs to is known). ``what`` names it in the error."""
    if mask.ndim == 2:
        mask = mask.unsqueeze(0)
    if mask.ndim != 3:
        raise PnPInputError(
            f"The {what} has shape {list(mask.shape)}; a MASK is (batch, height, width). Connect a MASK output "
            f"(Load Image's MASK, Load Image (as Mask), a SAM/segmentation node, the Mask Editor)."
        )
    if not torch.isfinite(mask).all():
        raise PnPInputError(f"The {what} contains NaN or infinite values; connect a mask with values in [0, 1].")
    return mask


def injection_weight_map(mask: torch.Tensor, latent_shape: tuple[int, ...], outside: float,
                         frames: int = 1) -> torch.Tensor:
    """Check ``mask`` against the bank's latent (C, h, w) and ``frames`` guidance images and return the weight
    map (1 or frames, H, W), float32."""
    h, w = latent_shape[-2:]
    image_hw = (h * LATENT_TO_PIXELS, w * LATENT_TO_PIXELS)
    mask = check_mask_form(mask)
    if mask.shape[0] not in (1, frames):
        per_frame = f" or one per frame ({frames})" if frames > 1 else ""
        raise PnPInputError(
            f"The mask holds a batch of {mask.shape[0]} masks; PnP uses one mask for the guidance image{per_frame}. "
            f"Combine them (Mask Composite, 'add') or pick one (Convert Mask to Image -> Image From Batch -> "
            f"Convert Image to Mask)."
        )
    size = tuple(mask.shape[-2:])
    if size not in (image_hw, (h, w)):
        raise PnPInputError(
            f"The mask is {size[1]}x{size[0]} px but the guidance image is {image_hw[1]}x{image_hw[0]} px "
            f"(latent {w}x{h}). Use a mask of the guidance image itself (same width and height), or scale it: "
            f"Convert Mask to Image -> Upscale Image to {image_hw[1]}x{image_hw[0]} -> Convert Image to Mask."
        )
    mask = mask.detach().float().cpu()
    if not 0.0 <= outside <= 1.0:
        raise PnPInputError(f"outside_mask_strength must be in [0, 1], got {outside}.")
    mask = mask.clamp(0.0, 1.0)
    return mask if outside == 0.0 else outside + (1.0 - outside) * mask
