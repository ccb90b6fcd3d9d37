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
import importlib.util
import math

import numpy as np
import pytest
import torch

import checkpoints
from find_comfyui import PACK_ROOT
from host import run_prompt
from test_host import _write_input_image

SDXL_DECODER_DEPTHS = (10, 10, 10, 2, 2, 2, 0, 0, 0)


def _bench():
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
    assert sites.resblocks == (1,)
    assert sites.attention == ((1, 0), (2, 0), (3, 0), (4, 0), (5, 0))
    errors = host.pack_module("pnp_hooks.errors")
    with pytest.raises(errors.PnPInputError, match="transformer 10 of output block 0, which has 10"):
        common.resolve_layers(facts, "1", "0:10")
    with pytest.raises(errors.PnPInputError, match=r"self-attention only in decoder blocks \[0, 1, 2, 3, 4, 5\]"):
        common.resolve_layers(facts, "1", "6")


def _sdxl_prompt(ckpt: str, image: str) -> dict:
    bank_layers = {"resblock_layers": "auto", "attention_layers": "auto", "feature_injection": 0.8,
                   "attention_injection": 0.5, "bank_dtype": "fp16"}
    sampler = {"cfg": 7.5, "feature_injection": 0.8, "attention_injection": 0.5, "steps": 0,
               "threshold_convention": "pnp-diffusers", "final_step": "official"}
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a watercolor painting of a cat"}},
        "4": {"class_type": "LoadImage", "inputs": {"image": image}},
        "5": {"class_type": "VAEEncode", "inputs": {"pixels": ["4", 0], "vae": ["1", 2]}},
        "6": {"class_type": "PnP_DDIMInversion", "inputs": {
            "model": ["1", 0], "latent": ["5", 0], "conditioning": ["2", 0], "steps": 10, "inversion_steps": 0}},
        "7": {"class_type": "PnP_FeatureBank", "inputs": {
            "model": ["1", 0], "inversion": ["6", 0], "conditioning": ["2", 0], "batch_size": 2, **bank_layers}},
        "8": {"class_type": "PnP_Sampler", "inputs": {
            "model": ["1", 0], "positive": ["3", 0], "negative": ["2", 0], "features": ["7", 0], **sampler}},
        "9": {"class_type": "VAEDecode", "inputs": {"samples": ["8", 0], "vae": ["1", 2]}},
        "10": {"class_type": "SaveImage", "inputs": {"images": ["9", 0], "filename_prefix": "sdxl_pnp"}},
        "11": {"class_type": "PnP_FeaturePCA", "inputs": {
            "features": ["7", 0], "model": ["1", 0], "view": "self-attention map", "layer": "auto", "steps": "auto",
            "fit": "across steps", "frame_width": 0, "upscale": "nearest", "columns": 0}},
        "12": {"class_type": "SaveImage", "inputs": {"images": ["11", 0], "filename_prefix": "sdxl_pca"}},
        "13": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "14": {"class_type": "PnP_GenerateGuidance", "inputs": {
            "model": ["1", 0], "positive": ["3", 0], "negative": ["2", 0], "latent": ["13", 0], "seed": 5,
            "steps": 5, "cfg": 5.0, **bank_layers}},
        "15": {"class_type": "PnP_Sampler", "inputs": {
            "model": ["1", 0], "positive": ["3", 0], "negative": ["2", 0], "features": ["14", 0], **sampler}},
        "16": {"class_type": "VAEDecode", "inputs": {"samples": ["15", 0], "vae": ["1", 2]}},
        "17": {"class_type": "SaveImage", "inputs": {"images": ["16", 0], "filename_prefix": "sdxl_generated"}},
    }


def test_every_pnp_node_runs_on_sdxl_through_the_executor(host, models):
    from PIL import Image

    ckpt = models.checkpoint("sdxl_reduced")
    image = _write_input_image(host, "sdxl_guidance.png", size=64)
    result = run_prompt(_sdxl_prompt(ckpt, image))
    assert result.success, result.error()

    def saved(node):
        img = result.outputs[node]["images"][0]
        return np.asarray(Image.open(host.output_dir / img.get("subfolder", "") / img["filename"]))

    for node in ("10", "17"):
        pixels = saved(node)
        assert pixels.shape == (64, 64, 3) and pixels.std() > 0
    assert saved("12").shape == (64, 5 * 64 + 4 * 4, 3)  # attention 1:0, steps 0-5 -> 5 pictures


@pytest.fixture(scope="module")
def sdxl(models):
    """(MODEL, empty prompt, target prompt) of the SDXL fixture, encoded once."""
    import nodes

    model, clip, _ = models.load("sdxl_reduced")
    with torch.inference_mode():
        empty = nodes.CLIPTextEncode().encode(clip, "")[0]
        positive = nodes.CLIPTextEncode().encode(clip, "a watercolor painting of a cat")[0]
    return model, empty, positive


def _invert(sdxl, steps: int, size: int):
    import nodes

    model, empty, _ = sdxl
    latent = {"samples": torch.randn(1, 4, size, size, generator=torch.Generator().manual_seed(11))}
    with torch.inference_mode():
        return nodes.NODE_CLASS_MAPPINGS["PnP_DDIMInversion"].execute(model, latent, empty, steps, 0).result


def _bank(sdxl, inversion, resblocks="auto", attention="auto", dtype="fp32"):
    import nodes

    model, empty, _ = sdxl
    with torch.inference_mode():
        return nodes.NODE_CLASS_MAPPINGS["PnP_FeatureBank"].execute(
            model, inversion, empty, resblocks, attention, 0.8, 0.5, dtype, 1).result[0]


@pytest.fixture(scope="module")
def custom_bank(sdxl):
    """A 10-step bank of a 64 px image with non-default sites: ResBlocks 0 and 4, deep transformers."""
    inversion, noise = _invert(sdxl, 10, 8)
    return _bank(sdxl, inversion, "0, 4", "0:9, 2:0-1, 4:1"), noise


@pytest.mark.parametrize("convention,expected_steps", [("pnp-diffusers", (6, 3)), ("original", (7, 4))])
def test_injection_fires_exactly_at_the_chosen_sites_steps_and_branches(host, sdxl, custom_bank, monkeypatch,
                                                                      convention, expected_steps):
    """Counting wrappers on the loaded pack's Injector, and pre-hooks on every attn1 of the UNet."""
    import nodes

    injection = host.pack_module("pnp_hooks.injection")
    model, empty, positive = sdxl
    bank = custom_bank[0]
    assert bank.sites.resblocks == (0, 4) and bank.sites.attention == ((0, 9), (2, 0), (2, 1), (4, 1))
    injected = collections.Counter()
    seen_sites = set()
    original_attention, original_resblock = injection.Injector.attention, injection.Injector.resblock

    def attention(self, site, n, spatial, call):
        out = original_attention(self, site, n, spatial, call)
        seen_sites.add(("attention", site))
        if out is not n:
            for row, branch in enumerate(call.row_sources):
                assert torch.equal(out[row], bank.attention[site][call.step, branch].to(out.dtype))
            injected[("attention", site, call.step)] += len(call.row_sources)
        return out

    def resblock(self, block, h, call):
        out = original_resblock(self, block, h, call)
        seen_sites.add(("resblock", block))
        if out is not h:
            for row, branch in enumerate(call.row_sources):
                assert torch.equal(out[row], bank.resblock[block][call.step, branch].to(out.dtype))
            injected[("resblock", block, call.step)] += len(call.row_sources)
        return out

    monkeypatch.setattr(injection.Injector, "attention", attention)
    monkeypatch.setattr(injection.Injector, "resblock", resblock)

    # Independently of the pack: which attn1 modules of the UNet got a q/k input other than their own n.
    unet = model.model.diffusion_model
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
        with torch.inference_mode():
            nodes.NODE_CLASS_MAPPINGS["PnP_Sampler"].execute(
                model, positive, empty, bank, 7.5, 0.6, 0.3, 0, convention, "official")
    finally:
        for handle in handles:
            handle.remove()

    feature_steps, attention_steps = expected_steps
    want = collections.Counter()
    for step in range(feature_steps):
        for block in (0, 4):
            want[("resblock", block, step)] = 2  # uncond and cond rows
    for step in range(attention_steps):
        for site in ((0, 9), (2, 0), (2, 1), (4, 1)):
            want[("attention", site, step)] = 2
    assert injected == want
    assert seen_sites == {("resblock", 0), ("resblock", 4), ("attention", (0, 9)), ("attention", (2, 0)),
                          ("attention", (2, 1)), ("attention", (4, 1))}
    assert qk_replaced == {site: 2 * attention_steps for site in ((0, 9), (2, 0), (2, 1), (4, 1))}


def test_zero_thresholds_equal_plain_ddim_on_sdxl(sdxl, custom_bank):
    """PnP Sampler with nothing injected is KSamplerAdvanced ddim/ddim_uniform from the inversion's noise."""
    import nodes

    model, empty, positive = sdxl
    bank, noise = custom_bank
    with torch.inference_mode():
        plain = nodes.KSamplerAdvanced().sample(model, "disable", 0, 10, 7.5, "ddim", "ddim_uniform", positive, empty,
                                                noise, 0, 10, "disable")[0]["samples"]
        pnp = nodes.NODE_CLASS_MAPPINGS["PnP_Sampler"].execute(
            model, positive, empty, bank, 7.5, 0.0, 0.0, 0, "pnp-diffusers", "comfyui").result[0]["samples"]
        injected = nodes.NODE_CLASS_MAPPINGS["PnP_Sampler"].execute(
            model, positive, empty, bank, 7.5, 0.8, 0.5, 0, "pnp-diffusers", "comfyui").result[0]["samples"]
    assert float((pnp - plain).abs().max()) == 0.0
    assert float((injected - plain).abs().max()) > 1e-3  # injection does change the result


def test_bank_size_formula_matches_recorded_banks_and_real_sdxl_shapes(sdxl):
    bench = _bench()
    reduced = {k: checkpoints.unet_config("sdxl_reduced")[k] for k in bench.SDXL_BASE}
    inversion = _invert(sdxl, 5, 16)[0]  # 128 px: ResBlock 1 at 4x4, attention 3-5 at 8x8
    for dtype, width in (("fp16", 2), ("fp32", 4)):
        bank = _bank(sdxl, inversion, dtype=dtype)
        formula = bench.bank_bytes(reduced, (16, 16), "1", "1-5:0", steps=5, bytes_per_value=width)
        assert bank.nbytes > 0
        assert (bank.feature_steps, bank.attention_steps) == (formula["feature_steps"], formula["attention_steps"])
        assert bank.nbytes == formula["bytes"]
    # The real SDXL base at 1024x1024 (meta device: shapes only): the formula's shapes are the UNet's.
    shapes = bench.decoder_shapes_meta(bench.SDXL_BASE, (128, 128))
    blocks = bench.decoder_blocks(bench.SDXL_BASE, (128, 128))
    assert sum(1 for key in shapes if key[0] == "attention") == sum(SDXL_DECODER_DEPTHS)
    for key, shape in shapes.items():
        block = blocks[key[1]]
        expected = (block["channels"], *block["hw"]) if key[0] == "resblock" else (math.prod(block["hw"]),
                                                                                    block["channels"])
        assert shape == expected, key
    figure = bench.figures()["SDXL base, 1024x1024"]
    per_step_res = math.prod(shapes[("resblock", 1)])
    per_step_attn = sum(math.prod(shapes[("attention", b, 0)]) for b in range(1, 6))
    assert figure["bytes"] == 2 * (41 * per_step_res + 26 * per_step_attn)
