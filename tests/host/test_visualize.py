"""PnP Feature PCA: the node on a real (random-weight) bank (its maths: unit/test_pca.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from comfy_host import run_prompt
from harness import Translation, input_image, translation_prompt


def _pca_prompt(ckpt, image, view="resblock", layer="auto", steps="auto", with_model=True, extra=None):
    """(prompt, grid SaveImage, frames SaveImage) for the basic graph plus PnP Feature PCA on its bank."""
    prompt, refs = translation_prompt(ckpt, image, steps=10, bank={"bank_dtype": "fp32", "batch_size": 1})
    del prompt.api[refs["output"].node_id]
    pca_inputs = dict(features=refs["bank"][0], view=view, layer=layer, steps=steps, **(extra or {}))
    if with_model:
        pca_inputs["model"] = refs["ckpt"][0]
    pca = prompt.add("PnP_FeaturePCA", **pca_inputs)
    grid = prompt.add("SaveImage", images=pca[0], filename_prefix="pca_grid")
    frames = prompt.add("SaveImage", images=pca[1], filename_prefix="pca_frames")
    return prompt.api, grid.node_id, frames.node_id


def _saved(host, result, node):
    return [np.asarray(Image.open(host.output_dir / img.get("subfolder", "") / img["filename"]))
            for img in result.outputs[node]["images"]]


@pytest.mark.parametrize("view,layer,steps,count", [
    ("resblock", "auto", "auto", 5),           # ResBlock 4 from the bank, steps 0,2,4,6,8
    ("self-attention map", "9:0", "0,2,5", 3),  # 16x16 positions at 128 px; steps 0-5 are in the bank
    ("query", "auto", "every 3", 2),
    ("resblock", "7", "1,3", 2),               # not in the bank: recorded live with the MODEL
])
def test_pca_node_through_the_executor(host, models, view, layer, steps, count):
    ckpt = models.checkpoint("sd15_reduced")
    image = input_image("pca_guidance.png", size=128)
    prompt, grid_node, frames_node = _pca_prompt(ckpt, image, view, layer, steps)
    result = run_prompt(prompt)
    assert result.success, result.error()
    grid = _saved(host, result, grid_node)
    frames = _saved(host, result, frames_node)
    assert len(grid) == 1 and len(frames) == count
    assert grid[0].shape == (128, count * 128 + (count - 1) * 4, 3)
    assert all(f.shape == (128, 128, 3) for f in frames)
    # Every colour channel uses the full range over the shown steps (one min-max across steps).
    stacked = np.stack(frames)
    assert stacked.reshape(-1, 3).min(0).tolist() == [0, 0, 0]
    assert stacked.reshape(-1, 3).max(0).tolist() == [255, 255, 255]


def test_pca_node_without_model_names_the_missing_input(host, models):
    ckpt = models.checkpoint("sd15_reduced")
    image = input_image("pca_guidance.png", size=128)
    for view, layer in (("query", "auto"), ("resblock", "7")):
        result = run_prompt(_pca_prompt(ckpt, image, view, layer, with_model=False)[0])
        assert not result.success
        assert "MODEL" in result.error()["exception_message"], result.error()


def test_live_recording_equals_the_bank_and_pca_is_repeatable(host, models):
    """A site recorded live (only that site, only the chosen steps) is exactly what the bank recorded."""
    probe, unet = host.pack_module("pnp_hooks.probe"), host.pack_module("pnp_hooks.families.unet")
    latent = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    translation = Translation.make(models, latent=latent, steps=10, resblock_layers="4", attention_layers="4-11")
    model, bank = translation.model, translation.bank
    with torch.inference_mode():
        steps = [0, 3, 8]
        live = probe._record_live(model, bank, unet.RESBLOCK, 4, steps)
        assert torch.equal(live, bank.stored["resblock"][4][steps, 0])
        live_attn = probe._record_live(model, bank, unet.ATTENTION, (9, 0), [1, 5])
        assert torch.equal(live_attn, bank.stored["attention"][(9, 0)][[1, 5], 0])
        request = probe.PCARequest("self-attention map", "6:0", "auto")
        first = probe.feature_pca(bank, request, model)
        again = probe.feature_pca(bank, request, model)
        assert torch.equal(first.frames, again.frames) and torch.equal(first.grid, again.grid)
        assert first.steps == (0, 1, 2, 4, 5) and "t = 901, 801, 701, 501, 401" in first.caption
