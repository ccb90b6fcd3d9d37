"""The shipped workflow files: complete, core nodes plus ours only, paper defaults, notes, a template card each,
laid out with room for previews, and carrying what the frontend matches nodes to their pack by."""
from __future__ import annotations

import inspect
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageSequence

import guidance_image
import template_cards
import workflow_specs
from find_comfyui import PACK_ROOT
from comfy_host import PACK_NODE_IDS

WORKFLOWS = PACK_ROOT / "workflows"
SPECS = [make() for make in workflow_specs.WORKFLOWS]
NAMES = [spec["name"] for spec in SPECS]
STEMS = workflow_specs.file_stems(SPECS)
FLUX_NAMES = [spec["name"] for spec in SPECS if spec["requires_comfyui"] == workflow_specs.FLUX_REQUIRES_COMFYUI]
SD_NAMES = [name for name in NAMES if name not in FLUX_NAMES]
FRONTEND_ONLY = {"Note", "MarkdownNote"}


def _ui(name: str) -> dict:
    return json.loads((WORKFLOWS / f"{STEMS[name]}.json").read_text())


def _api(name: str) -> dict:
    return json.loads((WORKFLOWS / "api" / f"{STEMS[name]}.json").read_text())


def test_every_workflow_has_its_api_twin_and_template_card():
    assert sorted(p.stem for p in WORKFLOWS.glob("*.json")) == sorted(STEMS.values())
    for name in NAMES:
        ui = _ui(name)
        assert ui["version"] == 0.4 and ui["nodes"] and ui["links"], name
        assert all("class_type" in node for node in _api(name).values()), name
        with Image.open(WORKFLOWS / f"{STEMS[name]}.jpg") as card:
            assert card.format == "JPEG" and card.size == template_cards.SIZE, name


def test_template_file_names_are_numbered_titles_in_the_template_order():
    """The frontends show a template's file name as its title and order the cards as the server lists them
    (by name on ComfyUI 0.38 and on Windows): the names are "NN title", NN the spec's order, all distinct."""
    orders = [spec["order"] for spec in SPECS]
    assert len(set(orders)) == len(orders) and all(0 < order < 100 for order in orders), orders
    by_order = sorted(SPECS, key=lambda spec: spec["order"])
    assert sorted(STEMS.values()) == [STEMS[spec["name"]] for spec in by_order]
    for spec in SPECS:
        assert STEMS[spec["name"]] == f"{spec['order']:02d} {spec['title']}"
        assert template_cards.description_fits(spec["description"]), spec["description"]


@pytest.mark.parametrize("name", NAMES)
def test_template_card_text_stays_inside_the_picture(host, name):
    """Every line of text on a template card (heading, description, labels, prompts, the PnP chain at the foot)
    lies inside the area it was given, within 2 px (a glyph's side bearing), and every area inside the card's
    margins: nothing runs off the picture's edge, the frontends' card shows all of it."""
    import nodes

    spec = next(spec for spec in SPECS if spec["name"] == name)
    types = dict.fromkeys(n["type"] for n in spec["nodes"] if n["type"].startswith("PnP_"))
    chain = [nodes.NODE_CLASS_MAPPINGS[t].GET_SCHEMA().display_name.split(" (")[0] for t in types]
    drawn = template_cards.draw_card(spec, spec["order"], chain, WORKFLOWS)
    width, height = template_cards.SIZE
    margin = template_cards.MARGIN
    assert drawn.lines
    for text, (left, top, right, bottom), area in drawn.lines:
        assert area[0] >= margin and area[2] <= width - margin and area[1] >= 0 and area[3] <= height, (text, area)
        assert left >= area[0] - 2 and top >= area[1] - 2 and right <= area[2] + 2 and bottom <= area[3] + 2, \
            (text, (left, top, right, bottom), area)
    assert any(spec["title"] in text or text.endswith("…") for text, _, _ in drawn.lines)


@pytest.mark.parametrize("name", NAMES)
def test_each_file_saves_a_readable_view_of_its_top_left_corner(name):
    """extra.ds, the view frontend 1.27 restores on opening a file or template (and web/pnp_template_view.js for the
    pack's templates in 1.49 and 1.58), is ``workflow_specs.saved_view`` of the file's nodes: at READABLE_ZOOM or
    more, so the canvas draws node text (the browser test measures it in each frontend)."""
    import browser

    ui = _ui(name)
    boxes = {node["id"]: (*node["pos"], *node["size"]) for node in ui["nodes"]}
    expected = workflow_specs.saved_view(boxes, workflow_specs.TITLE_HEIGHT, browser.SCREEN_CHROME)
    saved = ui["extra"]["ds"]
    assert saved["scale"] == pytest.approx(expected["scale"], rel=1e-6), (saved, expected)
    assert saved["offset"] == pytest.approx(expected["offset"], abs=1e-3), (saved, expected)
    assert workflow_specs.READABLE_ZOOM <= saved["scale"] <= 1


@pytest.mark.parametrize("name", NAMES)
def test_no_node_comes_near_another(name):
    """Boxes with their title bars: no two nodes closer than workflow_specs.GAP above each other in a column,
    none overlapping side by side (the browser test checks the same after a run with previews on)."""
    boxes = {n["id"]: (*n["pos"], *n["size"]) for n in _ui(name)["nodes"]}
    clashes = [(a, b) for a, b in itertools.combinations(boxes, 2)
               if workflow_specs.boxes_clash(boxes[a], boxes[b], workflow_specs.TITLE_HEIGHT)]
    assert not clashes, clashes


@pytest.mark.parametrize("name", NAMES)
def test_nodes_carry_their_pack_for_the_frontend(name):
    """cnr_id/ver as ComfyUI-Manager writes them: the pack's registry id and version on its nodes, comfy-core and
    the oldest supported ComfyUI on core nodes (the frontends' missing-node dialog reads them)."""
    for node in _ui(name)["nodes"]:
        expected = workflow_specs.pack_properties(node["type"])
        assert {k: node["properties"].get(k) for k in expected} == expected, node["type"]
        if node["type"] in PACK_NODE_IDS:
            assert node["properties"]["cnr_id"] == "comfyui-pnp"


def test_shipped_guidance_image_and_mask_are_what_the_generator_draws():
    image, mask = guidance_image.draw_scene()
    shipped = Image.open(WORKFLOWS / guidance_image.IMAGE_NAME)
    assert shipped.size == (guidance_image.SIZE, guidance_image.SIZE) and shipped.mode == "RGB"
    assert np.array_equal(np.asarray(shipped), np.asarray(image))
    assert np.array_equal(np.asarray(Image.open(WORKFLOWS / guidance_image.MASK_NAME)), np.asarray(mask))
    shipped = [np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(Image.open(WORKFLOWS /
                                                                                guidance_image.FRAMES_NAME))]
    drawn = [np.asarray(f) for f in guidance_image.draw_frames()]
    assert len(shipped) == guidance_image.FRAME_COUNT and all(map(np.array_equal, shipped, drawn))


@pytest.mark.parametrize("name", NAMES)
def test_workflow_uses_core_nodes_and_ours_only_with_notes(host, name):
    import nodes

    ui = _ui(name)
    for node in ui["nodes"]:
        kind = node["type"]
        if kind in FRONTEND_ONLY or kind in PACK_NODE_IDS:
            continue
        source = Path(inspect.getsourcefile(nodes.NODE_CLASS_MAPPINGS[kind])).resolve()
        relative = source.relative_to(host.comfy_path)  # raises if the node is not ComfyUI's own
        assert relative.parts[0] in ("nodes.py", "comfy_extras"), (kind, source)
    notes = [n for n in ui["nodes"] if n["type"] == "MarkdownNote"]
    assert notes and all(len(n["widgets_values"][0]) > 200 for n in notes), name


@pytest.mark.parametrize("name", SD_NAMES)
def test_workflow_carries_the_paper_defaults(name):
    api = _api(name)
    by_type: dict[str, list[dict]] = {}
    for node in api.values():
        by_type.setdefault(node["class_type"], []).append(node["inputs"])
    checkpoint = workflow_specs.SDXL_CHECKPOINT if name == "pnp_sdxl" else workflow_specs.CHECKPOINT
    assert [n["ckpt_name"] for n in by_type["CheckpointLoaderSimple"]] == [checkpoint]
    for inv in by_type.get("PnP_DDIMInversion", []):
        assert (inv["steps"], inv["inversion_steps"]) == (50, 0)
    for gen in by_type.get("PnP_GenerateGuidance", []):
        assert gen["steps"] == 50
    for bank in by_type.get("PnP_FeatureBank", []) + by_type.get("PnP_GenerateGuidance", []):
        assert (bank["resblock_layers"], bank["attention_layers"]) == ("auto", "auto")
        assert (bank["feature_injection"], bank["attention_injection"]) == (0.8, 0.5)
    samplers, guiders = by_type.get("PnP_Sampler", []), by_type.get("PnP_Guider", [])
    sweeps = by_type.get("PnP_ThresholdSweep", [])
    assert samplers or guiders or sweeps
    for s in samplers + guiders:
        assert (s["cfg"], s["feature_injection"], s["attention_injection"]) == (7.5, 0.8, 0.5)
        assert (s["threshold_convention"], s["injection_strength"]) == ("pnp-diffusers", 1.0)
    for s in samplers:
        assert (s["steps"], s["final_step"]) == (0, "official")
    for s in sweeps:  # the grid reaches the paper's thresholds, which the bank records
        values = [[float(v) for v in s[f"{name}_values"].split(",")]
                  for name in ("feature_injection", "attention_injection", "injection_strength")]
        assert (s["cfg"], max(values[0]), max(values[1]), values[2]) == (7.5, 0.8, 0.5, [1.0])
        assert (s["threshold_convention"], s["final_step"]) == ("pnp-diffusers", "official")
    titles = [n["_meta"]["title"] for n in api.values() if n["class_type"] == "CLIPTextEncode"]
    assert any(t.startswith("Target prompt") for t in titles), titles


@pytest.mark.parametrize("name", ["pnp_feature_pca", "pnp_sdxl"])
def test_pca_views_read_the_bank_and_show_grid_and_caption(name):
    api = _api(name)
    views = {i: n["inputs"] for i, n in api.items() if n["class_type"] == "PnP_FeaturePCA"}
    assert len(views) == 3, name
    for inputs in views.values():
        assert api[inputs["features"][0]]["class_type"] == "PnP_FeatureBank"
        assert api[inputs["model"][0]]["class_type"] == "CheckpointLoaderSimple"  # q/k of the self-attention views
    shown = {(n["class_type"], tuple(n["inputs"].get("images") or n["inputs"]["source"])) for n in api.values()
             if n["class_type"] in ("PreviewImage", "PreviewAny")}
    assert shown == {(kind, (i, slot)) for i in views for kind, slot in (("PreviewImage", 0), ("PreviewAny", 2))}


def test_sdxl_workflow_scales_the_guidance_image_to_sdxl_size():
    api = _api("pnp_sdxl")
    encode = next(n for n in api.values() if n["class_type"] == "VAEEncode")
    scale = api[encode["inputs"]["pixels"][0]]
    assert scale["class_type"] == "ImageScale"
    assert (scale["inputs"]["width"], scale["inputs"]["height"]) == (workflow_specs.SDXL_SIZE,) * 2
    assert api[scale["inputs"]["image"][0]]["class_type"] == "LoadImage"


@pytest.mark.parametrize("name", FLUX_NAMES)
def test_flux_workflow_loads_flux_as_users_do_with_the_official_defaults(name):
    """FLUX.1 dev from its own files (UNETLoader, DualCLIPLoader type flux, VAELoader, the names of the official
    and Comfy-Org releases) and RF-Solver-Edit's defaults: rf-solver, 25 steps, single blocks auto (20-37), the
    solver's own inject count (-1: 3), FLUX guidance 2 on the target prompt; PnP Sampler injects at full strength
    and takes its steps from the bank. Needs ComfyUI 0.33.0."""
    spec = next(spec for spec in SPECS if spec["name"] == name)
    assert spec["requires_comfyui"] == "0.33.0"
    api = _api(name)
    by_type: dict[str, list[dict]] = {}
    for node in api.values():
        by_type.setdefault(node["class_type"], []).append(node["inputs"])
    assert "CheckpointLoaderSimple" not in by_type
    assert [n["unet_name"] for n in by_type["UNETLoader"]] == ["flux1-dev.safetensors"]
    assert [(n["clip_name1"], n["clip_name2"], n["type"]) for n in by_type["DualCLIPLoader"]] == \
        [("clip_l.safetensors", "t5xxl_fp16.safetensors", "flux")]
    assert [n["vae_name"] for n in by_type["VAELoader"]] == ["ae.safetensors"]
    [inversion] = by_type["PnP_DDIMInversion"]
    assert (inversion["solver"], inversion["steps"], inversion["inversion_steps"]) == ("rf-solver", 25, 0)
    [bank] = by_type["PnP_FeatureBank"]
    assert (bank["attention_layers"], bank["inject_steps"]) == ("auto", -1)
    [sampler] = by_type["PnP_Sampler"]
    assert (sampler["steps"], sampler["injection_strength"]) == (0, 1.0)
    guidance = api[sampler["positive"][0]]
    assert guidance["class_type"] == "FluxGuidance" and guidance["inputs"]["guidance"] == 2.0
    assert api[guidance["inputs"]["conditioning"][0]]["_meta"]["title"].startswith("Target prompt")
    mask = sampler.get("mask")
    assert (mask is not None) == (name == "pnp_flux_mask")
    if mask is not None:
        assert api[mask[0]]["class_type"] == "LoadImageMask" and sampler["outside_mask_strength"] == 0.0


def test_the_flux_widgets_are_optional_and_last_so_files_saved_before_them_open(host):
    """PnP DDIM Inversion's ``solver`` and PnP Feature Bank's ``inject_steps`` came after workflows were saved, and
    PnP Feature Bank's ``flux_edit`` and ``qkv_ratio`` after ``inject_steps``: they are their node's last inputs,
    in that order, and optional, so a file saved without them (its widgets_values short of them) opens with the
    defaults in those widgets and an API prompt without them is still complete."""
    import nodes

    for node_id, added in (("PnP_DDIMInversion", [("solver", "rf-solver")]),
                           ("PnP_FeatureBank", [("inject_steps", -1), ("flux_edit", "replace_v"),
                                                ("qkv_ratio", "1.0,1.0,1.0")])):
        inputs = nodes.NODE_CLASS_MAPPINGS[node_id].GET_SCHEMA().inputs[-len(added):]
        for (name, default), item in zip(added, inputs):
            assert (item.id, item.optional, item.default) == (name, True, default), node_id
            required = nodes.NODE_CLASS_MAPPINGS[node_id].INPUT_TYPES()["required"]
            assert name not in required, node_id
