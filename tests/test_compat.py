"""PnP beside other model patches in one graph: ControlNet, LoRA, another pack's attn1 replace patch."""
from __future__ import annotations

import hashlib

import pytest
import torch

import extra_models
from pnp_graph import guidance_pixels, make_guidance

SIZE = 64
STEPS = 6


@pytest.fixture(scope="module")
def guidance(models):
    return make_guidance(models, size=SIZE, steps=STEPS)


def _bank_digest(bank) -> str:
    digest = hashlib.sha256()
    for store in (bank.resblock, bank.attention):
        for key in sorted(store):
            digest.update(str(key).encode())
            digest.update(store[key].float().numpy().tobytes())
    return digest.hexdigest()


def test_random_controlnet_is_detected_by_comfyui_loader(host):
    import comfy.cldm.cldm
    import comfy.controlnet
    import nodes

    name = extra_models.ensure(host.models_dir / "controlnet", extra_models.controlnet_name(),
                               extra_models.build_controlnet)
    control = nodes.ControlNetLoader().load_controlnet(name)[0]
    assert isinstance(control, comfy.controlnet.ControlNet)
    assert isinstance(control.control_model, comfy.cldm.cldm.ControlNet)
    assert control.control_model.input_hint_block[0].in_channels == 3
    assert control.control_model.model_channels == 320


def test_pnp_with_controlnet_on_the_target_conditioning(host, guidance):
    import nodes

    name = extra_models.ensure(host.models_dir / "controlnet", extra_models.controlnet_name(),
                               extra_models.build_controlnet)
    control = nodes.ControlNetLoader().load_controlnet(name)[0]
    hint = guidance_pixels(SIZE, seed=3)
    with torch.inference_mode():
        positive, negative = nodes.ControlNetApplyAdvanced().apply_controlnet(
            guidance.positive, guidance.negative, control, hint, 1.0, 0.0, 1.0)
    bank_before = _bank_digest(guidance.bank)
    plain = guidance.sample()
    controlled = guidance.sample(positive=positive, negative=negative)
    assert torch.isfinite(controlled).all()
    change = float((controlled - plain).norm() / plain.norm())
    print(f"\nControlNet changes the PnP latent by {change:.3f} (relative L2)")
    assert change > 1e-3  # the control is used
    # the source pass is not touched: the bank is unchanged and PnP without control is reproduced
    assert _bank_digest(guidance.bank) == bank_before
    assert torch.equal(guidance.sample(), plain)


def _patch_snapshot(model) -> tuple:
    patches = {k: tuple(id(p) for p in v) for k, v in model.patches.items()}
    options = repr(sorted(model.model_options.get("transformer_options", {}).keys()))
    wrappers = repr(model.wrappers)
    return patches, options, wrappers, model.patches_uuid


def test_lora_before_the_pnp_nodes(host, models, guidance):
    import nodes

    name = extra_models.ensure(host.models_dir / "loras", extra_models.lora_name(), extra_models.build_lora)
    base = guidance.model
    lora_model = nodes.LoraLoaderModelOnly().load_lora_model_only(base, name, 1.0)[0]
    patched_keys = {k for k in lora_model.patches if ".transformer_blocks.0.attn" in k}
    assert len(patched_keys) == len(extra_models.lora_keys())  # every LoRA key found its weight
    before_lora, before_base = _patch_snapshot(lora_model), _patch_snapshot(base)

    with_lora = make_guidance(models, size=SIZE, steps=STEPS, model=lora_model)
    out = with_lora.sample()
    assert torch.isfinite(out).all()
    plain = guidance.sample()
    assert not torch.equal(out, plain)
    # a bank recorded on the base model also drives a LoRA'd sampler (same base weights)
    mixed = guidance.sample(model=lora_model)
    assert torch.isfinite(mixed).all() and not torch.equal(mixed, plain)
    # the MODELs handed to the PnP nodes are unchanged
    assert _patch_snapshot(lora_model) == before_lora
    assert _patch_snapshot(base) == before_base
    assert torch.equal(guidance.sample(), plain)


def test_other_attn1_replace_patch_runs_and_receives_injected_qk(guidance):
    from comfy.ldm.modules.attention import optimized_attention

    pnp_key = "comfyui_pnp"
    calls: dict[int, int] = {b: 0 for b in range(4, 12)}
    injected_k_checked: dict[int, int] = {b: 0 for b in range(4, 12)}
    unet = guidance.model.model.diffusion_model
    bank = guidance.bank

    def identity_replace(q, k, v, extra_options):
        block = extra_options["block"][1]
        calls[block] += 1
        call = extra_options.get(pnp_key)
        if call is not None and call.attention:
            # the q/k this patch receives are projections of the guidance image's hidden states
            source = bank.attention[(block, 0)][call.step][list(call.row_sources)].to(k.dtype)
            attn1 = unet.output_blocks[block][1].transformer_blocks[0].attn1
            torch.testing.assert_close(k, attn1.to_k(source), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(q, attn1.to_q(source), rtol=1e-5, atol=1e-5)
            injected_k_checked[block] += 1
        return optimized_attention(q, k, v, extra_options["n_heads"], attn_precision=extra_options["attn_precision"])

    other = guidance.model.clone()
    for b in range(4, 12):
        other.set_model_attn1_replace(identity_replace, "output", b, 0)
    plain = guidance.sample()
    out = guidance.sample(model=other)
    # called at every site at every step (cond and uncond in one call per step)
    assert calls == {b: STEPS for b in range(4, 12)}
    assert injected_k_checked == {b: STEPS // 2 for b in range(4, 12)}
    # ours wraps it, it does not drop it: with an identity replace the result is PnP's, bit for bit
    assert torch.equal(out, plain)
    # and the replace patch is still on the MODEL it was put on
    assert len(other.model_options["transformer_options"]["patches_replace"]["attn1"]) == 8
