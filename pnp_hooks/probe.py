"""What PnP sees at one UNet site, as PCA pictures over sampling steps.

The tensors come from a feature bank (cond branch, as the original's
visualizations), or, when the bank lacks the layer or the steps, from a live
source pass ``UNet(z_t, t, source prompt)`` on the bank's own trajectory with
only that site recorded (the same pass that filled the bank). q and k are
the model's own attn1 projections of the stored attn1 input n. The maths is
in ``visualize``; this module wires it to ComfyUI through ``sampling`` and
``patcher``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from . import patcher, sampling, visualize
from .bank import LATENT_TO_PIXELS, FeatureBank, check_model, check_one_frame
from .errors import PnPInputError
from .injection import COND_CHUNK, branch_of
from .layers import LayerSites, first_default_site, parse_site, resolve_sites

VIEW_KINDS = ("resblock", "self-attention map", "query", "key", "attention input")
_NEEDS_MODEL = ("self-attention map", "query", "key")


@dataclass(frozen=True)
class PCAView:
    frames: torch.Tensor  # (S, H, W, 3) in [0, 1], one picture per chosen step
    grid: torch.Tensor  # (1, H', W', 3), the frames side by side
    steps: tuple[int, ...]
    caption: str


def _default_site(bank: FeatureBank, attention: bool, family: str) -> tuple[int, int]:
    stored = bank.sites.attention if attention else tuple((b, 0) for b in bank.sites.resblocks)
    return stored[0] if stored else first_default_site(family, attention)


def _resolve_site(bank: FeatureBank, kind: str, layer: str, facts) -> tuple[int, int]:
    attention = kind != "resblock"
    if layer.strip().lower() == "auto":
        site = _default_site(bank, attention, bank.trajectory.model.family)
    else:
        site = parse_site(layer, attention)
    if facts is not None:
        spec = f"{site[0]}:{site[1]}" if attention else str(site[0])
        resolve_sites("" if attention else spec, spec if attention else "", facts.layout)
    return site


def _stored(bank: FeatureBank, kind: str, site: tuple[int, int], steps: list[int]) -> torch.Tensor | None:
    """(S, C, h, w) or (S, N, C) from the bank's cond branch, or None if it lacks the site or a step."""
    if kind == "resblock":
        store, recorded = bank.resblock.get(site[0]), bank.feature_steps
    else:
        store, recorded = bank.attention.get(site), bank.attention_steps
    if store is None or max(steps) >= recorded:
        return None
    return store[steps, branch_of(COND_CHUNK, bank.branches)]


def _record_live(model, bank: FeatureBank, kind: str, site: tuple[int, int], steps: list[int]) -> torch.Tensor:
    """Record only ``site`` at only ``steps`` with the bank's trajectory and source prompt (float32)."""
    if bank.source_conditioning is None:
        raise PnPInputError("This feature bank does not keep its source prompt, so the layer cannot be recorded "
                            "live; add the layer to the bank's resblock_layers/attention_layers instead.")
    trajectory = bank.trajectory
    picked = dataclasses.replace(trajectory, timesteps=tuple(trajectory.timesteps[s] for s in steps),
                                 latents=trajectory.latents[steps])
    resblock = kind == "resblock"
    sites = LayerSites((site[0],), ()) if resblock else LayerSites((), (site,))
    live = sampling.record_bank(model, picked, bank.source_conditioning, sites,
                                len(steps) if resblock else 0, 0 if resblock else len(steps), torch.float32, 1)
    return (live.resblock[site[0]] if resblock else live.attention[site])[:, 0]


def feature_pca(bank: FeatureBank, kind: str, layer: str, steps_spec: str, model=None, fit: str = "across steps",
                frame_width: int = 0, upscale: str = "nearest", columns: int = 0) -> PCAView:
    """PCA pictures of one site's tensors at the chosen sampling steps of ``bank``.

    ``kind``: one of ``VIEW_KINDS``; ``layer``: ``"auto"`` (the bank's first
    site of that kind), a decoder block (``"4"``) or ``"block:transformer"``.
    ``model`` (the bank's checkpoint) is needed for q/k views and to record
    a layer or step the bank does not hold.
    """
    if kind not in VIEW_KINDS:
        raise PnPInputError(f"view must be one of {VIEW_KINDS}, got {kind!r}.")
    check_one_frame(bank, "PnP Feature PCA")
    facts = None
    if model is not None:
        facts = patcher.model_facts(model)
        check_model(bank.trajectory.model, facts.identity, "feature bank")
    elif kind in _NEEDS_MODEL:
        raise PnPInputError(f"The '{kind}' view projects the stored attention inputs with the model's to_q/to_k: "
                            f"connect the MODEL the bank was recorded with to PnP Feature PCA.")
    site = _resolve_site(bank, kind, layer, facts)
    recorded = bank.feature_steps if kind == "resblock" else bank.attention_steps
    steps = visualize.parse_steps(steps_spec, recorded, bank.steps)

    tensors = _stored(bank, kind, site, steps)
    source = "feature bank"
    if tensors is None:
        if model is None:
            raise PnPInputError(
                f"The feature bank holds {'ResBlock' if kind == 'resblock' else 'attention'} layers "
                f"{_site_names(bank, kind)} for steps 0-{recorded - 1}; layer {_site_name(kind, site)} at steps "
                f"{steps} is not among them. Connect the MODEL to record it live, or pick a stored layer/step.")
        tensors = _record_live(model, bank, kind, site, steps)
        source = "recorded live"

    latent_hw = tuple(bank.trajectory.latent_shape[-2:])
    if kind == "resblock":
        features = visualize.resblock_tokens(tensors)
        grid_hw = tuple(tensors.shape[-2:])
    else:
        grid_hw = visualize.token_grid(latent_hw, tensors.shape[1])
        if kind == "attention input":
            features = visualize.DenseFeatures(tensors)
        else:
            q, k, heads = patcher.attention_qk(model, site, tensors)
            features = {"query": visualize.DenseFeatures(q), "key": visualize.DenseFeatures(k),
                        "self-attention map": visualize.AttentionMaps(q, k, heads)}[kind]

    rgb = visualize.pca_rgb(features, fit)
    height, width = latent_hw[0] * LATENT_TO_PIXELS, latent_hw[1] * LATENT_TO_PIXELS
    if frame_width > 0:
        height, width = max(1, round(frame_width * height / width)), frame_width
    frames = visualize.upscale(visualize.to_images(rgb, grid_hw), (height, width), upscale)
    timesteps = [bank.trajectory.timesteps[s] for s in steps]
    caption = (f"{kind} of {_site_name(kind, site)} ({features.dim} features per position, "
               f"{grid_hw[0]}x{grid_hw[1]}) at steps {', '.join(map(str, steps))} "
               f"(t = {', '.join(map(str, timesteps))}); PCA fit {fit}; {source}")
    return PCAView(frames, visualize.grid(frames, columns), tuple(steps), caption)


def _site_name(kind: str, site: tuple[int, int]) -> str:
    return f"ResBlock {site[0]}" if kind == "resblock" else f"attention {site[0]}:{site[1]}"


def _site_names(bank: FeatureBank, kind: str) -> str:
    names = ([str(b) for b in bank.resblock] if kind == "resblock" else [f"{b}:{j}" for b, j in bank.attention])
    return "[" + ", ".join(names) + "]" if names else "none"
