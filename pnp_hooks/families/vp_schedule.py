"""The UNet family's noise schedule: SD's discrete variance-preserving schedule, as ComfyUI samples it.

SD models are trained on 1000 timesteps t = 0..999 with alpha_bar(t). ComfyUI samples them in
variance-exploding space: x = z / sqrt(alpha_bar) (z the official, scaled VP latent; ``vp_scale``) at
sigma = sqrt((1 - alpha_bar) / alpha_bar) (``DiscreteVPSchedule.sigmas``, ComfyUI's ModelSamplingDiscrete
table). A deterministic DDIM step is then exactly an Euler step x' = x + (sigma' - sigma) * eps.

Timesteps of the official code:
- Sampling with N steps uses diffusers' DDIM "leading" spacing with offset 1:
  t_k = k * (1000 // N) + 1, descending (981, 961, ..., 1 for N = 50). The
  original (CompVis) code's ``make_ddim_timesteps('uniform')`` gives the same.
- Inversion with M steps uses the same rule ascending; every sampling timestep
  must be one of them (pnp-diffusers inverts with 999 steps: 1..999).

Pure: torch only, no ComfyUI (the table is read from the model_sampling object ComfyUI hands the family).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from ..errors import PnPInputError

NUM_TRAIN_TIMESTEPS = 1000


def ddim_timesteps(steps: int) -> list[int]:
    """Official DDIM timesteps for ``steps`` steps, descending (sampling order).

    ``t_k = k * (1000 // steps) + 1``; a timestep past 999 (only for 1000 steps)
    does not exist in SD's schedule and is dropped, so 1000 steps equal 999.
    """
    if not 1 <= steps <= NUM_TRAIN_TIMESTEPS:
        raise PnPInputError(f"steps must be between 1 and {NUM_TRAIN_TIMESTEPS}, got {steps}.")
    ratio = NUM_TRAIN_TIMESTEPS // steps
    ts = [k * ratio + 1 for k in range(steps)]
    return [t for t in reversed(ts) if t < NUM_TRAIN_TIMESTEPS]


def inversion_timesteps(sampling_steps: int, inversion_steps: int) -> list[int]:
    """Ascending inversion timesteps; they must contain every sampling timestep."""
    count = inversion_steps or sampling_steps
    ts = sorted(ddim_timesteps(count))
    missing = sorted(set(ddim_timesteps(sampling_steps)) - set(ts), reverse=True)
    if missing:
        counts = ", ".join(map(str, valid_inversion_counts(sampling_steps)[:6]))
        raise PnPInputError(
            f"inversion_steps={count} inverts through timesteps {_short(ts)}, which miss the "
            f"sampling timesteps {_short(missing)} of steps={sampling_steps}. Set inversion_steps to 0 "
            f"(same as steps), 999 (the officials' choice) or a count whose timesteps contain the "
            f"sampling ones (for steps={sampling_steps}: {counts}, ...)."
        )
    return ts


def valid_inversion_counts(sampling_steps: int) -> list[int]:
    wanted = set(ddim_timesteps(sampling_steps))
    return [m for m in range(sampling_steps, NUM_TRAIN_TIMESTEPS + 1) if wanted <= set(ddim_timesteps(m))]


def vp_scale(sigma):
    """sqrt(1 + sigma^2) = 1 / sqrt(alpha_bar) at ``sigma``: x = z * vp_scale, z = x / vp_scale (x in ComfyUI's
    sampling space, z the official variance-preserving latent). Floats and tensors alike."""
    return (1.0 + sigma ** 2) ** 0.5


@dataclass(frozen=True, eq=False)
class Inversion:
    """One DDIM inversion on the schedule: the official step count's timesteps and what the pass keeps.

    ``sigmas``: where the latent is, sigma(t=0) (the clean latent at alpha_bar(0): SD's schedulers do not set
    it to one) then each inversion timestep's, ascending. ``keep``: sigma index -> the sampling timestep
    whose latent lands there. ``next_label``: per timestep ComfyUI derives from a sigma of the pass, the
    timestep the model is labelled with (the next level's: the official inversion evaluates eps on the
    current latent, labelled with the next timestep).
    """

    sampling_timesteps: tuple[int, ...]
    timesteps: tuple[int, ...]
    sigmas: torch.Tensor
    keep: dict[int, int]
    next_label: dict[int, int]

    @property
    def steps(self) -> int:
        return len(self.timesteps)


@dataclass(frozen=True, eq=False)
class DiscreteVPSchedule:
    """What the core asks of a family's schedule: timesteps for a step count, their sigmas in ComfyUI's
    sampling space, moves between that space and the family's latent, the inversion step, and a digest that
    tells a changed schedule apart (``bank.ModelIdentity.schedule``)."""

    sigmas: torch.Tensor  # (1000,) float32 on the CPU: sigma of each training timestep

    @classmethod
    def of(cls, model_sampling) -> "DiscreteVPSchedule":
        """The schedule of a ComfyUI ``ModelSamplingDiscrete`` object (its table, copied to the CPU)."""
        return cls(model_sampling.sigmas.detach().float().cpu())

    @property
    def digest(self) -> str:
        """Hash of the sigma table (1000 float32 values): tells a changed noise schedule apart."""
        return hashlib.sha256(self.sigmas.contiguous().numpy().tobytes()).hexdigest()[:16]

    def sampling_timesteps(self, steps: int) -> list[int]:
        """The official sampling timesteps of ``steps`` steps, descending (``ddim_timesteps``)."""
        return ddim_timesteps(steps)

    def sigmas_at(self, timesteps) -> torch.Tensor:
        """(len,) float32 CPU sigmas of ``timesteps``."""
        return self.sigmas[torch.tensor(list(timesteps), dtype=torch.long)]

    @property
    def official_end(self) -> float:
        """The sigma both official codes end sampling at: sigma(t=0) (alpha_bar(0), not a clean latent)."""
        return float(self.sigmas[0])

    def inversion(self, sampling_steps: int, inversion_steps: int) -> Inversion:
        """The inversion through ``inversion_steps`` (0: ``sampling_steps``) timesteps that keeps the latent at
        every sampling timestep; raises PnPInputError when its timesteps miss a sampling one."""
        sampling_ts = ddim_timesteps(sampling_steps)
        inversion_ts = inversion_timesteps(sampling_steps, inversion_steps)
        levels = [0] + inversion_ts
        wanted = set(sampling_ts)
        keep = {i + 1: t for i, t in enumerate(inversion_ts) if t in wanted}
        return Inversion(tuple(sampling_ts), tuple(inversion_ts), self.sigmas_at(levels), keep,
                         dict(zip(levels[:-1], levels[1:])))

    @staticmethod
    def to_sampling(z: torch.Tensor, sigma) -> torch.Tensor:
        """The family's latent ``z`` (official VP scale) at ``sigma`` in ComfyUI's sampling space."""
        return z * vp_scale(sigma)

    @staticmethod
    def from_sampling(x: torch.Tensor, sigma) -> torch.Tensor:
        """ComfyUI's sampling-space ``x`` at ``sigma`` as the family's latent (official VP scale)."""
        return x / vp_scale(sigma)

    @staticmethod
    def inversion_step(x: torch.Tensor, denoised: torch.Tensor, sigma: torch.Tensor,
                       sigma_next: torch.Tensor) -> torch.Tensor:
        """One official DDIM inversion step in sampling space: x' = x + (sigma' - sigma) * eps, eps = (x -
        denoised) / sigma from the model's prediction on the current latent (labelled with the next timestep)."""
        eps = (x - denoised) / sigma[(...,) + (None,) * (x.ndim - sigma.ndim)]
        return x + eps * (sigma_next - sigma)


def _short(ts: list[int]) -> str:
    if len(ts) <= 6:
        return "[" + ", ".join(map(str, ts)) + "]"
    return "[" + ", ".join(map(str, ts[:3])) + ", ..., " + ", ".join(map(str, ts[-2:])) + "]"
