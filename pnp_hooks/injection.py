"""Recording and injecting PnP tensors at the sites, per kind of site (pure torch, no ComfyUI).

One UNet call carries a batch of rows: ComfyUI concatenates guidance branches
("chunks", listed in ``cond_or_uncond``: 0 the cond, 1 the uncond), each chunk
holding the same number of rows. Once per sampling evaluation the patch layer
(``patcher``) asks a handler (``Injector`` or ``Recorder``) for a step context
from the rows' steps; once per UNet call the context plans a call from
``cond_or_uncond``; the call is then run at every site, ``call.at(kind, site,
tensor, spatial)``, with the site's tensor for the call's rows (its per-row
shape and what it is are the kind's, ``families.SiteKind``; in the UNet: the
ResBlock output ``h`` (rows, C, h, w) and the attn1 input ``n`` (rows, h*w, C),
injected as the q and k input, which is exactly pnp-diffusers' q/k
replacement since q and k are linear projections of it). A kind is injected
for the leading steps of its threshold (``SiteKind.threshold``).

Where the injected tensors come from is a ``sources.FeatureSource``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
import torch.nn.functional as F

from .errors import PnPInputError
from .families import SiteKind
from .layers import LayerSites
from .schedule import InjectionPlan

# cond_or_uncond entry of the cond branch (ComfyUI's convention: 0 = cond, 1 = uncond).
COND_CHUNK = 0

# Per kind name, per site: a tensor (what a step, a source or a recording holds).
SiteTensors = Mapping[str, Mapping[object, torch.Tensor]]


def rows_per_chunk(batch: int, cond_or_uncond: list[int]) -> int:
    if not cond_or_uncond or batch % len(cond_or_uncond):
        raise RuntimeError(f"batch of {batch} rows does not split into chunks {cond_or_uncond}")
    return batch // len(cond_or_uncond)


def branch_of(chunk: int, branches: tuple[str, ...]) -> int:
    """Index in ``branches`` of what a chunk of ``cond_or_uncond`` reads or records.

    A single source branch serves every chunk; with ("uncond", "cond") branches
    (a guidance image generated under CFG) the cond chunk maps to "cond" and
    every other chunk (uncond, the paper's negative prompt) to "uncond".
    """
    if len(branches) == 1:
        return 0
    return branches.index("cond" if chunk == COND_CHUNK else "uncond")


@dataclass(frozen=True)
class StepFeatures:
    """One sampling step's source tensors, per kind and site: (branches, *row shape)."""

    tensors: SiteTensors
    branches: tuple[str, ...]


def mask_at_resolution(mask: torch.Tensor, spatial: tuple[int, int]) -> torch.Tensor:
    """Resize a (1, H, W) mask to a layer's (h, w) by area averaging; returns (1, h, w)."""
    m = mask.float().unsqueeze(1)
    if tuple(m.shape[-2:]) != tuple(spatial):
        m = F.interpolate(m, size=spatial, mode="area" if m.shape[-1] >= spatial[1] else "bilinear")
    return m.squeeze(1).clamp(0.0, 1.0)


class Blend:
    """How much of the source replaces the target: ``strength`` times a spatial ``mask`` (1, H, W) in [0, 1]."""

    def __init__(self, strength: float = 1.0, mask: torch.Tensor | None = None):
        self.strength = float(strength)
        self.mask = mask
        self._weights: dict[tuple, torch.Tensor] = {}

    @property
    def is_replacement(self) -> bool:
        return self.mask is None and self.strength == 1.0

    def __call__(self, target: torch.Tensor, source: torch.Tensor, spatial, spatial_dims: int) -> torch.Tensor:
        if self.is_replacement:
            return source
        # lerp is exact at both ends: weight 1 gives the source, weight 0 the target.
        return torch.lerp(target, source, self._weight(tuple(spatial), spatial_dims, target))

    def _weight(self, spatial: tuple[int, int], spatial_dims: int, like: torch.Tensor) -> torch.Tensor:
        key = (spatial, spatial_dims, like.device, like.dtype)
        if key not in self._weights:
            if self.mask is None:
                w = torch.full((1,) * like.dim(), self.strength)
            else:
                m = mask_at_resolution(self.mask, spatial) * self.strength  # (1, h, w)
                w = m.unsqueeze(1) if spatial_dims == 2 else m.flatten(1).unsqueeze(-1)
            self._weights[key] = w.to(device=like.device, dtype=like.dtype)
        return self._weights[key]


class InjectingCall:
    """One target UNet call of an injecting step: each row takes the source tensors of its branch."""

    def __init__(self, step: "InjectingStep", row_branches: tuple[int, ...]):
        self.step = step
        self.row_branches = row_branches

    def _source(self, stored: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        index = self.step.row_index(self.row_branches, like.device)
        return stored.to(device=like.device, dtype=like.dtype).index_select(0, index)

    def at(self, kind: SiteKind, site, tensor: torch.Tensor, spatial) -> torch.Tensor:
        """``tensor`` (rows, *row shape) at ``site`` of ``kind``, blended with the source's where the step
        injects that kind; ``spatial``: the site's (h, w)."""
        stored = self.step.features.tensors.get(kind.name, {}).get(site)
        if not self.step.injects.get(kind.name) or stored is None:
            return tensor
        return self.step.blend(tensor, self._source(stored, tensor), spatial, spatial_dims=kind.spatial_dims)


@dataclass
class InjectingStep:
    """A sampling step that injects: its source features and, per kind name, whether it injects that kind."""

    step: int
    features: StepFeatures
    injects: Mapping[str, bool]
    blend: Blend
    row_indices: dict

    def row_index(self, row_branches: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """``row_branches`` as an index tensor on ``device``, made once (the sites run per layer)."""
        key = (row_branches, device)
        if key not in self.row_indices:
            self.row_indices[key] = torch.tensor(row_branches, device=device)
        return self.row_indices[key]

    def plan_call(self, cond_or_uncond: list[int], rows: int) -> InjectingCall:
        per = rows_per_chunk(rows, cond_or_uncond)
        branches = self.features.branches
        return InjectingCall(self, tuple(branch_of(c, branches) for c in cond_or_uncond for _ in range(per)))


def check_plan_fits(plan: InjectionPlan, recorded_steps: tuple[int, int]) -> None:
    """The bank holds every step ``plan`` injects (``recorded_steps``: its ResBlock and attention step counts)."""
    if plan.feature_steps > recorded_steps[0] or plan.attention_steps > recorded_steps[1]:
        raise PnPInputError(
            f"The sampler injects ResBlock features for {plan.feature_steps} and attention for "
            f"{plan.attention_steps} of {plan.steps} steps, but the feature bank holds only "
            f"{recorded_steps[0]} and {recorded_steps[1]}. Raise feature_injection/attention_injection "
            f"on PnP Feature Bank (it records only what it is asked for) or lower them here."
        )


class Injector:
    """Replaces the target's tensors at the sites with the source's, below the thresholds.

    ``source``: a ``sources.FeatureSource`` (the bank's tensors, or a live
    source pass); ``strength`` and ``mask`` make a ``Blend``.
    """

    def __init__(self, sites: LayerSites, source, plan: InjectionPlan, recorded_steps: tuple[int, int],
                 strength: float = 1.0, mask: torch.Tensor | None = None):
        check_plan_fits(plan, recorded_steps)
        self.sites = sites
        self.source = source
        self.plan = plan
        self.blend = Blend(strength, mask)
        self._row_indices: dict = {}

    def injects_at(self, step: int | None) -> bool:
        if step is None or self.blend.strength == 0.0:
            return False
        return any(self.plan.injects(kind, step) for kind in self.sites.kinds)

    def step_context(self, steps: list[int | None], evaluation) -> InjectingStep | None:
        """The context of one sampling evaluation whose rows are at ``steps``, or None if it injects nothing."""
        step = steps[0]
        if any(s != step for s in steps) or not self.injects_at(step):
            return None
        injects = {kind.name: self.plan.injects(kind, step) for kind in self.sites.kinds}
        return InjectingStep(step, self.source.features_at(step, evaluation), injects, self.blend,
                             self._row_indices)


class RecordingCall:
    """One source UNet call: per row, the (step, branch) it records, or None."""

    def __init__(self, recorder: "Recorder", rows: tuple[tuple[int, int] | None, ...]):
        self.recorder = recorder
        self.rows = rows

    def at(self, kind: SiteKind, site, tensor: torch.Tensor, spatial) -> torch.Tensor:
        """Keep each recorded row of ``tensor`` at ``site`` of ``kind``; the tensor goes on unchanged."""
        store = self.recorder.stores.get(kind.name, {}).get(site)
        self.recorder.keep(store, tensor, self.rows, self.recorder.steps_of[kind.name])
        return tensor


@dataclass(frozen=True)
class RecordingStep:
    """A source evaluation whose rows are at ``steps`` (one per row of x; None = not recorded)."""

    recorder: "Recorder"
    steps: tuple[int | None, ...]

    def plan_call(self, cond_or_uncond: list[int], rows: int) -> RecordingCall:
        per = rows_per_chunk(rows, cond_or_uncond)
        branches = self.recorder.branches
        keys = tuple((self.steps[r % per], branch_of(cond_or_uncond[r // per], branches))
                     if self.steps[r % per] is not None else None for r in range(rows))
        return RecordingCall(self.recorder, keys)


class Recorder:
    """Collects source tensors at the sites for the leading steps of a trajectory.

    ``branches``: ``bank.SOURCE_SINGLE`` (every row is the one source pass) or
    ``bank.SOURCE_CFG`` (a guidance image generated under CFG: its uncond and
    cond rows are kept apart). Kept tensors go to ``storage_device`` in
    ``storage_dtype`` (None: where and as they were computed).
    """

    def __init__(self, sites: LayerSites, feature_steps: int, attention_steps: int, branches: tuple[str, ...],
                 storage_device: torch.device | None = None, storage_dtype: torch.dtype | None = None):
        self.sites = sites
        self.feature_steps = feature_steps
        self.attention_steps = attention_steps
        self.branches = branches
        self.storage_device = storage_device
        self.storage_dtype = storage_dtype
        # Per kind name: the leading steps recorded, and per site its rows by (step, branch).
        self.steps_of = {kind.name: kind.steps(feature_steps, attention_steps) for kind in sites.kinds}
        self.stores: dict[str, dict[object, dict[tuple[int, int], torch.Tensor]]] = {
            kind.name: {site: {} for site in kind_sites} for kind, kind_sites in sites.items()}

    def step_context(self, steps: list[int | None], evaluation) -> RecordingStep | None:
        limit = max(self.feature_steps, self.attention_steps)
        kept = tuple(s if s is not None and s < limit else None for s in steps)
        return RecordingStep(self, kept) if any(s is not None for s in kept) else None

    def keep(self, store: dict | None, tensor: torch.Tensor, rows, limit: int) -> None:
        if store is None:
            return
        for r, key in enumerate(rows):
            if key is not None and key[0] < limit:
                store[key] = tensor[r].to(device=self.storage_device, dtype=self.storage_dtype, copy=True)

    def build(self) -> dict[str, dict[object, torch.Tensor]]:
        """Stack what was kept into (steps, branches, ...) tensors, per kind and site (a kind recorded for no
        step has none); every slot must be filled."""
        def stack(store: dict, steps: int, name: str) -> torch.Tensor:
            wanted = [(s, b) for s in range(steps) for b in range(len(self.branches))]
            missing = [k for k in wanted if k not in store]
            if missing:
                raise RuntimeError(f"recording of {name} is missing steps/branches {missing[:4]}")
            return torch.stack([torch.stack([store[(s, b)] for b in range(len(self.branches))])
                                for s in range(steps)])

        return {kind.name: {site: stack(self.stores[kind.name][site], self.steps_of[kind.name],
                                        f"{kind.label} {kind.spec(site)}") for site in kind_sites}
                for kind, kind_sites in self.sites.items() if self.steps_of[kind.name]}

    def step_features(self, step: int) -> StepFeatures:
        """What was kept at one step (every branch), as a step's source features."""
        def at(store: dict) -> torch.Tensor:
            return torch.stack([store[(step, b)] for b in range(len(self.branches))])

        return StepFeatures({kind: {site: at(v) for site, v in store.items() if (step, 0) in v}
                             for kind, store in self.stores.items()}, self.branches)
