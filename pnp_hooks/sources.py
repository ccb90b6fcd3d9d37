"""Where the injected tensors come from: the interface, and the stored source (pure torch).

A ``FeatureSource`` gives, for one sampling step, the guidance image's
tensors at every site (``injection.StepFeatures``). The injector asks for them
once per injecting step and never knows which kind of source it has:

- ``StoredSource`` (here): the tensors recorded by PnP Feature Bank's source
  pass, ResBlock ``resblock[b]`` (steps, branches, C, h, w) and attention
  ``attention[(b, j)]`` (steps, branches, h*w, C), kept on ComfyUI's
  intermediate device; a step's slice moves to the UNet's device where used.
- ``live_source.LiveSource``: nothing stored; the source pass runs for the
  step in its own UNet call just before the target's (on-the-fly mode).
"""
from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping, Protocol

import torch

from .bank import STORED
from .injection import StepFeatures


class FeatureSource(Protocol):
    """One step's source tensors on demand. ``evaluation``: the sampler's current UNet evaluation
    (``patcher.Evaluation``), which a live source uses to run its pass; a stored one ignores it."""

    mode: str  # a name of ``bank.BANK_MODES``
    resblock: Mapping[int, torch.Tensor]  # what is stored, per site (empty when nothing is)
    attention: Mapping[tuple[int, int], torch.Tensor]

    @property
    def nbytes(self) -> int: ...

    def features_at(self, step: int, evaluation) -> StepFeatures: ...

    def guider_conds(self) -> dict: ...


@dataclass(frozen=True)
class StoredSource:
    """The tensors PnP Feature Bank recorded, for the leading steps; read-only."""

    resblock: Mapping[int, torch.Tensor]
    attention: Mapping[tuple[int, int], torch.Tensor]
    branches: tuple[str, ...]
    mode: str = STORED

    def __post_init__(self):
        object.__setattr__(self, "resblock", MappingProxyType(dict(self.resblock)))
        object.__setattr__(self, "attention", MappingProxyType(dict(self.attention)))

    @property
    def nbytes(self) -> int:
        tensors = list(self.resblock.values()) + list(self.attention.values())
        return sum(t.numel() * t.element_size() for t in tensors)

    def features_at(self, step: int, evaluation=None) -> StepFeatures:
        return StepFeatures({b: t[step] for b, t in self.resblock.items() if step < t.shape[0]},
                            {s: t[step] for s, t in self.attention.items() if step < t.shape[0]}, self.branches)

    def guider_conds(self) -> dict:
        """Extra conditionings the sampler's guider carries for this source: none."""
        return {}
