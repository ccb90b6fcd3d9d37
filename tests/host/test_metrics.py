"""PnP Structure Score and PnP Text Score on random DINOv2 / CLIP ViT-H models that ComfyUI's CLIPVisionLoader loads.

The independent side: the keys the vision model's own forward pass computes
in its last attention layer (a forward hook on its key projection during the
node's run), and Splice's formula on them in float64 numpy; the image
embeddings of ComfyUI's own CLIP Vision Encode node and the pooled output of
the prompt's CLIP Text Encode, with the cosine in numpy.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from harness import encode, guidance_pixels, run_node

SIZE = 64


def patch_permuted(image: torch.Tensor, cells: int = 4) -> torch.Tensor:
    """The same pixels with the image's cells x cells grid of squares transposed: other layout, same colours."""
    b, h, w, c = image.shape
    grid = image.reshape(b, cells, h // cells, cells, w // cells, c)
    return grid.permute(0, 3, 2, 1, 4, 5).reshape(b, h, w, c).contiguous()


def recoloured(image: torch.Tensor) -> torch.Tensor:
    """The same layout in other colours (a translation that keeps the structure)."""
    return (image.flip(-1) * 0.7 + 0.2).clamp(0, 1)


def splice_distance(a: np.ndarray, b: np.ndarray) -> float:
    def self_similarity(keys):
        norms = np.linalg.norm(keys, axis=-1, keepdims=True)
        return keys @ keys.T / np.maximum(norms @ norms.T, 1e-8)

    return float(np.mean((self_similarity(a) - self_similarity(b)) ** 2))


class KeyCapture:
    """The output of a module (the last layer's key projection) in every forward pass while active."""

    def __init__(self, module):
        self.module = module
        self.outputs: list[torch.Tensor] = []

    def __enter__(self):
        self.handle = self.module.register_forward_hook(lambda m, args, out: self.outputs.append(out.clone()))
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def load(vision_models, kind: str):
    return run_node("CLIPVisionLoader", clip_name=vision_models[kind])[0]


def test_dinov2_structure_score_is_splice_on_the_last_layer_keys(host, vision_models):
    dino = load(vision_models, "dinov2")
    assert type(dino.model).__name__ == "Dinov2Model"
    guidance = guidance_pixels(SIZE)
    images = torch.cat([guidance, patch_permuted(guidance), recoloured(guidance)])
    with KeyCapture(dino.model.encoder.layer[-1].attention.attention.key) as capture:
        distances, maps, summary = run_node("PnP_StructureScore", vision_model=dino, guidance=guidance,
                                            images=images)
    # Per encode call: the keys of the model's own forward pass, then the node's from the penultimate states.
    forward_guidance, node_guidance, forward_images, node_images = capture.outputs
    assert torch.equal(node_guidance, forward_guidance) and torch.equal(node_images, forward_images)
    guidance_keys, keys = forward_guidance.double().numpy(), forward_images.double().numpy()
    assert guidance_keys.shape == (1, 1370, 1024) and keys.shape == (3, 1370, 1024)
    expected = [splice_distance(guidance_keys[0], keys[i]) for i in range(3)]
    print("DINOv2 distances (identical, permuted, recoloured):", distances)
    np.testing.assert_allclose(distances, expected, rtol=1e-4, atol=1e-9)
    assert distances[0] == 0.0
    assert distances[1] > 5 * distances[2] > 0.0, "the permuted layout must score worse than the recoloured one"
    assert maps.shape[0] == 3 and maps.shape[-1] == 3 and summary.count("structure distance") == 3


def test_structure_score_is_symmetric_and_scores_per_pair(host, vision_models):
    vit = load(vision_models, "clip_vision_h")
    a, b = guidance_pixels(SIZE), recoloured(guidance_pixels(SIZE, seed=1))
    pairwise = run_node("PnP_StructureScore", vision_model=vit, guidance=torch.cat([a, b]), images=torch.cat([b, a]))[0]
    one_guidance = run_node("PnP_StructureScore", vision_model=vit, guidance=a, images=torch.cat([a, b]))[0]
    print("CLIP ViT-H distances:", pairwise, one_guidance)
    assert pairwise[0] == pairwise[1] > 0.0
    assert one_guidance == [0.0, pairwise[0]]
    error = host.pack_module("pnp_hooks.errors").PnPInputError
    with pytest.raises(error, match="one guidance image, or as many"):
        run_node("PnP_StructureScore", vision_model=vit, guidance=torch.cat([a, b]), images=torch.cat([a, b, a]))


def test_text_score_is_the_cosine_of_image_embeds_and_the_projected_pooled_prompt(host, models, vision_models):
    vit = load(vision_models, "clip_vision_h")
    _, clip, _ = models.load("sd2_reduced")
    prompt = encode(clip, "a watercolor painting of a fruit bowl")
    pooled = prompt[0][1]["pooled_output"]
    assert pooled.shape[-1] == 1024  # SD 2.x's OpenCLIP ViT-H/14, projected
    images = torch.cat([guidance_pixels(SIZE), patch_permuted(guidance_pixels(SIZE))])
    scores, summary = run_node("PnP_TextScore", vision_model=vit, prompt=prompt, images=images)
    embeds = run_node("CLIPVisionEncode", clip_vision=vit, image=images, crop="center")[0]["image_embeds"]
    e, t = embeds.double().numpy(), pooled.double().numpy().reshape(-1)
    expected = e @ t / (np.linalg.norm(e, axis=-1) * np.linalg.norm(t))
    print("text scores:", scores)
    np.testing.assert_allclose(scores, expected, rtol=1e-5)
    assert summary.count("text score") == 2


def test_text_score_refuses_pairs_outside_a_joint_space(host, models, vision_models):
    error = host.pack_module("pnp_hooks.errors").PnPInputError
    _, sd15_clip, _ = models.load("sd15_reduced")
    image = guidance_pixels(SIZE)
    vit = load(vision_models, "clip_vision_h")
    with pytest.raises(error, match="before CLIP's text projection"):
        run_node("PnP_TextScore", vision_model=vit, prompt=encode(sd15_clip, "a cat"), images=image)
    dino = load(vision_models, "dinov2")
    _, sd2_clip, _ = models.load("sd2_reduced")
    with pytest.raises(error, match="projection into CLIP's joint space"):
        run_node("PnP_TextScore", vision_model=dino, prompt=encode(sd2_clip, "a cat"), images=image)
    combined = run_node("ConditioningCombine", conditioning_1=encode(sd2_clip, "a"),
                        conditioning_2=encode(sd2_clip, "b"))
    with pytest.raises(error, match="one prompt"):
        run_node("PnP_TextScore", vision_model=vit, prompt=combined[0], images=image)


def test_structure_score_refuses_a_vision_model_without_usable_keys(host):
    """DINOv3 (ComfyUI 0.33 loads it, its encode_image fails) and any other encoder get a message, not a crash."""

    class DINOv3ViTModel(torch.nn.Module):  # stands in for comfy.image_encoders.dino3's class, by name
        pass

    class Loaded:
        model = DINOv3ViTModel()

    error = host.pack_module("pnp_hooks.errors").PnPInputError
    with pytest.raises(error, match="needs a DINOv2 or CLIP ViT.*no penultimate hidden states for DINOv3"):
        run_node("PnP_StructureScore", vision_model=Loaded(), guidance=guidance_pixels(SIZE),
                 images=guidance_pixels(SIZE))
