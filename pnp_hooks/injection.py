"""Recording and injecting PnP tensors at the UNet sites (pure torch, no ComfyUI).

One UNet call carries a batch of rows: ComfyUI concatenates guidance branches
("chunks", listed in ``cond_or_uncond``), each chunk holding the same number of
rows. The patch layer (``patcher``) turns each call's ``timesteps`` and
``cond_or_uncond`` into a plan, then calls these objects at every site:

- ResBlock site ``b``: ``h`` = output of ``output_blocks[b][0].out_layers``,
  (rows, C, h, w), before the skip add.
- Attention site ``(b, j)``: ``n`` = input of that transformer's ``attn1``
  after norm1, (rows, h*w, C). Injecting ``n`` as the q and k input (v keeps
  the target's own ``n``) is exactly pnp-diffusers' q/k replacement, since
  q and k are linear projections of it.

Two source providers:
- stored (a bank): the source tensors were recorded beforehand; the step's
  slice is moved to the UNet's device and dtype where it is used;
- live (an on-the-fly bank): the source pass runs in the same UNet call as
  the target, as extra rows whose chunk is ``SOURCE_CHUNK`` in
  ``cond_or_uncond`` (pnp-diffusers' batch [source, uncond, cond]); each
  target row takes the tensors of the source row of its call.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .bank import SOURCE_CFG, SOURCE_SINGLE, FeatureBank
from .errors import PnPInputError
from .layers import LayerSites
from .schedule import InjectionPlan

# Indices of the conditionings the PnP guider hands to ComfyUI's calc_cond_batch
# (ComfyUI's own convention: 0 = cond, 1 = uncond).
TARGET_COND = 0
TARGET_UNCOND = 1
TARGET_NEGATIVE = 2  # the original paper's negative prompt (a description of the source)

_TARGET_BRANCH = {TARGET_COND: "cond", TARGET_UNCOND: "uncond", TARGET_NEGATIVE: "uncond"}

# cond_or_uncond entry of the live source rows that the on-the-fly mode prepends to a target call.
# Not an index of the guider's conds: code that picks cond (0) / uncond (1) rows leaves them alone.
SOURCE_CHUNK = -1


def rows_per_chunk(batch: int, cond_or_uncond: list[int]) -> int:
    if not cond_or_uncond or batch % len(cond_or_uncond):
        raise RuntimeError(f"batch of {batch} rows does not split into chunks {cond_or_uncond}")
    return batch // len(cond_or_uncond)


@dataclass(frozen=True)
class InjectCall:
    """One UNet call of the target: its step and, per row, where its source comes from.

    Stored bank: ``row_sources[r]`` is the bank branch feeding row ``r``. Live
    source (``live``): it is the row of this call holding row ``r``'s source
    (a source row points at itself, so it keeps its own tensors).
    """

    step: int
    row_sources: tuple[int, ...]
    features: bool
    attention: bool
    live: bool = False


class Injector:
    """Replaces the target's tensors at the sites with the bank's, below the thresholds.

    ``strength`` blends target and source (1 = the paper's replacement);
    ``mask`` (1, H, W) in [0, 1] restricts injection spatially (1 = inject).
    """

    def __init__(self, bank: FeatureBank, plan: InjectionPlan, strength: float = 1.0,
                 mask: torch.Tensor | None = None):
        if plan.feature_steps > bank.feature_steps or plan.attention_steps > bank.attention_steps:
            raise PnPInputError(
                f"The sampler injects ResBlock features for {plan.feature_steps} and attention for "
                f"{plan.attention_steps} of {plan.steps} steps, but the feature bank holds only "
                f"{bank.feature_steps} and {bank.attention_steps}. Raise feature_injection/attention_injection "
                f"on PnP Feature Bank (it records only what it is asked for) or lower them here."
            )
        self.bank = bank
        self.plan = plan
        self.strength = float(strength)
        self.mask = mask
        self._step_of = {t: i for i, t in enumerate(bank.trajectory.timesteps)}
        self._weights: dict[tuple, torch.Tensor] = {}
        self._row_indices: dict[tuple, torch.Tensor] = {}

    @property
    def sites(self) -> LayerSites:
        return self.bank.sites

    @property
    def live(self) -> bool:
        """True when the source pass runs in the target's UNet calls (an on-the-fly bank)."""
        return self.bank.on_the_fly

    def step_of(self, timestep: int) -> int | None:
        return self._step_of.get(int(round(timestep)))

    def injects_at(self, step: int | None) -> bool:
        if step is None or self.strength == 0.0:
            return False
        return self.plan.injects_features(step) or self.plan.injects_attention(step)

    def plan_call(self, timesteps: list[int], cond_or_uncond: list[int]) -> InjectCall | None:
        step = self.step_of(timesteps[0])
        if any(int(round(t)) != int(round(timesteps[0])) for t in timesteps) or not self.injects_at(step):
            return None
        features = self.plan.injects_features(step)
        attention = self.plan.injects_attention(step)
        per = rows_per_chunk(len(timesteps), cond_or_uncond)
        if self.live:
            if SOURCE_CHUNK not in cond_or_uncond:
                raise RuntimeError(f"on-the-fly PnP call at step {step} carries no source rows ({cond_or_uncond})")
            first = cond_or_uncond.index(SOURCE_CHUNK) * per
            return InjectCall(step, tuple(first + r % per for r in range(len(timesteps))), features, attention,
                              live=True)
        branches = tuple(
            self.bank.branch_index(_TARGET_BRANCH.get(c, "uncond")) for c in cond_or_uncond for _ in range(per)
        )
        return InjectCall(step, branches, features, attention)

    def resblock(self, block: int, h: torch.Tensor, call: InjectCall) -> torch.Tensor:
        if not call.features or block not in self.sites.resblocks:
            return h
        source = self._source(self.bank.resblock.get(block), h, call)
        return self._blend(h, source, h.shape[-2:], spatial_dims=2)

    def attention(self, site: tuple[int, int], n: torch.Tensor, spatial: tuple[int, int],
                  call: InjectCall) -> torch.Tensor:
        if not call.attention or site not in self.sites.attention:
            return n
        source = self._source(self.bank.attention.get(site), n, call)
        return self._blend(n, source, spatial, spatial_dims=1)

    def _source(self, stored: torch.Tensor | None, like: torch.Tensor, call: InjectCall) -> torch.Tensor:
        """Per row of ``like``, its source tensor: from this call's source rows, or the bank's step slice."""
        index = self._row_index(call.row_sources, like.device)
        if call.live:
            return like.index_select(0, index)
        return stored[call.step].to(device=like.device, dtype=like.dtype).index_select(0, index)

    def _row_index(self, row_sources: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """``row_sources`` as an index tensor on ``device``, made once (the sites run per layer per step)."""
        key = (row_sources, device)
        if key not in self._row_indices:
            self._row_indices[key] = torch.tensor(row_sources, device=device)
        return self._row_indices[key]

    def _blend(self, target: torch.Tensor, source: torch.Tensor, spatial, spatial_dims: int) -> torch.Tensor:
        if self.mask is None and self.strength == 1.0:
            return source
        weight = self._weight(tuple(spatial), spatial_dims, target)
        # lerp is exact at both ends: weight 1 gives the source, weight 0 the target; a live source row
        # blended with itself stays exactly itself.
        return torch.lerp(target, source, weight)

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


def mask_at_resolution(mask: torch.Tensor, spatial: tuple[int, int]) -> torch.Tensor:
    """Resize a (1, H, W) mask to a layer's (h, w) by area averaging; returns (1, h, w)."""
    m = mask.float().unsqueeze(1)
    if tuple(m.shape[-2:]) != tuple(spatial):
        m = F.interpolate(m, size=spatial, mode="area" if m.shape[-1] >= spatial[1] else "bilinear")
    return m.squeeze(1).clamp(0.0, 1.0)


@dataclass(frozen=True)
class RecordCall:
    """One UNet call of the source: per row, (step, branch) to keep, or None."""

    rows: tuple[tuple[int, int] | None, ...]
    features: bool
    attention: bool


class Recorder:
    """Collects source tensors at the sites for the leading steps of a trajectory.

    ``cfg_branches``: the source runs under CFG (a generated guidance image),
    so its uncond and cond rows are kept as two branches; otherwise every row
    is the single source pass.
    """

    def __init__(self, timesteps: tuple[int, ...], sites: LayerSites, feature_steps: int, attention_steps: int,
                 storage_device: torch.device, storage_dtype: torch.dtype, cfg_branches: bool = False):
        self.sites = sites
        self.feature_steps = feature_steps
        self.attention_steps = attention_steps
        self.storage_device = storage_device
        self.storage_dtype = storage_dtype
        self.branches = SOURCE_CFG if cfg_branches else SOURCE_SINGLE
        self._step_of = {t: i for i, t in enumerate(timesteps)}
        self._resblock: dict[int, dict[tuple[int, int], torch.Tensor]] = {b: {} for b in sites.resblocks}
        self._attention: dict[tuple[int, int], dict[tuple[int, int], torch.Tensor]] = {s: {} for s in sites.attention}

    def _branch(self, chunk: int) -> int:
        if len(self.branches) == 1:
            return 0
        return self.branches.index("cond" if chunk == TARGET_COND else "uncond")

    def plan_call(self, timesteps: list[int], cond_or_uncond: list[int]) -> RecordCall | None:
        per = rows_per_chunk(len(timesteps), cond_or_uncond)
        rows = []
        for r, t in enumerate(timesteps):
            step = self._step_of.get(int(round(t)))
            keep = step is not None and (step < self.feature_steps or step < self.attention_steps)
            rows.append((step, self._branch(cond_or_uncond[r // per])) if keep else None)
        if all(r is None for r in rows):
            return None
        steps = [r[0] for r in rows if r is not None]
        return RecordCall(tuple(rows), any(s < self.feature_steps for s in steps),
                          any(s < self.attention_steps for s in steps))

    def resblock(self, block: int, h: torch.Tensor, call: RecordCall) -> torch.Tensor:
        if call.features and block in self._resblock:
            self._keep(self._resblock[block], h, call, self.feature_steps)
        return h

    def attention(self, site: tuple[int, int], n: torch.Tensor, spatial, call: RecordCall) -> torch.Tensor:
        if call.attention and site in self._attention:
            self._keep(self._attention[site], n, call, self.attention_steps)
        return n

    def _keep(self, store: dict, tensor: torch.Tensor, call: RecordCall, limit: int) -> None:
        for r, key in enumerate(call.rows):
            if key is not None and key[0] < limit:
                store[key] = tensor[r].to(device=self.storage_device, dtype=self.storage_dtype, copy=True)

    def build(self) -> tuple[dict[int, torch.Tensor], dict[tuple[int, int], torch.Tensor]]:
        """Stack what was kept into (steps, branches, ...) tensors; every slot must be filled."""
        def stack(store: dict, steps: int, name: str) -> torch.Tensor:
            wanted = [(s, b) for s in range(steps) for b in range(len(self.branches))]
            missing = [k for k in wanted if k not in store]
            if missing:
                raise RuntimeError(f"recording of {name} is missing steps/branches {missing[:4]}")
            return torch.stack([torch.stack([store[(s, b)] for b in range(len(self.branches))])
                                for s in range(steps)])

        resblock = {b: stack(v, self.feature_steps, f"ResBlock {b}")
                    for b, v in self._resblock.items() if self.feature_steps}
        attention = {s: stack(v, self.attention_steps, f"attention {s}")
                     for s, v in self._attention.items() if self.attention_steps}
        return resblock, attention


def control_with_source_rows(control: dict | None, source_rows: int, target_rows: int) -> dict | None:
    """ControlNet residuals for a call whose ``source_rows`` live source rows come first.

    ``control`` maps "input"/"middle"/"output" to lists of (target_rows, C, h, w)
    tensors (or None); the source rows get zero residuals (the source pass is
    never controlled), so ``h + 0`` leaves them exactly as recorded.
    """
    if control is None:
        return None
    out = {}
    for key, values in control.items():
        if not isinstance(values, (list, tuple)):
            out[key] = values
            continue
        padded = []
        for v in values:
            if isinstance(v, torch.Tensor):
                if v.shape[0] != target_rows:
                    raise RuntimeError(f"control residual {key} has {v.shape[0]} rows for {target_rows} target rows")
                v = torch.cat([v.new_zeros((source_rows,) + tuple(v.shape[1:])), v])
            padded.append(v)
        out[key] = padded
    return out
