"""Helpers for tests that run the PnP nodes in-process: one guidance image, its bank, sampler variants."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def guidance_pixels(size: int, seed: int = 0) -> torch.Tensor:
    """A structured test image (1, size, size, 3) in [0, 1]: a disc on the left, stripes on the right."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.empty((size, size, 3))
    img[:] = [0.2, 0.35, 0.8]
    disc = (yy - 0.5) ** 2 + (xx - 0.27) ** 2 < 0.2 ** 2
    img[disc] = [0.85, 0.25, 0.15]
    stripes = (xx > 0.55) & (np.floor(yy * 8) % 2 == 0)
    img[stripes] = [0.9, 0.85, 0.3]
    img += rng.normal(0, 0.02, img.shape)
    return torch.from_numpy(img.clip(0, 1)).float().unsqueeze(0)


def node(node_id: str):
    import nodes

    return nodes.NODE_CLASS_MAPPINGS[node_id]


def run_node(node_id: str, **inputs):
    """Execute one of the pack's V3 nodes as ComfyUI would (under inference mode); returns its outputs."""
    with torch.inference_mode():
        return node(node_id).execute(**inputs).result


SAMPLER_DEFAULTS = dict(cfg=7.5, feature_injection=0.8, attention_injection=0.5, steps=0,
                        threshold_convention="pnp-diffusers", final_step="official")


@dataclass
class Guidance:
    model: object
    clip: object
    vae: object
    latent: dict
    bank: object
    positive: list
    negative: list

    def sample(self, model=None, positive=None, **overrides) -> torch.Tensor:
        """PnP Sampler's latent for this bank with the given inputs (defaults: the paper's)."""
        inputs = dict(SAMPLER_DEFAULTS, model=model or self.model, positive=positive or self.positive,
                      negative=self.negative, features=self.bank)
        inputs.update(overrides)
        return run_node("PnP_Sampler", **inputs)[0]["samples"]


def make_guidance(models, layout: str = "sd15_reduced", size: int = 128, steps: int = 8,
                  prompt: str = "a watercolor painting of a fruit bowl", model=None) -> Guidance:
    import nodes

    base_model, clip, vae = models.load(layout)
    model = model or base_model
    with torch.inference_mode():
        latent = nodes.VAEEncode().encode(vae, guidance_pixels(size))[0]
        empty = nodes.CLIPTextEncode().encode(clip, "")[0]
        positive = nodes.CLIPTextEncode().encode(clip, prompt)[0]
        negative = nodes.CLIPTextEncode().encode(clip, "ugly, blurry, black, low res, unrealistic")[0]
    inversion = run_node("PnP_DDIMInversion", model=model, latent=latent, conditioning=empty, steps=steps,
                         inversion_steps=0)[0]
    bank = run_node("PnP_FeatureBank", model=model, inversion=inversion, conditioning=empty,
                    resblock_layers="auto", attention_layers="auto", feature_injection=0.8,
                    attention_injection=0.5, bank_dtype="fp32", batch_size=1)[0]
    return Guidance(model, clip, vae, latent, bank, positive, negative)
