"""The FLUX bank "on the fly" (``pnp_hooks.flux_sampling.live_bank``, issue 19) against the stored bank.

A stored bank (``record_bank`` after a plain inversion) holds V of every injected evaluation; an on-the-fly bank
holds none and the denoising pass computes each one just before the evaluation that reads it (one model call on the
inversion's stored input, source prompt at guidance 1) and drops it after. On the tiny random FLUX.1 dev of
``flux_checkpoints`` (fp32 CPU):

- the translation is the stored bank's bit for bit (max difference 0.0), with the same keys injected in the same
  order, for rf-solver (4 steps, inject 2, single blocks 20-37, V in fp32) and fireflow (8 steps, inject 1, single
  blocks 0-37, V in bf16);
- model calls (NFE) counted by the transformer's forward calls: denoising on the fly = the stored bank's denoising
  NFE + one per injected evaluation (rf-solver 2 a step, fireflow 1), nothing more with injection off;
- one evaluation's V in memory at a time: every V of a source call is gone (weak references dead) before the next
  source call, and each holds ``evaluation_nbytes``; the bank itself holds 0 bytes.

Hosts: ComfyUI v0.33.0 loads the tiny FLUX with UNETLoader. v0.3.64 (no ``attn1_patch`` in FLUX blocks) refuses the
FLUX path with one line naming the version needed: every test asserts that refusal there.
"""
from __future__ import annotations

import gc
import weakref

import pytest
import torch

import flux_checkpoints as fc
from harness import run_node

SOURCE, TARGET = "source prompt", "target prompt"
LATENT_HW = (16, 16)
GUIDANCE = 2.0
# recipe -> (solver, steps, inject, blocks, V's dtype, injected evaluations a step)
RECIPES = {
    "rf-solver-edit": ("rf-solver", 4, 2, "20-37", torch.float32, 2),
    "fireflow-fast": ("fireflow", 8, 1, "0-37", torch.bfloat16, 1),
}
NFE_PER_PASS = {"rf-solver": lambda steps: 2 * steps, "fireflow": lambda steps: steps + 1}



@pytest.fixture(scope="module")
def dev_model(host):
    """The tiny FLUX.1 dev as a ComfyUI MODEL (``flux_checkpoints.load_model``)."""
    return fc.load_model(host, "flux_dev_tiny")


def _conditioning(prompt: str) -> list:
    tokens, pooled = fc.random_conditioning(prompt)
    return [[tokens, {"pooled_output": pooled}]]


def _latent(model) -> torch.Tensor:
    """A LATENT-space guidance latent (unit variance in model space)."""
    latent = torch.randn(1, 16, *LATENT_HW, generator=torch.Generator().manual_seed(4))
    return model.get_model_object("latent_format").process_out(latent)


def _flux_sampling_or_refused(host, model):
    """The pack's ``flux_sampling``; None on a host whose FLUX blocks have no attn1_patch, after asserting that
    ``live_bank`` refuses there with one line naming the version."""
    flux_sampling = host.pack_module("pnp_hooks.flux_sampling")
    if fc.has_flux_patches(host):
        return flux_sampling
    flux_bank = host.pack_module("pnp_hooks.flux_bank")
    errors = host.pack_module("pnp_hooks.errors")
    inversion = flux_bank.FluxInversion("Flux", "-", "rf-solver", (1.0, 0.0), torch.zeros(1, 16, 2, 2), {})
    with pytest.raises(errors.PnPInputError) as caught:
        flux_sampling.live_bank(model, inversion, _conditioning(SOURCE), inject=1)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("PnP on FLUX needs ComfyUI 0.33.0 or newer") and "this ComfyUI is 0.3.64" in message
    return None


class SourceCalls:
    """Watches the on-the-fly source calls (``_LiveSource._source_values``) while active: each call's keys and
    bytes, and whether any V of an earlier call is still alive when the next one starts."""

    def __init__(self, flux_sampling, monkeypatch):
        self.calls: list[tuple[tuple[int, bool], int, set]] = []
        self.alive_at_next: list[int] = []
        self._refs: list[weakref.ref] = []
        original = flux_sampling._LiveSource._source_values

        def watched(live, guider, key, x, model_options, injecting):
            gc.collect()
            self.alive_at_next.append(sum(ref() is not None for ref in self._refs))
            values = original(live, guider, key, x, model_options, injecting)
            self._refs = [weakref.ref(v) for v in values.values()]
            self.calls.append((key, sum(v.numel() * v.element_size() for v in values.values()), set(values)))
            return values

        monkeypatch.setattr(flux_sampling._LiveSource, "_source_values", watched)

    def alive_now(self) -> int:
        gc.collect()
        return sum(ref() is not None for ref in self._refs)


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_on_the_fly_translates_as_the_stored_bank_bit_for_bit(host, dev_model, monkeypatch, recipe):
    """Same final latent (max difference 0.0) and the same keys injected as the stored bank; NFE = the stored
    bank's denoising NFE + one per injected evaluation; one evaluation's V in memory at a time; 0 bytes held."""
    flux_sampling = _flux_sampling_or_refused(host, dev_model)
    if flux_sampling is None:
        return
    bank_module = host.pack_module("pnp_hooks.bank")
    solver, steps, inject, blocks, dtype, per_step = RECIPES[recipe]
    source, target = _conditioning(SOURCE), _conditioning(TARGET)
    with torch.inference_mode():
        plain = flux_sampling.invert(dev_model, _latent(dev_model), source, steps, solver=solver)
        stored = flux_sampling.record_bank(dev_model, plain.inversion, source, blocks=blocks, inject=inject,
                                           storage_dtype=dtype)
        live = flux_sampling.live_bank(dev_model, plain.inversion, source, blocks=blocks, inject=inject,
                                       storage_dtype=dtype)
        with fc.TransformerCalls(dev_model) as stored_calls:
            out_stored, injected_stored = flux_sampling.sample(dev_model, stored, target, guidance=GUIDANCE)
        watch = SourceCalls(flux_sampling, monkeypatch)
        with fc.TransformerCalls(dev_model) as live_calls:
            out_live, injected_live = flux_sampling.sample(dev_model, live, target, guidance=GUIDANCE)
        out_off, _ = flux_sampling.sample(dev_model, stored, target, guidance=GUIDANCE, inject=False)

    diff = (out_live["samples"] - out_stored["samples"]).abs().max().item()
    effect = (out_stored["samples"] - out_off["samples"]).abs().max().item()
    print(f"\n{recipe}: max |on the fly - stored| {diff}; injection's effect {effect:.3e}; NFE denoising stored "
          f"{stored_calls.count}, on the fly {live_calls.count}; stored bank {stored.nbytes} B, on the fly peak "
          f"{max(nbytes for _, nbytes, _ in watch.calls)} B")
    assert diff == 0.0 and effect > 1e-3
    assert injected_live == injected_stored and len(injected_live) == per_step * inject * len(stored.blocks)

    per_pass = NFE_PER_PASS[solver](steps)
    assert stored_calls.count == per_pass
    assert live_calls.count == per_pass + per_step * inject == per_pass + len(live.source_keys)
    assert [key for key, _, _ in watch.calls] == list(live.source_keys)
    assert {key[:2] for key in injected_live} == set(live.source_keys)

    assert live.mode == bank_module.ON_THE_FLY and stored.mode == bank_module.STORED
    assert live.nbytes == 0 and live.values == {} and stored.nbytes == live.stored_nbytes
    assert watch.alive_at_next == [0] * len(watch.calls) and watch.alive_now() == 0
    assert all(nbytes == live.evaluation_nbytes == live.peak_nbytes for _, nbytes, _ in watch.calls)
    assert all(keys == {(*key, block) for block in live.blocks} for key, _, keys in watch.calls)


def test_on_the_fly_without_injection_runs_no_source_call(host, dev_model, monkeypatch):
    """``sample(..., inject=False)`` on an on-the-fly bank is the plain denoising: no source call, nothing
    injected, the stored bank's inject-off latent exactly."""
    flux_sampling = _flux_sampling_or_refused(host, dev_model)
    if flux_sampling is None:
        return
    source, target = _conditioning(SOURCE), _conditioning(TARGET)
    with torch.inference_mode():
        plain = flux_sampling.invert(dev_model, _latent(dev_model), source, 2, solver="euler")
        live = flux_sampling.live_bank(dev_model, plain.inversion, source, inject=2)
        watch = SourceCalls(flux_sampling, monkeypatch)
        with fc.TransformerCalls(dev_model) as calls:
            out_live, injected = flux_sampling.sample(dev_model, live, target, inject=False)
        out_plain, _ = flux_sampling.sample(dev_model, plain, target, inject=False)
    assert injected == [] and watch.calls == [] and calls.count == 2
    assert torch.equal(out_live["samples"], out_plain["samples"])


def test_on_the_fly_refuses_a_source_it_cannot_run_as_one_plain_prompt(host, dev_model):
    """The live source call is one plain prompt: a conditioning of two entries is refused with what to do."""
    flux_sampling = _flux_sampling_or_refused(host, dev_model)
    if flux_sampling is None:
        return
    errors = host.pack_module("pnp_hooks.errors")
    source = _conditioning(SOURCE)
    with torch.inference_mode():
        plain = flux_sampling.invert(dev_model, _latent(dev_model), source, 1, solver="euler")
    with pytest.raises(errors.PnPInputError, match="exactly one source prompt.*set mode to 'stored'"):
        flux_sampling.live_bank(dev_model, plain.inversion, source + _conditioning(TARGET), inject=1)


def test_the_feature_bank_node_in_on_the_fly_mode_gives_the_stored_translation(host, dev_model):
    """PnP Feature Bank with mode "on the fly" on FLUX: a bank with no V whose PnP Sampler translation (with a mask
    and an injection strength below 1) equals the stored mode's bit for bit."""
    flux_sampling = _flux_sampling_or_refused(host, dev_model)
    if flux_sampling is None:
        return
    bank_module = host.pack_module("pnp_hooks.bank")
    source, target = _conditioning(SOURCE), _conditioning(TARGET)
    (inversion, _) = run_node("PnP_DDIMInversion", model=dev_model, latent={"samples": _latent(dev_model)},
                              conditioning=source, steps=3, solver="rf-solver")
    banks, outs = {}, {}
    mask = torch.zeros(1, *(side * 8 for side in LATENT_HW))
    mask[:, : mask.shape[1] // 2] = 1.0
    for mode in bank_module.BANK_MODES:
        (banks[mode],) = run_node("PnP_FeatureBank", model=dev_model, inversion=inversion, conditioning=source,
                                  attention_layers="30-37", inject_steps=2, bank_dtype="fp32", mode=mode)
        (outs[mode],) = run_node("PnP_Sampler", model=dev_model, positive=target, negative=source,
                                 features=banks[mode], mask=mask, injection_strength=0.7)
    live, stored = banks[bank_module.ON_THE_FLY], banks[bank_module.STORED]
    assert live.mode == bank_module.ON_THE_FLY and live.nbytes == 0 and stored.nbytes == live.stored_nbytes > 0
    assert torch.equal(outs[bank_module.ON_THE_FLY]["samples"], outs[bank_module.STORED]["samples"])


def test_an_sd_model_refuses_a_flux_inversion_or_bank_naming_what_to_connect(host, models):
    """The DDIM path given a FLUX value (PnP Feature Bank with a FLUX inversion, PnP Sampler and PnP Guider with a
    FLUX bank, stored or on the fly) stops before any work with what to connect, on every host."""
    flux_bank = host.pack_module("pnp_hooks.flux_bank")
    errors = host.pack_module("pnp_hooks.errors")
    model, clip, _ = models.load("sd15_reduced")
    (prompt,) = run_node("CLIPTextEncode", clip=clip, text="a photo")
    inversion = flux_bank.FluxInversion("Flux", "-", "rf-solver", (1.0, 0.0), torch.zeros(1, 16, 8, 8), {})
    stored = flux_bank.FluxBank(inversion, (20,), 1, {}, 8)
    live = flux_bank.FluxLiveBank(inversion, (20,), 1, _conditioning(SOURCE), torch.float32, 8, 128)
    made_with = "was made with a FLUX model, but the MODEL connected is an SD one: connect the FLUX MODEL"
    with pytest.raises(errors.PnPInputError, match=f"This inversion {made_with}"):
        run_node("PnP_FeatureBank", model=model, inversion=inversion, conditioning=prompt)
    for node in ("PnP_Sampler", "PnP_Guider"):
        for bank in (stored, live):
            with pytest.raises(errors.PnPInputError, match=f"This feature bank {made_with}"):
                run_node(node, model=model, positive=prompt, negative=prompt, features=bank)
