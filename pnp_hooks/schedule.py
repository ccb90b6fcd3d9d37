"""What users choose about steps, whatever the model family: injection thresholds, negative-prompt schedules.

Pure Python/torch, no ComfyUI. A step is an index into a pass's sampling steps
(0 = the first, noisiest); inside sampling it is found from the sigma ComfyUI
passes (``steps_of_sigmas``). Which timesteps and sigmas the steps are is the
model family's (its schedule: ``families.vp_schedule`` for the UNet family).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .errors import PnPInputError

THRESHOLD_CONVENTIONS = ("pnp-diffusers", "original")
NEGATIVE_SCHEDULES = ("constant", "linear", "exp")


def steps_of_sigmas(step_sigmas: torch.Tensor, sigmas: torch.Tensor) -> list[int | None]:
    """The sampling step of each sigma: its index in ``step_sigmas`` (the steps' sigmas), or None.

    The one step lookup of the pack: ComfyUI hands every model call the sigma
    of its rows (the sampler's own float32 values, so a match is exact; a
    relative 1e-4 allows a device round trip). A sigma that is no step's (the
    final one of a schedule) gives None.
    """
    table = step_sigmas.detach().to(device="cpu", dtype=torch.float64)
    steps = []
    for sigma in sigmas.detach().to(device="cpu", dtype=torch.float64).flatten().tolist():
        i = int(torch.argmin((table - sigma).abs()))
        steps.append(i if abs(float(table[i]) - sigma) <= 1e-4 * max(sigma, 1e-8) else None)
    return steps


def injection_step_count(steps: int, threshold: float, convention: str = "pnp-diffusers") -> int:
    """How many leading sampling steps inject, for a threshold given as a fraction of steps.

    pnp-diffusers injects while ``i < int(steps * threshold)``; the original code
    compares ``i <= int(threshold_steps)``, one step more (capped at ``steps``).
    """
    check_fraction("threshold", threshold)
    if convention == "pnp-diffusers":
        return int(steps * threshold)
    if convention == "original":
        return min(steps, int(steps * threshold) + 1)
    raise PnPInputError(f"threshold convention must be one of {THRESHOLD_CONVENTIONS}, got {convention!r}.")


def recorded_steps(steps: int, feature_injection: float, attention_injection: float) -> tuple[int, int]:
    """Leading steps a bank records for the largest thresholds a sampler may use (either convention)."""
    return (injection_step_count(steps, feature_injection, "original") if feature_injection else 0,
            injection_step_count(steps, attention_injection, "original") if attention_injection else 0)


def negative_prompt_alphas(steps: int, schedule: str, alpha: float) -> list[float]:
    """Per-step weight of the plain uncond in the original's negative prompting.

    ``e_tilde = a_i * e(uncond) + (1 - a_i) * e(negative)``; schedules as in the
    original's ``make_negative_prompt_schedule``, times ``alpha``.
    """
    check_fraction("negative_alpha", alpha)
    if schedule == "constant":
        base = np.ones(steps)
    elif schedule == "linear":
        base = np.flip(np.linspace(0, 1, steps))
    elif schedule == "exp":
        base = np.exp(-6 * np.linspace(0, 1, steps))
    else:
        raise PnPInputError(f"negative_schedule must be one of {NEGATIVE_SCHEDULES}, got {schedule!r}.")
    return (base * alpha).tolist()


def check_fraction(name: str, value: float) -> None:
    if not (0.0 <= value <= 1.0) or math.isnan(value):
        raise PnPInputError(f"{name} must be a fraction of the steps between 0 and 1, got {value}.")


@dataclass(frozen=True)
class InjectionPlan:
    """Which leading steps inject, per threshold: ResBlock features (``feature_steps``) and self-attention q/k
    (``attention_steps``); a kind of site follows its own threshold (``SiteKind.threshold``)."""

    steps: int
    feature_steps: int
    attention_steps: int

    @classmethod
    def from_thresholds(cls, steps: int, feature_injection: float, attention_injection: float,
                        convention: str = "pnp-diffusers") -> "InjectionPlan":
        return cls(steps, injection_step_count(steps, feature_injection, convention),
                   injection_step_count(steps, attention_injection, convention))

    def injects(self, kind, step: int) -> bool:
        """Whether ``step`` injects the sites of ``kind`` (a ``families.SiteKind``)."""
        return step < kind.steps(self.feature_steps, self.attention_steps)

    def injects_features(self, step: int) -> bool:
        return step < self.feature_steps

    def injects_attention(self, step: int) -> bool:
        return step < self.attention_steps

