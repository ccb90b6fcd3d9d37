"""A bank of several guidance images (pure): TrajectoryBatch, FrameSources, FeatureBank.frame, per-frame masks."""
from __future__ import annotations

import pytest
import torch

from pure import pure

bank, sources, masks, layers, errors = pure("bank"), pure("sources"), pure("masks"), pure("layers"), pure("errors")
unet = pure("families.unet")

IDENTITY = bank.ModelIdentity("SD15", "eps", "0123456789abcdef", "feedfacecafebeef")
SITES = layers.LayerSites(unet.KINDS, {"resblock": (1,)})
TIMESTEPS = (751, 501, 251, 1)


def _trajectory(seed: int, size: int = 4) -> bank.Trajectory:
    latents = torch.randn(4, 4, size, size, generator=torch.Generator().manual_seed(seed))
    return bank.Trajectory(IDENTITY, TIMESTEPS, latents, 4, "inverted")


def _stored(seed: int) -> sources.StoredSource:
    resblock = {1: torch.randn(3, 1, 8, 2, 2, generator=torch.Generator().manual_seed(seed)).half()}
    return sources.StoredSource({"resblock": resblock}, bank.SOURCE_SINGLE)


def _batch_bank(source) -> bank.FeatureBank:
    trajectories = bank.TrajectoryBatch(tuple(_trajectory(i) for i in range(3)))
    return bank.FeatureBank(trajectories, SITES, bank.SOURCE_SINGLE, 3, 0, source, torch.float16)


def test_a_trajectory_batch_is_one_trajectory_per_frame():
    frames = bank.TrajectoryBatch(tuple(_trajectory(i) for i in range(3)))
    assert frames.frames == 3 and frames.steps == 4 and frames.latent_shape == (4, 4, 4)
    assert torch.equal(frames.x_T(), torch.cat([_trajectory(i).latents[0:1] for i in range(3)]))
    assert frames.frame(2) is frames.trajectories[2] and _trajectory(0).frames == 1
    assert frames.nbytes == 3 * _trajectory(0).nbytes
    with pytest.raises(IndexError):
        frames.frame(3)
    with pytest.raises(errors.PnPInputError, match="share the model, the timesteps and the image size"):
        bank.TrajectoryBatch((_trajectory(0), _trajectory(1, size=8)))


def test_frame_i_of_a_held_bank_is_its_own_single_image_bank():
    held = tuple(_stored(i) for i in range(3))
    frames = _batch_bank(sources.FrameSources(bank.STORED, 3, held=held))
    assert frames.frames == 3 and not frames.source.deferred
    assert frames.nbytes == sum(source.nbytes for source in held)
    one = frames.frame(1)
    assert one.frames == 1 and one.source is held[1] and one.trajectory is frames.trajectory.trajectories[1]
    assert one.frame(0) is one
    bank.check_one_frame(one, "PnP Guider")
    with pytest.raises(errors.PnPInputError, match="PnP Guider takes the bank of one guidance image; this bank "
                                                   "holds 3 frames.*Latent From Batch"):
        bank.check_one_frame(frames, "PnP Guider")


def test_a_deferred_bank_holds_nothing_and_records_a_frame_when_asked():
    asked = []

    def record(index, **options):
        asked.append((index, options))
        return _stored(index)

    frames = _batch_bank(sources.FrameSources(bank.STORED, 3, record=record))
    assert frames.source.deferred and frames.nbytes == 0 and asked == []
    one = frames.frame(2, progress=(8, 24))
    assert asked == [(2, {"progress": (8, 24)})]
    assert torch.equal(one.source.stored["resblock"][1], _stored(2).stored["resblock"][1])
    with pytest.raises(ValueError, match="a source for every frame"):
        sources.FrameSources(bank.STORED, 3, held=(_stored(0),))


def test_masks_of_a_batch_one_for_every_frame_or_one_per_frame():
    latent = (4, 8, 8)
    per_frame = torch.zeros(3, 64, 64)
    per_frame[1] = 1.0
    weights = masks.injection_weight_map(per_frame, latent, 0.25, frames=3)
    assert weights.shape == (3, 64, 64) and torch.equal(weights[1], torch.ones(64, 64))
    assert torch.equal(weights[0], torch.full((64, 64), 0.25))
    assert masks.injection_weight_map(per_frame[:1], latent, 0.0, frames=3).shape == (1, 64, 64)
    with pytest.raises(errors.PnPInputError, match="batch of 2 masks.*one per frame \\(3\\)"):
        masks.injection_weight_map(per_frame[:2], latent, 0.0, frames=3)
