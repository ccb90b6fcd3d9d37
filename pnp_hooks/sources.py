"""Where the injected tensors come from: the interface, and the stored source (pure torch).

A ``FeatureSource`` gives, for one sampling step, the guidance image's
tensors at every site (``injection.StepFeatures``). The injector asks for them
once per injecting step and never knows which kind of source it has:

- ``StoredSource`` (here): the tensors recorded by PnP Feature Bank's source
  pass, per kind and site ``stored[kind][site]`` (steps, branches, *row shape;
  in the UNet ``stored["resblock"][b]`` (steps, branches, C, h, w) and
  ``stored["attention"][(b, j)]`` (steps, branches, h*w, C)), kept on ComfyUI's
  intermediate device; a step's slice moves to the UNet's device where used.
- ``live_source.LiveSource``: nothing stored; the source pass runs for the
  step in its own UNet call just before the target's (on-the-fly mode).

A bank of several guidance images (frames) has a ``FrameSources``: one of
those per frame, made with the bank or, one frame at a time, when the frame is
translated.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping, Protocol

import torch

from .bank import ON_THE_FLY, STORED
from .injection import SiteTensors, StepFeatures


class FeatureSource(Protocol):
    """One step's source tensors on demand. ``evaluation``: the sampler's current UNet evaluation
    (``patcher.Evaluation``), which a live source uses to run its pass; a stored one ignores it."""

    mode: str  # a name of ``bank.BANK_MODES``
    stored: SiteTensors  # what is stored, per kind and site (empty when nothing is)

    @property
    def nbytes(self) -> int: ...

    def features_at(self, step: int, evaluation) -> StepFeatures: ...

    def guider_conds(self) -> dict: ...


@dataclass(frozen=True)
class StoredSource:
    """The tensors PnP Feature Bank recorded, for the leading steps; read-only."""

    stored: SiteTensors
    branches: tuple[str, ...]
    mode: str = STORED

    def __post_init__(self):
        object.__setattr__(self, "stored", MappingProxyType(
            {kind: MappingProxyType(dict(tensors)) for kind, tensors in self.stored.items()}))

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for tensors in self.stored.values() for t in tensors.values())

    def features_at(self, step: int, evaluation=None) -> StepFeatures:
        return StepFeatures({kind: {site: t[step] for site, t in tensors.items() if step < t.shape[0]}
                             for kind, tensors in self.stored.items()}, self.branches)

    def guider_conds(self) -> dict:
        """Extra conditionings the sampler's guider carries for this source: none."""
        return {}


# What a stored bank of frames keeps in memory: one frame's tensors at a time (recorded when the frame is
# translated), or every frame's (recorded with the bank).
ONE_FRAME, ALL_FRAMES = "one frame at a time", "all frames"
BATCH_MEMORY = (ONE_FRAME, ALL_FRAMES)
_NOTHING: Mapping = MappingProxyType({})


@dataclass(frozen=True)
class FrameSources:
    """The sources of a bank of several guidance images, one ``FeatureSource`` per frame.

    ``held``: every frame's source, made with the bank: ``LiveSource``s on the
    fly (nothing stored), or ``StoredSource``s with ``ALL_FRAMES`` (every frame's
    tensors in memory). ``record``: frame index -> that frame's ``StoredSource``,
    recorded when the frame is translated and dropped with it (``ONE_FRAME``: one
    frame's tensors in memory at a time).
    """

    mode: str
    count: int
    held: tuple = ()
    record: Callable[..., Any] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        if (self.record is None) == (len(self.held) != self.count):
            raise ValueError("FrameSources needs a source for every frame, or a way to record each")

    @property
    def deferred(self) -> bool:
        """Whether frames are recorded when they are translated."""
        return self.record is not None

    @property
    def stored(self) -> SiteTensors:
        return _NOTHING  # per frame: ``frame_source(i)``

    @property
    def nbytes(self) -> int:
        return sum(source.nbytes for source in self.held)

    def frame_source(self, index: int, **record_options):
        """Frame ``index``'s source; recorded now (``record_options`` go to ``record``) when the bank defers it."""
        if self.record is not None:
            return self.record(index, **record_options)
        return self.held[index]

    def describe(self) -> str:
        if self.mode == ON_THE_FLY:
            return "each frame's source pass on the fly"
        if self.deferred:
            return "each frame recorded when it is translated, one frame's tensors in memory at a time"
        return "every frame recorded"
