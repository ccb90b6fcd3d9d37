"""FLUX values nodes pass along (immutable): an inversion, and the feature bank recorded from it.

``FluxInversion``: the inversion's end point (t = 1) and the input of every model evaluation it made (latent and
time), keyed ``(interval j, second)``: j indexes [s[j+1], s[j]] of the schedule s (s[0] = 1 ... s[N] = 0),
``second`` tells the interval's midpoint evaluation from its first one (``families.flux.evaluation_key``). With the
inputs, V can be recorded again later at other blocks or steps, bit for bit what the inversion itself saw.

``FluxBank``: V keyed ``(j, second, block)``. Only the ``inject`` noisiest intervals are recorded, and only at the
chosen single-stream blocks: what the denoising pass reads, nothing more. Tensors are (1, heads, text + image
tokens, head_dim) in the bank's dtype on the device ComfyUI keeps intermediates on.

Pure: no ComfyUI imports.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import torch

from .errors import PnPInputError

Key = tuple[int, bool, int]


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

    def check_model(self, variant: str, fingerprint: str, what: str = "inversion") -> None:
        if (variant, fingerprint) != (self.variant, self.fingerprint):
            raise PnPInputError(
                f"This FLUX {what} was made with another model ({self.variant}); connect the MODEL the inversion "
                f"used (LoRAs may differ; the base weights must not)."
            )


@dataclass(frozen=True)
class FluxBank:
    inversion: FluxInversion
    blocks: tuple[int, ...]  # single-stream blocks recorded
    inject: int  # intervals 0 .. inject-1 recorded (the first ``inject`` denoising steps)
    values: Mapping[Key, torch.Tensor]  # read-only
    source_tokens: int  # text tokens of the source conditioning

    def __post_init__(self):
        object.__setattr__(self, "values", MappingProxyType(dict(self.values)))

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

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.values.values())

    def value(self, interval: int, second: bool, block: int) -> torch.Tensor | None:
        """The V recorded under the key, or None (nothing recorded there: the target keeps its own)."""
        return self.values.get((interval, second, block))

    def check_model(self, variant: str, fingerprint: str) -> None:
        self.inversion.check_model(variant, fingerprint, "bank")
