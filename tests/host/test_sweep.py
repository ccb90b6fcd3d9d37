"""PnP Threshold Sweep: each cell is a separate PnP Sampler run, bit for bit; N cells cost N samplings.

Random SD 2.x weights (its CLIP's pooled prompt is projected, the joint space of the random CLIP ViT-H/14 that
scores text), 64 px, 4 steps; the structure is scored with the same ViT-H (cheaper than DINOv2's 518 px).
"""
from __future__ import annotations

import json

import pytest
import torch

from comfy_host import run_prompt, validate
from harness import Translation, UNetRows, executed_nodes, guidance_pixels, run_node, translation_prompt

STEPS = 4
FEATURES, ATTENTION, STRENGTHS = (0.4, 0.8), (0.5,), (1.0, 0.5)


@pytest.fixture(scope="module")
def translation(models):
    return Translation.make(models, layout="sd2_reduced", steps=STEPS)


def sweep(t: Translation, vit, **inputs):
    values = dict(model=t.model, positive=t.positive, negative=t.negative, features=t.bank, vae=t.vae,
                  guidance=guidance_pixels(64), structure_model=vit, text_model=vit,
                  feature_injection_values=", ".join(map(str, FEATURES)),
                  attention_injection_values=", ".join(map(str, ATTENTION)),
                  injection_strength_values=", ".join(map(str, STRENGTHS)))
    return run_node("PnP_ThresholdSweep", **{**values, **inputs})


def test_sweep_cells_equal_separate_pnp_sampler_runs(host, translation, vision_models):
    vit = run_node("CLIPVisionLoader", clip_name=vision_models["clip_vision_h"])[0]
    host.progress_events.clear()
    with UNetRows() as unet:
        grid, plot, table, images, latents = sweep(translation, vit)
    cells = [(f, a, s) for s in STRENGTHS for a in ATTENTION for f in FEATURES]
    assert unet.rows == [2] * (len(cells) * STEPS), "each cell is one sampling: [uncond, cond] per step, no more"
    assert host.progress_events[-1][:2] == (len(cells) * STEPS, len(cells) * STEPS)

    for index, (f, a, s) in enumerate(cells):
        separate = translation.sample(feature_injection=f, attention_injection=a, injection_strength=s)
        assert torch.equal(latents["samples"][index:index + 1], separate), f"cell {index + 1} {f, a, s}"
        decoded = run_node("VAEDecode", samples={"samples": separate}, vae=translation.vae)[0]
        assert torch.equal(images[index:index + 1], decoded)
    assert not torch.equal(latents["samples"][0], latents["samples"][1])

    guidance = guidance_pixels(64)
    distances = run_node("PnP_StructureScore", vision_model=vit, guidance=guidance, images=images)[0]
    scores = run_node("PnP_TextScore", vision_model=vit, prompt=translation.positive, images=images)[0]
    front = host.pack_module("pnp_hooks.metrics").pareto_front(distances, scores)
    rows = [line.split() for line in table.splitlines()[1:1 + len(cells)]]
    print("sweep table:\n" + table)
    for row, (f, a, s), d, sc, on_front in zip(rows, cells, distances, scores, front):
        assert [float(v) for v in row[1:4]] == [f, a, s]
        assert row[4:6] == [f"{d:.6f}", f"{sc:.4f}"]
        assert (row[6:] == ["*"]) == on_front
    assert any(front)
    height, width = images.shape[1:3]
    assert grid.shape[0] == 1 and grid.shape[2] == len(FEATURES) * width and grid.shape[1] > 2 * height
    assert plot.shape == (1, 540, 720, 3)


def test_sweep_refuses_what_cannot_be_sampled_or_scored_before_sampling(host, translation, vision_models):
    error = host.pack_module("pnp_hooks.errors").PnPInputError
    vit = run_node("CLIPVisionLoader", clip_name=vision_models["clip_vision_h"])[0]
    dino = run_node("CLIPVisionLoader", clip_name=vision_models["dinov2"])[0]
    with UNetRows() as unet:
        with pytest.raises(error, match="feature bank holds only"):  # the bank's tau_A is 0.5
            sweep(translation, vit, attention_injection_values="0.5, 1.0")
        with pytest.raises(error, match="projection into CLIP's joint space"):
            sweep(translation, vit, text_model=dino)
    assert unet.rows == []


def _sweep_prompt(models, vision_models, inputs):
    prompt, refs = translation_prompt(models.checkpoint("sd2_reduced"), steps=STEPS, output="SaveLatent")
    vit = prompt.add("CLIPVisionLoader", clip_name=vision_models["clip_vision_h"])
    guidance = prompt.add("EmptyImage", width=64, height=64, batch_size=1)
    sweep_node = prompt.add("PnP_ThresholdSweep", model=refs["ckpt"][0], positive=refs["target"][0],
                            negative=refs["empty"][0], features=refs["bank"][0], vae=refs["ckpt"][2],
                            guidance=guidance[0], structure_model=vit[0], text_model=vit[0], **inputs)
    prompt.add("PreviewAny", source=sweep_node[2])
    del prompt.api[refs["output"].node_id]  # the sweep's table is the prompt's only output
    return prompt, refs, sweep_node


@pytest.mark.parametrize("inputs, message", [
    ({"feature_injection_values": "0.4, high"}, "not a number"),
    ({"injection_strength_values": "2"}, "between 0.0 and 1.0"),
    ({"attention_injection_values": ""}, "is empty"),
])
def test_sweep_value_lists_are_checked_at_queue_time(models, vision_models, inputs, message):
    """ComfyUI's validation refuses the prompt before the inversion runs."""
    prompt, refs, sweep_node = _sweep_prompt(models, vision_models, inputs)
    valid, _, _, node_errors = validate(prompt.api)
    assert not valid
    text = json.dumps(node_errors.get(sweep_node.node_id, {}).get("errors", []))
    assert message in text, text


def test_a_nan_cfg_is_refused_before_the_inversion_runs(models, vision_models):
    """NaN passes ComfyUI's min/max check; the sweep's bank input is lazy, so the sweep refuses it first."""
    prompt, refs, sweep_node = _sweep_prompt(models, vision_models, {"cfg": float("nan")})
    result = run_prompt(prompt.api)
    error = result.error()
    assert error["node_id"] == sweep_node.node_id and "cfg is nan" in error["exception_message"], error
    assert refs["inversion"].node_id not in executed_nodes(result)
