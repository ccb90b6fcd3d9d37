"""PnP Sampler's mask, injection_strength and outside_mask_strength inputs on the real host.

Exact identities (mask of ones = no mask, mask of zeros = no injection,
strength 0 = no injection) are checked with torch.equal on the final latent;
a half mask is checked at every injected attention site (tokens outside the
mask keep the target's own q/k input, bit for bit) and per region of the
result.
"""
from __future__ import annotations

import pytest
import torch

from comfy_host import run_prompt
from harness import Translation, translation_prompt

SIZE = 128  # px; latent 16x16, attention sites at 4x4, 8x8 and 16x16: a half mask stays exactly 0/1.
STEPS = 8


@pytest.fixture(scope="module")
def guidance(models):
    return Translation.make(models, size=SIZE, steps=STEPS)


def _left_half(h: int, w: int) -> torch.Tensor:
    mask = torch.zeros(1, h, w)
    mask[..., : w // 2] = 1.0
    return mask


@pytest.fixture(scope="module")
def reference(guidance):
    """The paper's PnP (full injection) and the same sampler with no injection at all."""
    full = guidance.sample()
    none = guidance.sample(feature_injection=0.0, attention_injection=0.0)
    assert not torch.equal(full, none)
    return full, none


def test_mask_of_ones_equals_no_mask_exactly(guidance, reference):
    full, _ = reference
    assert torch.equal(guidance.sample(mask=torch.ones(1, SIZE, SIZE)), full)
    # a latent-size mask is accepted too
    assert torch.equal(guidance.sample(mask=torch.ones(1, SIZE // 8, SIZE // 8)), full)


def test_mask_of_zeros_equals_thresholds_zero_exactly(guidance, reference):
    _, none = reference
    assert torch.equal(guidance.sample(mask=torch.zeros(1, SIZE, SIZE)), none)


def test_strength_zero_is_no_injection_and_outside_one_ignores_the_mask(guidance, reference):
    full, none = reference
    assert torch.equal(guidance.sample(injection_strength=0.0), none)
    assert torch.equal(guidance.sample(mask=_left_half(SIZE, SIZE), outside_mask_strength=1.0), full)
    half = guidance.sample(injection_strength=0.5)
    assert torch.isfinite(half).all()
    assert not torch.equal(half, full) and not torch.equal(half, none)


def _capture_attention_inputs(guidance, **inputs):
    """Run the sampler recording, at every output-block self-attention, the to_k and to_v inputs per call."""
    unet = guidance.model.model.diffusion_model
    k_in: dict[int, list[torch.Tensor]] = {b: [] for b in range(4, 12)}
    v_in: dict[int, list[torch.Tensor]] = {b: [] for b in range(4, 12)}
    hooks = []
    try:
        for b in range(4, 12):
            attn1 = unet.output_blocks[b][1].transformer_blocks[0].attn1
            hooks.append(attn1.to_k.register_forward_hook(lambda m, a, o, b=b: k_in[b].append(a[0].clone())))
            hooks.append(attn1.to_v.register_forward_hook(lambda m, a, o, b=b: v_in[b].append(a[0].clone())))
        latent = guidance.sample(**inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return latent, k_in, v_in


def test_half_mask_injects_only_inside_at_every_attention_site(guidance):
    _, full_k, _ = _capture_attention_inputs(guidance)
    _, k_in, v_in = _capture_attention_inputs(guidance, mask=_left_half(SIZE, SIZE))
    injected_calls = STEPS // 2  # tau_A = 0.5; cond and uncond run as one call per step
    for b in range(4, 12):
        assert len(k_in[b]) == len(v_in[b]) == len(full_k[b]) >= STEPS
        for i, (k, v) in enumerate(zip(k_in[b], v_in[b])):
            side = int(round(k.shape[1] ** 0.5))
            inside = _left_half(side, side).flatten().bool()
            # outside the mask the q/k input is the target's own hidden state, bit for bit
            assert torch.equal(k[:, ~inside], v[:, ~inside]), (b, i)
            if i < injected_calls:
                # inside: exactly the guidance image's tensors (what the unmasked PnP injects there)
                assert torch.equal(k[:, inside], full_k[b][i][:, inside]), (b, i)
                assert not torch.equal(k[:, inside], v[:, inside]), (b, i)
            else:
                assert torch.equal(k, v), (b, i)


def _region_distances(masked, full, none) -> dict[str, float]:
    """Relative L2 distances of the masked result to PnP and to no injection, per half of the latent."""
    w = masked.shape[-1]
    out = {}
    for name, cols in (("inside", slice(0, w // 2)), ("outside", slice(w // 2, w))):
        scale = float((full - none)[..., cols].norm())
        out[f"{name}_to_pnp"] = float((masked - full)[..., cols].norm()) / scale
        out[f"{name}_to_none"] = float((masked - none)[..., cols].norm()) / scale
    return out


def test_half_mask_result_follows_pnp_inside_and_no_injection_outside(guidance, reference):
    """Inside the mask the result is nearer the paper's PnP, outside nearer no injection.

    Distances are relative to |PnP - none| in the same region. The UNet mixes
    regions (convolutions, self-attention over all tokens), so neither is 0.
    """
    full, none = reference
    masked = guidance.sample(mask=_left_half(SIZE, SIZE))
    assert torch.isfinite(masked).all()
    d = _region_distances(masked, full, none)
    print(f"\nhalf mask, {SIZE} px, {STEPS} steps: " + ", ".join(f"{k} {v:.3f}" for k, v in d.items()))
    assert d["inside_to_pnp"] < d["inside_to_none"], d
    assert d["outside_to_none"] < d["outside_to_pnp"], d
    # what injection changed is concentrated inside the mask
    assert d["inside_to_none"] > d["outside_to_none"], d


def test_mask_of_wrong_batch_or_shape_is_refused_with_what_to_change(host, guidance):
    PnPInputError = host.pack_module("pnp_hooks.errors").PnPInputError  # noqa: N806
    with pytest.raises(PnPInputError, match="batch of 2 masks"):
        guidance.sample(mask=torch.ones(2, SIZE, SIZE))
    with pytest.raises(PnPInputError, match=f"guidance image is {SIZE}x{SIZE} px"):
        guidance.sample(mask=torch.ones(1, SIZE, SIZE // 2))
    with pytest.raises(PnPInputError, match="NaN"):
        guidance.sample(mask=torch.full((1, SIZE, SIZE), float("nan")))
    # a 2D (H, W) mask is one mask
    assert torch.isfinite(guidance.sample(mask=torch.ones(SIZE, SIZE))).all()


def test_wrong_size_mask_error_reaches_the_user_through_the_executor(host, models):
    prompt, refs = translation_prompt(models.checkpoint("sd15_reduced"), target="a cat", steps=2,
                                      output="SaveLatent")
    mask = prompt.add("SolidMask", value=1.0, width=96, height=64)
    prompt.api[refs["sampler"].node_id]["inputs"]["mask"] = mask[0].link
    result = run_prompt(prompt.api)
    assert not result.success
    error = result.error()
    assert error["node_type"] == "PnP_Sampler"
    assert error["exception_type"].endswith("PnPInputError")
    assert "The mask is 96x64 px but the guidance image is 64x64 px" in error["exception_message"]
    assert "Upscale Image to 64x64" in error["exception_message"]
