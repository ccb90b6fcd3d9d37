"""The UNet family on stand-ins (no ComfyUI): recognition, the checks it refuses with, its sites, its schedule."""
from __future__ import annotations

import types

import pytest
import torch

from pure import pure

families, unet, errors = pure("families"), pure("families.unet"), pure("errors")


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
    assert torch.allclose(unet.vp_scale(sigma), alpha_bar ** -0.5)
    assert unet.vp_scale(0.0) == 1.0
