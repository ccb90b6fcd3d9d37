"""The FLUX feature bank: an inverted latent and the V recorded while inverting it (an immutable node value).

Keys are ``(interval j, second, block)``: j indexes [s[j+1], s[j]] of the schedule s (s[0] = 1 ... s[N] = 0),
``second`` tells the interval's midpoint evaluation from its first one (``families.flux.evaluation_key``),
``block`` the single-stream block. Only the ``inject`` noisiest intervals are recorded, and only at the chosen
blocks: what the denoising pass reads, nothing more. Tensors are (1, heads, text + image tokens, head_dim) in
the bank's dtype on the device ComfyUI keeps intermediates on.

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
class FluxBank:
    variant: str  # ComfyUI model_config class name ("Flux", "FluxSchnell")
    fingerprint: str  # hash of a few base weights: the bank belongs to this model
    solver: str  # flow_solvers name: the inversion's, and the denoising pass's
    times: tuple[float, ...]  # the schedule, s[0] = 1 ... s[N] = 0
    blocks: tuple[int, ...]  # single-stream blocks recorded
    inject: int  # intervals 0 .. inject-1 recorded (the first ``inject`` denoising steps)
    inverted: torch.Tensor  # (1, C, H, W) float32 on the CPU: the inversion's end point (t = 1), model space
    values: Mapping[Key, torch.Tensor]  # read-only
    source_tokens: int  # text tokens of the source conditioning

    def __post_init__(self):
        object.__setattr__(self, "values", MappingProxyType(dict(self.values)))

    @property
    def steps(self) -> int:
        return len(self.times) - 1

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.values.values())

    def value(self, interval: int, second: bool, block: int) -> torch.Tensor | None:
        """The V recorded under the key, or None (nothing recorded there: the target keeps its own)."""
        return self.values.get((interval, second, block))

    def check_model(self, variant: str, fingerprint: str) -> None:
        if (variant, fingerprint) != (self.variant, self.fingerprint):
            raise PnPInputError(
                f"This FLUX bank was recorded with another model ({self.variant}); connect the MODEL the inversion "
                f"used (LoRAs may differ; the base weights must not)."
            )
