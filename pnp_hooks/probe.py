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

from . import families, patcher, sampling, visualize
from .bank import LATENT_TO_PIXELS, FeatureBank, check_model, check_one_frame
from .errors import PnPInputError
from .families import FEATURE_THRESHOLD, SiteKind
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


def _kind_of_view(bank: FeatureBank, view: str) -> SiteKind:
    """The kind of site of the bank's family whose tensors ``view`` shows."""
    kinds = families.family_named(bank.trajectory.model.family).KINDS
    kind = next((kind for kind in kinds if view in kind.views), None)
    if kind is None:
        raise PnPInputError(f"The '{view}' view shows a kind of layer this bank's model does not have.")
    return kind


def _default_site(bank: FeatureBank, kind: SiteKind) -> tuple[int, int]:
    stored = bank.sites[kind.name]
    return kind.block_index(stored[0]) if stored else first_default_site(bank.trajectory.model.family, kind)


def _resolve_site(bank: FeatureBank, kind: SiteKind, layer: str, facts):
    """The site key of ``kind`` that ``layer`` names ("auto": the bank's first), checked against the model."""
    block, index = _default_site(bank, kind) if layer.strip().lower() == "auto" else parse_site(layer, kind)
    site = kind.site_of(block, index)
    if facts is not None:
        resolve_sites({kind.name: kind.spec(site)}, facts.layout, facts.family.KINDS)
    return site


def _stored(bank: FeatureBank, kind: SiteKind, site, steps: list[int]) -> torch.Tensor | None:
    """(S, *row shape) from the bank's cond branch, or None if it lacks the site or a step."""
    store = bank.stored.get(kind.name, {}).get(site)
    if store is None or max(steps) >= bank.recorded_steps(kind):
        return None
    return store[steps, branch_of(COND_CHUNK, bank.branches)]


def _record_live(model, bank: FeatureBank, kind: SiteKind, site, steps: list[int]) -> torch.Tensor:
    """Record only ``site`` at only ``steps`` with the bank's trajectory and source prompt (float32)."""
    if bank.source_conditioning is None:
        raise PnPInputError("This feature bank does not keep its source prompt, so the layer cannot be recorded "
                            "live; add the layer to the bank's resblock_layers/attention_layers instead.")
    trajectory = bank.trajectory
    picked = dataclasses.replace(trajectory, timesteps=tuple(trajectory.timesteps[s] for s in steps),
                                 latents=trajectory.latents[steps])
    kinds = bank.sites.kinds
    sites = LayerSites(kinds, {kind.name: (site,)})
    feature_steps = len(steps) if kind.threshold == FEATURE_THRESHOLD else 0
    live = sampling.record_bank(model, picked, bank.source_conditioning,
                                sampling.Recording(sites, feature_steps, len(steps) - feature_steps, torch.float32, 1))
    return live.stored[kind.name][site][:, 0]


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
    site_kind = _kind_of_view(bank, kind)
    site = _resolve_site(bank, site_kind, layer, facts)
    recorded = bank.recorded_steps(site_kind)
    steps = visualize.parse_steps(steps_spec, recorded, bank.steps)

    tensors = _stored(bank, site_kind, site, steps)
    source = "feature bank"
    if tensors is None:
        if model is None:
            raise PnPInputError(
                f"The feature bank holds {site_kind.label} layers "
                f"{_site_names(bank, site_kind)} for steps 0-{recorded - 1}; layer {_site_name(site_kind, site)} at "
                f"steps {steps} is not among them. Connect the MODEL to record it live, or pick a stored layer/step.")
        tensors = _record_live(model, bank, site_kind, site, steps)
        source = "recorded live"

    latent_hw = tuple(bank.trajectory.latent_shape[-2:])
    if site_kind.spatial_dims == 2:
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
    caption = (f"{kind} of {_site_name(site_kind, site)} ({features.dim} features per position, "
               f"{grid_hw[0]}x{grid_hw[1]}) at steps {', '.join(map(str, steps))} "
               f"(t = {', '.join(map(str, timesteps))}); PCA fit {fit}; {source}")
    return PCAView(frames, visualize.grid(frames, columns), tuple(steps), caption)


def _site_name(kind: SiteKind, site) -> str:
    return f"{kind.label} {kind.spec(site)}"


def _site_names(bank: FeatureBank, kind: SiteKind) -> str:
    names = [kind.spec(site) for site in bank.stored.get(kind.name, {})]
    return "[" + ", ".join(names) + "]" if names else "none"
