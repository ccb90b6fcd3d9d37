"""The values PnP nodes pass along: the inversion trajectory, the feature bank and PnP Guider's start noise.

All are immutable: ComfyUI caches node outputs and may hand the same object to
later prompts, so nothing here is ever written after construction.

A batch of guidance images (video frames, photos) is a ``TrajectoryBatch``
(one trajectory per frame) and a ``FeatureBank`` whose source is a
``sources.FrameSources`` (one source per frame); ``FeatureBank.frame(i)`` is
frame i's own single-image bank.

Shapes (B = branches recorded, 1 for a real image's single source pass, 2 for
a generated guidance image recorded under CFG: uncond, cond):
- ``Trajectory.latents``: (N, C, H, W), float32, the latent at each sampling
  timestep in ComfyUI LATENT units (variance-exploding x_t divided by the
  latent format's scale factor); ``latents[0]`` is x_T.
- a stored bank's ``stored[kind][site]``: (steps of the kind's threshold, B,
  *row shape), per kind of site of the model's family (``families``; in the
  UNet ``stored["resblock"][b]`` (feature_steps, B, C, h, w), the residual
  branch of ``output_blocks[b][0]``, and ``stored["attention"][(b, j)]``
  (attention_steps, B, h*w, C), the input of attn1 after norm1: q and k are its
  projections, so storing it halves the memory of storing q and k).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from .errors import PnPInputError
from .layers import LayerSites

SOURCE_SINGLE = ("source",)
SOURCE_CFG = ("uncond", "cond")
# How a bank provides the source tensors: recorded beforehand, or computed per step while sampling.
STORED, ON_THE_FLY = "stored", "on the fly"
BANK_MODES = (STORED, ON_THE_FLY)
# The storage precisions a bank is recorded in, by the name PnP Feature Bank offers (bank_dtype).
STORAGE_DTYPES = {"fp16": torch.float16, "fp32": torch.float32}
# The VAEs of every supported family map one latent cell to 8x8 pixels.
LATENT_TO_PIXELS = 8


def pixel_size(latent_shape: tuple[int, ...]) -> str:
    """The image size of a latent (..., H, W), as "WxH px"."""
    height, width = latent_shape[-2:]
    return f"{width * LATENT_TO_PIXELS}x{height * LATENT_TO_PIXELS} px"


@dataclass(frozen=True)
class ModelIdentity:
    """What a trajectory or bank was made with: family, prediction type, base weights, noise schedule.

    ``schedule`` is a hash of the model's sigma table ("" when unknown): a
    ModelSamplingDiscrete node (e.g. zero terminal SNR) changes it.
    """

    family: str
    prediction: str
    fingerprint: str
    schedule: str = ""

    def describe(self) -> str:
        return f"{self.family} {self.prediction}-prediction model (weights {self.fingerprint[:10]})"

    def differences(self, other: "ModelIdentity") -> list[tuple[str, str, str]]:
        """The fields that differ from ``other``: (what, this value, other's value)."""
        fields = (("model family", self.family, other.family), ("prediction type", self.prediction, other.prediction),
                  ("weights fingerprint", self.fingerprint, other.fingerprint),
                  ("noise schedule (sigma table hash)", self.schedule, other.schedule))
        return [field for field in fields if field[1] != field[2]]


@dataclass(frozen=True)
class Trajectory:
    """PNP_INVERSION: the source latent at every sampling timestep."""

    model: ModelIdentity
    timesteps: tuple[int, ...]
    latents: torch.Tensor
    inversion_steps: int
    origin: str  # "inverted" (a real image) or "generated" (sampled from a prompt)

    @property
    def steps(self) -> int:
        return len(self.timesteps)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return tuple(self.latents.shape[1:])

    def x_T(self) -> torch.Tensor:
        return self.latents[0:1]

    @property
    def nbytes(self) -> int:
        return self.latents.numel() * self.latents.element_size()

    @property
    def frames(self) -> int:
        return 1

    def frame(self, index: int) -> "Trajectory":
        _check_frame(index, 1)
        return self


@dataclass(frozen=True)
class TrajectoryBatch:
    """PNP_INVERSION of a batch of guidance images: one ``Trajectory`` per frame (same model, timesteps, size)."""

    trajectories: tuple[Trajectory, ...]

    def __post_init__(self):
        first = self.trajectories[0]
        if any((t.model, t.timesteps, t.latent_shape) != (first.model, first.timesteps, first.latent_shape)
               for t in self.trajectories):
            raise PnPInputError("The frames of a batch must share the model, the timesteps and the image size.")

    @property
    def frames(self) -> int:
        return len(self.trajectories)

    def frame(self, index: int) -> Trajectory:
        _check_frame(index, self.frames)
        return self.trajectories[index]

    @property
    def model(self) -> ModelIdentity:
        return self.trajectories[0].model

    @property
    def timesteps(self) -> tuple[int, ...]:
        return self.trajectories[0].timesteps

    @property
    def steps(self) -> int:
        return len(self.timesteps)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return self.trajectories[0].latent_shape

    @property
    def inversion_steps(self) -> int:
        return self.trajectories[0].inversion_steps

    @property
    def origin(self) -> str:
        return self.trajectories[0].origin

    def x_T(self) -> torch.Tensor:
        """Every frame's x_T, (frames, C, H, W)."""
        return torch.cat([t.x_T() for t in self.trajectories])

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.trajectories)


def _check_frame(index: int, frames: int) -> None:
    if not 0 <= index < frames:
        raise IndexError(f"frame {index} of a batch of {frames}")


@dataclass(frozen=True)
class FeatureBank:
    """PNP_FEATURES: a trajectory, the sites and leading steps to inject, and where their tensors come from.

    ``source`` is a ``sources.StoredSource`` (recorded tensors), a
    ``live_source.LiveSource`` (computed while sampling) or, for a batch of
    frames, a ``sources.FrameSources`` (one of those per frame); ``source_conditioning``
    is the ComfyUI CONDITIONING of the source pass (PnP Feature PCA records
    layers the bank lacks with it).
    """

    trajectory: Trajectory | TrajectoryBatch
    sites: LayerSites
    branches: tuple[str, ...]
    feature_steps: int
    attention_steps: int
    source: Any
    storage_dtype: torch.dtype
    source_conditioning: Any = field(default=None, compare=False, repr=False)

    @property
    def steps(self) -> int:
        return self.trajectory.steps

    @property
    def frames(self) -> int:
        return self.trajectory.frames

    def frame(self, index: int, **record_options) -> "FeatureBank":
        """Frame ``index``'s own bank (a single-image bank is its own frame 0). For a batch recorded one frame at
        a time this records the frame now (``record_options`` go to the recording)."""
        if self.frames == 1:
            _check_frame(index, 1)
            return self
        return dataclasses.replace(self, trajectory=self.trajectory.frame(index),
                                   source=self.source.frame_source(index, **record_options))

    @property
    def mode(self) -> str:
        return self.source.mode

    @property
    def stored(self) -> Mapping[str, Mapping[Any, torch.Tensor]]:
        """The stored tensors, per kind name and site (empty on the fly or for a batch of frames)."""
        return self.source.stored

    def recorded_steps(self, kind) -> int:
        """The leading steps recorded for ``kind`` (a ``families.SiteKind``): those of its threshold."""
        return kind.steps(self.feature_steps, self.attention_steps)

    @property
    def nbytes(self) -> int:
        """Bytes of the stored source tensors (0 on the fly); the trajectory is ``trajectory_nbytes``."""
        return self.source.nbytes

    @property
    def trajectory_nbytes(self) -> int:
        return self.trajectory.nbytes

    def summary(self) -> str:
        """What the bank holds, as the node shows it: steps and sites, bytes, layers, guidance image size."""
        if self.mode == ON_THE_FLY:
            held = (f"on the fly, {self.steps} steps, {self.sites.count} sites: nothing stored (PnP Sampler runs "
                    f"the source pass)")
        else:
            dtype = next((name for name, d in STORAGE_DTYPES.items() if d == self.storage_dtype),
                         str(self.storage_dtype).removeprefix("torch."))
            held = (f"{self.feature_steps} + {self.attention_steps} of {self.steps} steps, {self.sites.count} sites, "
                    f"{self.nbytes / 1e6:.1f} MB {dtype}")
        return (f"{held}\n{self.sites.compact()}\n{self.trajectory.origin} guidance image, "
                f"{pixel_size(self.trajectory.latent_shape)}")

    def describe(self) -> str:
        head = f"{self.trajectory.origin} source, {self.steps} steps, {self.sites.describe()}"
        if self.frames > 1:
            head = f"{self.frames} frames, {head}, {self.source.describe()}"
            if self.source.deferred:
                return f"{head} (trajectories {self.trajectory_nbytes} bytes)"
        if self.mode == ON_THE_FLY:
            return (f"{head}, source pass computed on the fly while sampling (0 feature bytes stored, trajectory "
                    f"{self.trajectory_nbytes} bytes)")
        return (
            f"{head}, ResBlock steps 0-{self.feature_steps - 1}, attention steps 0-{self.attention_steps - 1}, "
            f"{str(self.storage_dtype).removeprefix('torch.')}: {self.nbytes} bytes ({self.nbytes / 2**20:.1f} MiB) "
            f"stored, trajectory {self.trajectory_nbytes} bytes"
        )


def check_model(recorded: ModelIdentity, current: ModelIdentity, what: str) -> None:
    if recorded.family != current.family or recorded.prediction != current.prediction:
        raise PnPInputError(
            f"This {what} was made with an {recorded.describe()}, but the MODEL connected here is an "
            f"{current.describe()}. Connect the same checkpoint to every PnP node."
        )
    if recorded.fingerprint != current.fingerprint:
        raise PnPInputError(
            f"This {what} was made with a different checkpoint ({recorded.describe()}) than the MODEL "
            f"connected here ({current.describe()}). Connect the same checkpoint (and weight dtype) to "
            f"every PnP node, or record the {what} again with this model."
        )
    if recorded.schedule and current.schedule and recorded.schedule != current.schedule:
        raise PnPInputError(
            f"This {what} was made with another noise schedule (sigma table {recorded.schedule[:10]}) than the "
            f"MODEL connected here ({current.schedule[:10]}): a ModelSampling* node (e.g. zero terminal SNR) sits "
            f"on one of the two paths. Connect the same MODEL to every PnP node."
        )


def check_one_frame(bank: FeatureBank, what: str) -> None:
    """``what`` works on the bank of one guidance image; refuse a batch with what to do instead."""
    if bank.frames != 1:
        raise PnPInputError(
            f"{what} takes the bank of one guidance image; this bank holds {bank.frames} frames. Translate a batch "
            f"with PnP Sampler, or pick one frame with 'Latent From Batch' before PnP DDIM Inversion."
        )


def check_steps(bank_steps: int, requested: int, what: str) -> None:
    if requested and requested != bank_steps:
        raise PnPInputError(
            f"steps is {requested}, but the {what} was recorded for {bank_steps} sampling steps. Set steps "
            f"to {bank_steps} (or 0 to follow the {what}), or run PnP DDIM Inversion with steps={requested}."
        )


@dataclass(frozen=True, eq=False)
class StartNoise:
    """PnP Guider's NOISE for SamplerCustomAdvanced (``generate_noise(latent)`` and ``seed``, as ComfyUI's
    DisableNoise / RandomNoise): ``start`` None gives zeros of the latent's shape on the CPU, what DisableNoise
    gives (SD starts from ``latent_image`` = x_T); a (1, C, H, W) ``start`` in model space is handed out as it is
    (FLUX: the inverted latent, which the flow's noise scaling at sigma 1 keeps exactly; the sampler does not
    process a NOISE into model space)."""

    start: torch.Tensor | None = None
    seed: int = 0

    def generate_noise(self, input_latent: dict) -> torch.Tensor:
        samples = input_latent["samples"]
        if self.start is None:
            return torch.zeros_like(samples, device="cpu")
        if tuple(samples.shape) != tuple(self.start.shape):
            raise PnPInputError(f"PnP Guider's noise is the bank's inverted latent {list(self.start.shape)}; the "
                                f"latent_image is {list(samples.shape)}: connect PnP Guider's x_T as latent_image.")
        return self.start.clone()
