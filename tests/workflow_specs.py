"""The shipped workflows, as specs the real frontend turns into its own UI-format files.

``python tests/build_workflows.py`` starts ComfyUI and its frontend, builds each
spec in the page with LiteGraph's own node classes (``LiteGraph.createNode``,
``connect``), lays it out (``settle``), and saves what the frontend serialises
(``app.graphToPrompt()``: ``workflow`` = the UI file, ``output`` = the API twin).
Node titles starting with "Target prompt" are what ``workflows/run.py --prompt``
fills.

Templates: the frontends (1.27.10, 1.49.6, 1.58.1) read nothing of a custom
node pack's template but its file name: the card's title is the name, its
description the name with "-" and "_" as spaces, its picture the same-name
.jpg, and the order the server's listing (sorted by name on ComfyUI 0.38 and
on Windows, directory order on 0.3.64 and 0.33 elsewhere). So a spec's file
name is the spec's two-digit ``order`` and ``title`` (``file_stems``); the .jpg
is a card with the title and the one-line ``description``. The spec's short
``name`` (e.g. ``pnp_real_image``) stays its stable id for tests, the docs and
``workflows/run.py`` examples; every spec needs ``order``, ``title`` and
``description`` (``_spec``), the orders distinct.

Layout: a node that shows a sampling preview (``PREVIEW_NODE_TYPES``) gets
``PREVIEW_ROOM`` px more than its widgets need, which is what the frontends add
for the preview (220 px and the widget margin); ``settle`` then moves nodes down
until no node's box, title bar included, comes within ``GAP`` px of another's.
"""
from __future__ import annotations

import tomllib
from pathlib import Path

PYPROJECT = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())
PACK_ID = PYPROJECT["project"]["name"]
PACK_VERSION = PYPROJECT["project"]["version"]
MIN_COMFYUI = PYPROJECT["tool"]["comfy"]["requires-comfyui"].removeprefix(">=")
# What ComfyUI-Manager writes into a node's properties and the frontends read to match a node to its pack
# (the missing-node dialog offers to install it): the registry id and version; core nodes are "comfy-core".
FRONTEND_ONLY_TYPES = ("MarkdownNote", "Note")

PREVIEW_NODE_TYPES = ("PnP_DDIMInversion", "PnP_FeatureBank", "PnP_GenerateGuidance", "PnP_Sampler", "KSampler",
                      "KSamplerAdvanced", "SamplerCustom", "SamplerCustomAdvanced")
PREVIEW_ROOM = 230
GAP = 30
TITLE_HEIGHT = 30  # LiteGraph.NODE_TITLE_HEIGHT (the browser test reads it in every frontend)

CHECKPOINT = "v1-5-pruned-emaonly.safetensors"
CHECKPOINT_URL = ("https://huggingface.co/Comfy-Org/stable-diffusion-v1-5-archive/resolve/main/"
                  "v1-5-pruned-emaonly.safetensors")
SDXL_CHECKPOINT = "sd_xl_base_1.0.safetensors"
SDXL_CHECKPOINT_URL = ("https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0/resolve/main/"
                       "sd_xl_base_1.0.safetensors")
SDXL_SIZE = 1024
CONTROLNET = "control_v11p_sd15_canny_fp16.safetensors"
CONTROLNET_URL = ("https://huggingface.co/comfyanonymous/ControlNet-v1-1_fp16_safetensors/resolve/main/"
                  "control_v11p_sd15_canny_fp16.safetensors")
DINOV2 = "dinov2_vitl14.safetensors"
DINOV2_URL = "https://huggingface.co/facebook/dinov2-large/resolve/main/model.safetensors"
CLIP_VISION_G = "clip_vision_g.safetensors"
CLIP_VISION_G_URL = "https://huggingface.co/comfyanonymous/clip_vision_g/resolve/main/clip_vision_g.safetensors"
CLIP_G = "clip_g.safetensors"
CLIP_G_URL = "https://huggingface.co/Comfy-Org/stable-diffusion-3.5-fp8/resolve/main/text_encoders/clip_g.safetensors"
GUIDANCE_IMAGE = "pnp_guidance.png"
GUIDANCE_MASK = "pnp_guidance_mask.png"
GUIDANCE_FRAMES = "pnp_frames.png"
NEGATIVE = "ugly, blurry, black, low res, unrealistic"

COLOR_PNP = "#335"
COLOR_INPUT = "#353"

_HOW_TO_INPUT = (
    "**Guidance image**: `pnp_guidance.png` ships in this pack's `workflows/` folder: copy it to "
    "`ComfyUI/input/` (or use *Load Image → upload* with your own photo, any size that is a multiple of 8 px; "
    "512 px suits SD 1.5).\n\n"
    "**Checkpoint**: any SD 1.x or SD 2.x checkpoint (default `v1-5-pruned-emaonly.safetensors`).")

_KNOBS = (
    "### Plug-and-Play knobs (paper defaults)\n"
    "- **PnP DDIM Inversion** `steps` 50: sampling steps (all PnP nodes follow it). `inversion_steps` 0 = "
    "same as steps; the official code uses **999** (better reconstruction, ~20x slower).\n"
    "- **PnP Feature Bank** records the guidance image's decoder features from `UNet(z_t, t, \"\")`: "
    "`resblock_layers` auto = block 4, `attention_layers` auto = blocks 4-11.\n"
    "- **PnP Sampler** `feature_injection` τ_f = 0.8 and `attention_injection` τ_A = 0.5: the fraction of the "
    "steps during which the guidance structure is injected. Higher = closer to the guidance layout, lower = "
    "more freedom for the prompt. `cfg` 7.5 (the original code: 10).\n"
    "- `injection_strength` 1 = the paper; lower blends the target's own features back in.")


def _spec(name: str, order: int, title: str, description: str, nodes: list, links: list,
          requires_comfyui: str | None = None) -> dict:
    """A workflow spec: ``name`` is its stable id (tests, docs, ``workflows/run.py`` examples); ``order``,
    ``title`` and ``description`` make its template file name and card; ``requires_comfyui``: the oldest ComfyUI
    that runs it, where that is newer than the pack's (the FLUX workflows: 0.33.0)."""
    return {"name": name, "order": order, "title": title, "description": description, "nodes": nodes,
            "links": links, "requires_comfyui": requires_comfyui or MIN_COMFYUI}


def runs_on(spec: dict, comfyui_version: tuple[int, ...]) -> bool:
    """Whether a ComfyUI of this version runs the workflow (below its ``requires_comfyui`` the pack refuses it)."""
    return comfyui_version >= tuple(int(part) for part in spec["requires_comfyui"].split("."))


def _node(id, type, pos, widgets=None, title=None, size=None, color=None, models=None):
    properties = {**pack_properties(type), **({"models": models} if models else {})}
    return {"id": id, "type": type, "pos": pos, "widgets": widgets or {}, "title": title, "size": size,
            "color": color, "properties": properties}


def _note(id, pos, size, text):
    return {"id": id, "type": "MarkdownNote", "pos": pos, "widgets": {"text": text}, "size": size,
            "title": "Notes", "color": "#432", "properties": {}}


def _checkpoint(id=1, pos=(20, 60), name=CHECKPOINT, url=CHECKPOINT_URL):
    return _node(id, "CheckpointLoaderSimple", list(pos), {"ckpt_name": name}, size=[330, 100],
                 models=[{"name": name, "url": url, "directory": "checkpoints"}])


def _text(id, pos, title, text, size=(380, 150), color=None):
    return _node(id, "CLIPTextEncode", list(pos), {"text": text}, title=title, size=list(size), color=color)


def _sampler(id, pos, widgets=None):
    values = {"cfg": 7.5, "feature_injection": 0.8, "attention_injection": 0.5, "steps": 0}
    values.update(widgets or {})
    return _node(id, "PnP_Sampler", list(pos), values, color=COLOR_PNP, size=[320, 420])


def _real_image_core(target: str, save_prefix: str, checkpoint: dict | None = None) -> tuple[list, list]:
    """Checkpoint, prompts, guidance image, inversion, bank, one sampler, decode, save (ids 1-11)."""
    nodes = [
        checkpoint or _checkpoint(),
        _text(2, (400, 40), "Source prompt (empty, as the paper)", "", size=(380, 110)),
        _text(3, (400, 210), "Target prompt", target, color=COLOR_INPUT),
        _text(4, (400, 420), "Negative prompt", NEGATIVE, size=(380, 110)),
        _node(5, "LoadImage", [20, 220], {"image": GUIDANCE_IMAGE}, title="Guidance image", size=[330, 380],
              color=COLOR_INPUT),
        _node(6, "VAEEncode", [400, 590], size=[220, 50]),
        _node(7, "PnP_DDIMInversion", [830, 40], {"steps": 50, "inversion_steps": 0}, color=COLOR_PNP,
              size=[320, 160]),
        _node(8, "PnP_FeatureBank", [830, 460], {"feature_injection": 0.8, "attention_injection": 0.5},
              color=COLOR_PNP, size=[320, 260]),
        _sampler(9, (1200, 40)),
        _node(10, "VAEDecode", [1570, 40], size=[220, 50]),
        _node(11, "SaveImage", [1570, 150], {"filename_prefix": save_prefix}, size=[400, 460]),
    ]
    links = [
        (1, 1, 2, "clip"), (1, 1, 3, "clip"), (1, 1, 4, "clip"),
        (5, 0, 6, "pixels"), (1, 2, 6, "vae"),
        (1, 0, 7, "model"), (6, 0, 7, "latent"), (2, 0, 7, "conditioning"),
        (1, 0, 8, "model"), (7, 0, 8, "inversion"), (2, 0, 8, "conditioning"),
        (1, 0, 9, "model"), (3, 0, 9, "positive"), (4, 0, 9, "negative"), (8, 0, 9, "features"),
        (9, 0, 10, "samples"), (1, 2, 10, "vae"), (10, 0, 11, "images"),
    ]
    return nodes, links


def real_image() -> dict:
    nodes, links = _real_image_core("a photo of a gingerbread house on a snowy hill, winter", "pnp/real_image")
    nodes.append(_note(20, [1200, 710], [700, 320],
                       "## PnP: translate a real image\n"
                       "The guidance image is DDIM-inverted with the empty prompt; a feature bank records its "
                       "decoder features; PnP Sampler generates the **target prompt** from the same noise while "
                       "injecting them, so the layout stays and the content follows the prompt.\n\n"
                       + _HOW_TO_INPUT + "\n\n" + _KNOBS))
    return _spec("pnp_real_image", 1, "Real image to target prompt",
                 "A photo keeps its layout and takes the content and style of a prompt.", nodes, links)


def generated_guidance() -> dict:
    nodes = [
        _checkpoint(),
        _text(2, (400, 40), "Guidance prompt", "a photo of a horse standing in a green meadow", color=COLOR_INPUT),
        _text(3, (400, 250), "Guidance negative prompt (empty)", "", size=(380, 110)),
        _node(4, "EmptyLatentImage", [20, 220], {"width": 512, "height": 512, "batch_size": 1}, size=[330, 110]),
        _node(5, "PnP_GenerateGuidance", [830, 40], {"seed": 1, "control_after_generate": "fixed", "steps": 50,
                                                     "cfg": 5.0}, color=COLOR_PNP, size=[320, 360]),
        _node(6, "VAEDecode", [830, 710], size=[220, 50]),
        _node(7, "PreviewImage", [830, 820], title="Generated guidance image", size=[320, 360]),
        _text(8, (400, 420), "Target prompt", "a photo of a robot horse made of shiny metal, in a meadow",
              color=COLOR_INPUT),
        _text(9, (400, 630), "Negative prompt", NEGATIVE, size=(380, 110)),
        _sampler(10, (1200, 40)),
        _node(11, "VAEDecode", [1570, 40], size=[220, 50]),
        _node(12, "SaveImage", [1570, 150], {"filename_prefix": "pnp/generated_guidance"}, size=[400, 460]),
        _note(20, [20, 400], [360, 420],
              "## PnP from a generated guidance image\n"
              "The paper's second mode: **PnP Generate Guidance** samples the guidance image from the "
              "*guidance prompt* and seed (DDIM, `cfg` 5 as the original code) and records the feature bank "
              "during that generation: no inversion. PnP Sampler then generates the **target prompt** from the "
              "same starting noise with those features injected.\n\n"
              "Change the seed to get another guidance image; keep it fixed to try several target prompts on "
              "the same one (ComfyUI caches the bank).\n\n"
              "`steps` 50 (paper); τ_f 0.8 / τ_A 0.5 on the sampler; `cfg` 7.5."),
    ]
    links = [
        (1, 1, 2, "clip"), (1, 1, 3, "clip"), (1, 1, 8, "clip"), (1, 1, 9, "clip"),
        (1, 0, 5, "model"), (2, 0, 5, "positive"), (3, 0, 5, "negative"), (4, 0, 5, "latent"),
        (5, 1, 6, "samples"), (1, 2, 6, "vae"), (6, 0, 7, "images"),
        (1, 0, 10, "model"), (8, 0, 10, "positive"), (9, 0, 10, "negative"), (5, 0, 10, "features"),
        (10, 0, 11, "samples"), (1, 2, 11, "vae"), (11, 0, 12, "images"),
    ]
    return _spec("pnp_generated_guidance", 2, "Generated guidance image",
                 "A generated picture's layout carried into a new prompt, no inversion.", nodes, links)


def several_prompts() -> dict:
    nodes, links = _real_image_core("a photo of a gingerbread house on a snowy hill, winter", "pnp/prompt_1")
    nodes[2]["title"] = "Target prompt 1"
    extra_targets = [("a watercolor painting of a stone cottage by a lake", "pnp/prompt_2"),
                     ("a house made of colorful toy bricks, studio photo", "pnp/prompt_3")]
    for i, (text, prefix) in enumerate(extra_targets):
        base = 30 + 10 * i
        y = 710 + 670 * i  # a row per sampler: 40 + the sampler's height with its preview, title and gap
        nodes += [
            _text(base, (400, y), f"Target prompt {i + 2}", text, color=COLOR_INPUT),
            _sampler(base + 1, (1200, y)),
            _node(base + 2, "VAEDecode", [1570, y], size=[220, 50]),
            _node(base + 3, "SaveImage", [1570, y + 110], {"filename_prefix": prefix}, size=[400, 400]),
        ]
        links += [
            (1, 1, base, "clip"),
            (1, 0, base + 1, "model"), (base, 0, base + 1, "positive"), (4, 0, base + 1, "negative"),
            (8, 0, base + 1, "features"),
            (base + 1, 0, base + 2, "samples"), (1, 2, base + 2, "vae"), (base + 2, 0, base + 3, "images"),
        ]
    nodes.append(_note(20, [830, 1060], [340, 380],
                       "## Several target prompts, one bank\n"
                       "One inversion and one **PnP Feature Bank** feed three PnP Samplers, one per target "
                       "prompt. ComfyUI runs the inversion and the bank once and caches them: each extra prompt "
                       "costs only its own sampling (2 UNet calls per step), and editing one prompt re-runs only "
                       "its sampler.\n\n" + _HOW_TO_INPUT))
    return _spec("pnp_several_prompts", 3, "Several prompts from one bank",
                 "One inversion and one feature bank drive three target prompts.", nodes, links)


def controlnet() -> dict:
    nodes, links = _real_image_core("a photo of a gingerbread house on a snowy hill, winter", "pnp/controlnet")
    nodes += [
        _node(12, "ControlNetLoader", [20, 660], {"control_net_name": CONTROLNET}, size=[330, 60],
              models=[{"name": CONTROLNET, "url": CONTROLNET_URL, "directory": "controlnet"}]),
        # a title of its own: the default one is the host's display name ("Canny" on ComfyUI 0.3.64, "Detect
        # Edges (Canny)" on 0.33), which graphToPrompt puts in the API prompt's _meta
        _node(13, "Canny", [20, 780], {"low_threshold": 0.4, "high_threshold": 0.8}, title="Canny edge detection",
              size=[330, 90]),
        _node(14, "PreviewImage", [20, 920], title="Canny edges", size=[330, 330]),
        _node(15, "ControlNetApplyAdvanced", [830, 1060], {"strength": 0.5, "start_percent": 0.0,
                                                          "end_percent": 1.0}, size=[320, 190]),
    ]
    links = [link for link in links if not (link[2] == 9 and link[3] in ("positive", "negative"))]
    links += [
        (5, 0, 13, "image"), (13, 0, 14, "images"),
        (3, 0, 15, "positive"), (4, 0, 15, "negative"), (12, 0, 15, "control_net"), (13, 0, 15, "image"),
        (1, 2, 15, "vae"),
        (15, 0, 9, "positive"), (15, 1, 9, "negative"),
    ]
    nodes.append(_note(20, [1200, 710], [560, 300],
                       "## PnP + ControlNet\n"
                       "ControlNet is applied to the **target** conditioning with the core *Apply ControlNet* "
                       "node, exactly as for KSampler, and PnP Sampler uses it in every step; the guidance "
                       "image's inversion and feature bank are not affected. Here the control is the guidance "
                       "image's Canny edges (SD 1.5 canny ControlNet): PnP keeps the layout through the "
                       "injected features, the edges keep the contours.\n\n"
                       "`strength` 0.5: with both PnP and ControlNet holding the structure, a weaker control "
                       "leaves the prompt more room. Any SD 1.5 ControlNet works (depth, lineart, ...), with "
                       "its own preprocessor.\n\n" + _HOW_TO_INPUT))
    return _spec("pnp_controlnet", 4, "With ControlNet",
                 "PnP structure plus a canny ControlNet on the target prompt.", nodes, links)


def mask() -> dict:
    nodes, links = _real_image_core("a gingerbread house in a snowy forest at night, moonlight", "pnp/mask")
    nodes[8]["widgets"].update({"injection_strength": 1.0, "outside_mask_strength": 0.0})
    nodes += [
        _node(12, "LoadImageMask", [20, 660], {"image": GUIDANCE_MASK, "channel": "red"}, title="Subject mask",
              size=[330, 380], color=COLOR_INPUT),
    ]
    links.append((12, 0, 9, "mask"))
    nodes.append(_note(20, [1200, 710], [560, 360],
                       "## PnP restricted to a mask\n"
                       "Inside the mask (white) the guidance image's features are injected, outside they are "
                       "not: the subject keeps its structure while the background follows the prompt freely.\n\n"
                       "- `outside_mask_strength` 0: weight of the injection outside the mask (0 = none, "
                       "1 = the mask has no effect).\n"
                       "- `injection_strength` 1: blend of target and guidance features (1 = the paper).\n\n"
                       "**Mask**: `pnp_guidance_mask.png` (the house) ships beside the guidance image: copy "
                       "both to `ComfyUI/input/`. Any MASK works: a SAM / segmentation node pack's output, "
                       "Load Image's alpha channel, a mask painted in the Mask Editor. It must be one mask of "
                       "the guidance image's size."))
    return _spec("pnp_mask", 5, "With a subject mask",
                 "The subject keeps its structure, the background follows the prompt.", nodes, links)


def random_start() -> dict:
    nodes, links = _real_image_core("a photo of a gingerbread house on a snowy hill, winter", "pnp/start_inverted")
    nodes[8]["title"] = "PnP Sampler (start: inverted)"
    nodes[10]["title"] = "start: inverted (the paper)"
    nodes += [
        _node(30, "PnP_Sampler", [1200, 640], {"cfg": 7.5, "feature_injection": 0.8, "attention_injection": 0.5,
                                              "steps": 0, "start": "random noise", "start_seed": 1},
              title="PnP Sampler (start: random noise)", color=COLOR_PNP, size=[320, 480]),
        _node(31, "VAEDecode", [1570, 640], size=[220, 50]),
        _node(32, "SaveImage", [1570, 740], {"filename_prefix": "pnp/start_random"},
              title="start: random noise (seed 1)", size=[400, 460]),
    ]
    links += [
        (1, 0, 30, "model"), (3, 0, 30, "positive"), (4, 0, 30, "negative"), (8, 0, 30, "features"),
        (30, 0, 31, "samples"), (1, 2, 31, "vae"), (31, 0, 32, "images"),
    ]
    nodes.append(_note(20, [830, 560], [340, 440],
                       "## Where PnP starts: inverted x_T or random noise\n"
                       "Both samplers inject the same bank. The first starts, as the paper, from the guidance "
                       "image's **inverted** noise x_T; the second (`start` random noise) from Gaussian noise "
                       "of its `start_seed`, in the official scale.\n\n"
                       "A user's notes on the paper tried this (their scheme 1) to free the background from "
                       "the guidance image: the background does follow the prompt more freely, but they found "
                       "the results unstable and very dependent on the seed, even when injecting for more "
                       "steps. The inverted x_T carries much of the guidance image (brightness, layout) that "
                       "injection alone does not. Change `start_seed` to see the spread.\n\n" + _HOW_TO_INPUT))
    return _spec("pnp_random_start", 12, "Random start instead of inverted noise",
                 "Sample from seeded noise, still injecting the bank (unstable).", nodes, links)


def sam_background() -> dict:
    target = "a gingerbread house in a snowy forest at night, moonlight"
    nodes, links = _real_image_core(target, "pnp/plain")
    nodes[8]["title"] = "PnP Sampler (plain PnP)"
    nodes[10]["title"] = "plain PnP"
    weakened_sampler = _sampler(18, (1200, 660))
    weakened_sampler["title"] = "PnP Sampler (weakened background)"
    nodes += [
        _node(12, "LoadImageMask", [20, 660], {"image": GUIDANCE_MASK, "channel": "red"},
              title="Subject mask (or a SAM node's MASK)", size=[330, 380], color=COLOR_INPUT),
        _node(13, "PnP_WeakenBackground", [400, 660], {"factor": 0.5, "feather": 8}, color=COLOR_PNP,
              size=[380, 130]),
        _node(14, "PreviewImage", [400, 920], title="Weakened guidance image", size=[380, 380]),
        _node(15, "VAEEncode", [400, 830], size=[220, 50]),
        _node(16, "PnP_DDIMInversion", [830, 660], {"steps": 50, "inversion_steps": 0}, color=COLOR_PNP,
              size=[320, 160]),
        _node(17, "PnP_FeatureBank", [830, 870], {"feature_injection": 0.8, "attention_injection": 0.5},
              color=COLOR_PNP, size=[320, 260]),
        weakened_sampler,
        _node(19, "VAEDecode", [1570, 660], size=[220, 50]),
        _node(21, "PnP_RestoreBrightness", [1570, 750], {"region": "whole image"}, color=COLOR_PNP,
              size=[400, 90]),
        _node(22, "SaveImage", [1570, 890], {"filename_prefix": "pnp/sam_background"},
              title="weakened background, brightness restored", size=[400, 460]),
    ]
    links += [
        (5, 0, 13, "image"), (12, 0, 13, "mask"), (13, 0, 14, "images"),
        (13, 0, 15, "pixels"), (1, 2, 15, "vae"),
        (1, 0, 16, "model"), (15, 0, 16, "latent"), (2, 0, 16, "conditioning"),
        (1, 0, 17, "model"), (16, 0, 17, "inversion"), (2, 0, 17, "conditioning"),
        (1, 0, 18, "model"), (3, 0, 18, "positive"), (4, 0, 18, "negative"), (17, 0, 18, "features"),
        (18, 0, 19, "samples"), (1, 2, 19, "vae"),
        (19, 0, 21, "image"), (13, 1, 21, "brightness"), (21, 0, 22, "images"),
    ]
    nodes.append(_note(20, [830, 1180], [700, 300],
                       "## Background weakening (a user's SAM scheme) beside plain PnP\n"
                       "The same guidance image and prompt twice. Top: plain PnP. Bottom: **PnP Weaken "
                       "Background** darkens the guidance image outside the subject mask before VAE Encode "
                       "(`factor` 0.5, a soft edge of `feather` px), so inversion and bank carry less of the "
                       "background's clutter and the prompt shapes it more freely; after decoding, **PnP "
                       "Restore Brightness** divides by the factor again (`region` whole image, as the notes; "
                       "or weakened area only).\n\n"
                       "The notes (a shark among water plants, a yellow halo behind a robot) found 0.5 keeps "
                       "the subject and frees the background; `factor` 0 (deleting the background) fails: no "
                       "background is generated at all.\n\n"
                       "**Mask**: `pnp_guidance_mask.png` (the house) via Load Image (as Mask); connect any "
                       "MASK instead: a SAM node pack's (segment the subject from a point), the Mask Editor. "
                       "Copy `pnp_guidance.png` and `pnp_guidance_mask.png` to `ComfyUI/input/`.\n\n"
                       "**Checkpoint**: any SD 1.x or SD 2.x checkpoint (default `v1-5-pruned-emaonly.safetensors`)."))
    return _spec("pnp_sam_background", 9, "Weaken the background with a mask",
                 "Background x0.5 before inversion, x2 after; beside plain PnP.", nodes, links)


def batch_frames() -> dict:
    nodes, links = _real_image_core("a watercolor painting of a cottage in autumn, falling leaves", "pnp/frames")
    nodes[4].update(widgets={"image": GUIDANCE_FRAMES}, title="Guidance frames (a batch)")
    nodes[7]["widgets"]["batch_memory"] = "one frame at a time"
    nodes[10]["title"] = "Translated frames"
    nodes.append(_note(20, [830, 560], [340, 560],
                       "## A batch of guidance images (video frames)\n"
                       "*Load Image* reads the animated `pnp_frames.png` (a camera pan over the guidance image, "
                       "4 frames) as one IMAGE batch; every PnP node works on the batch: one inversion "
                       "trajectory and one bank per frame, and PnP Sampler translates the frames one after "
                       "another, each exactly as it would be alone (the same target prompt and seed for "
                       "all).\n\n"
                       "**Memory**: PnP Feature Bank's `batch_memory` *one frame at a time* records each "
                       "frame's bank when PnP Sampler reaches it and frees it after (one frame's ~370 MB at "
                       "512 px, however many frames); *all frames* records them all at once (frames × the "
                       "bank) so that several samplers reuse them. `mode` on the fly stores none.\n\n"
                       "**Frames**: any IMAGE batch of one size: a video loader's frames (e.g. a video node "
                       "pack), an animated PNG/WebP/GIF in Load Image. Copy `pnp_frames.png` from this pack's "
                       "`workflows/` to `ComfyUI/input/`.\n\n"
                       "**Checkpoint**: any SD 1.x or SD 2.x checkpoint (default "
                       "`v1-5-pruned-emaonly.safetensors`)."))
    return _spec("pnp_batch_frames", 10, "Batch of frames",
                 "Invert, record and translate a batch, frame by frame.", nodes, links)


def custom_sampler() -> dict:
    nodes, links = _real_image_core("a photo of a gingerbread house on a snowy hill, winter", "pnp/custom_ddim")
    nodes = [n for n in nodes if n["id"] not in (9, 10, 11)]
    links = [link for link in links if 9 not in (link[0], link[2]) and link[2] not in (10, 11)]
    nodes += [
        _node(9, "PnP_Guider", [1200, 40], {"cfg": 7.5, "feature_injection": 0.8, "attention_injection": 0.5},
              color=COLOR_PNP, size=[320, 380]),
        _node(12, "DisableNoise", [1200, 470], title="No noise: start from the bank's x_T", size=[320, 60]),
        _node(13, "KSamplerSelect", [1200, 580], {"sampler_name": "ddim"}, title="ddim (= PnP Sampler)",
              size=[320, 60]),
        _node(14, "SamplerCustomAdvanced", [1570, 40], size=[300, 120]),
        _node(10, "VAEDecode", [1570, 210], size=[220, 50]),
        _node(11, "SaveImage", [1920, 40], {"filename_prefix": "pnp/custom_ddim"}, title="ddim", size=[400, 460]),
        _node(15, "KSamplerSelect", [1200, 690], {"sampler_name": "dpmpp_2m"}, title="another sampler",
              size=[320, 60]),
        _node(16, "SamplerCustomAdvanced", [1570, 560], size=[300, 120]),
        _node(17, "VAEDecode", [1570, 730], size=[220, 50]),
        _node(18, "SaveImage", [1920, 560], {"filename_prefix": "pnp/custom_dpmpp_2m"}, title="dpmpp_2m",
              size=[400, 460]),
    ]
    links += [
        (1, 0, 9, "model"), (3, 0, 9, "positive"), (4, 0, 9, "negative"), (8, 0, 9, "features"),
        (12, 0, 14, "noise"), (9, 0, 14, "guider"), (13, 0, 14, "sampler"), (9, 1, 14, "sigmas"),
        (9, 2, 14, "latent_image"),
        (14, 0, 10, "samples"), (1, 2, 10, "vae"), (10, 0, 11, "images"),
        (12, 0, 16, "noise"), (9, 0, 16, "guider"), (15, 0, 16, "sampler"), (9, 1, 16, "sigmas"),
        (9, 2, 16, "latent_image"),
        (16, 0, 17, "samples"), (1, 2, 17, "vae"), (17, 0, 18, "images"),
    ]
    nodes.append(_note(20, [830, 560], [340, 520],
                       "## PnP in SamplerCustomAdvanced\n"
                       "**PnP Guider** gives ComfyUI's custom sampling nodes what PnP Sampler uses inside: the "
                       "GUIDER that injects the bank, the SIGMAS of the bank's timesteps (then 0) and the bank's "
                       "x_T. With **DisableNoise** and the **ddim** sampler the result equals PnP Sampler "
                       "(`final_step` comfyui) exactly.\n\n"
                       "Other samplers run too; injection follows the sigma each model evaluation is at: only "
                       "the bank's own sigmas below the thresholds inject (dpmpp_2m, euler_ancestral: every "
                       "injecting step once; heun: also its corrector, with the next step's tensors; dpm_2's "
                       "midpoints: nothing). SplitSigmas can hand the steps after injection to another guider. "
                       "See docs/guide.md in the pack, *PnP in SamplerCustomAdvanced*.\n\n" + _HOW_TO_INPUT))
    return _spec("pnp_custom_sampler", 11, "PnP in SamplerCustomAdvanced",
                 "PnP Guider and the bank's sigmas for the custom sampling nodes.", nodes, links)


def _pca_views(views: list[tuple[str, str, str]]) -> tuple[list, list]:
    """One row per (view, layer, title): PnP Feature PCA on the bank (8) and the model (1), its grid previewed
    and its caption shown (ids 30+10*i .. 32+10*i)."""
    nodes, links = [], []
    for i, (view, layer, title) in enumerate(views):
        base, row = 30 + 10 * i, 1060 + 350 * i  # below the bank and its preview
        nodes += [
            _node(base, "PnP_FeaturePCA", [830, row], {"view": view, "layer": layer, "steps": "auto",
                                                      "fit": "across steps", "frame_width": 256}, title=title,
                  color=COLOR_PNP, size=[320, 290]),
            _node(base + 1, "PreviewImage", [1200, row], title=f"{title}: steps left to right", size=[560, 290]),
            _node(base + 2, "PreviewAny", [1800, row], title=f"{title}: caption", size=[420, 290]),
        ]
        links += [(8, 0, base, "features"), (1, 0, base, "model"),
                  (base, 0, base + 1, "images"), (base, 2, base + 2, "source")]
    return nodes, links


_PCA_HOW_TO_READ = (
    "### Reading the pictures\n"
    "Each row is one layer's first three principal components as RGB, one picture per sampling step "
    "(left = the first, noisiest step; `steps` auto = 5 steps over those the bank recorded), one colour basis "
    "for the row (`fit` across steps). A good **ResBlock** layer shows the guidance image's parts as a few flat "
    "colour regions, without its textures; a good **self-attention** layer shows regions that follow the "
    "objects. How long the structure lasts along the row tells how many steps to inject: raise τ_f / τ_A if "
    "the result keeps too little of the layout, lower them if it copies appearance. The caption beside each "
    "row names the layer, its resolution and the steps shown.")


def feature_pca() -> dict:
    nodes, links = _real_image_core("a photo of a gingerbread house on a snowy hill, winter", "pnp/feature_pca")
    views, view_links = _pca_views([("resblock", "auto", "ResBlock features (layer 4)"),
                                    ("self-attention map", "auto", "Self-attention maps (layer 4)"),
                                    ("self-attention map", "11", "Self-attention maps (layer 11)")])
    nodes += views
    links += view_links
    nodes.append(_note(20, [20, 660], [760, 640],
                       "## PnP with feature PCA: see what is injected\n"
                       "The translation of *Real image to target prompt*, with **PnP Feature PCA** showing three "
                       "of the tensors the bank injects, as the paper did to choose its layers (Figs. 2-3): the "
                       "ResBlock features of decoder block 4 (`layer` auto) and the self-attention maps of "
                       "blocks 4 and 11 (the first and last of the attention layers). The views read the bank, "
                       "so they cost no extra UNet pass; a layer the bank does not hold (e.g. ResBlock 7) is "
                       "recorded live from the MODEL.\n\n" + _PCA_HOW_TO_READ + "\n\n" + _HOW_TO_INPUT))
    return _spec("pnp_feature_pca", 6, "Feature PCA - see what is injected",
                 "PCA pictures of three injected layers beside the translation.", nodes, links)


def sdxl() -> dict:
    checkpoint = _checkpoint(name=SDXL_CHECKPOINT, url=SDXL_CHECKPOINT_URL)
    nodes, links = _real_image_core("a photo of a gingerbread house on a snowy hill, winter", "pnp/sdxl",
                                    checkpoint)
    nodes += [_node(12, "ImageScale", [20, 640], {"upscale_method": "lanczos", "width": SDXL_SIZE,
                                                   "height": SDXL_SIZE, "crop": "center"},
                    title="Guidance image size (SDXL: ~1024 px)", size=[330, 160], color=COLOR_INPUT)]
    links = [link for link in links if link[2:] != (6, "pixels")]
    links += [(5, 0, 12, "image"), (12, 0, 6, "pixels")]
    views, view_links = _pca_views([("resblock", "auto", "ResBlock features (SDXL block 1)"),
                                    ("self-attention map", "auto", "Self-attention maps (SDXL block 1:0)"),
                                    ("self-attention map", "4:0", "Self-attention maps (SDXL block 4:0)")])
    nodes += views
    links += view_links
    nodes.append(_note(20, [20, 850], [760, 450],
                       "## PnP on SDXL\n"
                       "The same translation on an SDXL base checkpoint, with **PnP Feature PCA** views of the "
                       "layers PnP injects. On SDXL `auto` means ResBlock **1** and self-attention **1-5:0** "
                       "(transformer 0 of decoder blocks 1-5): the paper's SD 1.5 layers (ResBlock 4, attention "
                       "4-11) mapped by resolution, not tuned on images. Check them on your checkpoint with the "
                       "views below; override them on PnP Feature Bank (`resblock_layers` `0,1`, "
                       "`attention_layers` `1-5:0-1`, ...). The default bank of a 1024 px image takes ~620 MiB "
                       "(fp16).\n\n" + _PCA_HOW_TO_READ + "\n\n"
                       "**Guidance image**: `pnp_guidance.png` ships in this pack's `workflows/` folder: copy it "
                       "to `ComfyUI/input/` (or upload your own photo). *Upscale Image* brings it to SDXL's "
                       "1024x1024 (center crop); for another aspect pick a size of about one megapixel in "
                       "multiples of 8 px (1152x896, 1216x832, ...).\n\n"
                       "**Checkpoint**: an SDXL base checkpoint (default `sd_xl_base_1.0.safetensors`; not the "
                       "refiner). Same knobs and paper defaults as SD 1.5: 50 steps, τ_f 0.8, τ_A 0.5, `cfg` "
                       "7.5."))
    return _spec("pnp_sdxl", 7, "SDXL real image to target prompt",
                 "The translation on an SDXL base checkpoint, with PCA views.", nodes, links)


def sweep() -> dict:
    target = "a photo of a gingerbread house on a snowy hill, winter"
    nodes, links = _real_image_core(target, "pnp/sweep")
    nodes = [n for n in nodes if n["id"] not in (9, 10, 11)]  # the sweep samples instead of one PnP Sampler
    links = [link for link in links if 9 not in (link[0], link[2]) and 10 not in (link[0], link[2])]
    nodes += [
        _node(12, "CLIPVisionLoader", [20, 660], {"clip_name": DINOV2}, title="Structure model (DINOv2)",
              size=[330, 60], models=[{"name": DINOV2, "url": DINOV2_URL, "directory": "clip_vision"}]),
        _node(13, "CLIPVisionLoader", [20, 760], {"clip_name": CLIP_VISION_G}, title="Text model (CLIP ViT-bigG)",
              size=[330, 60], models=[{"name": CLIP_VISION_G, "url": CLIP_VISION_G_URL, "directory": "clip_vision"}]),
        _node(14, "CLIPLoader", [20, 860], {"clip_name": CLIP_G, "type": "stable_diffusion"},
              title="Text encoder of the text model (CLIP-G)", size=[330, 110],
              models=[{"name": CLIP_G, "url": CLIP_G_URL, "directory": "text_encoders"}]),
        _text(15, (400, 660), "Text-score prompt (CLIP-G)", target, size=(380, 150)),
        _node(16, "PnP_ThresholdSweep", [830, 560], {"feature_injection_values": "0.4, 0.6, 0.8",
                                                     "attention_injection_values": "0.2, 0.5",
                                                     "injection_strength_values": "1.0", "cfg": 7.5},
              color=COLOR_PNP, size=[320, 470]),
        _node(17, "SaveImage", [1200, 40], {"filename_prefix": "pnp/sweep_grid"}, title="Sweep grid",
              size=[560, 480]),
        _node(18, "PreviewImage", [1800, 40], title="Trade-off plot (front in red)", size=[560, 480]),
        _node(19, "PreviewAny", [1200, 580], title="Scores per cell", size=[1160, 300]),
    ]
    links += [
        (14, 0, 15, "clip"),
        (1, 0, 16, "model"), (3, 0, 16, "positive"), (4, 0, 16, "negative"), (8, 0, 16, "features"),
        (1, 2, 16, "vae"), (5, 0, 16, "guidance"), (12, 0, 16, "structure_model"), (13, 0, 16, "text_model"),
        (15, 0, 16, "text_prompt"),
        (16, 0, 17, "images"), (16, 1, 18, "images"), (16, 2, 19, "source"),
    ]
    nodes.append(_note(20, [1200, 940], [1160, 420],
                       "## Choose the thresholds by measurement\n"
                       "**PnP Threshold Sweep** runs PnP Sampler for every `feature_injection` (τ_f, columns) x "
                       "`attention_injection` (τ_A, rows) from the one bank (6 cells = 6 samplings) and scores "
                       "each result as the paper does: **structure distance** to the guidance image (DINOv2 "
                       "self-similarity of the last layer's keys, lower = more of the layout kept) and **text "
                       "score** (CLIP cosine of the result and the prompt, higher = follows the prompt). The plot "
                       "draws one against the other; red cells are on the trade-off front: no other cell is "
                       "better in both. Pick one of them, then use its τ_f / τ_A on PnP Sampler.\n\n"
                       "**Models** (`models/clip_vision`): `dinov2_vitl14.safetensors` = facebook/dinov2-large's "
                       "model.safetensors; `clip_vision_g.safetensors`. The text score needs the prompt in CLIP "
                       "ViT-bigG's joint space: SD 1.x's own CLIP gives an unprojected pooled embedding, so the "
                       "prompt is encoded again by `clip_g.safetensors` (`models/text_encoders`); keep its text "
                       "the same as the target prompt. With an SDXL checkpoint, connect its target prompt "
                       "directly. The bank must record the largest values swept (here 0.8 / 0.5).\n\n"
                       + _HOW_TO_INPUT))
    return _spec("pnp_sweep", 8, "Threshold sweep - choose by measurement",
                 "A grid of thresholds from one bank, scored for structure and text.", nodes, links)


# FLUX.1: the models as their users load them (diffusion model, the dual text encoder, the VAE; Comfy-Org's
# repackaged files), the official defaults (RF-Solver-Edit: rf-solver, 25 steps, V of single blocks 20-37 in the
# first 3 steps, FLUX guidance 2 on the target prompt, 1 during the inversion).
FLUX_REQUIRES_COMFYUI = "0.33.0"
FLUX_UNET = "flux1-dev.safetensors"
FLUX_UNET_URL = "https://huggingface.co/black-forest-labs/FLUX.1-dev/resolve/main/flux1-dev.safetensors"
FLUX_CLIP_L = "clip_l.safetensors"
FLUX_CLIP_L_URL = "https://huggingface.co/comfyanonymous/flux_text_encoders/resolve/main/clip_l.safetensors"
FLUX_T5XXL = "t5xxl_fp16.safetensors"
FLUX_T5XXL_URL = "https://huggingface.co/comfyanonymous/flux_text_encoders/resolve/main/t5xxl_fp16.safetensors"
FLUX_VAE = "ae.safetensors"
FLUX_VAE_URL = "https://huggingface.co/black-forest-labs/FLUX.1-dev/resolve/main/ae.safetensors"
FLUX_STEPS = 25
FLUX_SOLVER = "rf-solver"
FLUX_GUIDANCE = 2.0

_FLUX_HOW_TO = (
    "### FLUX knobs (RF-Solver-Edit's defaults)\n"
    "- **PnP DDIM Inversion** on FLUX inverts with `solver` rf-solver (2 model calls a step), fireflow (about 1; "
    "its examples use 8 steps) or euler; `steps` 25; the source prompt at FLUX guidance 1.\n"
    "- **PnP Feature Bank** records V of the single-stream blocks `attention_layers` (auto = 20-37) in the first "
    "`inject_steps` steps (-1 = the solver's official count: 3, fireflow 1); its box shows the bank's size "
    "(about 1 GB a step at 1024 px in fp16). `resblock_layers`, `feature_injection` and `attention_injection` "
    "are SD's.\n"
    "- **PnP Sampler** takes the target prompt's FLUX guidance from **FluxGuidance** (2); `cfg` and the "
    "thresholds are SD's and not read; `injection_strength` and a `mask` blend as on SD.\n\n"
    "**Models** (ComfyUI 0.33 or newer): `flux1-dev.safetensors` in `models/diffusion_models`, `clip_l` and "
    "`t5xxl_fp16` in `models/text_encoders`, `ae.safetensors` in `models/vae`. **Guidance image**: "
    "`pnp_guidance.png` from this pack's `workflows/` in `ComfyUI/input/` (512 px here; FLUX works up to about "
    "1 megapixel, sides multiples of 16 px).")


def _flux_core(target: str, save_prefix: str) -> tuple[list, list]:
    """FLUX.1 dev's loaders, prompts (FluxGuidance on the target), guidance image, inversion, bank, one sampler,
    decode, save (ids 1-13)."""
    nodes = [
        _node(1, "UNETLoader", [20, 60], {"unet_name": FLUX_UNET, "weight_dtype": "default"}, size=[330, 90],
              models=[{"name": FLUX_UNET, "url": FLUX_UNET_URL, "directory": "diffusion_models"}]),
        # a title of its own: the default one is the host's display name ("DualCLIPLoader" on ComfyUI 0.3.64,
        # "Load CLIP (Dual)" on 0.33), which graphToPrompt puts in the API prompt's _meta
        _node(2, "DualCLIPLoader", [20, 200], {"clip_name1": FLUX_CLIP_L, "clip_name2": FLUX_T5XXL, "type": "flux"},
              title="FLUX text encoders (CLIP-L + T5-XXL)", size=[330, 130],
              models=[{"name": FLUX_CLIP_L, "url": FLUX_CLIP_L_URL, "directory": "text_encoders"},
                      {"name": FLUX_T5XXL, "url": FLUX_T5XXL_URL, "directory": "text_encoders"}]),
        _node(3, "VAELoader", [20, 380], {"vae_name": FLUX_VAE}, size=[330, 60],
              models=[{"name": FLUX_VAE, "url": FLUX_VAE_URL, "directory": "vae"}]),
        _node(4, "LoadImage", [20, 490], {"image": GUIDANCE_IMAGE}, title="Guidance image", size=[330, 380],
              color=COLOR_INPUT),
        _text(5, (400, 40), "Source prompt (empty)", "", size=(380, 110)),
        _text(6, (400, 210), "Target prompt", target, color=COLOR_INPUT),
        _node(7, "FluxGuidance", [400, 420], {"guidance": FLUX_GUIDANCE}, title="FLUX guidance of the target",
              size=[380, 60]),
        _node(8, "VAEEncode", [400, 530], size=[220, 50]),
        _node(9, "PnP_DDIMInversion", [830, 40], {"steps": FLUX_STEPS, "inversion_steps": 0, "solver": FLUX_SOLVER},
              color=COLOR_PNP, size=[320, 180]),
        _node(10, "PnP_FeatureBank", [830, 480], {"inject_steps": -1}, color=COLOR_PNP, size=[320, 280]),
        _sampler(11, (1200, 40)),
        _node(12, "VAEDecode", [1570, 40], size=[220, 50]),
        _node(13, "SaveImage", [1570, 150], {"filename_prefix": save_prefix}, size=[400, 460]),
    ]
    links = [
        (2, 0, 5, "clip"), (2, 0, 6, "clip"), (6, 0, 7, "conditioning"),
        (4, 0, 8, "pixels"), (3, 0, 8, "vae"),
        (1, 0, 9, "model"), (8, 0, 9, "latent"), (5, 0, 9, "conditioning"),
        (1, 0, 10, "model"), (9, 0, 10, "inversion"), (5, 0, 10, "conditioning"),
        (1, 0, 11, "model"), (7, 0, 11, "positive"), (5, 0, 11, "negative"), (10, 0, 11, "features"),
        (11, 0, 12, "samples"), (3, 0, 12, "vae"), (12, 0, 13, "images"),
    ]
    return nodes, links


def flux_real_image() -> dict:
    nodes, links = _flux_core("a photo of a gingerbread house on a snowy hill, winter", "pnp/flux_real_image")
    nodes.append(_note(20, [1200, 760], [760, 560],
                       "## PnP on FLUX.1: translate a real image\n"
                       "The same nodes as on SD, given a FLUX MODEL: the guidance image is inverted with a "
                       "rectified-flow solver and the empty source prompt; the bank records V of FLUX's "
                       "single-stream blocks during the first steps; PnP Sampler denoises the inverted noise with "
                       "the **target prompt**, putting that V in place (RF-Solver-Edit; FireFlow with `solver` "
                       "fireflow and 8 steps).\n\n" + _FLUX_HOW_TO))
    return _spec("pnp_flux_real_image", 13, "FLUX real image to target prompt",
                 "A photo keeps its layout on FLUX.1 dev (RF-Solver-Edit).", nodes, links,
                 FLUX_REQUIRES_COMFYUI)


def flux_mask() -> dict:
    nodes, links = _flux_core("a gingerbread house in a snowy forest at night, moonlight", "pnp/flux_mask")
    nodes[10]["widgets"].update({"injection_strength": 1.0, "outside_mask_strength": 0.0})
    nodes.append(_node(14, "LoadImageMask", [20, 920], {"image": GUIDANCE_MASK, "channel": "red"},
                       title="Subject mask", size=[330, 380], color=COLOR_INPUT))
    links.append((14, 0, 11, "mask"))
    nodes.append(_note(20, [1200, 760], [760, 640],
                       "## PnP on FLUX.1 restricted to a mask\n"
                       "Inside the mask (white) the guidance image's V is put in place, outside it is not: the "
                       "subject keeps its structure while the background follows the prompt.\n\n"
                       "On FLUX each image token is a 2x2 patch of the latent (16x16 px): it takes the mask's "
                       "mean over its patch. The text tokens take `injection_strength` times the mask's largest "
                       "value (so a mask of zeros injects nothing).\n\n"
                       "- `outside_mask_strength` 0: weight of the injection outside the mask.\n"
                       "- `injection_strength` 1: blend of the target's and the guidance image's V (1 = "
                       "RF-Solver-Edit's replacement).\n\n"
                       "**Mask**: `pnp_guidance_mask.png` (the house), at the guidance image's size (scale both "
                       "alike).\n\n" + _FLUX_HOW_TO))
    return _spec("pnp_flux_mask", 14, "FLUX with a subject mask",
                 "On FLUX.1 dev the subject keeps its structure, not the background.", nodes, links,
                 FLUX_REQUIRES_COMFYUI)


WORKFLOWS = [real_image, generated_guidance, several_prompts, controlnet, mask, feature_pca, sdxl, sweep,
             sam_background, batch_frames, custom_sampler, random_start, flux_real_image, flux_mask]


def file_stems(specs: list[dict]) -> dict[str, str]:
    """Each spec's file name without ".json", by spec name: its two-digit ``order`` and its ``title``
    ("01 Real image to target prompt")."""
    return {spec["name"]: f"{spec['order']:02d} {spec['title']}" for spec in specs}


def stem(name: str) -> str:
    """The shipped file name (without ".json") of the workflow spec ``name``."""
    return file_stems([make() for make in WORKFLOWS])[name]


def pack_properties(node_type: str) -> dict:
    """The node properties by which the frontends match a node to its pack (``cnr_id``, ``ver``)."""
    if node_type in FRONTEND_ONLY_TYPES:
        return {}
    if node_type.startswith("PnP_"):
        return {"cnr_id": PACK_ID, "ver": PACK_VERSION}
    return {"cnr_id": "comfy-core", "ver": MIN_COMFYUI}


def boxes_clash(a: tuple, b: tuple, title_height: float, gap: float = GAP) -> bool:
    """Whether two nodes' boxes ``(x, y, width, height)`` (``y`` = top of the body; the title bar is above it)
    come closer than ``gap`` px vertically while their x ranges overlap (side by side they only must not touch)."""
    (ax, ay, aw, ah), (bx, by, bw, bh) = a, b
    side_by_side = ax + aw <= bx or bx + bw <= ax
    return not side_by_side and ay - title_height < by + bh + gap and by - title_height < ay + ah + gap


def settle(nodes: list[dict], sizes: dict, title_height: float) -> dict:
    """Positions by node id: each node keeps its x and the nodes their top-to-bottom order; a node moves down just
    enough that its box, title bar included, stays ``GAP`` px clear of every node above it in its column.
    ``sizes``: the nodes' sizes as built (widgets, preview room), by id."""
    placed: dict = {}
    for node in sorted(nodes, key=lambda n: (n["pos"][1], n["pos"][0], n["id"])):
        x, y = node["pos"]
        w, h = sizes[node["id"]]
        clash = True
        while clash:
            clash = next((box for box in placed.values() if boxes_clash(box, (x, y, w, h), title_height)), None)
            if clash:
                y = clash[1] + clash[3] + GAP + title_height
        placed[node["id"]] = (x, y, w, h)
    return {node_id: [box[0], box[1]] for node_id, box in placed.items()}


# The view saved in each file (extra.ds): what opens on a 1600x1000 window, the smallest the templates are made
# for. The canvas draws no node text below 60 % zoom (LiteGraph.Canvas.MinFontSizeForLOD, 8 px of 14), so the
# view is the whole graph where that fits at READABLE_ZOOM or more (at up to 100 %), else READABLE_ZOOM with
# the graph's top left corner in view; either way the top left corner sits VIEW_MARGIN px inside the side and
# top bars, so a larger window shows more of the graph at the same zoom. Frontend 1.27 restores it when a file
# or template is opened; for the pack's templates in 1.49 and 1.58, which fit templates to the window,
# web/pnp_template_view.js puts it back.
VIEW_WINDOW = (1600, 1000)
READABLE_ZOOM = 0.65
VIEW_MARGIN = 16


def saved_view(boxes: dict, title_height: float, chrome: tuple[int, int]) -> dict:
    """The view to save, {"scale", "offset"}, for nodes at ``boxes`` ``(x, y, width, height)`` (``y`` = top of
    the body) behind side and top bars of ``chrome`` px."""
    x0 = min(x for x, y, w, h in boxes.values()) - VIEW_MARGIN
    y0 = min(y - title_height for x, y, w, h in boxes.values()) - VIEW_MARGIN
    x1 = max(x + w for x, y, w, h in boxes.values()) + VIEW_MARGIN
    y1 = max(y + h for x, y, w, h in boxes.values()) + VIEW_MARGIN
    free = (VIEW_WINDOW[0] - chrome[0], VIEW_WINDOW[1] - chrome[1])
    scale = min(1.0, max(READABLE_ZOOM, min(free[0] / (x1 - x0), free[1] / (y1 - y0))))
    return {"scale": scale, "offset": [chrome[0] / scale - x0, chrome[1] / scale - y0]}


# Builds a spec in the page with the frontend's own LiteGraph classes: nodes (with room for their previews) and
# links; returns the nodes' sizes and the title bar height for ``settle``.
CREATE_JS = """
async (spec) => {
  app.clean();  // the graph, and the previous graph's outputs and previews (they are kept by node id)
  const graph = app.graph;
  if (graph.nodes.length) graph.clear();  // 1.49.6: app.clean() leaves the default graph's nodes
  const byId = {};
  for (const n of spec.nodes) {
    const node = LiteGraph.createNode(n.type);
    if (!node) throw new Error(`unknown node type ${n.type}`);
    node.id = n.id;
    graph.add(node);
    if (String(node.id) !== String(n.id)) throw new Error(`node id ${n.id} not kept`);  // 1.49.6: a string
    if (n.title) node.title = n.title;
    if (n.color) node.color = n.color;
    for (const [name, value] of Object.entries(n.widgets)) {
      const w = (node.widgets || []).find(w => w.name === name);
      if (!w) throw new Error(`${n.type} has no widget ${name}`);
      w.value = value;
    }
    Object.assign(node.properties, n.properties);
    node.pos = n.pos;
    const [width, height] = node.computeSize();
    const room = spec.preview_types.includes(n.type) ? spec.preview_room : 0;
    node.setSize(n.size ? [Math.max(n.size[0], width), Math.max(n.size[1], height + room)] : [width, height + room]);
    byId[n.id] = node;
  }
  for (const [src, slot, dst, input] of spec.links) {
    const target = byId[dst];
    const index = target.findInputSlot(input);
    if (index < 0) throw new Error(`${target.type} has no input ${input}`);
    if (!byId[src].connect(slot, target, index)) throw new Error(`cannot link ${src}:${slot} -> ${dst}.${input}`);
  }
  return {sizes: Object.fromEntries(graph.nodes.map(n => [n.id, [...n.size]])), title_height: LiteGraph.NODE_TITLE_HEIGHT};
}
"""

# Places the nodes built by CREATE_JS, sets the view saved in the file (``saved_view``) and returns what the
# frontend serialises.
FINISH_JS = """
async ({positions, view}) => {
  const graph = app.graph;
  for (const [id, pos] of Object.entries(positions)) graph.getNodeById(Number(id)).pos = pos;
  const frame = () => new Promise(r => requestAnimationFrame(() => r()));
  app.graph.setDirtyCanvas(true, true);
  await frame(); await frame();
  const ds = app.canvas.ds;
  ds.scale = view.scale;
  ds.offset[0] = view.offset[0];
  ds.offset[1] = view.offset[1];
  app.graph.setDirtyCanvas(true, true);
  await frame();
  const { workflow, output } = await app.graphToPrompt();
  workflow.extra = { ...(workflow.extra || {}), ds: { scale: app.canvas.ds.scale, offset: [...app.canvas.ds.offset] } };
  // JSON text: what a saved file holds (undefined fields dropped, as the frontend's own save does)
  return JSON.stringify({ workflow, output });
}
"""
