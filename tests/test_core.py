"""Core PnP nodes on the real host: hook sites and counts, plain-DDIM equivalence, isolation,
the executor, generated guidance, several prompts, progress/preview/Cancel, and bad input."""
from __future__ import annotations

from collections import Counter, defaultdict

import pytest
import torch

from host import new_executor, run_prompt

STEPS = 10
ATTENTION_SITES = {(b, 0) for b in range(4, 12)}


@pytest.fixture(scope="module")
def sd15(models):
    """Reduced SD1.5 with the empty prompt, a target prompt and a random 8x8 source latent."""
    import nodes

    model, clip, vae = models.load("sd15_reduced")
    encode = nodes.CLIPTextEncode().encode
    torch.manual_seed(7)
    return {
        "model": model,
        "clip": clip,
        "vae": vae,
        "empty": encode(clip, "")[0],
        "target": encode(clip, "a watercolor painting of a fox")[0],
        "negative": encode(clip, "ugly, blurry, black, low res, unrealistic")[0],
        "latent": {"samples": torch.randn(1, 4, 8, 8) * 5.0},
    }


def node(host, node_id):
    import nodes

    return nodes.NODE_CLASS_MAPPINGS[node_id]


def invert(host, env, steps=STEPS, inversion_steps=0, latent=None):
    with torch.inference_mode():
        out = node(host, "PnP_DDIMInversion").execute(env["model"], latent or env["latent"], env["empty"], steps,
                                                      inversion_steps)
    return out.result


def record(host, env, inversion, feature=0.8, attention=0.5, dtype="fp32", batch_size=1, model=None):
    with torch.inference_mode():
        out = node(host, "PnP_FeatureBank").execute(model or env["model"], inversion, env["empty"], "auto", "auto",
                                                    feature, attention, dtype, batch_size)
    return out.result[0]


def sample(host, env, bank, feature=0.8, attention=0.5, cfg=7.5, convention="pnp-diffusers", final="official",
           model=None, positive=None, steps=0, **optional):
    with torch.inference_mode():
        out = node(host, "PnP_Sampler").execute(model or env["model"], positive or env["target"], env["negative"],
                                                bank, cfg, feature, attention, steps, convention, final, **optional)
    return out.result[0]["samples"]


class InjectionSpy:
    """Wraps the loaded pack's Injector to record which sites inject at which steps and branches."""

    def __init__(self, host, monkeypatch):
        injection = host.pack_module("pnp_hooks.injection")
        self.calls = []  # (step, cond_or_uncond)
        self.attention = defaultdict(list)  # site -> [(step, rows, injected equals bank)]
        self.resblock = defaultdict(list)
        spy = self
        plan_call, attention, resblock = (injection.Injector.plan_call, injection.Injector.attention,
                                          injection.Injector.resblock)

        def spy_plan_call(self, timesteps, cond_or_uncond):
            call = plan_call(self, timesteps, cond_or_uncond)
            if call is not None:
                spy.calls.append((call.step, tuple(cond_or_uncond)))
            return call

        def spy_attention(self, site, n, spatial, call):
            out = attention(self, site, n, spatial, call)
            if out is not n:
                expected = self.bank.attention[site][call.step][list(call.row_sources)].to(out)
                spy.attention[site].append((call.step, out.shape[0], torch.equal(out, expected)))
            return out

        def spy_resblock(self, block, h, call):
            out = resblock(self, block, h, call)
            if out is not h:
                expected = self.bank.resblock[block][call.step][list(call.row_sources)].to(out)
                spy.resblock[block].append((call.step, out.shape[0], torch.equal(out, expected)))
            return out

        monkeypatch.setattr(injection.Injector, "plan_call", spy_plan_call)
        monkeypatch.setattr(injection.Injector, "attention", spy_attention)
        monkeypatch.setattr(injection.Injector, "resblock", spy_resblock)


@pytest.mark.parametrize("convention, feature_steps, attention_steps", [
    ("pnp-diffusers", 8, 5),  # i < int(10 * 0.8), i < int(10 * 0.5)
    ("original", 9, 6),  # i <= int(10 * 0.8), i <= int(10 * 0.5)
])
def test_hooks_fire_at_the_eight_attention_layers_and_one_resblock_below_thresholds(
        host, sd15, monkeypatch, convention, feature_steps, attention_steps):
    inversion, _ = invert(host, sd15)
    bank = record(host, sd15, inversion, feature=0.9, attention=0.6)
    spy = InjectionSpy(host, monkeypatch)
    sample(host, sd15, bank, convention=convention)

    assert set(spy.attention) == ATTENTION_SITES
    assert set(spy.resblock) == {4}
    for site, events in spy.attention.items():
        assert [step for step, _, _ in events] == list(range(attention_steps)), site
        assert all(rows == 2 and exact for _, rows, exact in events), site
    assert [step for step, _, _ in spy.resblock[4]] == list(range(feature_steps))
    assert all(rows == 2 and exact for _, rows, exact in spy.resblock[4])
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
    import nodes

    before = _patch_state(sd15["model"])
    inversion, noise = invert(host, sd15)
    bank = record(host, sd15, inversion)
    pnp = sample(host, sd15, bank, feature=0.0, attention=0.0, final="comfyui")
    with torch.inference_mode():
        plain = nodes.KSamplerAdvanced().sample(sd15["model"], "disable", 0, STEPS, 7.5, "ddim", "ddim_uniform",
                                                sd15["target"], sd15["negative"], noise, 0, 10000, "disable")[0]
    assert torch.equal(pnp, plain["samples"]), float((pnp - plain["samples"]).abs().max())
    injected = sample(host, sd15, bank, final="comfyui")
    assert float((injected - pnp).abs().max()) > 1e-3  # injection does change the result
    assert _patch_state(sd15["model"]) == before


def test_official_final_step_lands_on_alpha_bar_zero(host, sd15):
    """official = sqrt(abar0) * (x0 + sigma_min * eps) of the last step; comfyui = x0. Differ, but slightly."""
    inversion, _ = invert(host, sd15)
    bank = record(host, sd15, inversion)
    official = sample(host, sd15, bank, final="official")
    comfy_end = sample(host, sd15, bank, final="comfyui")
    diff = float((official - comfy_end).abs().max())
    assert 0 < diff < 0.1 * float(comfy_end.abs().max())


def test_three_nodes_run_through_comfyui_executor_and_make_an_image(host, models):
    from test_host import _write_input_image

    ckpt = models.checkpoint("sd15_reduced")
    image = _write_input_image(host, "pnp_core.png")
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a bronze sculpture"}},
        "4": {"class_type": "LoadImage", "inputs": {"image": image}},
        "5": {"class_type": "VAEEncode", "inputs": {"pixels": ["4", 0], "vae": ["1", 2]}},
        "6": {"class_type": "PnP_DDIMInversion", "inputs": {
            "model": ["1", 0], "latent": ["5", 0], "conditioning": ["2", 0], "steps": STEPS, "inversion_steps": 0}},
        "7": {"class_type": "PnP_FeatureBank", "inputs": {
            "model": ["1", 0], "inversion": ["6", 0], "conditioning": ["2", 0], "resblock_layers": "auto",
            "attention_layers": "auto", "feature_injection": 0.8, "attention_injection": 0.5, "bank_dtype": "fp16",
            "batch_size": 2}},
        "8": {"class_type": "PnP_Sampler", "inputs": {
            "model": ["1", 0], "positive": ["3", 0], "negative": ["2", 0], "features": ["7", 0], "cfg": 7.5,
            "feature_injection": 0.8, "attention_injection": 0.5, "steps": 0,
            "threshold_convention": "pnp-diffusers", "final_step": "official"}},
        "9": {"class_type": "VAEDecode", "inputs": {"samples": ["8", 0], "vae": ["1", 2]}},
        "10": {"class_type": "SaveImage", "inputs": {"images": ["9", 0], "filename_prefix": "pnp_core"}},
    }
    result = run_prompt(prompt)
    assert result.success, result.error()
    saved = result.outputs["10"]["images"][0]
    from PIL import Image
    import numpy as np

    pixels = np.asarray(Image.open(host.output_dir / saved.get("subfolder", "") / saved["filename"]))
    assert pixels.shape == (64, 64, 3) and pixels.std() > 0


class UNetCounter:
    """Counts UNet batch elements (rows) per call, process-wide, while active."""

    def __init__(self):
        self.rows = []

    def __enter__(self):
        from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

        def count(module, args):
            if isinstance(module, UNetModel):
                self.rows.append(args[0].shape[0])

        self.handle = torch.nn.modules.module.register_module_forward_pre_hook(count)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def test_one_bank_serves_several_target_prompts_without_recording_again(host, models):
    ckpt = models.checkpoint("sd15_reduced")
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
        "3": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "4": {"class_type": "PnP_GenerateGuidance", "inputs": {
            "model": ["1", 0], "positive": ["5", 0], "negative": ["2", 0], "latent": ["3", 0], "seed": 3,
            "steps": STEPS, "cfg": 5.0, "resblock_layers": "auto", "attention_layers": "auto",
            "feature_injection": 0.8, "attention_injection": 0.5, "bank_dtype": "fp16"}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a photo of a horse in mud"}},
    }
    for i, text in enumerate(["a zebra in the snow", "a husky in the grass", "a toy horse"]):
        prompt[f"1{i}"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": text}}
        prompt[f"2{i}"] = {"class_type": "PnP_Sampler", "inputs": {
            "model": ["1", 0], "positive": [f"1{i}", 0], "negative": ["2", 0], "features": ["4", 0], "cfg": 7.5,
            "feature_injection": 0.8, "attention_injection": 0.5, "steps": 0,
            "threshold_convention": "pnp-diffusers", "final_step": "official"}}
        prompt[f"3{i}"] = {"class_type": "SaveLatent",
                           "inputs": {"samples": [f"2{i}", 0], "filename_prefix": f"pnp_multi_{i}"}}
    executor = new_executor()
    with UNetCounter() as counter:
        result = run_prompt(prompt, executor)
    assert result.success, result.error()
    executed = Counter(data["node"] for event, data in result.messages if event == "executing" and data["node"])
    assert executed["4"] == 1 and all(executed[f"2{i}"] == 1 for i in range(3))
    # generation: STEPS calls of 2 rows (CFG); each translation: STEPS calls of 2 rows.
    assert sum(counter.rows) == STEPS * 2 + 3 * STEPS * 2
    with UNetCounter() as counter:
        prompt["10"]["inputs"]["text"] = "a zebra on a beach"
        again = run_prompt(prompt, executor)
    assert again.success, again.error()
    assert sum(counter.rows) == STEPS * 2  # only the changed prompt is sampled again; the bank is cached


def test_generated_guidance_records_both_cfg_branches(host, sd15, monkeypatch):
    with torch.inference_mode():
        bank, guidance = node(host, "PnP_GenerateGuidance").execute(
            sd15["model"], sd15["target"], sd15["empty"], {"samples": torch.zeros(1, 4, 8, 8)}, 11, STEPS, 5.0,
            "auto", "auto", 0.8, 0.5, "fp32").result
    assert bank.branches == ("uncond", "cond")
    assert bank.trajectory.origin == "generated" and bank.trajectory.latents.shape == (STEPS, 4, 8, 8)
    assert torch.isfinite(guidance["samples"]).all()
    uncond, cond = bank.attention[(4, 0)][0]
    assert float((uncond - cond).abs().max()) > 0  # the two branches differ
    spy = InjectionSpy(host, monkeypatch)
    out = sample(host, sd15, bank)
    assert torch.isfinite(out).all()
    assert set(spy.attention) == ATTENTION_SITES and all(exact for ev in spy.attention.values() for *_, exact in ev)
    # Regenerating with the same seed is deterministic (the bank is reproducible).
    with torch.inference_mode():
        again, _ = node(host, "PnP_GenerateGuidance").execute(
            sd15["model"], sd15["target"], sd15["empty"], {"samples": torch.zeros(1, 4, 8, 8)}, 11, STEPS, 5.0,
            "auto", "auto", 0.8, 0.5, "fp32").result
    assert torch.equal(again.attention[(4, 0)], bank.attention[(4, 0)])


def test_negative_prompting_alpha_one_constant_is_off_and_alpha_below_one_changes(host, sd15):
    inversion, _ = invert(host, sd15)
    bank = record(host, sd15, inversion)
    plain = sample(host, sd15, bank)
    off = sample(host, sd15, bank, negative_prompt=sd15["empty"], negative_alpha=1.0, negative_schedule="constant")
    assert float((off - plain).abs().max()) < 1e-5  # same maths, one extra (discarded) branch in the batch
    on = sample(host, sd15, bank, negative_prompt=sd15["target"], negative_alpha=0.75, negative_schedule="linear")
    assert float((on - plain).abs().max()) > 1e-3


def test_non_square_latent_runs(host, sd15):
    torch.manual_seed(1)
    inversion, _ = invert(host, sd15, latent={"samples": torch.randn(1, 4, 8, 13)})
    bank = record(host, sd15, inversion)
    out = sample(host, sd15, bank)
    assert out.shape == (1, 4, 8, 13) and torch.isfinite(out).all()
    assert bank.attention[(11, 0)].shape[-2:] == (8 * 13, 320)
    assert bank.attention[(4, 0)].shape[-2] == 2 * 4  # 1/4 resolution: ceil(8/4) x ceil(13/4)


def test_progress_previews_and_cancel(host, sd15):
    import comfy.cli_args
    import comfy.model_management
    import latent_preview

    inversion, _ = invert(host, sd15)
    bank = record(host, sd15, inversion)
    host.progress_events.clear()
    saved = comfy.cli_args.args.preview_method
    comfy.cli_args.args.preview_method = latent_preview.LatentPreviewMethod.Latent2RGB
    try:
        reference = sample(host, sd15, bank)
        assert [v for v, total, _ in host.progress_events] == list(range(1, STEPS + 1))
        assert all(total == STEPS and preview for _, total, preview in host.progress_events)
    finally:
        comfy.cli_args.args.preview_method = saved

    # Cancel after the third step: the run stops within that step and leaves nothing behind.
    hook = __import__("comfy.utils").utils.PROGRESS_BAR_HOOK

    def cancelling_hook(value, total, preview, prompt_id=None, node_id=None):
        if value == 3:
            comfy.model_management.interrupt_current_processing(True)
        hook(value, total, preview)

    __import__("comfy.utils").utils.set_progress_bar_global_hook(cancelling_hook)
    try:
        with UNetCounter() as counter:
            with pytest.raises(comfy.model_management.InterruptProcessingException):
                sample(host, sd15, bank)
    finally:
        __import__("comfy.utils").utils.set_progress_bar_global_hook(hook)
        comfy.model_management.interrupt_current_processing(False)
    assert len(counter.rows) == 3
    unet = sd15["model"].model.diffusion_model
    assert all(not m._forward_hooks for m in unet.modules())
    assert torch.equal(sample(host, sd15, bank), reference)


# ---- bad input: clear errors, nothing changed ----

def _error(host):
    return host.pack_module("pnp_hooks.errors").PnPInputError


def test_bank_from_another_checkpoint_is_refused(host, sd15, models):
    other_model, other_clip, _ = models.load("sd2_reduced")
    inversion, _ = invert(host, sd15)
    before = _patch_state(other_model)
    with pytest.raises(_error(host), match="SD20 eps-prediction model.*Connect the same checkpoint"):
        record(host, sd15, inversion, model=other_model)
    bank = record(host, sd15, inversion)
    with pytest.raises(_error(host), match="Connect the same checkpoint"):
        import nodes

        other_empty = nodes.CLIPTextEncode().encode(other_clip, "")[0]
        with torch.inference_mode():
            node(host, "PnP_Sampler").execute(other_model, other_empty, other_empty, bank, 7.5, 0.8, 0.5, 0,
                                              "pnp-diffusers", "official")
    assert _patch_state(other_model) == before


def test_same_family_different_weights_is_refused_but_a_lora_is_not(host, sd15, models):
    inversion, _ = invert(host, sd15)
    other, _, _ = models.load("sd15_reduced_alt")
    with pytest.raises(_error(host), match="different checkpoint"):
        record(host, sd15, inversion, model=other)
    bank = record(host, sd15, inversion)
    lora_like = sd15["model"].clone()
    lora_like.add_patches({"diffusion_model.output_blocks.4.1.transformer_blocks.0.attn1.to_q.weight":
                           (torch.randn(320, 320) * 1e-2,)}, 1.0)
    patched = sample(host, sd15, bank, model=lora_like)  # weight patches (LoRA) keep the identity
    assert torch.isfinite(patched).all()
    assert float((patched - sample(host, sd15, bank)).abs().max()) > 0


def test_sampler_steps_that_do_not_match_the_bank(host, sd15):
    inversion, _ = invert(host, sd15)
    bank = record(host, sd15, inversion)
    with pytest.raises(_error(host), match=f"steps is 20, but the feature bank was recorded for {STEPS}"):
        sample(host, sd15, bank, steps=20)
    assert sample(host, sd15, bank, steps=STEPS).shape == (1, 4, 8, 8)


def test_thresholds_out_of_range(host, sd15, models):
    from host import validate

    inversion, _ = invert(host, sd15)
    bank = record(host, sd15, inversion)
    with pytest.raises(_error(host), match="between 0 and 1"):
        sample(host, sd15, bank, feature=1.5)
    with pytest.raises(_error(host), match="between 0 and 1"):
        sample(host, sd15, bank, attention=-0.1)
    with pytest.raises(_error(host), match="holds only"):
        sample(host, sd15, bank, feature=1.0)  # the bank recorded steps for tau_f <= 0.8 only
    ckpt = models.checkpoint("sd15_reduced")
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
        "3": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "4": {"class_type": "PnP_DDIMInversion", "inputs": {
            "model": ["1", 0], "latent": ["3", 0], "conditioning": ["2", 0], "steps": STEPS, "inversion_steps": 0}},
        "5": {"class_type": "PnP_FeatureBank", "inputs": {
            "model": ["1", 0], "inversion": ["4", 0], "conditioning": ["2", 0], "resblock_layers": "auto",
            "attention_layers": "auto", "feature_injection": 1.2, "attention_injection": 0.5, "bank_dtype": "fp16",
            "batch_size": 1}},
        "6": {"class_type": "PnP_Sampler", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["2", 0], "features": ["5", 0], "cfg": 7.5,
            "feature_injection": 0.8, "attention_injection": 0.5, "steps": 0,
            "threshold_convention": "pnp-diffusers", "final_step": "official"}},
        "7": {"class_type": "SaveLatent", "inputs": {"samples": ["6", 0], "filename_prefix": "bad"}},
    }
    valid, error, _, node_errors = validate(prompt)
    assert not valid and "5" in node_errors
    assert any("feature_injection" in str(e) for e in node_errors["5"]["errors"])


def test_inversion_steps_whose_timesteps_miss_the_sampling_ones(host, sd15):
    with pytest.raises(_error(host), match="inversion_steps=30 .* miss the sampling timesteps"):
        invert(host, sd15, steps=50, inversion_steps=30)
    inversion, _ = invert(host, sd15, steps=STEPS, inversion_steps=100)
    assert inversion.inversion_steps == 100 and inversion.timesteps[0] == 901


def test_empty_or_batched_latent(host, sd15):
    with pytest.raises(_error(host), match="empty"):
        invert(host, sd15, latent={"samples": torch.zeros(0, 4, 8, 8)})
    with pytest.raises(_error(host), match="batch of 2.*Latent From Batch"):
        invert(host, sd15, latent={"samples": torch.zeros(2, 4, 8, 8)})
    with pytest.raises(_error(host), match="channels"):
        invert(host, sd15, latent={"samples": torch.zeros(1, 16, 8, 8)})


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
        with torch.inference_mode():
            node(host, "PnP_DDIMInversion").execute(other, sd15["latent"], sd15["empty"], STEPS, 0)
    assert _patch_state(other) == before


def test_official_inversion_differs_from_flipsigmas_euler(host, sd15):
    """ComfyUI users' usual inversion (FlipSigmas + Euler on ddim_uniform) is not the official one (README)."""
    import comfy.samplers
    import comfy_extras.nodes_custom_sampler as custom

    inversion, noise = invert(host, sd15)
    with torch.inference_mode():
        sigmas = comfy.samplers.calculate_sigmas(sd15["model"].get_model_object("model_sampling"), "ddim_uniform",
                                                 STEPS)
        flipped = custom.FlipSigmas().get_sigmas(sigmas)[0]
        guider = comfy.samplers.CFGGuider(sd15["model"])
        guider.set_conds(sd15["empty"], [])
        guider.set_cfg(1.0)
        euler = guider.sample(torch.zeros(1, 4, 8, 8), sd15["latent"]["samples"],
                              comfy.samplers.sampler_object("euler"),
                              flipped, seed=0)
    diff = float((euler - noise["samples"]).abs().max()) / float(noise["samples"].abs().max())
    print(f"relative max difference of x_T, official vs FlipSigmas+Euler, {STEPS} steps: {diff:.3g}")
    assert diff > 1e-3, diff
