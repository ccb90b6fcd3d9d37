"""SDXL: detection of the random checkpoint, default sites, every PnP node end to end, injection counts, bank size.

The fixture (``sdxl_reduced`` in checkpoints.py) is SDXL base with 320
channels at every level and a middle block of depth 1; its decoder is SDXL's
(9 output blocks, transformer stacks of depth 10, 10, 10, 2, 2, 2, 0, 0, 0)
and its text encoders are SDXL's full CLIP-L + CLIP-G, so prompts go
through CLIPTextEncode and the pooled/size conditioning as in any SDXL graph.
What these tests validate is mechanics (sites, steps, branches, parity with
plain DDIM, sizes), not image quality: the weights are random.
"""
from __future__ import annotations

import collections
import math

import numpy as np
import pytest
import torch

import checkpoints
from comfy_host import run_prompt
from harness import InjectionSpy, Translation, input_image, run_node, translation_prompt

SDXL_DECODER_DEPTHS = (10, 10, 10, 2, 2, 2, 0, 0, 0)


def _bench():
    import importlib.util

    from find_comfyui import PACK_ROOT

    spec = importlib.util.spec_from_file_location("pnp_bench_sdxl_bank_size", PACK_ROOT / "bench" / "sdxl_bank_size.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _meta_state_dict(config: dict) -> dict:
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    with torch.device("meta"):
        unet = UNetModel(**config, dtype=torch.float32, operations=comfy.ops.disable_weight_init)
    return unet.state_dict()


def test_comfyui_detects_the_reduced_and_the_real_sdxl_configs_as_sdxl(host):
    import comfy.model_detection

    for config in (checkpoints.unet_config("sdxl_reduced"), checkpoints.sdxl_base_unet_config()):
        detected = comfy.model_detection.model_config_from_unet(_meta_state_dict(config), "")
        assert type(detected).__name__ == "SDXL"
        assert detected.unet_config["transformer_depth_output"] == config["transformer_depth_output"]
    assert checkpoints.unet_parameter_count("sdxl_reduced") == pytest.approx(254.5e6, rel=1e-3)
    # The real SDXL base UNet has 2,567,463,684 parameters.
    assert sum(p.numel() for p in _meta_state_dict(checkpoints.sdxl_base_unet_config()).values()) == 2567463684
    bench = _bench()
    for key, value in bench.SDXL_BASE.items():
        assert checkpoints.sdxl_base_unet_config()[key] == value, key


def test_random_sdxl_checkpoint_loads_as_sdxl_with_sdxl_decoder(host, models):
    model, clip, vae = models.load("sdxl_reduced")
    assert type(model.model.model_config).__name__ == "SDXL"
    assert model.model.model_type.name == "EPS"
    assert type(clip.cond_stage_model).__name__ == "SDXLClipModel" and vae is not None
    facts = host.pack_module("pnp_hooks.patcher").model_facts(model)
    assert facts.identity.family == "SDXL"
    assert facts.layout.transformer_depth == SDXL_DECODER_DEPTHS
    assert facts.layout.has_resblock == (True,) * 9
    common = host.pack_module("nodes.common")
    sites = common.resolve_layers(facts, "auto", "auto")
    assert sites["resblock"] == (1,)
    assert sites["attention"] == ((1, 0), (2, 0), (3, 0), (4, 0), (5, 0))
    errors = host.pack_module("pnp_hooks.errors")
    with pytest.raises(errors.PnPInputError, match=r"transformer of output block 0\) names 10, but it has 10"):
        common.resolve_layers(facts, "1", "0:10")
    with pytest.raises(errors.PnPInputError, match=r"self-attention only in decoder blocks \[0, 1, 2, 3, 4, 5\]"):
        common.resolve_layers(facts, "1", "6")


def test_every_pnp_node_runs_on_sdxl_through_the_executor(host, models, no_cached_models):
    from PIL import Image

    prompt, refs = translation_prompt(models.checkpoint("sdxl_reduced"), input_image("sdxl_guidance.png", size=64),
                                      "a watercolor painting of a cat", steps=10, bank={"batch_size": 2})
    pca = prompt.add("PnP_FeaturePCA", features=refs["bank"][0], model=refs["ckpt"][0], view="self-attention map")
    pca_image = prompt.add("SaveImage", images=pca[0], filename_prefix="sdxl_pca")
    generated = prompt.add("PnP_GenerateGuidance", model=refs["ckpt"][0], positive=refs["target"][0],
                           negative=refs["empty"][0], seed=5, steps=5,
                           latent=prompt.add("EmptyLatentImage", width=64, height=64, batch_size=1)[0])
    translated = prompt.add("PnP_Sampler", model=refs["ckpt"][0], positive=refs["target"][0],
                            negative=refs["empty"][0], features=generated[0])
    decoded = prompt.add("VAEDecode", samples=translated[0], vae=refs["ckpt"][2])
    generated_image = prompt.add("SaveImage", images=decoded[0], filename_prefix="sdxl_generated")
    result = run_prompt(prompt.api)
    assert result.success, result.error()

    def saved(ref):
        img = result.outputs[ref.node_id]["images"][0]
        return np.asarray(Image.open(host.output_dir / img.get("subfolder", "") / img["filename"]))

    for ref in (refs["output"], generated_image):
        pixels = saved(ref)
        assert pixels.shape == (64, 64, 3) and pixels.std() > 0
    assert saved(pca_image).shape == (64, 5 * 64 + 4 * 4, 3)  # attention 1:0, steps 0-5 -> 5 pictures


CUSTOM_ATTENTION = ((0, 9), (2, 0), (2, 1), (4, 1))


@pytest.fixture(scope="module")
def custom(models):
    """A 10-step bank of a random 64 px latent with non-default sites: ResBlocks 0 and 4, deep transformers."""
    latent = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(11))
    return Translation.make(models, "sdxl_reduced", latent=latent, steps=10, prompt="a watercolor painting of a cat",
                            resblock_layers="0, 4", attention_layers="0:9, 2:0-1, 4:1")


@pytest.mark.parametrize("convention,expected_steps", [("pnp-diffusers", (6, 3)), ("original", (7, 4))])
def test_injection_fires_exactly_at_the_chosen_sites_steps_and_branches(host, custom, monkeypatch, convention,
                                                                      expected_steps):
    """The harness's spy on the pack, and pre-hooks on every attn1 of the UNet (independent of the pack)."""
    bank = custom.bank
    assert bank.sites["resblock"] == (0, 4) and bank.sites["attention"] == CUSTOM_ATTENTION
    spy = InjectionSpy(host, monkeypatch)
    unet = custom.model.model.diffusion_model
    qk_replaced = collections.Counter()
    handles = []
    for b, block in enumerate(unet.output_blocks):
        if len(block) > 1 and hasattr(block[1], "transformer_blocks"):
            for j, transformer in enumerate(block[1].transformer_blocks):
                def pre_hook(module, args, kwargs, site=(b, j)):
                    value = kwargs.get("value")
                    if value is not None and not torch.equal(args[0], value):
                        qk_replaced[site] += args[0].shape[0]
                handles.append(transformer.attn1.register_forward_pre_hook(pre_hook, with_kwargs=True))
    try:
        custom.sample(feature_injection=0.6, attention_injection=0.3, threshold_convention=convention)
    finally:
        for handle in handles:
            handle.remove()

    feature_steps, attention_steps = expected_steps
    assert set(spy.resblock) == {0, 4} and set(spy.attention) == set(CUSTOM_ATTENTION)
    for block in (0, 4):
        assert spy.steps("resblock", block) == list(range(feature_steps))
    for site in CUSTOM_ATTENTION:
        assert spy.steps("attention", site) == list(range(attention_steps))
    events = [e for store in (spy.resblock, spy.attention) for ev in store.values() for e in ev]
    assert all(rows == 2 and exact for _, rows, _, exact in events)  # uncond and cond rows, the bank's tensors
    assert qk_replaced == {site: 2 * attention_steps for site in CUSTOM_ATTENTION}


def test_zero_thresholds_equal_plain_ddim_on_sdxl(custom):
    """PnP Sampler with nothing injected is KSamplerAdvanced ddim/ddim_uniform from the inversion's noise."""
    noise = custom.invert()[1]
    plain = run_node("KSamplerAdvanced", model=custom.model, add_noise="disable", steps=10, cfg=7.5,
                     sampler_name="ddim", scheduler="ddim_uniform", positive=custom.positive, negative=custom.empty,
                     latent_image=noise, end_at_step=10)[0]["samples"]
    pnp = custom.sample(negative=custom.empty, feature_injection=0.0, attention_injection=0.0, final_step="comfyui")
    injected = custom.sample(negative=custom.empty, final_step="comfyui")
    assert float((pnp - plain).abs().max()) == 0.0
    assert float((injected - plain).abs().max()) > 1e-3  # injection does change the result


def test_bank_size_formula_matches_recorded_banks_and_real_sdxl_shapes(host, models):
    layers = host.pack_module("pnp_hooks.layers")
    latent = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(11))  # 128 px
    t = Translation.make(models, "sdxl_reduced", latent=latent, steps=5)
    layout = host.pack_module("pnp_hooks.patcher").model_facts(t.model).layout
    for dtype, width in (("fp16", 2), ("fp32", 4)):
        bank = t.record(bank_dtype=dtype)
        assert bank.nbytes > 0
        assert bank.nbytes == layers.bank_nbytes(layout, bank.sites, (16, 16), bank.feature_steps,
                                                 bank.attention_steps, 1, width)
    # The real SDXL base at 1024x1024 (meta device): the layout's shapes are those of a forward pass.
    bench = _bench()
    base_layout = host.pack_module("pnp_hooks.families.unet").layout_of(bench.meta_unet(bench.SDXL_BASE))
    assert base_layout.transformer_depth == SDXL_DECODER_DEPTHS
    shapes = bench.decoder_shapes_meta(bench.SDXL_BASE, (128, 128))
    assert sum(1 for key in shapes if key[0] == "attention") == sum(SDXL_DECODER_DEPTHS)
    for key, shape in shapes.items():
        assert shape == base_layout.site_shape(key[0], key[1], (128, 128)), key
    figure = bench.figures()["SDXL base, 1024x1024"]
    per_step_res = math.prod(shapes[("resblock", 1)])
    per_step_attn = sum(math.prod(shapes[("attention", b, 0)]) for b in range(1, 6))
    assert figure["bytes"] == 2 * (41 * per_step_res + 26 * per_step_attn)
    assert figure["MiB_fp16"] == 622.5
