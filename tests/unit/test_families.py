"""The UNet family on stand-ins (no ComfyUI): recognition, the checks it refuses with, its sites, its schedule."""
from __future__ import annotations

import types

import pytest
import torch

from pure import pure

families, unet, errors = pure("families"), pure("families.unet"), pure("errors")
vp_schedule = pure("families.vp_schedule")


def _comfy_class(name: str) -> type:
    return type(name, (), {"__module__": "comfy.model_sampling"})


def _model(config: str = "SD15", bases=("ModelSamplingDiscrete", "EPS"), sigmas: int = 1000, in_channels: int = 4):
    sampling = type("ModelSamplingAdvanced", tuple(_comfy_class(b) for b in bases), {})()
    sampling.sigmas = torch.linspace(0.03, 14.6, sigmas)
    diffusion_model = types.SimpleNamespace(in_channels=in_channels)
    base = types.SimpleNamespace(model_config=type(config, (), {})(), diffusion_model=diffusion_model)
    objects = {"model_sampling": sampling, "latent_format": types.SimpleNamespace(latent_channels=4)}
    return types.SimpleNamespace(model=base, get_model_object=objects.__getitem__)


def test_a_model_is_recognised_by_its_comfyui_config_and_other_families_are_refused():
    assert families.family_of(_model("SDXL")) is unet
    assert families.family_named("SD20") is unet
    with pytest.raises(errors.PnPInputError, match="PnP supports SD 1.x, SD 2.x, SDXL, FLUX.1 dev, FLUX.1 schnell "
                                                   "checkpoints; the MODEL connected is SD3. Load an SD 1.x"):
        families.family_of(_model("SD3"))


@pytest.mark.parametrize("bases, sigmas", [(("ModelSamplingDiscrete", "CONST"), 1000),
                                           (("ModelSamplingDiscreteFlow", "EPS"), 1000),
                                           (("ModelSamplingDiscrete", "EPS"), 999)])
def test_the_unet_family_needs_the_discrete_1000_step_schedule(bases, sigmas):
    with pytest.raises(errors.PnPInputError, match="discrete 1000-step schedule.*Remove the ModelSampling"):
        unet.check(_model(bases=bases, sigmas=sigmas))


def test_the_unet_family_refuses_inpainting_input_channels():
    with pytest.raises(errors.PnPInputError, match="This SD 1.x UNet takes 9 input channels"):
        unet.check(_model(in_channels=9))


def test_the_attention_site_of_an_attn1_patch_call_is_a_decoder_block_and_transformer():
    assert unet.site_at("attention", {"block": ("output", 7), "block_index": 1}) == (7, 1)
    assert unet.site_at("attention", {"block": ("output", 4)}) == (4, 0)
    assert unet.site_at("attention", {"block": ("input", 4), "block_index": 0}) is None
    assert unet.site_at("attention", {}) is None


def test_vp_scale_is_one_over_sqrt_alpha_bar():
    alpha_bar = torch.tensor([0.9991, 0.5, 0.0047])
    sigma = ((1 - alpha_bar) / alpha_bar) ** 0.5
    assert torch.allclose(vp_schedule.vp_scale(sigma), alpha_bar ** -0.5)
    assert vp_schedule.vp_scale(0.0) == 1.0


def test_the_unet_family_checks_to_its_discrete_vp_schedule(monkeypatch):
    monkeypatch.setattr(unet, "layout_of", lambda diffusion_model: "layout")
    prediction, layout, schedule = unet.check(_model())
    assert prediction == "eps" and layout == "layout" and isinstance(schedule, vp_schedule.DiscreteVPSchedule)
    table = torch.linspace(0.03, 14.6, 1000)
    assert schedule.sigmas.dtype == torch.float32 and torch.equal(schedule.sigmas, table)
    assert schedule.sampling_timesteps(50) == vp_schedule.ddim_timesteps(50)
    assert torch.equal(schedule.sigmas_at((981, 1)), table[[981, 1]]) and schedule.official_end == float(table[0])
    assert schedule.digest == vp_schedule.DiscreteVPSchedule(table.clone()).digest
    assert schedule.digest != vp_schedule.DiscreteVPSchedule(table * 1.001).digest


def test_an_inversion_plan_keeps_every_sampling_timestep_and_labels_with_the_next():
    schedule = vp_schedule.DiscreteVPSchedule(torch.linspace(0.03, 14.6, 1000))
    inversion = schedule.inversion(10, 50)
    assert inversion.sampling_timesteps == tuple(range(901, 0, -100)) and inversion.steps == 50
    assert inversion.timesteps == tuple(range(1, 1000, 20))
    assert torch.equal(inversion.sigmas, schedule.sigmas_at((0,) + inversion.timesteps))
    assert inversion.keep == {1 + (t - 1) // 20: t for t in inversion.sampling_timesteps}
    assert inversion.next_label[0] == 1 and inversion.next_label[1] == 21 and inversion.next_label[961] == 981
    with pytest.raises(errors.PnPInputError, match="miss the sampling timesteps"):
        schedule.inversion(50, 60)


def test_the_inversion_step_in_sampling_space_is_the_official_ddim_inversion_step():
    """z_i = sqrt(a_i) x0 + sqrt(1 - a_i) eps, x0 = (z_prev - sqrt(1 - a_prev) eps) / sqrt(a_prev) (PNP_SPEC)."""
    schedule = vp_schedule.DiscreteVPSchedule(torch.linspace(0.03, 14.6, 1000, dtype=torch.float64).float())
    generator = torch.Generator().manual_seed(0)
    z_prev, eps = torch.randn(2, 1, 4, 8, 8, generator=generator, dtype=torch.float64)
    sigma, sigma_next = schedule.sigmas_at((1, 21)).double()
    a_prev, a = 1 / (1 + sigma ** 2), 1 / (1 + sigma_next ** 2)
    x0 = (z_prev - (1 - a_prev).sqrt() * eps) / a_prev.sqrt()
    official = a.sqrt() * x0 + (1 - a).sqrt() * eps

    x = schedule.to_sampling(z_prev, sigma)
    x_next = schedule.inversion_step(x, x - sigma * eps, sigma, sigma_next)  # an eps model's denoised output
    assert torch.allclose(schedule.from_sampling(x_next, sigma_next), official, atol=1e-10)
    assert torch.equal(schedule.from_sampling(schedule.to_sampling(z_prev, 0.0), 0.0), z_prev)
