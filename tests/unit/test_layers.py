"""Layer and step lists as users type them: the grammar, the bounds, the paper's defaults, bank sizes.

Parse times of the worst strings are measured in bench/robustness.py (figures in bench/ROBUSTNESS.md), not here.
"""
from __future__ import annotations

import pytest

from pure import pure

layers, indices, visualize, errors = pure("layers"), pure("indices"), pure("visualize"), pure("errors")
unet = pure("families.unet")
RES, ATT = unet.RESBLOCK, unet.ATTENTION

# The decoders of the real SD 1.5 and SDXL base UNets (ComfyUI's openaimodel, read off the modules).
SD15 = unet.UNetLayout(
    has_resblock=(True,) * 12, transformer_depth=(0, 0, 0) + (1,) * 9,
    resblock_channels=(1280,) * 6 + (640,) * 3 + (320,) * 3,
    attention_channels=(0, 0, 0) + (1280,) * 3 + (640,) * 3 + (320,) * 3,
    downsamplings=(3, 3, 3, 2, 2, 2, 1, 1, 1, 0, 0, 0))
SDXL = unet.UNetLayout(
    has_resblock=(True,) * 9, transformer_depth=(10, 10, 10, 2, 2, 2, 0, 0, 0),
    resblock_channels=(1280,) * 3 + (640,) * 3 + (320,) * 3,
    attention_channels=(1280,) * 3 + (640,) * 3 + (0,) * 3,
    downsamplings=(2, 2, 2, 1, 1, 1, 0, 0, 0))


def resolve(resblock_spec, attention_spec, layout):
    return layers.resolve_sites({"resblock": resblock_spec, "attention": attention_spec}, layout, unet.KINDS)


def test_specs_name_the_sites_in_order_each_once():
    sites = resolve("4, 4;7", "4-6, 5, 9:0", SD15)
    assert sites["resblock"] == (4, 7)
    assert sites["attention"] == ((4, 0), (5, 0), (6, 0), (9, 0))
    xl = resolve("1", "1-2:0-1, 4:1", SDXL)
    assert xl["attention"] == ((1, 0), (1, 1), (2, 0), (2, 1), (4, 1))
    assert layers.resolve_sites(unet.DEFAULTS["SD15"], SD15, unet.KINDS)["attention"] == tuple(
        (b, 0) for b in range(4, 12))
    assert layers.resolve_sites(unet.DEFAULTS["SDXL"], SDXL, unet.KINDS) == layers.LayerSites(
        unet.KINDS, {"resblock": (1,), "attention": tuple((b, 0) for b in range(1, 6))})


@pytest.mark.parametrize("resblocks, attention, message", [
    ("4:0", "4", "no transformer index"),
    ("x", "4", "Cannot read resblock_layers 'x'"),
    ("12", "4", "output block\\) names 12, but this UNet's decoder has blocks 0-11"),
    ("4", "0-2", "names output block 0, but this UNet has self-attention only in decoder blocks"),
    ("4", "5:1", "it has 1 transformer"),
    ("4", "7-5", "runs backwards"),
    ("", "", "Both resblock_layers and attention_layers are empty"),
])
def test_specs_a_model_cannot_have_are_refused_with_what_exists(resblocks, attention, message):
    with pytest.raises(errors.PnPInputError, match=message):
        resolve(resblocks, attention, SD15)


ABSURD = ["0-99999999", "0-9999", "1-" + "9" * 9998, "4," * 5000, "0-" + "1" * 40 + ":0-9999", "4-11:0-9999"]


@pytest.mark.parametrize("spec", ABSURD, ids=["huge range", "range past the model", "9998 digits",
                                              "10000 characters", "long digits", "huge transformer range"])
def test_absurd_specs_are_refused_before_expanding_quoting_a_short_excerpt(spec):
    try:
        sites = resolve("4", spec, SD15)
    except errors.PnPInputError as exc:
        message = str(exc)
        # refused by the digit limit or by the model's bounds, never after enumerating the range
        assert "up to 4 digits" in message or "names " in message, message
    else:  # a long list of valid repeats is fine: it names one site
        assert sites["attention"] == ((4, 0),)
        message = ""
    assert len(message) < 400, message
    assert "Exceeds the limit" not in message


def test_queue_time_syntax_check_needs_no_model():
    layers.check_spec("auto", ATT)
    layers.check_spec("1-5:0", ATT)
    with pytest.raises(errors.PnPInputError, match="no transformer index"):
        layers.check_spec("4:0", RES)
    with pytest.raises(errors.PnPInputError, match="Cannot read"):
        layers.check_spec("4-x", ATT)


def test_one_site_for_pictures():
    assert layers.parse_site("4", RES) == (4, 0)
    assert layers.parse_site(" 7:1 ", ATT) == (7, 1)
    for spec in ("4-5", "4,5", "4:0-1"):
        with pytest.raises(errors.PnPInputError, match="exactly one layer"):
            layers.parse_site(spec, ATT)
    assert layers.first_default_site("SDXL", ATT) == (1, 0)
    assert layers.first_default_site("SD15", RES) == (4, 0)


def test_excerpt_quotes_at_most_a_few_characters():
    assert indices.excerpt("4-11") == "'4-11'"
    long = indices.excerpt("x" * 10000)
    assert len(long) <= indices.EXCERPT_CHARS + 5 and long.endswith("...")


def test_step_lists_share_the_grammar_and_its_bounds():
    with pytest.raises(errors.PnPInputError, match="the bank has 50 sampling steps"):
        visualize.parse_steps("0-9999", 41, 50)
    with pytest.raises(errors.PnPInputError, match="indices of up to 4 digits"):
        visualize.parse_steps("0-99999999", 41, 50)
    with pytest.raises(errors.PnPInputError, match="Cannot read steps"):
        visualize.parse_steps("1-" + "9" * 9998, 41, 50)
    visualize.check_steps_spec("every 10")
    with pytest.raises(errors.PnPInputError, match="at least 1"):
        visualize.check_steps_spec("every 0")


def test_site_shapes_and_the_bank_size_formula_at_real_sizes():
    """SD 1.5 at 512 px (latent 64): the paper's bank, 50 steps, tau 0.8/0.5, fp16, one branch."""
    assert SD15.site_shape("resblock", 4, (64, 64)) == (1280, 16, 16)
    assert SD15.site_shape("attention", 9, (64, 64)) == (4096, 320)
    sites = layers.resolve_sites(unet.DEFAULTS["SD15"], SD15, unet.KINDS)
    nbytes = layers.bank_nbytes(SD15, sites, (64, 64), 41, 26, 1, 2)
    # ResBlock 4: 41 steps x 1280 x 16 x 16; attention per step: blocks 4-5 at 16x16 (1280 channels),
    # 6-8 at 32x32 (640), 9-11 at 64x64 (320) = 6,553,600 elements, for 26 steps.
    assert nbytes == (41 * 1280 * 256 + 26 * (2 * 256 * 1280 + 3 * 1024 * 640 + 3 * 4096 * 320)) * 2
    assert nbytes == 367_656_960  # 367.7 MB, 350.6 MiB (docs/choosing-layers.md)
    xl = layers.resolve_sites(unet.DEFAULTS["SDXL"], SDXL, unet.KINDS)
    assert layers.bank_nbytes(SDXL, xl, (128, 128), 41, 26, 1, 2) / 2 ** 20 == pytest.approx(622.5, abs=0.05)
    # Odd latent sizes: each downsampling rounds up, as the UNet's stride-2 convolutions do.
    assert SD15.resolution(4, (9, 13)) == (3, 4)
