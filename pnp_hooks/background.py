"""Background weakening with a subject mask, after a user's notes on PnP (pure torch, no ComfyUI).

The notes (their scheme 3, with a SAM mask from a point prompt): multiply the
guidance image's background by a factor (0.5) before inversion, translate, then
brighten the result by the inverse factor (2); it frees the background from the
guidance image's clutter. Deleting the background (factor 0) fails: PnP then
generates no background at all.

On ComfyUI tensors: IMAGE (B, H, W, 3) in [0, 1]; MASK (B, H, W) (or (H, W)),
1 = subject, batch 1 (every image) or B (one per image), the image's size.

- ``brightness_map``: the factor each pixel is multiplied by,
  ``b = m + factor * (1 - m)`` with ``m`` the mask with a soft edge (a Gaussian
  blur of sigma ``feather / 2`` px: the edge blends over about +-feather px);
- ``weaken``: ``clamp(image * b, 0, 1)``;
- ``restore``: after decoding, ``clamp(image / b_min, 0, 1)`` on the whole image
  (as the notes: b_min is the background's factor), or ``clamp(image / b, 0, 1)``
  only where it was weakened.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .errors import PnPInputError
from .masks import check_mask_form

WHOLE_IMAGE, WEAKENED_ONLY = "whole image", "weakened area only"
RESTORE_REGIONS = (WHOLE_IMAGE, WEAKENED_ONLY)
# Channels of an IMAGE: grey, RGB, RGBA (weakening multiplies them all); the vision models read RGB(A).
ANY_CHANNELS, RGB_CHANNELS = (1, 3, 4), (3, 4)


def check_image(image: torch.Tensor, what: str, channels: tuple[int, ...] = ANY_CHANNELS) -> None:
    """``image`` an IMAGE batch (B, H, W, C), B >= 1, C one of ``channels``, or a PnPInputError naming ``what``."""
    if image.ndim != 4 or image.shape[0] == 0 or image.shape[-1] not in channels:
        allowed = ", ".join(map(str, channels[:-1])) + f" or {channels[-1]}"
        raise PnPInputError(f"The {what} has shape {list(image.shape)}; connect an IMAGE (batch, height, width, "
                            f"{allowed} channels), e.g. Load Image's or VAE Decode's output.")


def _mask_batch(mask: torch.Tensor, image: torch.Tensor, what: str) -> torch.Tensor:
    """``mask`` as float32 (B or 1, H, W) in [0, 1], checked against ``image`` (B, H, W, C)."""
    mask = check_mask_form(mask, what)
    batch, height, width = image.shape[:3]
    if mask.shape[0] not in (1, batch):
        raise PnPInputError(f"The {what} holds {mask.shape[0]} masks for {batch} images: connect one mask for "
                            f"every image, or one per image.")
    if tuple(mask.shape[-2:]) != (height, width):
        raise PnPInputError(
            f"The {what} is {mask.shape[-1]}x{mask.shape[-2]} px but the image is {width}x{height} px. Use a mask "
            f"of this image, or scale it: Convert Mask to Image -> Upscale Image to {width}x{height} -> Convert "
            f"Image to Mask.")
    return mask.detach().to(device=image.device, dtype=torch.float32).clamp(0.0, 1.0)


def soft_edge(mask: torch.Tensor, feather: float) -> torch.Tensor:
    """(B, H, W) mask blurred with a Gaussian of sigma ``feather / 2`` px (edges replicated); 0 = unchanged."""
    if feather <= 0:
        return mask
    sigma = feather / 2.0
    radius = max(1, math.ceil(3.0 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32, device=mask.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    m = mask.unsqueeze(1)
    m = F.conv2d(F.pad(m, (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
    m = F.conv2d(F.pad(m, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1))
    return m.squeeze(1).clamp(0.0, 1.0)


def brightness_map(image: torch.Tensor, mask: torch.Tensor, factor: float, feather: float) -> torch.Tensor:
    """The factor each pixel of ``image`` is multiplied by: 1 on the subject, ``factor`` on the background,
    a soft edge between. Returns (B or 1, H, W) float32."""
    check_image(image, "image")
    if not 0.0 <= factor <= 1.0:
        raise PnPInputError(f"factor must be between 0 and 1, got {factor}.")
    if feather < 0:
        raise PnPInputError(f"feather must be 0 px or more, got {feather}.")
    m = soft_edge(_mask_batch(mask, image, "mask"), feather)
    # lerp is exact at both ends: exactly 1 where m is 1 (and everywhere for factor 1), the factor where m is 0
    return torch.lerp(torch.full_like(m, factor), torch.ones_like(m), m)


def weaken(image: torch.Tensor, brightness: torch.Tensor) -> torch.Tensor:
    """``image`` (B, H, W, C) times ``brightness`` (B or 1, H, W), in [0, 1]."""
    return (image.float() * brightness.unsqueeze(-1)).clamp(0.0, 1.0)


def restore(image: torch.Tensor, brightness: torch.Tensor, region: str) -> torch.Tensor:
    """Undo ``weaken``'s darkening on a decoded ``image``: divide by the background's factor (the map's smallest
    value, per image) on the ``WHOLE_IMAGE``, or by each pixel's own factor (``WEAKENED_ONLY``); clamp to [0, 1]."""
    check_image(image, "image")
    brightness = _mask_batch(brightness, image, "brightness")
    if region == WHOLE_IMAGE:
        divisor = brightness.flatten(1).amin(dim=1).view(-1, 1, 1).expand_as(brightness)
    elif region == WEAKENED_ONLY:
        divisor = brightness
    else:
        raise PnPInputError(f"region must be one of {RESTORE_REGIONS}, got {region!r}.")
    if not bool((divisor > 0).all()):
        raise PnPInputError(
            "The brightness map is 0 somewhere: the background was deleted (factor 0), so there is nothing to "
            "restore (and, as the notes found, PnP generates no background). Set factor above 0 on PnP Weaken "
            "Background, or bypass PnP Restore Brightness.")
    return (image.float() / divisor.unsqueeze(-1)).clamp(0.0, 1.0)
