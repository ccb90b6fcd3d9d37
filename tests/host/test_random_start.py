"""PnP Sampler's ``start``: the inverted x_T (default, the paper) or seeded Gaussian noise (a user's scheme 1).

Random noise keeps the injection (same sites, steps and branches, the source pass on the inverted
trajectory in both bank modes) and starts from x_T ~ N(0, I) in the official scale: exactly what
SamplerCustomAdvanced gives from that latent with PnP Guider.
"""
from __future__ import annotations

import pytest
import torch

from comfy_host import validate
from harness import InjectionSpy, Translation, run_node, translation_prompt

STEPS = 8


@pytest.fixture(scope="module")
def pnp(models):
    latent = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3)) * 4.0
    return Translation.make(models, latent=latent, steps=STEPS)


def test_inverted_is_the_default_and_prompts_without_start_stay_valid(pnp, models):
    assert torch.equal(pnp.sample(start="inverted", start_seed=123), pnp.sample())
    prompt, refs = translation_prompt(models.checkpoint("sd15_reduced"), steps=STEPS, output="SaveLatent")
    for name in ("start", "start_seed"):
        del prompt.api[refs["sampler"].node_id]["inputs"][name]
    assert validate(prompt.api)[0]


def test_random_noise_is_seeded_and_not_the_inverted_start(pnp):
    first = pnp.sample(start="random noise", start_seed=1)
    assert torch.isfinite(first).all()
    assert torch.equal(pnp.sample(start="random noise", start_seed=1), first)
    assert float((pnp.sample(start="random noise", start_seed=2) - first).abs().max()) > 1e-2
    assert float((pnp.sample() - first).abs().max()) > 1e-2


def test_random_noise_injects_what_the_inverted_start_injects(host, pnp, monkeypatch):
    spy = InjectionSpy(host, monkeypatch)

    def injected(**inputs):
        for events in (spy.calls, spy.attention, spy.resblock):
            events.clear()
        pnp.sample(**inputs)
        return list(spy.calls), {site: list(events) for site, events in spy.attention.items()}, list(spy.resblock[4])

    inverted = injected()
    assert injected(start="random noise", start_seed=5) == inverted  # the same steps, rows and branches: the bank's
    assert all(exact for events in spy.attention.values() for *_, exact in events)


def test_on_the_fly_runs_the_source_pass_on_the_inverted_trajectory_with_random_noise(pnp):
    stored = pnp.sample(start="random noise", start_seed=9)
    assert torch.equal(pnp.sample(features=pnp.record(mode="on the fly"), start="random noise", start_seed=9), stored)


def test_random_start_is_seeded_noise_at_the_official_scale(pnp):
    """x_T = sqrt(1 + sigma_T^2) * noise(seed) in sampling space, as PnP Generate Guidance starts."""
    import comfy.sample

    sigma_T = pnp.model.get_model_object("model_sampling").sigmas.float()[pnp.bank.trajectory.timesteps[0]]
    noise = comfy.sample.prepare_noise(torch.zeros(1, 4, 8, 8), 4)
    latent_format = pnp.model.get_model_object("latent_format")
    x_T = latent_format.process_out(noise * (1.0 + sigma_T ** 2) ** 0.5)
    guider, sigmas, _, _ = run_node("PnP_Guider", model=pnp.model, positive=pnp.positive, negative=pnp.negative,
                                    features=pnp.bank)
    custom = run_node("SamplerCustomAdvanced", noise=run_node("DisableNoise")[0], guider=guider,
                      sampler=run_node("KSamplerSelect", sampler_name="ddim")[0], sigmas=sigmas,
                      latent_image={"samples": x_T})[0]["samples"]
    assert torch.equal(pnp.sample(start="random noise", start_seed=4, final_step="comfyui"), custom)
    # N(0, I) in the official (variance-preserving) scale: z_T = sqrt(alpha_bar_T) * x_T * scale_factor
    z_T = latent_format.process_in(x_T) / (1.0 + sigma_T ** 2) ** 0.5
    assert float((z_T - noise).abs().max()) < 1e-5  # fp32 rounding of the scale factors


def test_an_unknown_start_is_refused(pnp):
    with pytest.raises(ValueError, match="start must be one of"):
        pnp.sample(start="sideways")
