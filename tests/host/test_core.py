"""Core PnP nodes on the real host: hook sites and counts, plain-DDIM equivalence, isolation,
the executor, generated guidance, several prompts, progress/preview/Cancel, and bad input."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from comfy_host import new_executor, run_prompt, validate
from harness import (InjectionSpy, Prompt, Translation, UNetRows, encode, executed_nodes, input_image,
                     latent_previews, run_node, translation_prompt)

STEPS = 10
ATTENTION_SITES = {(b, 0) for b in range(4, 12)}


@pytest.fixture(scope="module")
def sd15(models):
    """Reduced SD1.5, a random 8x8 source latent inverted over STEPS steps, its fp32 bank."""
    torch.manual_seed(7)
    return Translation.make(models, latent=torch.randn(1, 4, 8, 8) * 5.0, steps=STEPS,
                            prompt="a watercolor painting of a fox")


@pytest.mark.parametrize("convention, feature_steps, attention_steps", [
    ("pnp-diffusers", 8, 5),  # i < int(10 * 0.8), i < int(10 * 0.5)
    ("original", 9, 6),  # i <= int(10 * 0.8), i <= int(10 * 0.5)
])
def test_hooks_fire_at_the_eight_attention_layers_and_one_resblock_below_thresholds(
        host, sd15, monkeypatch, convention, feature_steps, attention_steps):
    bank = sd15.record(feature_injection=0.9, attention_injection=0.6)
    spy = InjectionSpy(host, monkeypatch)
    sd15.sample(features=bank, threshold_convention=convention)

    assert set(spy.attention) == ATTENTION_SITES
    assert set(spy.resblock) == {4}
    for site, events in spy.attention.items():
        assert spy.steps("attention", site) == list(range(attention_steps)), site
        assert all(rows == 2 and exact for _, rows, _, exact in events), site
    assert spy.steps("resblock", 4) == list(range(feature_steps))
    assert all(rows == 2 and exact for _, rows, _, exact in spy.resblock[4])
    # Every injecting UNet call carried both guidance branches (cond 0 and uncond 1).
    assert [step for step, _ in spy.calls] == list(range(max(feature_steps, attention_steps)))
    assert all(sorted(branches) == [0, 1] for _, branches in spy.calls)


def _patch_state(model):
    return {
        "model_options": repr(model.model_options),
        "wrappers": repr(model.wrappers),
        "patches": {k: len(v) for k, v in model.patches.items()},
        "object_patches": dict(model.object_patches),
        "hooks": [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.model.diffusion_model.modules()],
    }


def test_thresholds_zero_equal_plain_ddim_and_leave_the_model_unchanged(host, sd15):
    before = _patch_state(sd15.model)
    noise = sd15.invert()[1]
    pnp = sd15.sample(feature_injection=0.0, attention_injection=0.0, final_step="comfyui")
    plain = run_node("KSamplerAdvanced", model=sd15.model, add_noise="disable", noise_seed=0, steps=STEPS, cfg=7.5,
                     sampler_name="ddim", scheduler="ddim_uniform", positive=sd15.positive, negative=sd15.negative,
                     latent_image=noise, start_at_step=0, end_at_step=10000, return_with_leftover_noise="disable")[0]
    assert torch.equal(pnp, plain["samples"]), float((pnp - plain["samples"]).abs().max())
    injected = sd15.sample(final_step="comfyui")
    assert float((injected - pnp).abs().max()) > 1e-3  # injection does change the result
    assert _patch_state(sd15.model) == before


def test_official_final_step_lands_on_alpha_bar_zero(host, sd15):
    """official = sqrt(abar0) * (x0 + sigma_min * eps) of the last step; comfyui = x0. Differ, but slightly."""
    official = sd15.sample(final_step="official")
    comfy_end = sd15.sample(final_step="comfyui")
    diff = float((official - comfy_end).abs().max())
    assert 0 < diff < 0.1 * float(comfy_end.abs().max())


def test_three_nodes_run_through_comfyui_executor_and_make_an_image(host, models):
    ckpt = models.checkpoint("sd15_reduced")
    image = input_image("pnp_core.png")
    prompt, refs = translation_prompt(ckpt, image, "a bronze sculpture", steps=STEPS, bank={"bank_dtype": "fp16",
                                                                                          "batch_size": 2})
    result = run_prompt(prompt.api)
    assert result.success, result.error()
    saved = result.outputs[refs["output"].node_id]["images"][0]
    pixels = np.asarray(Image.open(host.output_dir / saved.get("subfolder", "") / saved["filename"]))
    assert pixels.shape == (64, 64, 3) and pixels.std() > 0


def test_one_bank_serves_several_target_prompts_without_recording_again(host, models):
    p = Prompt()
    ckpt = p.add("CheckpointLoaderSimple", ckpt_name=models.checkpoint("sd15_reduced"))
    empty = p.add("CLIPTextEncode", clip=ckpt[1], text="")
    source = p.add("CLIPTextEncode", clip=ckpt[1], text="a photo of a horse in mud")
    generated = p.add("PnP_GenerateGuidance", model=ckpt[0], positive=source[0], negative=empty[0], seed=3,
                      latent=p.add("EmptyLatentImage", width=64, height=64, batch_size=1)[0], steps=STEPS,
                      bank_dtype="fp16")
    targets, samplers = [], []
    for i, text in enumerate(["a zebra in the snow", "a husky in the grass", "a toy horse"]):
        targets.append(p.add("CLIPTextEncode", clip=ckpt[1], text=text))
        samplers.append(p.add("PnP_Sampler", model=ckpt[0], positive=targets[-1][0], negative=empty[0],
                              features=generated[0]))
        p.add("SaveLatent", samples=samplers[-1][0], filename_prefix=f"pnp_multi_{i}")
    executor = new_executor()
    with UNetRows() as counter:
        result = run_prompt(p.api, executor)
    assert result.success, result.error()
    executed = Counter(executed_nodes(result))
    # The bank is generated once. A PnP Sampler starts once more while its (lazy) bank is not there yet: its
    # checks, then its run; the UNet rows below show that each samples once.
    assert executed[generated.node_id] == 1 and all(executed[s.node_id] in (1, 2) for s in samplers), executed
    # generation: STEPS calls of 2 rows (CFG); each translation: STEPS calls of 2 rows.
    assert sum(counter.rows) == STEPS * 2 + 3 * STEPS * 2
    with UNetRows() as counter:
        p.api[targets[0].node_id]["inputs"]["text"] = "a zebra on a beach"
        again = run_prompt(p.api, executor)
    assert again.success, again.error()
    assert sum(counter.rows) == STEPS * 2  # only the changed prompt is sampled again; the bank is cached


def test_generated_guidance_records_both_cfg_branches(host, sd15, monkeypatch):
    generate = dict(model=sd15.model, positive=sd15.positive, negative=sd15.empty, seed=11, steps=STEPS,
                    latent={"samples": torch.zeros(1, 4, 8, 8)}, bank_dtype="fp32")
    bank, guidance = run_node("PnP_GenerateGuidance", **generate)
    assert bank.branches == ("uncond", "cond")
    assert bank.trajectory.origin == "generated" and bank.trajectory.latents.shape == (STEPS, 4, 8, 8)
    assert torch.isfinite(guidance["samples"]).all()
    uncond, cond = bank.stored["attention"][(4, 0)][0]
    assert float((uncond - cond).abs().max()) > 0  # the two branches differ
    spy = InjectionSpy(host, monkeypatch)
    out = sd15.sample(features=bank)
    assert torch.isfinite(out).all()
    assert set(spy.attention) == ATTENTION_SITES and all(exact for ev in spy.attention.values() for *_, exact in ev)
    # cond rows read the cond branch, uncond rows the uncond branch (ComfyUI batches uncond first here)
    assert {branches for ev in spy.attention.values() for *_, branches, _ in ev} == {(0, 1)}
    # Regenerating with the same seed is deterministic (the bank is reproducible).
    again = run_node("PnP_GenerateGuidance", **generate)[0]
    assert torch.equal(again.stored["attention"][(4, 0)], bank.stored["attention"][(4, 0)])


def test_negative_prompting_alpha_one_constant_is_off_and_alpha_below_one_changes(host, sd15):
    plain = sd15.sample()
    off = sd15.sample(negative_prompt=sd15.empty, negative_alpha=1.0, negative_schedule="constant")
    assert torch.equal(off, plain)  # alpha 1 at every step: the negative prompt is not even evaluated
    on = sd15.sample(negative_prompt=sd15.positive, negative_alpha=0.75, negative_schedule="linear")
    assert float((on - plain).abs().max()) > 1e-3


def test_non_square_latent_runs(host, sd15):
    torch.manual_seed(1)
    inversion = sd15.invert(latent={"samples": torch.randn(1, 4, 8, 13)})[0]
    bank = sd15.record(inversion=inversion)
    out = sd15.sample(features=bank)
    assert out.shape == (1, 4, 8, 13) and torch.isfinite(out).all()
    assert bank.stored["attention"][(11, 0)].shape[-2:] == (8 * 13, 320)
    assert bank.stored["attention"][(4, 0)].shape[-2] == 2 * 4  # 1/4 resolution: ceil(8/4) x ceil(13/4)


def test_progress_previews_and_cancel(host, sd15):
    import comfy.model_management

    host.progress_events.clear()
    with latent_previews():
        reference = sd15.sample()
    assert [v for v, total, _ in host.progress_events] == list(range(1, STEPS + 1))
    assert all(total == STEPS and preview for _, total, preview in host.progress_events)

    # Cancel after the third step: the run stops within that step and leaves nothing behind.
    hook = __import__("comfy.utils").utils.PROGRESS_BAR_HOOK

    def cancelling_hook(value, total, preview, prompt_id=None, node_id=None):
        if value == 3:
            comfy.model_management.interrupt_current_processing(True)
        hook(value, total, preview)

    __import__("comfy.utils").utils.set_progress_bar_global_hook(cancelling_hook)
    try:
        with UNetRows() as counter:
            with pytest.raises(comfy.model_management.InterruptProcessingException):
                sd15.sample()
    finally:
        __import__("comfy.utils").utils.set_progress_bar_global_hook(hook)
        comfy.model_management.interrupt_current_processing(False)
    assert len(counter.rows) == 3
    unet = sd15.model.model.diffusion_model
    assert all(not m._forward_hooks for m in unet.modules())
    assert torch.equal(sd15.sample(), reference)


# ---- bad input: clear errors, nothing changed ----

def _error(host):
    return host.pack_module("pnp_hooks.errors").PnPInputError


def test_bank_from_another_checkpoint_is_refused(host, sd15, models):
    other_model, other_clip, _ = models.load("sd2_reduced")
    before = _patch_state(other_model)
    with pytest.raises(_error(host), match="SD20 eps-prediction model.*Connect the same checkpoint"):
        sd15.record(model=other_model)
    other_empty = encode(other_clip, "")
    with pytest.raises(_error(host), match="Connect the same checkpoint"):
        sd15.sample(model=other_model, positive=other_empty, negative=other_empty)
    assert _patch_state(other_model) == before


def test_same_family_different_weights_is_refused_but_a_lora_is_not(host, sd15, models):
    other, _, _ = models.load("sd15_reduced_alt")
    with pytest.raises(_error(host), match="different checkpoint"):
        sd15.record(model=other)
    lora_like = sd15.model.clone()
    lora_like.add_patches({"diffusion_model.output_blocks.4.1.transformer_blocks.0.attn1.to_q.weight":
                           (torch.randn(320, 320) * 1e-2,)}, 1.0)
    patched = sd15.sample(model=lora_like)  # weight patches (LoRA) keep the identity
    assert torch.isfinite(patched).all()
    assert float((patched - sd15.sample()).abs().max()) > 0


def test_sampler_steps_that_do_not_match_the_bank(host, sd15):
    with pytest.raises(_error(host), match=f"steps is 20, but the feature bank was recorded for {STEPS}"):
        sd15.sample(steps=20)
    assert sd15.sample(steps=STEPS).shape == (1, 4, 8, 8)


def test_thresholds_out_of_range(host, sd15, models):
    with pytest.raises(_error(host), match="feature_injection must be between 0.0 and 1.0, got 1.5"):
        sd15.sample(feature_injection=1.5)
    with pytest.raises(_error(host), match="attention_injection must be between 0.0 and 1.0"):
        sd15.sample(attention_injection=-0.1)
    with pytest.raises(_error(host), match="holds only"):
        sd15.sample(feature_injection=1.0)  # the bank recorded steps for tau_f <= 0.8 only
    prompt, refs = translation_prompt(models.checkpoint("sd15_reduced"), steps=STEPS, output="SaveLatent",
                                      bank={"feature_injection": 1.2})
    valid, error, _, node_errors = validate(prompt.api)
    bank_id = refs["bank"].node_id
    assert not valid and bank_id in node_errors
    assert any("feature_injection" in str(e) for e in node_errors[bank_id]["errors"])


def test_inversion_steps_whose_timesteps_miss_the_sampling_ones(host, sd15):
    with pytest.raises(_error(host), match="inversion_steps=30 .* miss the sampling timesteps"):
        sd15.invert(steps=50, inversion_steps=30)
    inversion = sd15.invert(steps=STEPS, inversion_steps=100)[0]
    assert inversion.inversion_steps == 100 and inversion.timesteps[0] == 901


def test_empty_latent_or_wrong_channels(host, sd15):
    """(A batch of guidance images is translated frame by frame: test_batches.py.)"""
    with pytest.raises(_error(host), match="empty"):
        sd15.invert(latent={"samples": torch.zeros(0, 4, 8, 8)})
    with pytest.raises(_error(host), match="channels"):
        sd15.invert(latent={"samples": torch.zeros(1, 16, 8, 8)})


def _build_unet_only(in_channels: int):
    import checkpoints
    import comfy.ops
    import comfy.sd
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    cfg = dict(checkpoints.unet_config("sd15_reduced"), in_channels=in_channels)
    with torch.device("meta"):
        unet = UNetModel(**cfg, dtype=torch.float16, operations=comfy.ops.disable_weight_init)
    sd = {k: torch.zeros(v.shape, dtype=torch.float16) for k, v in unet.state_dict().items()}
    return comfy.sd.load_diffusion_model_state_dict(sd)


@pytest.mark.parametrize("in_channels, message", [
    (8, "supports SD 1.x, SD 2.x.*SD15_instructpix2pix"),
    (9, "9 input channels"),
])
def test_unsupported_model_is_refused_with_what_is_supported(host, sd15, in_channels, message):
    other = _build_unet_only(in_channels)
    before = _patch_state(other)
    with pytest.raises(_error(host), match=message):
        sd15.invert(model=other)
    assert _patch_state(other) == before


def test_official_inversion_differs_from_flipsigmas_euler(host, sd15):
    """ComfyUI users' usual inversion (FlipSigmas + Euler on ddim_uniform) is not the official one
    (docs/how-it-works.md)."""
    import comfy.samplers
    import comfy_extras.nodes_custom_sampler as custom

    noise = sd15.invert()[1]
    with torch.inference_mode():
        sigmas = comfy.samplers.calculate_sigmas(sd15.model.get_model_object("model_sampling"), "ddim_uniform",
                                                 STEPS)
        flipped = custom.FlipSigmas().get_sigmas(sigmas)[0]
        guider = comfy.samplers.CFGGuider(sd15.model)
        guider.set_conds(sd15.empty, [])
        guider.set_cfg(1.0)
        euler = guider.sample(torch.zeros(1, 4, 8, 8), sd15.latent["samples"],
                              comfy.samplers.sampler_object("euler"),
                              flipped, seed=0)
    diff = float((euler - noise["samples"]).abs().max()) / float(noise["samples"].abs().max())
    print(f"relative max difference of x_T, official vs FlipSigmas+Euler, {STEPS} steps: {diff:.3g}")
    assert diff > 1e-3, diff
