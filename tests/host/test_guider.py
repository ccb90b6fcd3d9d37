"""PnP Guider: PnP inside ComfyUI's SamplerCustomAdvanced (GUIDER + SIGMAS), on the real host.

ddim (KSamplerSelect) on the guider's SIGMAS from its x_T with DisableNoise (or the guider's own noise output, the
same zeros) equals PnP Sampler with final_step "comfyui" bit for bit, in both bank modes and through ComfyUI's
executor. Other samplers run;
which of their model evaluations inject follows from the sigmas they evaluate at (docs/guide.md, PnP in
SamplerCustomAdvanced): only the bank's own sigmas below the thresholds.
"""
from __future__ import annotations

import pytest
import torch

from comfy_host import run_prompt
from harness import InjectionSpy, Translation, UNetRows, run_node, translation_prompt

STEPS = 8
FEATURE_STEPS, ATTENTION_STEPS = 6, 4  # int(8 * 0.8), int(8 * 0.5)
INJECTING = list(range(max(FEATURE_STEPS, ATTENTION_STEPS)))


@pytest.fixture(scope="module")
def pnp(models):
    latent = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(11)) * 4.0
    return Translation.make(models, latent=latent, steps=STEPS)


def guider_outputs(pnp, **inputs):
    values = dict(model=pnp.model, positive=pnp.positive, negative=pnp.negative, features=pnp.bank)
    return run_node("PnP_Guider", **{**values, **inputs})


def custom_advanced(guider, sigmas, latent, sampler="ddim", noise=None):
    noise = noise if noise is not None else run_node("DisableNoise")[0]
    chosen = run_node("KSamplerSelect", sampler_name=sampler)[0]
    return run_node("SamplerCustomAdvanced", noise=noise, guider=guider, sampler=chosen, sigmas=sigmas,
                    latent_image=latent)[0]["samples"]


def test_sigmas_are_the_banks_timesteps_then_zero_and_x_T_is_the_inversions(pnp):
    _, sigmas, x_T, _ = guider_outputs(pnp)
    table = pnp.model.get_model_object("model_sampling").sigmas.float()
    expected = torch.cat([table[list(pnp.bank.trajectory.timesteps)], torch.zeros(1)])
    assert torch.equal(sigmas, expected)
    assert torch.equal(x_T["samples"], pnp.invert()[1]["samples"])


@pytest.mark.parametrize("mode", ["stored", "on the fly"])
def test_ddim_in_sampler_custom_advanced_equals_pnp_sampler_exactly(pnp, mode):
    bank = pnp.record(mode=mode)
    guider, sigmas, x_T, _ = guider_outputs(pnp, features=bank)
    custom = custom_advanced(guider, sigmas, x_T)
    sampler = pnp.sample(features=bank, final_step="comfyui")
    assert torch.equal(custom, sampler), float((custom - sampler).abs().max())
    # and not by accident: injection changes the result, the official final step differs slightly
    plain = custom_advanced(guider_outputs(pnp, features=bank, feature_injection=0.0, attention_injection=0.0)[0],
                            sigmas, x_T)
    assert float((plain - custom).abs().max()) > 1e-3
    assert not torch.equal(pnp.sample(features=bank, final_step="official"), custom)


def test_ddim_equals_pnp_sampler_with_mask_negative_prompt_and_strength(pnp):
    mask = torch.zeros(1, 64, 64)
    mask[..., :32] = 1.0
    inputs = dict(mask=mask, outside_mask_strength=0.25, injection_strength=0.7, negative_prompt=pnp.empty,
                  negative_alpha=0.5, threshold_convention="original")
    guider, sigmas, x_T, _ = guider_outputs(pnp, **inputs)
    assert torch.equal(custom_advanced(guider, sigmas, x_T), pnp.sample(final_step="comfyui", **inputs))


def test_pnp_guiders_noise_is_disable_noise(pnp):
    """The noise output (the start for FLUX) is no noise on SD: zeros on the CPU and seed 0, as DisableNoise, so
    either in SamplerCustomAdvanced gives the same result bit for bit."""
    guider, sigmas, x_T, noise = guider_outputs(pnp)
    (disabled,) = run_node("DisableNoise")
    assert torch.equal(noise.generate_noise(x_T), disabled.generate_noise(x_T)) and noise.seed == disabled.seed == 0
    assert torch.equal(custom_advanced(guider, sigmas, x_T, noise=noise), custom_advanced(guider, sigmas, x_T))


@pytest.mark.parametrize("noise", ["DisableNoise", "PnP Guider's noise"])
def test_the_same_through_comfyuis_executor(host, models, noise):
    prompt, refs = translation_prompt(models.checkpoint("sd15_reduced"), steps=STEPS, output="SaveLatent",
                                      sampler={"final_step": "comfyui"})
    guider = prompt.add("PnP_Guider", model=refs["ckpt"][0], positive=refs["target"][0], negative=refs["empty"][0],
                        features=refs["bank"][0])
    start = prompt.add("DisableNoise")[0] if noise == "DisableNoise" else guider[3]
    custom = prompt.add("SamplerCustomAdvanced", noise=start, guider=guider[0],
                        sampler=prompt.add("KSamplerSelect", sampler_name="ddim")[0], sigmas=guider[1],
                        latent_image=refs["inversion"][1])
    prompt.add("SaveLatent", samples=custom[0], filename_prefix="pnp_guider")
    result = run_prompt(prompt.api)
    assert result.success, result.error()
    latents = {}
    for node_id in (refs["output"].node_id, str(len(prompt.api))):
        saved = result.outputs[node_id]["latents"][0]
        import safetensors.torch

        latents[node_id] = safetensors.torch.load_file(host.output_dir / saved["subfolder"] / saved["filename"])
    first, second = latents.values()
    assert torch.equal(first["latent_tensor"], second["latent_tensor"])


def _evaluation_steps(spy) -> list[int]:
    return [step for step, _ in spy.calls]


@pytest.mark.parametrize("sampler, injected", [
    # one evaluation per step, at the step's own sigma: every injecting step, once
    ("euler_ancestral", INJECTING),
    ("dpmpp_2m", INJECTING),
    # Heun's corrector evaluates at the next step's sigma, and so does DPM++(2S) ancestral's second stage (with
    # eta 1 its midpoint sqrt(sigma_i * sigma_down) is sigma_i+1): they inject that step's tensors
    ("heun", [INJECTING[0]] + [s for s in INJECTING[1:] for _ in range(2)]),
    ("dpmpp_2s_ancestral", [INJECTING[0]] + [s for s in INJECTING[1:] for _ in range(2)]),
    # DPM-2's second evaluation is at the geometric mean of two steps' sigmas, no step's: it injects nothing
    ("dpm_2", INJECTING),
])
def test_other_samplers_inject_at_the_banks_sigmas_only(host, pnp, monkeypatch, sampler, injected):
    guider, sigmas, x_T, _ = guider_outputs(pnp)
    spy = InjectionSpy(host, monkeypatch)
    with UNetRows() as unet:
        out = custom_advanced(guider, sigmas, x_T, sampler)
    assert torch.isfinite(out).all()
    assert _evaluation_steps(spy) == injected
    assert all(sorted(branches) == [0, 1] for _, branches in spy.calls)
    two_evaluations = {"heun": STEPS - 1, "dpmpp_2s_ancestral": STEPS - 1, "dpm_2": STEPS - 1}.get(sampler, 0)
    assert len(unet.rows) == STEPS + two_evaluations  # the evaluations that did not inject ran plain
    plain = custom_advanced(guider_outputs(pnp, feature_injection=0.0, attention_injection=0.0)[0], sigmas, x_T,
                            sampler)
    assert float((plain - out).abs().max()) > 1e-3


def test_split_sigmas_hand_the_steps_after_injection_to_a_plain_guider(pnp):
    """PnP for the injecting steps, then ComfyUI's own CFGGuider: the whole PnP run, up to the fp32 rounding of
    the latent handed between the two SamplerCustomAdvanced nodes."""
    guider, sigmas, x_T, _ = guider_outputs(pnp)
    whole = custom_advanced(guider, sigmas, x_T)
    high, low = run_node("SplitSigmas", sigmas=sigmas, step=len(INJECTING))
    first = custom_advanced(guider, high, x_T)
    plain = run_node("CFGGuider", model=pnp.model, positive=pnp.positive, negative=pnp.negative, cfg=7.5)[0]
    split = custom_advanced(plain, low, {"samples": first})
    print(f"split at step {len(INJECTING)} vs whole: max abs difference {float((split - whole).abs().max()):.3g}")
    assert float((split - whole).abs().max()) < 1e-4 * float(whole.abs().max())
    # splitting one step earlier hands an injecting step to the plain guider: a different result
    high, low = run_node("SplitSigmas", sigmas=sigmas, step=len(INJECTING) - 1)
    early = custom_advanced(plain, low, {"samples": custom_advanced(guider, high, x_T)})
    assert float((early - whole).abs().max()) > 1e-3
