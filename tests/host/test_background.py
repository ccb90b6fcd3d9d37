"""PnP Weaken Background / PnP Restore Brightness on the real host: chained with a MASK from Load Image (as
Mask) around a whole PnP translation through ComfyUI's executor, and refused input at queue time."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from comfy_host import run_prompt
from harness import executed_nodes, guidance_pixels, input_image, run_node, translation_prompt

SIZE = 64
STEPS = 4


def _mask_file(name: str) -> str:
    """A left-half subject mask (white = subject) in ComfyUI's input folder."""
    import folder_paths

    pixels = np.zeros((SIZE, SIZE), np.uint8)
    pixels[:, : SIZE // 2] = 255
    Image.fromarray(pixels).save(Path(folder_paths.get_input_directory()) / name)
    return name


def _weakened_prompt(models, **weaken):
    prompt, refs = translation_prompt(models.checkpoint("sd15_reduced"), image=input_image("bg_guidance.png", SIZE),
                                      steps=STEPS)
    mask = prompt.add("LoadImageMask", image=_mask_file("bg_mask.png"), channel="red")
    weakened = prompt.add("PnP_WeakenBackground", image=refs["image"][0], mask=mask[0], **weaken)
    encode = next(i for i, n in prompt.api.items() if n["class_type"] == "VAEEncode")
    prompt.api[encode]["inputs"]["pixels"] = [weakened.node_id, 0]
    decode = next(i for i, n in prompt.api.items() if n["class_type"] == "VAEDecode")
    restored = prompt.add("PnP_RestoreBrightness", image=[decode, 0], brightness=weakened[1])
    save = refs["output"].node_id
    prompt.api[save]["inputs"]["images"] = [restored.node_id, 0]
    prompt.add("PreviewImage", images=weakened[0])
    return prompt, refs, weakened


def test_weaken_then_restore_around_a_translation_through_the_executor(host, models):
    prompt, refs, _ = _weakened_prompt(models)
    result = run_prompt(prompt.api)
    assert result.success, result.error()
    saved = result.outputs[refs["output"].node_id]["images"]
    assert len(saved) == 1
    with Image.open(host.output_dir / saved[0]["subfolder"] / saved[0]["filename"]) as image:
        assert image.size == (SIZE, SIZE)


def test_the_nodes_do_what_the_notes_do_on_a_load_image_mask(host, models):
    pixels = guidance_pixels(SIZE)
    mask = run_node("LoadImageMask", image=_mask_file("bg_mask.png"), channel="red")[0]
    weakened, brightness = run_node("PnP_WeakenBackground", image=pixels, mask=mask, factor=0.5, feather=0)
    # a white mask pixel is 1.0 on ComfyUI 0.3.64 and 255/256 on 0.33 (it decodes images with PyAV)
    assert float(mask[..., : SIZE // 2].min()) > 0.99 and float(mask[..., SIZE // 2:].max()) == 0.0
    assert float((brightness - (mask + 0.5 * (1.0 - mask))).abs().max()) < 1e-7
    assert float((weakened[..., : SIZE // 2, :] - pixels[..., : SIZE // 2, :]).abs().max()) < 0.005
    assert torch.equal(weakened[..., SIZE // 2:, :], pixels[..., SIZE // 2:, :] * 0.5)
    whole = run_node("PnP_RestoreBrightness", image=weakened, brightness=brightness, region="whole image")[0]
    assert torch.equal(whole, (weakened * 2.0).clamp(0, 1))
    only = run_node("PnP_RestoreBrightness", image=weakened, brightness=brightness, region="weakened area only")[0]
    assert float((only - pixels).abs().max()) < 1e-6


def test_a_non_finite_factor_is_refused_before_the_inversion_and_factor_zero_cannot_be_restored(models):
    """NaN passes ComfyUI's min/max check (JSON prompts can carry it); PnP Weaken Background, upstream of the
    inversion, refuses it when it runs."""
    prompt, refs, weakened = _weakened_prompt(models, factor=math.nan)
    result = run_prompt(prompt.api)
    error = result.error()
    assert error["node_id"] == weakened.node_id and "factor is nan" in error["exception_message"], error
    assert refs["inversion"].node_id not in executed_nodes(result)
    prompt, refs, weakened = _weakened_prompt(models, factor=0.0)
    result = run_prompt(prompt.api)
    assert not result.success and "background was deleted" in result.error()["exception_message"]
