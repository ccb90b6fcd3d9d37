"""Background weakening and brightness restoring (a user's SAM scheme) on plain tensors (pure torch)."""
from __future__ import annotations

import pytest
import torch

from pure import pure

background, errors = pure("background"), pure("errors")

SIZE = 32


def _image(batch: int = 1) -> torch.Tensor:
    return torch.rand(batch, SIZE, SIZE, 3, generator=torch.Generator().manual_seed(0)) * 0.8 + 0.1


def _left_subject(batch: int = 1) -> torch.Tensor:
    mask = torch.zeros(batch, SIZE, SIZE)
    mask[..., : SIZE // 2] = 1.0
    return mask


def test_hard_edge_multiplies_the_background_by_the_factor_only():
    image = _image()
    b = background.brightness_map(image, _left_subject(), 0.5, feather=0)
    weakened = background.weaken(image, b)
    assert torch.equal(weakened[:, :, : SIZE // 2], image[:, :, : SIZE // 2])
    assert torch.equal(weakened[:, :, SIZE // 2:], image[:, :, SIZE // 2:] * 0.5)


def test_factor_one_or_a_full_mask_leave_the_image_as_it_is():
    image = _image()
    for mask, factor, feather in ((_left_subject(), 1.0, 6), (torch.ones(1, SIZE, SIZE), 0.3, 0)):
        b = background.brightness_map(image, mask, factor, feather)
        assert torch.equal(background.weaken(image, b), image)
        for region in background.RESTORE_REGIONS:
            assert torch.equal(background.restore(image, b, region), image)


def test_soft_edge_ramps_monotonically_across_feather_pixels_and_is_exact_far_from_it():
    mask = _left_subject()
    soft = background.soft_edge(mask, feather=4)
    row = soft[0, 5]
    assert torch.all(row[1:] <= row[:-1])  # from the subject (left) down to the background
    edge = SIZE // 2
    assert float(row[edge - 1]) == pytest.approx(1.0 - float(row[edge]), abs=1e-6)  # symmetric around the edge
    assert float((1 - row[: edge - 6]).abs().max()) < 1e-6
    assert float(row[edge + 6:].abs().max()) < 1e-6
    assert 0.0 < float(row[edge]) < 0.5 < float(row[edge - 1]) < 1.0
    assert torch.equal(background.soft_edge(mask, 0), mask)
    # a feather wider than the image still gives a valid map
    wide = background.soft_edge(mask, feather=200)
    assert torch.isfinite(wide).all() and float(wide.min()) >= 0.0 and float(wide.max()) <= 1.0


def test_restore_weakened_area_only_undoes_the_weakening():
    image = _image()
    b = background.brightness_map(image, _left_subject(), 0.5, feather=4)
    restored = background.restore(background.weaken(image, b), b, background.WEAKENED_ONLY)
    assert float((restored - image).abs().max()) < 1e-6


def test_restore_whole_image_divides_everything_by_the_background_factor_and_clips():
    image = _image()
    b = background.brightness_map(image, _left_subject(), 0.5, feather=0)
    restored = background.restore(image, b, background.WHOLE_IMAGE)
    assert torch.equal(restored, (image * 2.0).clamp(0.0, 1.0))
    assert float(restored.max()) == 1.0  # the subject, brightened too, clips at white


def test_factor_zero_deletes_the_background_and_cannot_be_restored():
    image = _image()
    b = background.brightness_map(image, _left_subject(), 0.0, feather=0)
    assert torch.equal(background.weaken(image, b)[:, :, SIZE // 2:], torch.zeros(1, SIZE, SIZE // 2, 3))
    for region in background.RESTORE_REGIONS:
        with pytest.raises(errors.PnPInputError, match="background was deleted"):
            background.restore(image, b, region)


def test_one_mask_for_a_batch_or_one_per_image():
    images = _image(3)
    shared = background.brightness_map(images, _left_subject(1), 0.5, 2)
    assert shared.shape == (1, SIZE, SIZE)
    per_image = torch.stack([_left_subject(1)[0], torch.ones(SIZE, SIZE), torch.zeros(SIZE, SIZE)])
    b = background.brightness_map(images, per_image, 0.5, 0)
    weakened = background.weaken(images, b)
    assert torch.equal(weakened[1], images[1]) and torch.equal(weakened[2], images[2] * 0.5)
    assert background.weaken(images, shared).shape == images.shape


@pytest.mark.parametrize("mask, message", [
    (torch.zeros(2, SIZE, SIZE), "2 masks for 3 images"),
    (torch.zeros(1, SIZE, SIZE // 2), "16x32 px but the image is 32x32 px"),
    (torch.zeros(1, 1, SIZE, SIZE), "a MASK is"),
    (torch.full((1, SIZE, SIZE), float("nan")), "NaN"),
])
def test_masks_that_do_not_fit_are_refused_with_what_to_change(mask, message):
    with pytest.raises(errors.PnPInputError, match=message):
        background.brightness_map(_image(3), mask, 0.5, 0)


def test_values_stay_in_range_and_bad_settings_are_refused():
    image = _image()
    b = background.brightness_map(image, _left_subject(), 0.25, 3)
    assert float(background.restore(image, b, background.WHOLE_IMAGE).max()) <= 1.0
    with pytest.raises(errors.PnPInputError, match="factor must be between 0 and 1"):
        background.brightness_map(image, _left_subject(), 1.5, 0)
    with pytest.raises(errors.PnPInputError, match="region must be one of"):
        background.restore(image, b, "everywhere")
    with pytest.raises(errors.PnPInputError, match="connect an IMAGE"):
        background.restore(image[0], b, background.WHOLE_IMAGE)
