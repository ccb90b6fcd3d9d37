"""FLUX values nodes pass along (immutable): an inversion, and the feature bank recorded from it.

``FluxInversion``: the inversion's end point (t = 1) and the input of every model evaluation it made (latent and
time), keyed ``(interval j, second)``: j indexes [s[j+1], s[j]] of the schedule s (s[0] = 1 ... s[N] = 0),
``second`` tells the interval's midpoint evaluation from its first one (``families.flux.evaluation_key``). With the
inputs, V can be recorded again later at other blocks or steps, bit for bit what the inversion itself saw.

``FluxBank`` (mode "stored"): V keyed ``(j, second, block)``. Only the ``inject`` noisiest intervals are recorded,
and only at the chosen single-stream blocks: what the denoising pass reads, nothing more. Tensors are (1, heads,
text + image tokens, head_dim) in the bank's dtype on the device ComfyUI keeps intermediates on. A FireFlow editing
strategy (``edit``, ``families.flux.FluxEdit``) records the q, k and/or V it names instead, each times its ratio:
V under the same key, q and k under that key and their letter (``tensor_key``).

``FluxLiveBank`` (mode "on the fly", ``bank.ON_THE_FLY``): the same choice of blocks and steps with no V at all.
The denoising pass computes, just before each evaluation that injects, the V of the inversion's evaluation under
the same key (one model call on the stored input, source prompt, guidance 1), injects it and drops it: one
evaluation's V in memory at a time, at one model call per injected evaluation.

Memory (``families.flux.bank_bytes``): an evaluation's V at the chosen blocks is (text + image tokens) x hidden x
blocks x bytes an element (q and k the same again each, when the strategy records them); stored holds that for
every recorded evaluation (rf-solver 2 a step, fireflow and euler 1), on the fly for one at a time.

Pure: no ComfyUI imports.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar

import torch

from . import flow_solvers
from .bank import ON_THE_FLY, STORED
from .errors import PnPInputError
from .families import flux as flux_family

Key = tuple[int, bool, int]  # (interval j, second, block): V's key


def tensor_key(interval: int, second: bool, block: int, which: str = "v") -> tuple:
    """The bank key of ``which`` ("q", "k" or "v") at an evaluation and block: V under (j, second, block), as every
    bank of the default strategy holds it; q and k under that key and their letter."""
    return (interval, second, block) if which == "v" else (interval, second, block, which)


@dataclass(frozen=True)
class FluxInversion:
    variant: str  # ComfyUI model_config class name ("Flux", "FluxSchnell")
    fingerprint: str  # hash of a few base weights: the inversion belongs to this model
    solver: str  # flow_solvers name: the inversion's, and the denoising pass's
    times: tuple[float, ...]  # the schedule, s[0] = 1 ... s[N] = 0
    inverted: torch.Tensor  # (1, C, H, W) float32 on the CPU: the end point (t = 1), model space
    inputs: Mapping[tuple[int, bool], tuple[torch.Tensor, float]]  # read-only: (latent, time) of each evaluation

    def __post_init__(self):
        object.__setattr__(self, "inputs", MappingProxyType(dict(self.inputs)))

    @property
    def steps(self) -> int:
        return len(self.times) - 1

    @property
    def image_tokens(self) -> int:
        return flux_family.image_tokens(tuple(self.inverted.shape[-2:]))

    def check_model(self, variant: str, fingerprint: str, what: str = "inversion") -> None:
        if (variant, fingerprint) != (self.variant, self.fingerprint):
            raise PnPInputError(
                f"This FLUX {what} was made with another model ({self.variant}); connect the MODEL the inversion "
                f"used (LoRAs may differ; the base weights must not)."
            )


def denoising_evaluations(solver: str, steps: int) -> tuple[tuple[int, bool], ...]:
    """The keys ``(j, second)`` a denoising pass of ``solver`` evaluates, in order: rf-solver both evaluations of
    every step, fireflow the first only in step 0 (later steps reuse the previous midpoint) and every midpoint,
    euler the first of every step."""
    first, second = flux_family.FIRST, flux_family.SECOND
    if solver == flow_solvers.RF_SOLVER:
        return tuple((j, e) for j in range(steps) for e in (first, second))
    if solver == flow_solvers.FIREFLOW:
        return ((0, first),) + tuple((j, second) for j in range(steps))
    return tuple((j, first) for j in range(steps))


def _dtype_name(dtype: torch.dtype | None) -> str:
    return "-" if dtype is None else str(dtype).removeprefix("torch.")


class _OfInversion:
    """What both FLUX banks read from their inversion: its schedule, solver, end point and model."""

    inversion: FluxInversion

    @property
    def times(self) -> tuple[float, ...]:
        return self.inversion.times

    @property
    def solver(self) -> str:
        return self.inversion.solver

    @property
    def inverted(self) -> torch.Tensor:
        return self.inversion.inverted

    @property
    def steps(self) -> int:
        return self.inversion.steps

    def check_model(self, variant: str, fingerprint: str) -> None:
        self.inversion.check_model(variant, fingerprint, "bank")


@dataclass(frozen=True)
class FluxBank(_OfInversion):
    mode: ClassVar[str] = STORED
    inversion: FluxInversion
    blocks: tuple[int, ...]  # single-stream blocks recorded
    inject: int  # intervals 0 .. inject-1 recorded (the first ``inject`` denoising steps)
    values: Mapping[tuple, torch.Tensor]  # read-only, keyed by ``tensor_key``
    source_tokens: int  # text tokens of the source conditioning
    edit: flux_family.FluxEdit = flux_family.FluxEdit()  # what was recorded, and how sampling uses it

    def __post_init__(self):
        object.__setattr__(self, "values", MappingProxyType(dict(self.values)))

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.values.values())

    def value(self, interval: int, second: bool, block: int, which: str = "v") -> torch.Tensor | None:
        """The ``which`` ("q", "k", "v") recorded under the key, or None (nothing recorded there: the target keeps
        its own)."""
        return self.values.get(tensor_key(interval, second, block, which))

    def summary(self) -> str:
        """What the bank holds, as a node shows it: mode, steps, blocks, evaluations, strategy, tensors, bytes."""
        evaluations = len({key[:2] for key in self.values})
        dtype = _dtype_name(next(iter(self.values.values())).dtype) if self.values else "-"
        return (f"FLUX, stored: {self.solver} {self.steps} steps, inject {self.inject}, {len(self.blocks)} single "
                f"blocks, {evaluations} evaluations, {self.edit.describe()}: {len(self.values)} tensors "
                f"({self.edit.tensors()}), {self.nbytes / 1e6:.1f} MB {dtype}")


@dataclass(frozen=True)
class FluxLiveBank(_OfInversion):
    """A FLUX bank "on the fly": the inversion, the blocks and steps to inject, the source conditioning and the
    dtype V is held in while sampling; no V. ``flux_sampling.sample`` recomputes each injected evaluation's V
    just before the denoising evaluation that reads it (``source_keys``) and drops it after."""

    mode: ClassVar[str] = ON_THE_FLY
    inversion: FluxInversion
    blocks: tuple[int, ...]  # single-stream blocks injected
    inject: int  # intervals 0 .. inject-1 injected (the first ``inject`` denoising steps)
    conditioning: Any = field(compare=False, repr=False)  # the source prompt (ComfyUI CONDITIONING), as given
    storage_dtype: torch.dtype  # V's dtype between its source call and its injection (as a stored bank's)
    source_tokens: int  # text tokens of the source conditioning
    hidden_size: int  # the transformer's width: heads x head_dim, the size of one token's V
    edit: flux_family.FluxEdit = flux_family.FluxEdit()  # what each source call records, and how sampling uses it

    @property
    def values(self) -> Mapping[tuple, torch.Tensor]:
        return MappingProxyType({})

    @property
    def nbytes(self) -> int:
        """Bytes the bank holds: none."""
        return 0

    def value(self, interval: int, second: bool, block: int, which: str = "v") -> None:
        return None

    @property
    def source_keys(self) -> tuple[tuple[int, bool], ...]:
        """The evaluations ``(j, second)`` whose V the denoising pass computes (one model call each), in order:
        those it evaluates in the first ``inject`` intervals that the inversion evaluated too."""
        if not self.blocks:
            return ()
        return tuple(key for key in denoising_evaluations(self.solver, self.steps)
                     if key[0] < self.inject and key in self.inversion.inputs)

    @property
    def evaluation_nbytes(self) -> int:
        """Bytes of one evaluation's recorded tensors (V; q, k too if the strategy names them) at the chosen blocks:
        what the denoising pass holds at most."""
        tokens = self.source_tokens + self.inversion.image_tokens
        element = torch.empty((), dtype=self.storage_dtype).element_size()
        return len(self.edit.recorded) * flux_family.bank_bytes(tokens, self.hidden_size, len(self.blocks), 1, 1,
                                                                element)

    @property
    def peak_nbytes(self) -> int:
        """Bytes held at once while sampling: one evaluation's tensors, or none when nothing is injected."""
        return self.evaluation_nbytes if self.source_keys else 0

    @property
    def stored_nbytes(self) -> int:
        """Bytes the same bank would hold in mode "stored" (``flux_sampling.record_bank``)."""
        recorded = [key for key in self.inversion.inputs if key[0] < self.inject] if self.blocks else []
        return len(recorded) * self.evaluation_nbytes

    def summary(self) -> str:
        """What the bank holds, as a node shows it: nothing stored, the peak while sampling and the extra calls."""
        return (f"FLUX, on the fly: {self.solver} {self.steps} steps, inject {self.inject}, {len(self.blocks)} "
                f"single blocks, {self.edit.describe()}: nothing stored; sampling holds one evaluation's "
                f"{self.edit.tensors()} at a time "
                f"({self.peak_nbytes / 1e6:.1f} MB {_dtype_name(self.storage_dtype)}, stored would be "
                f"{self.stored_nbytes / 1e6:.1f} MB) for {len(self.source_keys)} extra model calls")
