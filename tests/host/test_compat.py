"""PnP beside other model patches in one graph: ControlNet, LoRA, other packs' attention patches, CFG hooks.

An IPAdapter-like attn2 patch (it indexes per-branch tensors by ``cond_or_uncond``)
must never meet a row it cannot read, in either memory mode; the paper's
negative prompting must keep every pre-CFG hook on the model (ComfyUI's APG
and TCFG here).
"""
from __future__ import annotations

import hashlib

import pytest
import torch

import extra_models
from harness import Translation, guidance_pixels, run_node

SIZE = 64
STEPS = 6


@pytest.fixture(scope="module")
def guidance(models):
    return Translation.make(models, size=SIZE, steps=STEPS)


def _bank_digest(bank) -> str:
    digest = hashlib.sha256()
    for store in (bank.stored["resblock"], bank.stored["attention"]):
        for key in sorted(store):
            digest.update(str(key).encode())
            digest.update(store[key].float().numpy().tobytes())
    return digest.hexdigest()


def test_random_controlnet_is_detected_by_comfyui_loader(host):
    import comfy.cldm.cldm
    import comfy.controlnet

    name = extra_models.ensure(host.models_dir / "controlnet", extra_models.controlnet_name(),
                               extra_models.build_controlnet)
    control = run_node("ControlNetLoader", control_net_name=name)[0]
    assert isinstance(control, comfy.controlnet.ControlNet)
    assert isinstance(control.control_model, comfy.cldm.cldm.ControlNet)
    assert control.control_model.input_hint_block[0].in_channels == 3
    assert control.control_model.model_channels == 320


def test_pnp_with_controlnet_on_the_target_conditioning(host, guidance):
    name = extra_models.ensure(host.models_dir / "controlnet", extra_models.controlnet_name(),
                               extra_models.build_controlnet)
    control = run_node("ControlNetLoader", control_net_name=name)[0]
    positive, negative = run_node("ControlNetApplyAdvanced", positive=guidance.positive, negative=guidance.negative,
                                  control_net=control, image=guidance_pixels(SIZE, seed=3), strength=1.0,
                                  start_percent=0.0, end_percent=1.0)[:2]
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
    name = extra_models.ensure(host.models_dir / "loras", extra_models.lora_name(), extra_models.build_lora)
    base = guidance.model
    lora_model = run_node("LoraLoaderModelOnly", model=base, lora_name=name, strength_model=1.0)[0]
    patched_keys = {k for k in lora_model.patches if ".transformer_blocks.0.attn" in k}
    assert len(patched_keys) == len(extra_models.lora_keys())  # every LoRA key found its weight
    before_lora, before_base = _patch_snapshot(lora_model), _patch_snapshot(base)

    with_lora = Translation.make(models, size=SIZE, steps=STEPS, model=lora_model)
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

    pnp_call_key = "comfyui_pnp.call"  # where PnP's sites find their planned call (pnp_hooks/patcher.py)
    calls: dict[int, int] = {b: 0 for b in range(4, 12)}
    injected_k_checked: dict[int, int] = {b: 0 for b in range(4, 12)}
    unet = guidance.model.model.diffusion_model
    bank = guidance.bank

    def identity_replace(q, k, v, extra_options):
        block = extra_options["block"][1]
        calls[block] += 1
        call = extra_options.get(pnp_call_key)
        if call is not None and call.step.injects["attention"]:
            # the q/k this patch receives are projections of the guidance image's hidden states
            source = bank.stored["attention"][(block, 0)][call.step.step][list(call.row_branches)].to(k.dtype)
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


class IPAdapterLike:
    """An attn2 replace patch that indexes per-branch image tokens by ``cond_or_uncond``, as IPAdapter_plus does:
    ``torch.cat([(k_cond, k_uncond)[i] for i in cond_or_uncond])``. It records every label list it meets."""

    def __init__(self, seed: int = 9):
        self.seed = seed
        self.labels: list[tuple[int, ...]] = []

    def __deepcopy__(self, memo):  # ModelPatcher.clone deep-copies model_options: keep one recorder
        return self

    def __call__(self, q, k, v, extra_options):
        from comfy.ldm.modules.attention import optimized_attention

        labels = tuple(extra_options["cond_or_uncond"])
        self.labels.append(labels)
        g = torch.Generator().manual_seed(self.seed)
        k_cond, k_uncond = (torch.randn(1, 4, q.shape[-1], generator=g).to(q) for _ in range(2))
        per_chunk = q.shape[0] // len(labels)
        ip_k = torch.cat([(k_cond, k_uncond)[i].expand(per_chunk, -1, -1) for i in labels])
        heads = extra_options["n_heads"]
        return optimized_attention(q, k, v, heads) + 0.5 * optimized_attention(q, ip_k, ip_k, heads)


@pytest.mark.parametrize("negative_prompting", [False, True], ids=["cfg", "paper negative prompt"])
def test_an_ipadapter_like_patch_never_meets_a_row_it_cannot_read_in_either_mode(guidance, negative_prompting):
    """Bank recorded from the plain model; the patch only on the sampler's model: both modes give the same."""
    stand_in = IPAdapterLike()
    patched = guidance.model.clone()
    for b in range(3, 12):
        patched.set_model_attn2_replace(stand_in, "output", b, 0)
    extra = dict(negative_prompt=guidance.positive, negative_alpha=0.5, negative_schedule="constant") \
        if negative_prompting else {}
    results = {}
    for mode in ("stored", "on the fly"):
        stand_in.labels.clear()
        results[mode] = guidance.sample(model=patched, features=guidance.record(mode=mode), **extra)
        seen = set(stand_in.labels)
        assert all(set(labels) <= {0, 1} for labels in seen), seen  # only rows it can read
        # the same UNet calls reach it in both modes: the live source pass is not among them
        assert len(stand_in.labels) == 9 * (STEPS * (2 if negative_prompting else 1)), (mode, len(stand_in.labels))
        if negative_prompting:
            assert (1,) in seen  # the paper's negative prompt runs as an uncond
    assert torch.equal(results["stored"], results["on the fly"])
    assert not torch.equal(results["stored"], guidance.sample(**extra))  # the stand-in does act


@pytest.mark.parametrize("hook", ["APG", "TCFG"])
def test_negative_prompting_keeps_the_models_pre_cfg_hooks(guidance, hook):
    inputs = {"APG": dict(eta=0.5, norm_threshold=5.0, momentum=0.0), "TCFG": {}}[hook]
    hooked = run_node(hook, model=guidance.model, **inputs)[0]
    off = dict(negative_prompt=guidance.positive, negative_alpha=1.0, negative_schedule="constant")
    on = dict(negative_prompt=guidance.positive, negative_alpha=0.5, negative_schedule="linear")
    # alpha 1 with a constant schedule is no negative prompting, with and without the hook
    assert torch.equal(guidance.sample(**off), guidance.sample())
    assert torch.equal(guidance.sample(model=hooked, **off), guidance.sample(model=hooked))
    # with negative prompting on, the hook still acts (it used to be skipped on this path)
    assert not torch.equal(guidance.sample(model=hooked), guidance.sample())
    assert not torch.equal(guidance.sample(model=hooked, **on), guidance.sample(**on))


def test_negative_prompt_reaches_pre_cfg_hooks_as_the_blended_uncond(guidance):
    """A pre-CFG hook sees uncond = a * e(uncond) + (1 - a) * e(negative prompt), at every step."""
    seen = []
    probe = guidance.model.clone()

    def pre_cfg(args):
        seen.append([t.clone() for t in args["conds_out"]])
        return args["conds_out"]

    probe.set_model_sampler_pre_cfg_function(pre_cfg)
    guidance.sample(model=probe)
    plain = seen[:]
    seen.clear()
    guidance.sample(model=probe, negative=guidance.positive)  # the "negative" prompt as the uncond itself
    as_uncond = seen[:]
    seen.clear()
    guidance.sample(model=probe, negative_prompt=guidance.positive, negative_alpha=0.0, negative_schedule="constant")
    assert len(seen) == len(plain) == STEPS
    # alpha 0: the blend is the negative prompt's output alone, i.e. the uncond of the run above, step 0
    torch.testing.assert_close(seen[0][1], as_uncond[0][1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(seen[0][0], as_uncond[0][0], rtol=0, atol=0)
