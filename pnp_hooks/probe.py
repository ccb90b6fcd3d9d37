"""What PnP sees at one UNet site, as PCA pictures over sampling steps.

The tensors come from a feature bank (cond branch, as the original's
visualizations), or, when the bank lacks the layer or the steps, from a live
source pass ``UNet(z_t, t, source prompt)`` on the bank's own trajectory with
only that site recorded (the same pass that filled the bank). q and k are
the model's own attn1 projections of the stored attn1 input n: the model is
loaded as samplers load it and its family's ``query_key`` projects them. The
maths is in ``visualize``; this module wires it to ComfyUI through
``sampling`` (the live pass), ``patcher`` (the model's facts) and the family.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

import comfy.model_management

from . import families, patcher, sampling, visualize
from .bank import LATENT_TO_PIXELS, FeatureBank, check_model, check_one_frame
from .errors import PnPInputError
from .families import FEATURE_THRESHOLD, SiteKind
from .injection import COND_CHUNK, branch_of
from .layers import LayerSites, first_default_site, parse_site, resolve_sites

VIEW_KINDS = ("resblock", "self-attention map", "query", "key", "attention input")
_NEEDS_MODEL = ("self-attention map", "query", "key")


@dataclass(frozen=True)
class PCARequest:
    """What PnP Feature PCA is asked to show (its node inputs but the bank and the model).

    ``view``: one of ``VIEW_KINDS``; ``layer``: ``"auto"`` (the bank's first
    site of that kind), a decoder block (``"4"``) or ``"block:transformer"``;
    ``steps``: the sampling steps (``visualize.parse_steps``); ``fit``: one of
    ``visualize.FIT_MODES``; ``frame_width``: px per picture (0: the image's
    size); ``upscale``: one of ``visualize.UPSCALE_MODES``; ``columns``:
    pictures per row of the grid (0: one row).
    """

    view: str
    layer: str = "auto"
    steps: str = "auto"
    fit: str = "across steps"
    frame_width: int = 0
    upscale: str = "nearest"
    columns: int = 0


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


def _attention_qk(model, family, site: tuple[int, int], n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """q and k of attention site ``site``'s self-attention for its inputs ``n`` (..., tokens, C): ``family``'s
    ``query_key`` on the model's own ``to_q`` / ``to_k`` (LoRA patches included: the model is loaded the way
    samplers load it), on its load device in its compute dtype. Float32 q, k (..., tokens, heads*dim_head) on
    that device, and the head count."""
    comfy.model_management.load_models_gpu([model])
    base = model.model
    dtype = base.manual_cast_dtype if base.manual_cast_dtype is not None else base.get_dtype()
    x = n.to(device=model.load_device, dtype=dtype)
    return family.query_key(base.diffusion_model, site, x)


def feature_pca(bank: FeatureBank, request: PCARequest, model=None) -> PCAView:
    """PCA pictures of one site's tensors at the chosen sampling steps of ``bank`` (see ``PCARequest``).

    ``model`` (the bank's checkpoint) is needed for q/k views and to record
    a layer or step the bank does not hold.
    """
    kind = request.view
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
    site = _resolve_site(bank, site_kind, request.layer, facts)
    recorded = bank.recorded_steps(site_kind)
    steps = visualize.parse_steps(request.steps, recorded, bank.steps)

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
            q, k, heads = _attention_qk(model, facts.family, site, tensors)
            features = {"query": visualize.DenseFeatures(q), "key": visualize.DenseFeatures(k),
                        "self-attention map": visualize.AttentionMaps(q, k, heads)}[kind]

    rgb = visualize.pca_rgb(features, request.fit)
    height, width = latent_hw[0] * LATENT_TO_PIXELS, latent_hw[1] * LATENT_TO_PIXELS
    if request.frame_width > 0:
        height, width = max(1, round(request.frame_width * height / width)), request.frame_width
    frames = visualize.upscale(visualize.to_images(rgb, grid_hw), (height, width), request.upscale)
    timesteps = [bank.trajectory.timesteps[s] for s in steps]
    caption = (f"{kind} of {_site_name(site_kind, site)} ({features.dim} features per position, "
               f"{grid_hw[0]}x{grid_hw[1]}) at steps {', '.join(map(str, steps))} "
               f"(t = {', '.join(map(str, timesteps))}); PCA fit {request.fit}; {source}")
    return PCAView(frames, visualize.grid(frames, request.columns), tuple(steps), caption)


def _site_name(kind: SiteKind, site) -> str:
    return f"{kind.label} {kind.spec(site)}"


def _site_names(bank: FeatureBank, kind: SiteKind) -> str:
    names = [kind.spec(site) for site in bank.stored.get(kind.name, {})]
    return "[" + ", ".join(names) + "]" if names else "none"
