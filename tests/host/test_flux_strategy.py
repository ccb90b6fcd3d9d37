"""FireFlow's editing strategies on FLUX.1 (issue 19): PnP Feature Bank's ``flux_edit`` and ``qkv_ratio``.

FireFlow's ``edit.py --reuse_v 0 --editing_strategy S --qkv_ratio a,b,c`` records at the single blocks of the
range ``q * a`` (after the QK norm, before RoPE) if S names q, ``k * b`` if it names k, ``v * c`` if it names v,
and in the denoising pass applies replace_v, add_v, replace_k, add_k, replace_q, add_q in that order, each where a
tensor was recorded under the same key (FF:layers.py:238-278). The pack's FLUX path, through the nodes PnP users
know (PnP DDIM Inversion, PnP Feature Bank, PnP Sampler) on the tiny random FLUX.1 dev of ``flux_checkpoints``
(fp32 CPU), against ``reference_flux.edit`` with ``fireflow_info(reuse_v=0, ...)`` (diffusers on the same weights):

- three strategies over both solvers, one with ratios other than 1: max |final packed latent - reference|
  <= 1e-4, the gap to no injection far larger; the same tensors read at the same keys; the bank's bytes are
  (tensors recorded) x the official formula, the official store's size;
- the on-the-fly bank translates as the stored one, bit for bit;
- with a mask or a strength below 1, add adds w x the recorded tensor: strength 0 is no injection and a mask of
  ones the full strategy, bit for bit;
- a bad ``flux_edit`` or ``qkv_ratio`` is refused with what to type, before the inversion is asked for (the
  node's lazy check) and before any model call;
- PnP Guider (SamplerCustomAdvanced, euler) applies the bank's strategy as PnP Sampler does.

v0.3.64 (no ``attn1_patch`` in its FLUX blocks): the FLUX path is refused with one line naming the version.
"""
from __future__ import annotations


import pytest
import torch

import flux_checkpoints as fc
import reference_flux as ref
from harness import declared_defaults, node_class, run_node

PARITY_TOL = 1e-4
SOURCE, TARGET = "source prompt", "target prompt"
LATENT_HW = (16, 16)
GUIDANCE = 2.0
# case -> (solver, steps, inject, blocks, flux_edit, qkv_ratio, the reference's solver, start and end block)
CASES = {
    "add_q,add_k fireflow": ("fireflow", 8, 1, "0-37", "add_q,add_k", "1.0,1.0,1.0", "fireflow", 0, 37),
    "replace_k,replace_v ratio rf-solver": ("rf-solver", 4, 2, "20-37", "replace_k,replace_v", "1.0,0.7,1.3",
                                            "rf_solver", 20, 37),
    "add_v rf-solver": ("rf-solver", 4, 2, "20-37", "add_v", "1.0,1.0,1.0", "rf_solver", 20, 37),
}
EVALUATIONS = {"rf-solver": 2, "fireflow": 1}  # recorded evaluations a step



@pytest.fixture(scope="module")
def dev(host):
    """(the tiny FLUX.1 dev as a ComfyUI MODEL, the reference OfficialFlux on the same weights)."""
    model = fc.load_model(host, "flux_dev_tiny")
    transformer = ref.diffusers_flux_from_comfy(model.model.diffusion_model.state_dict(),
                                                fc.flux_params("flux_dev_tiny"))
    return model, ref.OfficialFlux(transformer)


def _conditioning(prompt: str):
    tokens, pooled = fc.random_conditioning(prompt)
    return [[tokens, {"pooled_output": pooled}]], (tokens, pooled)


def _latent() -> torch.Tensor:
    """A model-space latent (what the official ``encode`` returns), unit variance."""
    return torch.randn(1, 16, *LATENT_HW, generator=torch.Generator().manual_seed(4))


def _flux_path(host, model) -> bool:
    """Whether this host runs PnP on FLUX; where it does not, asserts the one-line refusal first."""
    if fc.has_flux_patches(host):
        return True
    errors = host.pack_module("pnp_hooks.errors")
    source, _ = _conditioning(SOURCE)
    with pytest.raises(errors.PnPInputError) as caught:
        run_node("PnP_DDIMInversion", model=model, latent={"samples": torch.zeros(1, 16, 8, 8)}, conditioning=source,
                 steps=2, solver="fireflow")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("PnP on FLUX needs ComfyUI 0.33.0 or newer") and "this ComfyUI is 0.3.64" in message
    return False


def _inversion(model, solver: str, steps: int):
    fmt = model.get_model_object("latent_format")
    source, _ = _conditioning(SOURCE)
    inversion, _ = run_node("PnP_DDIMInversion", model=model, latent={"samples": fmt.process_out(_latent())},
                            conditioning=source, steps=steps, solver=solver)
    return inversion


def _reference(reference, case: str, inject: int):
    _, steps, _, _, flux_edit, qkv_ratio, solver, start, end = CASES[case]
    _, source = _conditioning(SOURCE)
    _, target = _conditioning(TARGET)
    ratio = tuple(float(r) for r in qkv_ratio.split(","))
    info = ref.fireflow_info(inject, start, end, reuse_v=0, editing_strategy=flux_edit, qkv_ratio=ratio)
    return ref.edit(reference, _latent(), source, target, steps, info, guidance=GUIDANCE, solver=solver)


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_fireflow_strategy_equals_the_official_reuse_v_0(host, dev, case):
    """PnP Feature Bank with ``flux_edit`` / ``qkv_ratio``, then PnP Sampler, equals FireFlow's ``--reuse_v 0``
    edit to 1e-4; the strategy's own effect dwarfs the tolerance; the pack put the recorded tensors in place at the
    keys the official code reads; the bank holds the official store's bytes."""
    model, reference = dev
    if not _flux_path(host, model):
        return
    solver, steps, inject, blocks, flux_edit, qkv_ratio, _, _, _ = CASES[case]
    fmt = model.get_model_object("latent_format")
    source, _ = _conditioning(SOURCE)
    target, _ = _conditioning(TARGET)
    (guided,) = run_node("FluxGuidance", conditioning=target, guidance=GUIDANCE)
    inversion = _inversion(model, solver, steps)
    (bank,) = run_node("PnP_FeatureBank", model=model, inversion=inversion, conditioning=source,
                       attention_layers=blocks, inject_steps=inject, bank_dtype="fp32", flux_edit=flux_edit,
                       qkv_ratio=qkv_ratio)
    (out,) = run_node("PnP_Sampler", model=model, positive=guided, negative=source, features=bank)
    with torch.inference_mode():
        _, injected = host.pack_module("pnp_hooks.flux_sampling").sample(model, bank, guided, guidance=None)
    theirs = _reference(reference, case, inject)
    theirs_off = _reference(reference, case, 0)

    err = (ref.pack(fmt.process_in(out["samples"].clone())) - ref.pack(theirs.latent)).abs().max().item()
    gap = (theirs.latent - theirs_off.latent).abs().max().item()
    print(f"\n{case}: max |ours - reference| {err:.2e}; gap to no injection {gap:.3e}; bank {bank.nbytes} B, "
          f"{bank.edit.describe()}")
    assert err <= PARITY_TOL
    assert gap > 20 * PARITY_TOL and gap > 1000 * err

    recorded = bank.edit.recorded
    assert recorded == tuple(letter for letter in "qkv" if letter in flux_edit)
    reads = [e.key for e in theirs.info['log'] if e.action == "read"]
    ours = [f"{bank.times[j]}_{second}_{block}_single_{which.upper()}" for j, second, block in injected
            for which in recorded]
    assert sorted(ours) == sorted(reads) and len(set(ours)) == len(ours) > 0

    tokens = fc.random_conditioning(SOURCE)[0].shape[1] + (LATENT_HW[0] // 2) * (LATENT_HW[1] // 2)
    flux_family = host.pack_module("pnp_hooks.families.flux")
    per_tensor = flux_family.bank_bytes(tokens, 128, len(bank.blocks), EVALUATIONS[solver], inject, 4)
    assert len(bank.values) == len(recorded) * len(bank.blocks) * EVALUATIONS[solver] * inject
    assert bank.nbytes == len(recorded) * per_tensor == theirs.store_bytes


def test_on_the_fly_translates_a_strategy_as_the_stored_bank(host, dev):
    """``flux_edit`` "add_q,add_k" with ratios 0.5, 2, 1 in mode "on the fly": the stored bank's translation bit
    for bit, the same keys injected, one evaluation's q and k held at a time (2 x one V's bytes)."""
    model, _ = dev
    if not _flux_path(host, model):
        return
    bank_module = host.pack_module("pnp_hooks.bank")
    source, _ = _conditioning(SOURCE)
    target, _ = _conditioning(TARGET)
    inversion = _inversion(model, "rf-solver", 3)
    banks, outs = {}, {}
    for mode in bank_module.BANK_MODES:
        (banks[mode],) = run_node("PnP_FeatureBank", model=model, inversion=inversion, conditioning=source,
                                  attention_layers="30-37", inject_steps=2, bank_dtype="fp32", mode=mode,
                                  flux_edit="add_q,add_k", qkv_ratio="0.5,2,1")
        (outs[mode],) = run_node("PnP_Sampler", model=model, positive=target, negative=source, features=banks[mode])
    live, stored = banks[bank_module.ON_THE_FLY], banks[bank_module.STORED]
    with torch.inference_mode():
        plain, _ = host.pack_module("pnp_hooks.flux_sampling").sample(model, stored, target, inject=False)
    assert live.edit == stored.edit and stored.edit.recorded == ("q", "k")
    assert torch.equal(outs[bank_module.ON_THE_FLY]["samples"], outs[bank_module.STORED]["samples"])
    assert (outs[bank_module.STORED]["samples"] - plain["samples"]).abs().max().item() > 20 * PARITY_TOL
    one_v = live.evaluation_nbytes // 2
    assert live.nbytes == 0 and stored.nbytes == live.stored_nbytes == len(live.source_keys) * 2 * one_v > 0
    assert one_v == (fc.random_conditioning(SOURCE)[0].shape[1] + 64) * 128 * 8 * 4


def test_add_with_a_mask_or_strength_adds_the_weighted_tensor(host, dev):
    """add puts own + w x recorded in place: injection_strength 0 gives the plain denoising and a mask of ones the
    full strategy, bit for bit; strength 0.5 lies strictly between."""
    model, _ = dev
    if not _flux_path(host, model):
        return
    fs = host.pack_module("pnp_hooks.flux_sampling")
    source, _ = _conditioning(SOURCE)
    target, _ = _conditioning(TARGET)
    inversion = _inversion(model, "euler", 3)
    (bank,) = run_node("PnP_FeatureBank", model=model, inversion=inversion, conditioning=source,
                       attention_layers="20-37", inject_steps=2, bank_dtype="fp32", flux_edit="add_v,add_k")
    with torch.inference_mode():
        on, keys_on = fs.sample(model, bank, target)
        off, _ = fs.sample(model, bank, target, inject=False)
        ones, _ = fs.sample(model, bank, target, weight_map=torch.ones(1, *LATENT_HW))
        none, keys_none = fs.sample(model, bank, target, strength=0.0)
        half, _ = fs.sample(model, bank, target, strength=0.5)
    assert keys_on and keys_none == keys_on
    assert torch.equal(ones["samples"], on["samples"]) and torch.equal(none["samples"], off["samples"])
    gap = (on["samples"] - off["samples"]).abs().max().item()
    to_on = (half["samples"] - on["samples"]).abs().max().item()
    to_off = (half["samples"] - off["samples"]).abs().max().item()
    print(f"\nadd_v,add_k euler: on/off gap {gap:.3e}; strength 0.5 from on {to_on:.3e}, from off {to_off:.3e}")
    assert gap > 20 * PARITY_TOL and 0 < to_on < gap and 0 < to_off < gap


@pytest.mark.parametrize("inputs, says", [
    ({"flux_edit": "replace_v,swap_k"}, "flux_edit takes a comma-separated choice among replace_v, add_v, "
                                        "replace_k, add_k, replace_q, add_q"),
    ({"flux_edit": " "}, "flux_edit takes a comma-separated choice among"),
    ({"qkv_ratio": "1,1"}, "qkv_ratio takes three finite numbers, the scales of the recorded q, k and v"),
    ({"qkv_ratio": "1,inf,1"}, "qkv_ratio takes three finite numbers"),
])
def test_a_bad_strategy_is_refused_before_the_inversion_and_any_model_call(host, dev, inputs, says):
    """The lazy check (what ComfyUI runs before it asks for the inversion) and the node itself refuse a strategy
    or ratio they cannot read, naming the valid values, before any model call."""
    model, _ = dev
    if not _flux_path(host, model):
        return
    errors = host.pack_module("pnp_hooks.errors")
    source, _ = _conditioning(SOURCE)
    values = {**declared_defaults("PnP_FeatureBank"), "model": model, "conditioning": source, **inputs}
    with pytest.raises(errors.PnPInputError, match=says):
        node_class("PnP_FeatureBank").check_lazy_status(inversion=None, **values)
    inversion = _inversion(model, "euler", 2)
    with fc.TransformerCalls(model) as calls, pytest.raises(errors.PnPInputError, match=says):
        run_node("PnP_FeatureBank", model=model, inversion=inversion, conditioning=source, **inputs)
    assert calls.count == 0


def test_the_flux_guider_applies_the_banks_strategy_as_pnp_sampler(host, dev):
    """PnP Guider reads the strategy from the bank: SamplerCustomAdvanced (euler) on its outputs with an euler bank
    of "replace_v,add_q" (ratios 1, 1, 0.8) gives PnP Sampler's translation up to float rounding (1e-5, as
    test_flux_guider), far from the guider's own translation without injection."""
    model, _ = dev
    if not _flux_path(host, model):
        return
    source, _ = _conditioning(SOURCE)
    target, _ = _conditioning(TARGET)
    inversion = _inversion(model, "euler", 4)
    (bank,) = run_node("PnP_FeatureBank", model=model, inversion=inversion, conditioning=source,
                       attention_layers="20-37", inject_steps=2, bank_dtype="fp32", flux_edit="replace_v,add_q",
                       qkv_ratio="1,1,0.8")

    def custom(**inputs) -> torch.Tensor:
        guider, sigmas, x_T, noise = run_node("PnP_Guider", model=model, positive=target, negative=target,
                                              features=bank, **inputs)
        (sampler,) = run_node("KSamplerSelect", sampler_name="euler")
        return run_node("SamplerCustomAdvanced", noise=noise, guider=guider, sampler=sampler, sigmas=sigmas,
                        latent_image=x_T)[0]["samples"]

    (by_sampler,) = run_node("PnP_Sampler", model=model, positive=target, negative=target, features=bank)
    err = (custom() - by_sampler["samples"]).abs().max().item()
    gap = (custom(injection_strength=0.0) - by_sampler["samples"]).abs().max().item()
    print(f"\nreplace_v,add_q euler: max |guider - PnP Sampler| {err:.2e}; injection off {gap:.3e}")
    assert bank.edit.recorded == ("q", "v")
    assert err <= 1e-5 and gap > 100 * 1e-5
