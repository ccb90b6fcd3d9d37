"""PnP Guider on FLUX.1 (issue 19): ComfyUI's SamplerCustomAdvanced with the guider, sigmas, x_T and noise.

The guider is ComfyUI's CFGGuider (cfg 1) on a clone carrying the FLUX path's V patch with the model's own
model_sampling; its sigmas are the bank's times (1 to 0) and its noise the inverted latent (FLUX's noise scaling at
sigma 1 keeps the noise, not latent_image). On the tiny random FLUX of ``flux_checkpoints`` (fp32 CPU, 16x16
latent): euler (KSamplerSelect) on an euler bank equals PnP Sampler up to float rounding (ComfyUI's euler goes
through denoised = x - t v and back); an rf-solver bank injects only its first evaluations there (euler never
evaluates at the midpoints); mask and injection_strength reach the guider; a bank on the fly gives the stored one's
result. v0.3.64 refuses with the version line.
"""
from __future__ import annotations


import pytest
import torch

import flux_checkpoints as fc
from harness import run_node

LATENT_HW = (16, 16)
STEPS, INJECT, BLOCKS = 4, 2, "20-37"
GUIDANCE = 2.0
SOURCE, TARGET = "source prompt", "target prompt"
# ComfyUI's euler takes d = (x - denoised) / t with denoised = x - t v: rounding, not a different method.
EULER_TOL = 1e-5



@pytest.fixture(scope="module")
def flux(host):
    """layout -> the tiny FLUX as a ComfyUI MODEL (``flux_checkpoints.load_model``), loaded once."""
    loaded = {}

    def get(layout: str):
        if layout not in loaded:
            loaded[layout] = fc.load_model(host, layout)
        return loaded[layout]

    return get


def _conditioning(prompt: str) -> list:
    tokens, pooled = fc.random_conditioning(prompt)
    return [[tokens, {"pooled_output": pooled}]]


def _target() -> list:
    return run_node("FluxGuidance", conditioning=_conditioning(TARGET), guidance=GUIDANCE)[0]


def _latent(model) -> dict:
    """A LATENT (unit variance in model space)."""
    latent = torch.randn(1, 16, *LATENT_HW, generator=torch.Generator().manual_seed(4))
    return {"samples": model.get_model_object("latent_format").process_out(latent)}


def _refused_here(host, model) -> bool:
    """On a host whose FLUX blocks have no attn1_patch: asserts PnP Guider refuses a FLUX bank with one line naming
    the version needed, and returns True."""
    if fc.has_flux_patches(host):
        return False
    flux_bank = host.pack_module("pnp_hooks.flux_bank")
    errors = host.pack_module("pnp_hooks.errors")
    inversion = flux_bank.FluxInversion("Flux", "-", "euler", (1.0, 0.0), torch.zeros(1, 16, *LATENT_HW), {})
    bank = flux_bank.FluxBank(inversion, (20,), 1, {}, 8)
    with pytest.raises(errors.PnPInputError) as caught:
        run_node("PnP_Guider", model=model, positive=_target(), negative=_target(), features=bank)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("PnP on FLUX needs ComfyUI 0.33.0 or newer") and "this ComfyUI is 0.3.64" in message
    return True


def _bank(model, solver: str, inject: int = INJECT):
    """(PnP DDIM Inversion's outputs, PnP Feature Bank's stored fp32 bank) of ``_latent``."""
    source = _conditioning(SOURCE)
    inverted = run_node("PnP_DDIMInversion", model=model, latent=_latent(model), conditioning=source, steps=STEPS,
                        solver=solver)
    (bank,) = run_node("PnP_FeatureBank", model=model, inversion=inverted[0], conditioning=source,
                       attention_layers=BLOCKS, inject_steps=inject, bank_dtype="fp32")
    return inverted, bank


def _guider(model, bank, **inputs) -> tuple:
    target = _target()
    return run_node("PnP_Guider", model=model, positive=target, negative=target, features=bank, **inputs)


def _custom(outputs: tuple, sampler: str = "euler") -> torch.Tensor:
    """SamplerCustomAdvanced on PnP Guider's outputs: its guider, sigmas, x_T as latent_image and noise."""
    guider, sigmas, x_T, noise = outputs
    chosen = run_node("KSamplerSelect", sampler_name=sampler)[0]
    return run_node("SamplerCustomAdvanced", noise=noise, guider=guider, sampler=chosen, sigmas=sigmas,
                    latent_image=x_T)[0]["samples"]


def _sampler(model, bank, **inputs) -> torch.Tensor:
    target = _target()
    return run_node("PnP_Sampler", model=model, positive=target, negative=target, features=bank,
                    **inputs)[0]["samples"]


def _injected(guider) -> list:
    """The keys the guider's V patch put in place in its last run, in order."""
    (patch,) = guider.model_patcher.model_options["transformer_options"]["patches"]["attn1_patch"]
    return list(patch.injected)


@pytest.mark.parametrize("layout", sorted(fc.LAYOUTS))
def test_euler_in_sampler_custom_advanced_equals_pnp_sampler(host, flux, layout):
    """An euler bank: SamplerCustomAdvanced (euler) on PnP Guider's outputs gives PnP Sampler's translation to 1e-5;
    the sigmas are the bank's times, x_T the inversion's LATENT, the noise its model-space end point. Injection
    off (strength 0) is far away."""
    model = flux(layout)
    if _refused_here(host, model):
        return
    (inversion, noise_latent), bank = _bank(model, "euler")
    outputs = _guider(model, bank)
    guider, sigmas, x_T, noise = outputs
    assert torch.equal(sigmas, torch.tensor(bank.times, dtype=torch.float32)) and (sigmas[0], sigmas[-1]) == (1, 0)
    assert torch.equal(x_T["samples"], noise_latent["samples"])
    assert torch.equal(noise.generate_noise(x_T), bank.inverted) and noise.seed == 0
    custom = _custom(outputs)
    sampler = _sampler(model, bank)
    plain = _custom(_guider(model, bank, injection_strength=0.0))
    err, gap = float((custom - sampler).abs().max()), float((plain - sampler).abs().max())
    print(f"\n{layout} euler {STEPS} steps, inject {INJECT}: max |guider - PnP Sampler| {err:.2e}; "
          f"injection off {gap:.3e}")
    assert err <= EULER_TOL
    assert gap > 100 * EULER_TOL
    keys = _injected(guider)
    blocks = bank.blocks
    assert sorted(keys) == sorted((j, False, b) for j in range(INJECT) for b in blocks)
    # the same (cached) guider sampled again: the same result, and its patch holds this run's keys only
    assert torch.equal(_custom(outputs), custom)
    assert _injected(guider) == keys


def test_an_rf_solver_bank_injects_its_first_evaluations_only(host, flux):
    """euler evaluates at the bank's times, never at rf-solver's midpoints: the guider puts in place each first
    evaluation's V once and no second one, so the result is the one of the same bank without its midpoint V,
    bit for bit, and far from no injection."""
    model = flux("flux_dev_tiny")
    if _refused_here(host, model):
        return
    flux_bank = host.pack_module("pnp_hooks.flux_bank")
    _, bank = _bank(model, "rf-solver")
    firsts = {key: value for key, value in bank.values.items() if not key[1]}
    assert 0 < len(firsts) < len(bank.values)
    first_only = flux_bank.FluxBank(bank.inversion, bank.blocks, bank.inject, firsts, bank.source_tokens)
    outputs = _guider(model, bank)
    custom = _custom(outputs)
    assert sorted(_injected(outputs[0])) == sorted(firsts)
    assert torch.equal(custom, _custom(_guider(model, first_only)))
    assert float((custom - _custom(_guider(model, bank, injection_strength=0.0))).abs().max()) > 100 * EULER_TOL


def test_injection_follows_the_sigma_with_other_samplers(host, flux):
    """heun evaluates at each step's time and, as its corrector, at the next one (not after the last step): with an
    euler bank injecting steps 0 and 1 of 4, the corrector of step 0 reads step 1's V, the one of step 1 (at step
    2's time, not injected) nothing. dpm_2's second evaluation lies between two times: it injects nothing."""
    model = flux("flux_dev_tiny")
    if _refused_here(host, model):
        return
    _, bank = _bank(model, "euler")
    for sampler, steps in (("heun", [0, 1, 1]), ("dpm_2", [0, 1])):
        outputs = _guider(model, bank)
        out = _custom(outputs, sampler)
        keys = _injected(outputs[0])
        assert torch.isfinite(out).all()
        assert keys == [(j, False, b) for j in steps for b in sorted(bank.blocks)], sampler


def test_mask_and_injection_strength_reach_the_flux_guider(host, flux):
    """Strength 0 is no injection (bit for bit the bank of inject 0); a mask (left half, outside 0.25) with
    strength 0.7 gives PnP Sampler's masked translation to 1e-5 and differs from the unmasked one."""
    model = flux("flux_dev_tiny")
    if _refused_here(host, model):
        return
    _, bank = _bank(model, "euler")
    _, no_bank = _bank(model, "euler", inject=0)
    assert torch.equal(_custom(_guider(model, bank, injection_strength=0.0)), _custom(_guider(model, no_bank)))
    mask = torch.zeros(1, *(8 * side for side in LATENT_HW))
    mask[..., : mask.shape[-1] // 2] = 1.0
    inputs = dict(mask=mask, outside_mask_strength=0.25, injection_strength=0.7)
    masked = _custom(_guider(model, bank, **inputs))
    err = float((masked - _sampler(model, bank, **inputs)).abs().max())
    print(f"\nmask + strength 0.7: max |guider - PnP Sampler| {err:.2e}")
    assert err <= EULER_TOL
    assert float((masked - _custom(_guider(model, bank))).abs().max()) > 100 * EULER_TOL


@pytest.mark.parametrize("sampler", ["euler", "heun"])
def test_a_bank_on_the_fly_gives_the_stored_banks_result(host, flux, sampler):
    """PnP Feature Bank in mode "on the fly" through the guider: the stored bank's result bit for bit (with a mask
    and strength 0.7), at one more transformer call per injected evaluation (a PREDICT_NOISE wrapper runs the
    source call before it): euler 2 (steps 0 and 1), heun 3 (its corrector of step 0 is at step 1's time)."""
    model = flux("flux_dev_tiny")
    if _refused_here(host, model):
        return
    (inversion, _), stored = _bank(model, "rf-solver")
    (live,) = run_node("PnP_FeatureBank", model=model, inversion=inversion, conditioning=_conditioning(SOURCE),
                       attention_layers=BLOCKS, inject_steps=INJECT, bank_dtype="fp32", mode="on the fly")
    mask = torch.zeros(1, *(8 * side for side in LATENT_HW))
    mask[..., : mask.shape[-2] // 2, :] = 1.0
    out, calls = {}, {}
    for mode, bank in (("stored", stored), ("on the fly", live)):
        outputs = _guider(model, bank, mask=mask, injection_strength=0.7)
        with fc.TransformerCalls(model) as counted:
            out[mode] = _custom(outputs, sampler)
        calls[mode] = counted.count
    assert torch.equal(out["on the fly"], out["stored"])
    assert calls["on the fly"] - calls["stored"] == {"euler": 2, "heun": 3}[sampler]


def test_the_flux_guider_refuses_what_it_cannot_run_by_name(host, flux):
    """A negative prompt and a latent_image of another size are refused with what to change; the MODEL given is
    left unchanged."""
    model = flux("flux_schnell_tiny")
    if _refused_here(host, model):
        return
    errors = host.pack_module("pnp_hooks.errors")
    source = _conditioning(SOURCE)
    _, bank = _bank(model, "euler")
    with pytest.raises(errors.PnPInputError, match="negative_prompt is for the DDIM path; disconnect it for FLUX"):
        _guider(model, bank, negative_prompt=source)
    before = (repr(model.model_options), dict(model.object_patches))
    guider, sigmas, _, noise = _guider(model, bank)
    assert (repr(model.model_options), dict(model.object_patches)) == before
    with pytest.raises(errors.PnPInputError, match="connect PnP Guider's x_T as latent_image"):
        _custom((guider, sigmas, {"samples": torch.zeros(1, 16, 8, 8)}, noise))
