"""The on-the-fly source: nothing stored, the source pass runs per injecting step (pure torch).

For each injecting step the live source evaluates ``UNet(z_t, t, source
prompt)`` on the trajectory latent of that step, in its own UNet call just
before the target's, and hands its tensors to the injector as a stored bank's
step slice would be. The sampler's guider carries the source prompt as an
extra conditioning (``SOURCE_COND``), which ComfyUI processes with the target's
own; the call goes through ComfyUI's ``calc_cond_batch`` with PnP's patches
only (``patcher.Evaluation.run_alone``), so other packs' attention and block
patches never see the source rows, ControlNet on the target prompt never
reaches them, and the source pass equals the one PnP Feature Bank records
(recording with batch_size 1).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

import torch

from .bank import ON_THE_FLY, SOURCE_SINGLE, Trajectory
from .errors import PnPInputError
from .injection import Recorder, RecordingStep, SiteTensors, StepFeatures
from .layers import LayerSites

# Key of the source prompt among the sampler guider's conditionings.
SOURCE_COND = "pnp_source"

_NOTHING_STORED: Mapping = MappingProxyType({})
# Conditioning keys that change how ComfyUI runs a cond; the live source pass is one plain prompt.
_UNSUPPORTED_KEYS = ("area", "mask", "strength", "start_percent", "end_percent", "control", "gligen", "hooks",
                     "default")


def check_conditioning(conditioning) -> None:
    """The live source pass is one plain prompt: refuse what a bank recorded in 'stored' mode would honour."""
    if not conditioning or len(conditioning) != 1:
        raise PnPInputError(
            f"The on-the-fly mode needs exactly one source prompt (one CLIP Text Encode), got a conditioning with "
            f"{len(conditioning or [])} entries. Connect a single prompt or set mode to 'stored'."
        )
    extra = sorted(k for k in conditioning[0][1] if k in _UNSUPPORTED_KEYS)
    if extra:
        raise PnPInputError(
            f"The on-the-fly mode runs the source prompt as one plain UNet evaluation per step; its conditioning "
            f"carries {extra} (area, mask, timestep range, ControlNet, ...), which needs the recorded source pass. "
            f"Connect the plain CLIP Text Encode output or set mode to 'stored'."
        )


@dataclass(frozen=True)
class LiveSource:
    """Source tensors computed per step from ``trajectory`` and the source ``conditioning``."""

    trajectory: Trajectory
    sites: LayerSites
    conditioning: Any = field(compare=False, repr=False)
    branches: tuple[str, ...] = SOURCE_SINGLE
    mode: str = ON_THE_FLY

    @property
    def stored(self) -> SiteTensors:
        return _NOTHING_STORED

    @property
    def nbytes(self) -> int:
        return 0

    def guider_conds(self) -> dict:
        return {SOURCE_COND: self.conditioning}

    def features_at(self, step: int, evaluation) -> StepFeatures:
        """Run the source pass of ``step`` through ``evaluation`` (a ``patcher.Evaluation``) and keep its tensors."""
        recorder = Recorder(self.sites, step + 1, step + 1, self.branches)
        x = evaluation.latent_in(self.trajectory.latents[step:step + 1])
        evaluation.run_alone(SOURCE_COND, x, RecordingStep(recorder, (step,)))
        return recorder.step_features(step)
