"""PnP on FLUX.1 through ComfyUI (``pnp_hooks.flux_sampling``) against the official algorithms (issue 19).

The pack's FLUX path (inversion from t = 0 with the source prompt at guidance 1 recording V at single
blocks, then denoising from the inverted noise with the target prompt and V put in place through
ComfyUI's ``attn1_patch``) on the tiny random FLUX.1 dev/schnell of ``flux_checkpoints`` (hidden 128,
2 double + 38 single blocks; fp32 CPU), against ``reference_flux.edit`` (diffusers' FluxTransformer2DModel
on the same weights, bit-identical to the official code):

- RF-Solver-Edit: rf-solver, 4 steps, inject 2, single blocks 20-37, V replaced.
- FireFlow's fast editing: fireflow, 8 steps, inject 1, single blocks 0-37, V replaced.
Each on dev and schnell, injection on and off: max |final packed latent - reference| <= 1e-4, and the gap
between on and off is far larger than that. NFE is counted by the transformer's calls.

Hosts: ComfyUI v0.33.0 loads the tiny FLUX with UNETLoader and calls ``attn1_patch`` in FLUX blocks.
v0.3.64 detects every FLUX as full size and its FLUX blocks call no ``attn1_patch``: there the tests build
the same model by hand (ComfyUI's own ``supported_models`` config and ``model_base.Flux``) and assert the FLUX
path is refused with one line naming the version needed.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

import flux_checkpoints as fc
import reference_flux as ref
from harness import run_node

PARITY_TOL = 1e-4
SOURCE, TARGET = "source prompt", "target prompt"
LATENT_HW = (16, 16)
# (solver, steps, inject, blocks, the reference's solver and info) per official recipe.
RECIPES = {
    "rf-solver-edit": ("rf-solver", 4, 2, "20-37", "rf_solver", lambda inject: ref.rf_solver_info(inject)),
    "fireflow-fast": ("fireflow", 8, 1, "0-37", "fireflow", lambda inject: ref.fireflow_info(inject, 0, 37)),
}
GUIDANCE = 2.0
# Measured (v0.33.0, torch 2.9.1, fp32 CPU, 16x16 latent, 8 text tokens), max |ours - reference| on / off, on-off gap:
#   dev     RF-Solver-Edit 1.55e-6 / 1.43e-6, gap 1.41e-2;  FireFlow 9.5e-7 / 1.07e-6, gap 4.37e-3
#   schnell RF-Solver-Edit 1.31e-6 / 1.19e-6, gap 1.21e-2;  FireFlow 8.3e-7 / 1.07e-6, gap 5.23e-3
# inverted latents 7e-7..9.5e-7; NFE (inversion, denoising) RF-Solver 4 steps (8, 8), FireFlow 8 steps (9, 9);
# bank 2,654,208 B (RF: 72 tokens x 128 x 18 blocks x 2 evaluations x 2 steps x 4 B), 1,400,832 B (FireFlow: 38 blocks
# x 1 evaluation x 1 step).



@pytest.fixture(scope="module")
def flux(host):
    """layout -> (ComfyUI MODEL, reference OfficialFlux on the same weights)."""
    loaded = {}

    def get(layout: str):
        if layout not in loaded:
            model = fc.load_model(host, layout)
            weights = model.model.diffusion_model.state_dict()
            transformer = ref.diffusers_flux_from_comfy(weights, fc.flux_params(layout))
            loaded[layout] = (model, ref.OfficialFlux(transformer))
        return loaded[layout]

    return get


def _conditioning(prompt: str):
    tokens, pooled = fc.random_conditioning(prompt)
    return [[tokens, {"pooled_output": pooled}]], (tokens, pooled)


def _latent(seed: int = 4) -> torch.Tensor:
    """A model-space latent (what the official ``encode`` returns), unit variance."""
    return torch.randn(1, 16, *LATENT_HW, generator=torch.Generator().manual_seed(seed))


def _ours(host, model, latent, recipe: str, inject: int, guidance: float = GUIDANCE):
    flux_sampling = host.pack_module("pnp_hooks.flux_sampling")
    solver, steps, _, blocks, _, _ = RECIPES[recipe]
    fmt = model.get_model_object("latent_format")
    source, _ = _conditioning(SOURCE)
    target, _ = _conditioning(TARGET)
    with torch.inference_mode():
        with fc.TransformerCalls(model) as inversion_calls:
            bank = flux_sampling.invert(model, fmt.process_out(latent.clone()), source, steps, solver=solver,
                                        blocks=blocks, inject=inject)
        with fc.TransformerCalls(model) as denoising_calls:
            out, injected = flux_sampling.sample(model, bank, target, guidance=guidance)
    return fmt.process_in(out["samples"].clone()), bank, injected, (inversion_calls.count, denoising_calls.count)


def _reference(reference, latent, recipe: str, inject: int, guidance: float = GUIDANCE):
    _, steps, _, _, solver, info = RECIPES[recipe]
    _, source = _conditioning(SOURCE)
    _, target = _conditioning(TARGET)
    return ref.edit(reference, latent, source, target, steps, info(inject), guidance=guidance, solver=solver)


def _refused(host, model, latent) -> None:
    """v0.3.64: the FLUX path stops at once with one line naming the ComfyUI version it needs."""
    flux_sampling = host.pack_module("pnp_hooks.flux_sampling")
    errors = host.pack_module("pnp_hooks.errors")
    source, _ = _conditioning(SOURCE)
    with pytest.raises(errors.PnPInputError) as caught:
        flux_sampling.invert(model, latent, source, 4)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("PnP on FLUX needs ComfyUI 0.33.0 or newer") and "this ComfyUI is 0.3.64" in message


def _flux_path(host, model) -> tuple[torch.Tensor, object]:
    """A guidance latent and the pack's ``flux_sampling``; the module is None on a host whose FLUX blocks have
    no attn1_patch, after asserting its refusal."""
    latent = _latent()
    if not fc.has_flux_patches(host):
        _refused(host, model, latent)
        return latent, None
    return latent, host.pack_module("pnp_hooks.flux_sampling")


@dataclasses.dataclass(frozen=True)
class DevBank:
    """The tiny FLUX.1 dev, its reference, a latent and the FLUX path's bank of it (RF-Solver, 4 steps, inject 2,
    single blocks 20-37), with the target conditioning to sample it with."""

    model: object
    reference: object
    latent: torch.Tensor
    flux_sampling: object
    fmt: object
    target: list
    bank: object


def _dev_bank(host, flux) -> DevBank | None:
    """``DevBank``; None on a host whose FLUX blocks have no attn1_patch, after asserting its refusal."""
    model, reference = flux("flux_dev_tiny")
    latent, flux_sampling = _flux_path(host, model)
    if flux_sampling is None:
        return None
    fmt = model.get_model_object("latent_format")
    source, _ = _conditioning(SOURCE)
    target, _ = _conditioning(TARGET)
    with torch.inference_mode():
        bank = flux_sampling.invert(model, fmt.process_out(latent.clone()), source, 4, blocks="20-37", inject=2)
    return DevBank(model, reference, latent, flux_sampling, fmt, target, bank)


@pytest.mark.parametrize("layout", sorted(fc.LAYOUTS))
@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_flux_pnp_equals_the_official_algorithm(host, flux, layout, recipe):
    """Inversion + injected denoising through ComfyUI equals the official algorithm (reference) to 1e-4 in the
    final packed latent, with injection and without; the injection's own effect dwarfs the tolerance.
    NFE a pass: RF-Solver 2N, FireFlow N + 1. The V the pack substituted is exactly what the official code
    reads: the same keys (interval's noisier end, first/second evaluation, block)."""
    model, reference = flux(layout)
    latent = _latent()
    if not fc.has_flux_patches(host):
        _refused(host, model, latent)
        return
    solver, steps, inject, _, _, _ = RECIPES[recipe]
    ours_on, bank, injected, nfe = _ours(host, model, latent, recipe, inject)
    theirs_on = _reference(reference, latent, recipe, inject)
    ours_off, bank_off, injected_off, _ = _ours(host, model, latent, recipe, 0)
    theirs_off = _reference(reference, latent, recipe, 0)

    err_on = (ref.pack(ours_on) - ref.pack(theirs_on.latent)).abs().max().item()
    err_off = (ref.pack(ours_off) - ref.pack(theirs_off.latent)).abs().max().item()
    inverted_err = (ref.pack(bank.inverted) - theirs_on.inverted).abs().max().item()
    gap = (theirs_on.latent - theirs_off.latent).abs().max().item()
    print(f"\n{layout} {recipe}: max |ours - reference| on {err_on:.2e}, off {err_off:.2e}, inverted "
          f"{inverted_err:.2e}; on/off gap {gap:.3e}; NFE {nfe}; bank {bank.nbytes} B")
    assert err_on <= PARITY_TOL and err_off <= PARITY_TOL and inverted_err <= PARITY_TOL
    # Measured gaps: RF-Solver-Edit 1.4e-2 (dev) / 1.2e-2 (schnell), FireFlow (one injected midpoint) 4.4e-3 / 5.2e-3;
    # errors ~1.5e-6.
    assert gap > 20 * PARITY_TOL and gap > 1000 * max(err_on, err_off)
    assert (ours_on - ours_off).abs().max().item() > 20 * PARITY_TOL

    per_pass = {"rf-solver": 2 * steps, "fireflow": steps + 1}[solver]
    assert nfe == (per_pass, per_pass) == (theirs_on.nfe_inversion, theirs_on.nfe_denoising)

    read = [e.key for e in theirs_on.info['log'] if e.action == "read"]
    ours_read = [f"{bank.times[j]}_{second}_{block}_single_V" for j, second, block in injected]
    assert sorted(ours_read) == sorted(read) and len(set(ours_read)) == len(ours_read)
    assert injected_off == [] and bank_off.values == {} and bank_off.nbytes == 0

    text_tokens = fc.random_conditioning(SOURCE)[0].shape[1]
    tokens = text_tokens + (LATENT_HW[0] // 2) * (LATENT_HW[1] // 2)
    n_blocks = len(bank.blocks)
    evaluations = {"rf-solver": 2, "fireflow": 1}[solver]
    flux_family = host.pack_module("pnp_hooks.families.flux")
    assert bank.nbytes == flux_family.bank_bytes(tokens, 128, n_blocks, evaluations, inject, 4) == theirs_on.store_bytes


def test_sampling_without_injection_from_an_injecting_bank_is_the_plain_edit(host, flux):
    """``sample(..., inject=False)`` on a bank recorded for injection gives the reference's inject-0 edit."""
    dev = _dev_bank(host, flux)
    if dev is None:
        return
    with torch.inference_mode():
        out, injected = dev.flux_sampling.sample(dev.model, dev.bank, dev.target, guidance=GUIDANCE, inject=False)
    theirs = _reference(dev.reference, dev.latent, "rf-solver-edit", 0)
    assert injected == []
    assert (dev.fmt.process_in(out["samples"].clone()) - theirs.latent).abs().max().item() <= PARITY_TOL


def test_the_given_model_is_left_unchanged(host, flux):
    """After a FLUX PnP run the MODEL has no patches, wrappers or object patches it did not have before."""
    model, _ = flux("flux_schnell_tiny")
    latent, flux_sampling = _flux_path(host, model)
    if flux_sampling is None:
        return
    before = (repr(model.model_options), dict(model.object_patches), model.get_model_object("model_sampling"))
    source, _ = _conditioning(SOURCE)
    fmt = model.get_model_object("latent_format")
    with torch.inference_mode():
        bank = flux_sampling.invert(model, fmt.process_out(latent), source, 2, solver="euler", inject=1)
        flux_sampling.sample(model, bank, source)
    after = (repr(model.model_options), dict(model.object_patches), model.get_model_object("model_sampling"))
    assert before == after
    assert type(model.get_model_object("model_sampling")).calculate_denoised.__qualname__.startswith("CONST")


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_a_bank_recorded_from_the_stored_inversion_is_the_one_the_inversion_records(host, flux, recipe):
    """``record_bank`` runs the model again on the inputs the inversion evaluated (kept in ``bank.inversion``):
    the same V bit for bit, at one model call per recorded evaluation, so an inversion serves banks of other
    blocks and steps without inverting again."""
    model, _ = flux("flux_dev_tiny")
    latent, flux_sampling = _flux_path(host, model)
    if flux_sampling is None:
        return
    solver, steps, inject, blocks, _, _ = RECIPES[recipe]
    fmt = model.get_model_object("latent_format")
    source, _ = _conditioning(SOURCE)
    with torch.inference_mode():
        in_pass = flux_sampling.invert(model, fmt.process_out(latent.clone()), source, steps, solver=solver,
                                       blocks=blocks, inject=inject)
        plain = flux_sampling.invert(model, fmt.process_out(latent.clone()), source, steps, solver=solver)
        with fc.TransformerCalls(model) as calls:
            later = flux_sampling.record_bank(model, plain.inversion, source, blocks=blocks, inject=inject)
    assert plain.values == {} and len(plain.inversion.inputs) == {"rf-solver": 2 * steps, "fireflow": steps + 1}[solver]
    assert torch.equal(plain.inverted, in_pass.inverted)
    assert set(later.values) == set(in_pass.values) and len(later.values) > 0
    assert all(torch.equal(later.values[key], in_pass.values[key]) for key in later.values)
    evaluations = {key[:2] for key in later.values}
    assert calls.count == len(evaluations) == {"rf-solver": 2 * inject, "fireflow": inject}[solver]


def test_the_ddim_only_nodes_refuse_a_flux_model_with_what_to_load(host, flux):
    """PnP Generate Guidance (DDIM generation, the UNet path only) given a FLUX MODEL stops at once, naming what it
    runs."""
    model, _ = flux("flux_dev_tiny")
    errors = host.pack_module("pnp_hooks.errors")
    source, _ = _conditioning(SOURCE)
    with pytest.raises(errors.PnPInputError, match="DDIM nodes run SD 1.x, SD 2.x and SDXL; this MODEL is FLUX.1 "
                                                   "dev, which they cannot run"):
        run_node("PnP_GenerateGuidance", model=model, positive=source, negative=source,
                 latent={"samples": torch.zeros(1, 16, 8, 8)}, steps=3)


def test_guidance_none_keeps_the_target_conditionings_own_flux_guidance(host, flux):
    """``sample(guidance=None)`` reads the FLUX guidance a FluxGuidance node put on the target conditioning."""
    dev = _dev_bank(host, flux)
    if dev is None:
        return
    (guided,) = run_node("FluxGuidance", conditioning=dev.target, guidance=3.0)
    with torch.inference_mode():
        out, _ = dev.flux_sampling.sample(dev.model, dev.bank, guided, guidance=None)
    theirs = _reference(dev.reference, dev.latent, "rf-solver-edit", 2, guidance=3.0)
    assert (dev.fmt.process_in(out["samples"].clone()) - theirs.latent).abs().max().item() <= PARITY_TOL


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_the_pnp_nodes_run_flux_as_the_official_algorithm(host, flux, recipe):
    """The node IDs users know, given a FLUX MODEL: PnP DDIM Inversion (solver), PnP Feature Bank
    (attention_layers = single blocks, inject_steps, fp32) and PnP Sampler (FLUX guidance from FluxGuidance on the
    target prompt) give the official edit to 1e-4; the inversion's noise output is its end point."""
    model, reference = flux("flux_schnell_tiny")
    latent = _latent()
    if not fc.has_flux_patches(host):
        _refused(host, model, latent)
        return
    solver, steps, inject, blocks, _, _ = RECIPES[recipe]
    fmt = model.get_model_object("latent_format")
    source, _ = _conditioning(SOURCE)
    target, _ = _conditioning(TARGET)
    (guided,) = run_node("FluxGuidance", conditioning=target, guidance=GUIDANCE)
    inversion, noise = run_node("PnP_DDIMInversion", model=model, latent={"samples": fmt.process_out(latent.clone())},
                                conditioning=source, steps=steps, solver=solver)
    (bank,) = run_node("PnP_FeatureBank", model=model, inversion=inversion, conditioning=source,
                       attention_layers=blocks, inject_steps=inject, bank_dtype="fp32")
    (out,) = run_node("PnP_Sampler", model=model, positive=guided, negative=source, features=bank)
    theirs = _reference(reference, latent, recipe, inject)
    err = (ref.pack(fmt.process_in(out["samples"].clone())) - ref.pack(theirs.latent)).abs().max().item()
    print(f"\nnodes, schnell {recipe}: max |ours - reference| {err:.2e}; bank {bank.nbytes} B")
    assert err <= PARITY_TOL
    noise_err = (fmt.process_in(noise["samples"].clone()) - ref.unpack(theirs.inverted, *LATENT_HW)).abs().max()
    assert noise_err <= PARITY_TOL
    assert bank.nbytes == theirs.store_bytes > 0

    errors = host.pack_module("pnp_hooks.errors")
    with pytest.raises(errors.PnPInputError, match="FLUX has no ResBlock sites"):
        run_node("PnP_FeatureBank", model=model, inversion=inversion, conditioning=source, resblock_layers="4")


def test_flux_mask_and_injection_strength_blend_v_as_on_sd(host, flux):
    """Mask and injection strength on FLUX (``flux_sampling.token_weights``): V becomes lerp(own, recorded, w) per
    token. A mask of ones is no mask and a mask of zeros (outside 0) or strength 0 is no injection, bit for bit;
    strength 0.5 lies strictly between injection on and off. Image tokens take the mask area-averaged over their
    2x2 latent patch (row-major), text tokens the strength times the mask's largest weight. PnP Sampler passes
    mask, outside_mask_strength and injection_strength to the FLUX path."""
    dev = _dev_bank(host, flux)
    if dev is None:
        return
    fs, model, bank, target = dev.flux_sampling, dev.model, dev.bank, dev.target
    pixels = tuple(8 * n for n in LATENT_HW)
    with torch.inference_mode():
        on, keys_on = fs.sample(model, bank, target)
        off, keys_off = fs.sample(model, bank, target, inject=False)
        ones, _ = fs.sample(model, bank, target, weight_map=torch.ones(1, *pixels))
        zeros, _ = fs.sample(model, bank, target, weight_map=torch.zeros(1, *LATENT_HW))
        none, _ = fs.sample(model, bank, target, strength=0.0)
        half, keys_half = fs.sample(model, bank, target, strength=0.5)
    assert keys_on and not keys_off and keys_half == keys_on
    assert torch.equal(ones["samples"], on["samples"])
    assert torch.equal(zeros["samples"], off["samples"]) and torch.equal(none["samples"], off["samples"])
    gap = (on["samples"] - off["samples"]).abs().max().item()
    to_on = (half["samples"] - on["samples"]).abs().max().item()
    to_off = (half["samples"] - off["samples"]).abs().max().item()
    print(f"\ndev RF-Solver-Edit: on/off gap {gap:.3e}; strength 0.5 from on {to_on:.3e}, from off {to_off:.3e}")
    assert 0 < to_on < gap and 0 < to_off < gap

    # the token weights of a mask of the image's left half at latent size, strength 0.8 (8 text tokens)
    left = torch.zeros(1, *LATENT_HW)
    left[..., : LATENT_HW[1] // 2] = 1.0
    weights = fs.token_weights(left, 0.8, LATENT_HW, 8)
    grid = weights[8:].reshape(LATENT_HW[0] // 2, LATENT_HW[1] // 2)
    assert weights.shape == (8 + grid.numel(),) and torch.equal(weights[:8], torch.full((8,), 0.8))
    assert torch.equal(grid[:, :4], torch.full((8, 4), 0.8)) and torch.equal(grid[:, 4:], torch.zeros(8, 4))
    assert fs.token_weights(None, 1.0, LATENT_HW, 8) is None

    # the node: PnP Sampler with the mask at pixel size, outside 0.25, strength 0.7 = the FLUX path's blend
    mask = torch.zeros(1, *pixels)
    mask[..., : pixels[1] // 2] = 1.0
    (guided,) = run_node("FluxGuidance", conditioning=target, guidance=GUIDANCE)
    (by_node,) = run_node("PnP_Sampler", model=model, positive=guided, negative=target, features=bank, mask=mask,
                          outside_mask_strength=0.25, injection_strength=0.7)
    with torch.inference_mode():
        direct, _ = fs.sample(model, bank, guided, guidance=None, weight_map=0.25 + 0.75 * mask, strength=0.7)
        plain, _ = fs.sample(model, bank, guided, guidance=None)
    assert torch.equal(by_node["samples"], direct["samples"])
    assert not torch.equal(by_node["samples"], plain["samples"])


def test_the_sd_bank_nodes_refuse_a_flux_bank_by_name(host, flux):
    """PnP Save Feature Bank and PnP Feature PCA read SD banks: a FLUX bank is refused, naming where it goes."""
    model, _ = flux("flux_schnell_tiny")
    if not fc.has_flux_patches(host):
        _refused(host, model, _latent())
        return
    flux_sampling = host.pack_module("pnp_hooks.flux_sampling")
    errors = host.pack_module("pnp_hooks.errors")
    source, _ = _conditioning(SOURCE)
    with torch.inference_mode():
        bank = flux_sampling.invert(model, torch.zeros(1, 16, 8, 8), source, 1, solver="euler", inject=1)
    for node, inputs in (("PnP_SaveFeatures", {}), ("PnP_FeaturePCA", {"model": model})):
        with pytest.raises(errors.PnPInputError, match="takes a bank recorded with an SD model; this one is a FLUX"):
            run_node(node, features=bank, **inputs)
