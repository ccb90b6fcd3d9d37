"""Timesteps, thresholds, the step lookup, negative-prompt weights and masks of the official code (pure)."""
from __future__ import annotations

import math

import pytest
import torch

from pure import pure

schedule, masks, errors = pure("schedule"), pure("masks"), pure("errors")
vp_schedule = pure("families.vp_schedule")  # the UNet family's timesteps


def test_official_timesteps():
    assert vp_schedule.ddim_timesteps(50)[:3] == [981, 961, 941] and vp_schedule.ddim_timesteps(50)[-1] == 1
    assert len(vp_schedule.ddim_timesteps(30)) == 30 and vp_schedule.ddim_timesteps(30)[0] == 29 * 33 + 1
    assert vp_schedule.ddim_timesteps(1000) == vp_schedule.ddim_timesteps(999)  # t = 1000 does not exist
    assert vp_schedule.inversion_timesteps(50, 999) == list(range(1, 1000))
    assert vp_schedule.valid_inversion_counts(50)[:4] == [50, 99, 100, 197]
    with pytest.raises(errors.PnPInputError, match="miss the sampling timesteps"):
        vp_schedule.inversion_timesteps(50, 60)
    with pytest.raises(errors.PnPInputError, match="between 1 and 1000"):
        vp_schedule.ddim_timesteps(0)


@pytest.mark.parametrize("steps, tau, diffusers, original", [(50, 0.8, 40, 41), (10, 0.5, 5, 6), (10, 1.0, 10, 10),
                                                             (10, 0.0, 0, 1)])
def test_threshold_conventions(steps, tau, diffusers, original):
    assert schedule.injection_step_count(steps, tau, "pnp-diffusers") == diffusers
    assert schedule.injection_step_count(steps, tau, "original") == original
    plan = schedule.InjectionPlan.from_thresholds(steps, tau, tau)
    assert [plan.injects_features(i) for i in range(steps)].count(True) == diffusers


def test_thresholds_must_be_finite_fractions():
    for bad in (math.nan, -0.1, 1.5, math.inf):
        with pytest.raises(errors.PnPInputError, match="fraction"):
            schedule.injection_step_count(10, bad)


def test_step_lookup_from_sigmas():
    table = torch.tensor([14.6, 9.0, 4.1, 1.2, 0.03])
    assert schedule.steps_of_sigmas(table, torch.tensor([4.1])) == [2]
    assert schedule.steps_of_sigmas(table, torch.tensor([14.6, 0.03, 9.0])) == [0, 4, 1]
    assert schedule.steps_of_sigmas(table, torch.tensor([0.0])) == [None]  # the final sigma of a schedule
    assert schedule.steps_of_sigmas(table, torch.tensor([4.2])) == [None]  # no step's sigma
    assert schedule.steps_of_sigmas(table, torch.tensor(4.1, dtype=torch.float64)) == [2]


def test_negative_prompt_schedules():
    assert schedule.negative_prompt_alphas(3, "constant", 0.5) == [0.5, 0.5, 0.5]
    assert schedule.negative_prompt_alphas(3, "linear", 1.0) == [1.0, 0.5, 0.0]
    assert schedule.negative_prompt_alphas(2, "exp", 1.0) == pytest.approx([1.0, math.exp(-6)])
    with pytest.raises(errors.PnPInputError, match="negative_schedule"):
        schedule.negative_prompt_alphas(3, "cosine", 1.0)


def test_mask_weight_maps():
    latent = (4, 8, 8)
    ones = masks.injection_weight_map(torch.ones(64, 64), latent, 0.0)
    assert ones.shape == (1, 64, 64) and torch.equal(ones, torch.ones(1, 64, 64))
    half = torch.zeros(1, 8, 8)
    half[..., :4] = 1
    weights = masks.injection_weight_map(half, latent, 0.25)  # latent-size masks are accepted too
    assert torch.equal(weights[..., :4], torch.ones(1, 8, 4)) and torch.equal(weights[..., 4:],
                                                                              torch.full((1, 8, 4), 0.25))
    for bad, message in ((torch.ones(2, 64, 64), "batch of 2"), (torch.ones(48, 64), "48 px"),
                         (torch.full((64, 64), math.nan), "NaN"), (torch.ones(1, 1, 64, 64), "shape")):
        with pytest.raises(errors.PnPInputError, match=message):
            masks.injection_weight_map(bad, latent, 0.0)
