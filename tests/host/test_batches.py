"""A batch of guidance images (frames) through PnP DDIM Inversion, PnP Feature Bank and PnP Sampler.

Frame i of every batch output equals the single-image run of frame i bit for bit (inversion, stored bank
recorded now or one frame at a time, on the fly, masks, random start). A bank recorded one frame at a time
never holds two frames' tensors; "all frames" holds every frame's. Nodes that take one image refuse a batch.
"""
from __future__ import annotations

import weakref

import pytest
import torch

from comfy_host import run_prompt
from harness import Translation, run_node, translation_prompt

STEPS = 6
FRAMES = 3


@pytest.fixture(scope="module")
def frames(models):
    """Three random 8x8 latents as one batch, inverted as a batch (a Translation whose latent is the batch)."""
    latents = torch.randn(FRAMES, 4, 8, 8, generator=torch.Generator().manual_seed(21)) * 4.0
    batch = Translation.make(models, latent=latents, steps=STEPS, batch_size=0)
    return batch, latents


def _single(batch: Translation, latents: torch.Tensor, frame: int, bank_inputs: dict, **sampler_inputs):
    inversion, noise = batch.invert(latent={"samples": latents[frame:frame + 1]})
    bank = run_node("PnP_FeatureBank", model=batch.model, inversion=inversion, conditioning=batch.empty,
                    bank_dtype="fp32", **bank_inputs)[0]
    return noise["samples"], batch.sample(features=bank, **sampler_inputs)


BANKS = [{"mode": "stored", "batch_memory": "one frame at a time"}, {"mode": "stored", "batch_memory": "all frames"},
         {"mode": "on the fly"}]


@pytest.mark.parametrize("bank_inputs", BANKS, ids=["stored one frame at a time", "stored all frames", "on the fly"])
def test_frame_i_of_a_batch_equals_the_single_image_run_of_frame_i(frames, bank_inputs):
    batch, latents = frames
    assert batch.inversion.frames == FRAMES
    bank = batch.record(batch_size=0, **bank_inputs)
    assert bank.frames == FRAMES
    out = batch.sample(features=bank)
    noise = batch.invert()[1]["samples"]
    assert out.shape == (FRAMES, 4, 8, 8) and noise.shape == (FRAMES, 4, 8, 8)
    for i in range(FRAMES):
        single_noise, single = _single(batch, latents, i, {"batch_size": 0, **bank_inputs})
        assert torch.equal(noise[i:i + 1], single_noise), i
        assert torch.equal(out[i:i + 1], single), (i, float((out[i:i + 1] - single).abs().max()))
    assert not torch.equal(out[0], out[1])


def test_masks_per_frame_and_a_random_start_are_the_single_runs_too(frames):
    batch, latents = frames
    masks = torch.zeros(FRAMES, 64, 64)
    for i in range(FRAMES):
        masks[i, :, : 16 * (i + 1)] = 1.0
    inputs = dict(start="random noise", start_seed=7, outside_mask_strength=0.2)
    out = batch.sample(features=batch.record(batch_size=0), mask=masks, **inputs)
    shared = batch.sample(features=batch.record(batch_size=0), mask=masks[1:2], **inputs)
    for i in range(FRAMES):
        assert torch.equal(out[i:i + 1], _single(batch, latents, i, {"batch_size": 0}, mask=masks[i:i + 1],
                                                 **inputs)[1]), i
        assert torch.equal(shared[i:i + 1], _single(batch, latents, i, {"batch_size": 0}, mask=masks[1:2],
                                                    **inputs)[1]), i
    with pytest.raises(ValueError, match="batch of 2 masks.*one per frame \\(3\\)"):
        batch.sample(features=batch.record(batch_size=0), mask=masks[:2])


def _count_stored_sources(host, monkeypatch) -> dict:
    """Live StoredSource objects of the pack, now and at their peak."""
    sources = host.pack_module("pnp_hooks.sources")
    counts = {"alive": 0, "peak": 0, "made": 0}
    post_init = sources.StoredSource.__post_init__

    def gone():
        counts["alive"] -= 1

    def counted(self):
        post_init(self)
        counts["alive"] += 1
        counts["made"] += 1
        counts["peak"] = max(counts["peak"], counts["alive"])
        weakref.finalize(self, gone)

    monkeypatch.setattr(sources.StoredSource, "__post_init__", counted)
    return counts


@pytest.mark.parametrize("memory, held_by_bank, peak", [("one frame at a time", 0, 1), ("all frames", FRAMES, FRAMES)])
def test_a_bank_recorded_one_frame_at_a_time_never_holds_two_frames(host, frames, monkeypatch, memory, held_by_bank,
                                                                    peak):
    batch, _ = frames
    counts = _count_stored_sources(host, monkeypatch)
    bank = run_node("PnP_FeatureBank", model=batch.model, inversion=batch.inversion, conditioning=batch.empty,
                    batch_memory=memory)[0]
    assert counts["alive"] == held_by_bank
    batch.sample(features=bank)
    assert counts["peak"] == peak and counts["made"] == FRAMES
    assert counts["alive"] == held_by_bank  # the frames recorded for sampling went with it
    single = run_node("PnP_FeatureBank", model=batch.model, inversion=batch.invert(
        latent={"samples": batch.latent["samples"][:1]})[0], conditioning=batch.empty, batch_memory=memory)[0]
    assert bank.nbytes == held_by_bank * single.nbytes


def test_progress_runs_once_over_all_frames(host, frames):
    batch, _ = frames
    bank = batch.record(batch_size=0)
    host.progress_events.clear()
    batch.sample(features=bank)
    recorded = max(bank.feature_steps, bank.attention_steps)
    totals = {total for _, total, _ in host.progress_events}
    values = [value for value, _, _ in host.progress_events]
    assert totals == {FRAMES * (recorded + STEPS)}
    assert values == sorted(values) and values[-1] == FRAMES * (recorded + STEPS)


def test_nodes_that_take_one_image_refuse_a_batch_with_what_to_do(frames):
    batch, _ = frames
    bank = batch.record(batch_size=0, batch_memory="all frames")
    message = "takes the bank of one guidance image; this bank holds 3 frames.*PnP Sampler.*Latent From Batch"
    with pytest.raises(ValueError, match="PnP Guider " + message):
        run_node("PnP_Guider", model=batch.model, positive=batch.positive, negative=batch.negative, features=bank)
    with pytest.raises(ValueError, match="PnP Save Feature Bank " + message):
        run_node("PnP_SaveFeatures", features=bank)
    with pytest.raises(ValueError, match="PnP Feature PCA " + message):
        run_node("PnP_FeaturePCA", features=bank)
    with pytest.raises(ValueError, match="this node makes one guidance image"):
        run_node("PnP_GenerateGuidance", model=batch.model, positive=batch.empty, negative=batch.empty,
                 latent={"samples": torch.zeros(2, 4, 8, 8)}, steps=2)


def test_the_shipped_frames_through_load_image_and_the_executor(host, models):
    """Load Image reads the animated PNG as a batch on this host; every frame is translated and saved."""
    import shutil

    import folder_paths
    import guidance_image

    shutil.copy(guidance_image.WORKFLOWS / guidance_image.FRAMES_NAME,
                f"{folder_paths.get_input_directory()}/{guidance_image.FRAMES_NAME}")
    prompt, refs = translation_prompt(models.checkpoint("sd15_reduced"), image=guidance_image.FRAMES_NAME,
                                      steps=2)
    scale = prompt.add("ImageScale", image=refs["image"][0], upscale_method="area", width=64, height=64,
                       crop="disabled")
    encode = next(i for i, n in prompt.api.items() if n["class_type"] == "VAEEncode")
    prompt.api[encode]["inputs"]["pixels"] = scale[0].link
    result = run_prompt(prompt.api)
    assert result.success, result.error()
    assert len(result.outputs[refs["output"].node_id]["images"]) == guidance_image.FRAME_COUNT
