"""The scores' maths and the sweep's bookkeeping against independent formulas (numpy, loops)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from pure import pure

metrics = pure("metrics")
charts = pure("charts")
errors = pure("errors")


def splice_self_similarity(keys: np.ndarray) -> np.ndarray:
    """Splice's attn_cosine_sim, written out entry by entry in float64: S[i, j] = k_i.k_j / max(|k_i||k_j|, 1e-8)."""
    tokens = keys.shape[0]
    out = np.empty((tokens, tokens))
    for i in range(tokens):
        for j in range(tokens):
            out[i, j] = keys[i] @ keys[j] / max(np.linalg.norm(keys[i]) * np.linalg.norm(keys[j]), 1e-8)
    return out


def splice_distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean((splice_self_similarity(a) - splice_self_similarity(b)) ** 2))


def random_keys(batch: int = 3, tokens: int = 17, dim: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, tokens, dim, generator=torch.Generator().manual_seed(seed))


def test_self_similarity_equals_the_entrywise_formula():
    keys = random_keys()
    keys[1, 4] = 0.0  # a zero token: the clamp of Splice's formula decides it
    ours = metrics.self_similarity(keys)
    for b in range(keys.shape[0]):
        np.testing.assert_allclose(ours[b].numpy(), splice_self_similarity(keys[b].double().numpy()), atol=1e-6)


def test_structure_distance_equals_the_formula_is_zero_for_identical_and_symmetric():
    a, b = random_keys(seed=1), random_keys(seed=2)
    distance = metrics.structure_distance(a, b)
    expected = [splice_distance(a[i].double().numpy(), b[i].double().numpy()) for i in range(a.shape[0])]
    np.testing.assert_allclose(distance.numpy(), expected, rtol=1e-5)
    assert torch.equal(metrics.structure_distance(a, a), torch.zeros(a.shape[0]))
    assert torch.equal(distance, metrics.structure_distance(b, a))


def test_a_token_permutation_moves_the_structure_and_a_scale_does_not():
    """Self-similarity sees the layout of tokens, not their scale: permuting the patch tokens of an image is a
    structure change, scaling each token (a brightness change in a linear feature) is none."""
    keys = random_keys(batch=1, tokens=33, seed=3)
    order = torch.cat([torch.zeros(1, dtype=torch.long), torch.randperm(32, generator=torch.Generator()
                                                                          .manual_seed(4)) + 1])
    permuted = keys[:, order]
    scaled = keys * torch.rand(1, 33, 1, generator=torch.Generator().manual_seed(5)).add(0.5)
    assert float(metrics.structure_distance(keys, permuted)[0]) > 0.01
    assert float(metrics.structure_distance(keys, scaled)[0]) < 1e-10


def test_cosine_scores_equal_the_formula_and_broadcast_one_text():
    images, text = torch.randn(4, 6), torch.randn(1, 6)
    t = text[0].double().numpy()
    expected = [float(i @ t / (np.linalg.norm(i) * np.linalg.norm(t))) for i in images.double().numpy()]
    np.testing.assert_allclose(metrics.cosine_scores(images, text).numpy(), expected, rtol=1e-5)
    with pytest.raises(errors.PnPInputError, match="same CLIP joint space"):
        metrics.cosine_scores(images, torch.randn(1, 5))


def brute_force_front(distances, scores):
    """Cells no other cell dominates, by enumerating every pair."""
    front = []
    for i in range(len(distances)):
        dominated = any(distances[j] <= distances[i] and scores[j] >= scores[i]
                        and (distances[j], scores[j]) != (distances[i], scores[i]) for j in range(len(distances)))
        front.append(not dominated)
    return front


@pytest.mark.parametrize("seed", range(5))
def test_pareto_front_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    distances = rng.integers(0, 6, 12).astype(float).tolist()  # ties on purpose
    scores = rng.integers(0, 6, 12).astype(float).tolist()
    front = metrics.pareto_front(distances, scores)
    assert front == brute_force_front(distances, scores)
    best_distance = min(distances)
    assert any(f and d == best_distance for f, d in zip(front, distances))


def test_pair_rows_one_guidance_or_one_each():
    assert metrics.pair_rows(1, 3) == [0, 0, 0]
    assert metrics.pair_rows(3, 3) == [0, 1, 2]
    with pytest.raises(errors.PnPInputError, match="one guidance image, or as many"):
        metrics.pair_rows(2, 3)


def test_parse_values_and_cells_in_reading_order():
    assert metrics.parse_values(" 0.4,0.6 , 0.8,0.6", "f") == (0.4, 0.6, 0.8)
    cells = metrics.sweep_cells((0.4, 0.8), (0.2, 0.5), (1.0, 0.5))
    assert [(c.feature_injection, c.attention_injection, c.injection_strength) for c in cells] == \
        [(f, a, s) for s, a, f in itertools.product((1.0, 0.5), (0.2, 0.5), (0.4, 0.8))]
    for text, message in [("", "is empty"), ("0.5,,0.6", "empty entry"), ("0.5, x", "not a number"),
                          ("1.5", "between 0.0 and 1.0"), ("nan", "finite"),
                          (",".join(str(i / 100) for i in range(17)), "at most 16")]:
        with pytest.raises(errors.PnPInputError, match=message):
            metrics.parse_values(text, "f")
    with pytest.raises(errors.PnPInputError, match="at most 64"):
        metrics.sweep_cells(tuple(range(5)), tuple(range(5)), tuple(range(3)))


def test_table_marks_the_front_and_numbers_the_cells():
    cells = metrics.sweep_cells((0.4, 0.8), (0.5,), (1.0,))
    scored = metrics.score_cells(cells, [0.2, 0.1], [0.3, 0.25])
    lines = metrics.format_table(scored, with_strength=False).splitlines()
    assert lines[0].split() == ["cell", "feature_injection", "attention_injection", "structure_distance",
                                "text_score", "front"]
    assert lines[1].split() == ["1", "0.4", "0.5", "0.200000", "0.3000", "*"]
    assert lines[2].split() == ["2", "0.8", "0.5", "0.100000", "0.2500", "*"]


def test_pictures_are_comfyui_images():
    images = torch.rand(3, 40, 48, 3)
    grid = charts.labelled_grid(images, ["1", "2", "3"], columns=2)
    assert grid.shape[0] == 1 and grid.shape[2] == 96 and grid.shape[3] == 3
    assert torch.equal(grid[0, :40, :48], (images[0] * 255).round().div(255))
    scored = metrics.score_cells(metrics.sweep_cells((0.4, 0.8), (0.5,), (1.0,)), [0.2, 0.1], [0.3, 0.25])
    plot = charts.tradeoff_plot(scored)
    assert plot.shape == (1, 540, 720, 3) and 0.0 <= float(plot.min()) and float(plot.max()) <= 1.0
    maps = charts.similarity_maps(torch.eye(300), torch.eye(300), "caption")
    assert maps.shape[0] == 1 and maps.shape[3] == 3
