"""PnP Feature PCA's maths on synthetic tensors (pure torch; no ComfyUI)."""
from __future__ import annotations

import pytest
import torch

from pure import pure


@pytest.fixture(scope="module")
def V():
    return pure("visualize")


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
