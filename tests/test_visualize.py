"""PnP Feature PCA: the PCA maths on synthetic tensors, and the node on a real (random-weight) bank."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from host import run_prompt
from test_host import _write_input_image


@pytest.fixture(scope="module")
def V(host):
    return host.pack_module("pnp_hooks.visualize")


def _two_regions(steps=3, channels=48, hw=(8, 10), swap_at=None, seed=0):
    """ResBlock-like features (S, C, h, w): a disc and a background with different mean vectors plus noise."""
    g = torch.Generator().manual_seed(seed)
    h, w = hw
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    disc = ((yy - h / 2 + 0.5) ** 2 + (xx - w / 2 + 0.5) ** 2) < (min(h, w) / 3) ** 2
    inside, outside = torch.randn(channels, generator=g) * 3, torch.randn(channels, generator=g) * 3
    feats = torch.randn(steps, channels, h, w, generator=g) * 0.3
    for s in range(steps):
        a, b = (outside, inside) if swap_at is not None and s >= swap_at else (inside, outside)
        feats[s] += torch.where(disc, a[:, None, None], b[:, None, None])
    return feats, disc


def test_pca_rgb_shape_range_and_repeatability(V):
    feats, _ = _two_regions()
    rng_before = torch.get_rng_state()
    rgb = V.pca_rgb(V.resblock_tokens(feats))
    assert torch.equal(torch.get_rng_state(), rng_before), "the PCA must not move the caller's RNG"
    assert rgb.shape == (3, 80, 3)
    assert rgb.dtype == torch.float32
    assert float(rgb.min()) >= 0.0 and float(rgb.max()) <= 1.0
    flat = rgb.reshape(-1, 3)
    # One min-max per component over all steps: each component spans exactly [0, 1].
    assert torch.allclose(flat.min(0).values, torch.zeros(3)) and torch.allclose(flat.max(0).values, torch.ones(3))
    torch.manual_seed(123)  # a different global RNG state must not change the result
    assert torch.equal(V.pca_rgb(V.resblock_tokens(feats)), rgb)
    for fit in V.FIT_MODES:
        assert torch.equal(V.pca_rgb(V.resblock_tokens(feats), fit), V.pca_rgb(V.resblock_tokens(feats), fit))


@pytest.mark.parametrize("fit", ["across steps", "per step"])
def test_first_component_separates_two_regions(V, fit):
    feats, disc = _two_regions()
    images = V.to_images(V.pca_rgb(V.resblock_tokens(feats), fit), tuple(disc.shape))
    for s in range(images.shape[0]):
        red = images[s, ..., 0]
        lo, hi = red[disc], red[~disc]
        if lo.mean() > hi.mean():
            lo, hi = hi, lo
        assert float(lo.max()) < float(hi.min()), f"step {s}: the first component does not split the regions"
        assert float(hi.min() - lo.max()) > 0.5


def test_self_attention_map_first_component_separates_regions(V):
    """Tokens attend within their region: the affinity rows' first component splits the regions."""
    g = torch.Generator().manual_seed(1)
    h, w, heads, dim_head = 6, 6, 2, 8
    region = (torch.arange(h * w) % w) < 2  # two left columns vs the rest
    embed = torch.where(region[:, None], torch.randn(heads * dim_head, generator=g),
                        torch.randn(heads * dim_head, generator=g)) * 2.5
    q = (embed + 0.2 * torch.randn(2, h * w, heads * dim_head, generator=g))
    k = (embed + 0.2 * torch.randn(2, h * w, heads * dim_head, generator=g))
    maps = V.AttentionMaps(q, k, heads)
    assert maps.dim == heads * h * w
    rows = maps.rows(0, torch.arange(h * w))
    assert torch.allclose(rows.view(h * w, heads, h * w).sum(-1), torch.ones(h * w, heads), atol=1e-5)
    for budget in (V.DEFAULT_BUDGET, 200):  # 200: fit on a subset of tokens, project in chunks of 2 rows
        red = V.pca_rgb(maps, budget=budget)[..., 0]
        a, b = red[:, region], red[:, ~region]
        assert float((a.mean() - b.mean()).abs()) > 0.5
        assert float(a.max()) < float(b.min()) or float(b.max()) < float(a.min())


def test_fit_across_steps_keeps_colours_comparable(V):
    """Swap the two regions' features at step 2: with one basis and one scale, the disc at step 2 takes the
    background's colour of step 0 and the reverse."""
    feats, disc = _two_regions(steps=3, swap_at=2)
    red = V.to_images(V.pca_rgb(V.resblock_tokens(feats), "across steps"), tuple(disc.shape))[..., 0]
    disc0, back0 = red[0][disc].mean(), red[0][~disc].mean()
    disc2, back2 = red[2][disc].mean(), red[2][~disc].mean()
    assert abs(float(disc0 - back0)) > 0.8
    assert abs(float(disc2 - back0)) < 0.05 and abs(float(back2 - disc0)) < 0.05
    assert float((red[0] - red[1]).abs().max()) < 0.1  # unchanged features, unchanged colour


def test_chunked_projection_and_subsampled_fit_agree_with_the_full_pca(V):
    feats, disc = _two_regions(steps=2, channels=32)
    full = V.pca_rgb(V.resblock_tokens(feats))
    small = V.pca_rgb(V.resblock_tokens(feats), budget=32 * 40)  # fit on 40 of 160 tokens, 40-row chunks
    assert small.shape == full.shape
    # The first component still splits the regions, and nearly as the full fit does.
    red = V.to_images(small, tuple(disc.shape))[..., 0]
    inside, outside = red[:, disc], red[:, ~disc]
    assert float(inside.max()) < float(outside.min()) or float(outside.max()) < float(inside.min())
    assert float((full[..., 0] - small[..., 0]).abs().max()) < 0.1


def test_degenerate_inputs_give_defined_pictures(V):
    constant = V.pca_rgb(V.DenseFeatures(torch.ones(2, 5, 7)))
    assert torch.equal(constant, torch.zeros(2, 5, 3))
    two_tokens = V.pca_rgb(V.DenseFeatures(torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])))
    assert two_tokens.shape == (1, 2, 3) and torch.isfinite(two_tokens).all()


def test_grid_upscale_and_token_grid(V):
    frames = torch.rand(5, 4, 6, 3)
    up = V.upscale(frames, (8, 12), "nearest")
    assert up.shape == (5, 8, 12, 3) and torch.equal(up[:, ::2, ::2], frames)
    smooth = V.upscale(frames, (8, 12), "bilinear")
    assert smooth.shape == (5, 8, 12, 3) and float(smooth.min()) >= 0 and float(smooth.max()) <= 1
    g = V.grid(up, columns=2, padding=3)
    assert g.shape == (1, 3 * 8 + 2 * 3, 2 * 12 + 3, 3)
    assert torch.equal(g[0, 11:19, 15:27], up[3])
    assert float(g[0, 8:11].min()) == 1.0  # padding
    assert V.grid(up).shape == (1, 8, 5 * 12 + 4 * 4, 3)
    assert V.token_grid((16, 16), 16) == (4, 4)
    assert V.token_grid((13, 21), 7 * 11) == (7, 11)  # stride-2 convs round up
    with pytest.raises(ValueError):
        V.token_grid((16, 16), 15)


def test_parse_steps(V):
    from_bank = V.parse_steps
    assert from_bank("auto", 41, 50) == [0, 10, 20, 30, 40]
    assert from_bank("auto", 3, 10) == [0, 1, 2]
    assert from_bank("auto", 0, 10) == [0, 2, 4, 7, 9]  # nothing recorded for that kind: all steps
    assert from_bank("every 10", 26, 50) == [0, 10, 20]
    assert from_bank("all", 4, 50) == [0, 1, 2, 3]
    assert from_bank("0, 3-5;9", 4, 50) == [0, 3, 4, 5, 9]
    for bad in ("0,x", "5-2", "every 0", "50", ","):
        with pytest.raises(V.PnPInputError):
            from_bank(bad, 41, 50)


# ---- the node on real banks (reduced SD1.5, CPU) ----

def test_pca_node_is_registered_with_tooltips(host):
    import nodes

    assert nodes.NODE_DISPLAY_NAME_MAPPINGS["PnP_FeaturePCA"] == "PnP Feature PCA"
    schema = nodes.NODE_CLASS_MAPPINGS["PnP_FeaturePCA"].GET_SCHEMA()
    assert schema.category == "sampling/plug-and-play" and schema.description
    for item in schema.inputs + schema.outputs:
        assert item.tooltip, f"PnP_FeaturePCA.{item.id} has no tooltip"
    assert [o.io_type for o in schema.outputs] == ["IMAGE", "IMAGE", "STRING"]


def _pca_prompt(ckpt, image, view="resblock", layer="auto", steps="auto", with_model=True, extra=None):
    pca_inputs = {"features": ["6", 0], "view": view, "layer": layer, "steps": steps, "fit": "across steps",
                  "frame_width": 0, "upscale": "nearest", "columns": 0}
    if with_model:
        pca_inputs["model"] = ["1", 0]
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
        "3": {"class_type": "LoadImage", "inputs": {"image": image}},
        "4": {"class_type": "VAEEncode", "inputs": {"pixels": ["3", 0], "vae": ["1", 2]}},
        "5": {"class_type": "PnP_DDIMInversion", "inputs": {
            "model": ["1", 0], "latent": ["4", 0], "conditioning": ["2", 0], "steps": 10, "inversion_steps": 0}},
        "6": {"class_type": "PnP_FeatureBank", "inputs": {
            "model": ["1", 0], "inversion": ["5", 0], "conditioning": ["2", 0], "resblock_layers": "auto",
            "attention_layers": "auto", "feature_injection": 0.8, "attention_injection": 0.5,
            "bank_dtype": "fp32", "batch_size": 1}},
        "7": {"class_type": "PnP_FeaturePCA", "inputs": pca_inputs},
        "8": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": "pca_grid"}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["7", 1], "filename_prefix": "pca_frames"}},
    }
    prompt["7"]["inputs"].update(extra or {})
    return prompt


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
    image = _write_input_image(host, "pca_guidance.png", size=128)
    result = run_prompt(_pca_prompt(ckpt, image, view, layer, steps))
    assert result.success, result.error()
    grid = _saved(host, result, "8")
    frames = _saved(host, result, "9")
    assert len(grid) == 1 and len(frames) == count
    assert grid[0].shape == (128, count * 128 + (count - 1) * 4, 3)
    assert all(f.shape == (128, 128, 3) for f in frames)
    # Every colour channel uses the full range over the shown steps (one min-max across steps).
    stacked = np.stack(frames)
    assert stacked.reshape(-1, 3).min(0).tolist() == [0, 0, 0]
    assert stacked.reshape(-1, 3).max(0).tolist() == [255, 255, 255]


def test_pca_node_without_model_names_the_missing_input(host, models):
    ckpt = models.checkpoint("sd15_reduced")
    image = _write_input_image(host, "pca_guidance.png", size=128)
    for view, layer in (("query", "auto"), ("resblock", "7")):
        result = run_prompt(_pca_prompt(ckpt, image, view, layer, with_model=False))
        assert not result.success
        assert "MODEL" in result.error()["exception_message"], result.error()


def test_live_recording_equals_the_bank_and_pca_is_repeatable(host, models):
    """A site recorded live (only that site, only the chosen steps) is exactly what the bank recorded."""
    import nodes

    probe = host.pack_module("pnp_hooks.probe")
    M = nodes.NODE_CLASS_MAPPINGS
    model, clip, _ = models.load("sd15_reduced")
    with torch.inference_mode():
        empty = nodes.CLIPTextEncode().encode(clip, "")[0]
        latent = {"samples": torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(3))}
        inversion = M["PnP_DDIMInversion"].execute(model, latent, empty, 10, 0).result[0]
        bank = M["PnP_FeatureBank"].execute(model, inversion, empty, "4", "4-11", 0.8, 0.5, "fp32", 1).result[0]
        steps = [0, 3, 8]
        live = probe._record_live(model, bank, "resblock", (4, 0), steps)
        assert torch.equal(live, bank.resblock[4][steps, 0])
        live_attn = probe._record_live(model, bank, "attention input", (9, 0), [1, 5])
        assert torch.equal(live_attn, bank.attention[(9, 0)][[1, 5], 0])
        first = probe.feature_pca(bank, "self-attention map", "6:0", "auto", model)
        again = probe.feature_pca(bank, "self-attention map", "6:0", "auto", model)
        assert torch.equal(first.frames, again.frames) and torch.equal(first.grid, again.grid)
        assert first.steps == (0, 1, 2, 4, 5) and "t = 901, 801, 701, 501, 401" in first.caption
