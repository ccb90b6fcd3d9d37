"""Template thumbnails: a card that says what a workflow is for, drawn from its spec.

The frontends show a custom node pack's template as its file name and the
same-name .jpg (``workflow_specs``), about 256 px wide. The card carries what
the name cannot: the title in large type, the one-line description, what goes
in (the guidance image and mask the workflow loads, or its guidance prompt),
the target prompts, and the PnP nodes it chains. No result picture: the only
models here have random weights, so a "result" would show nothing true.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

SIZE = (1024, 768)
FONTS = Path("/usr/share/fonts/truetype/dejavu")
BACKGROUND, PANEL, TEXT, MUTED, ACCENT = "#202430", "#2c3242", "#f2f2f2", "#a9b1c4", "#e0a040"


def _font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(FONTS / ("DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf")), size)


def description_fits(text: str) -> bool:
    """Whether a description fits the card's one line."""
    return _font(26).getlength(text) <= SIZE[0] - 2 * 48


def inputs_of(spec: dict, workflows: Path) -> tuple[list[tuple[str, Path]], list[tuple[str, str]]]:
    """What the workflow takes: (label, image file) of its Load Image nodes, and (label, text) of its prompts
    (the guidance prompt of a generated guidance image, then the target prompts)."""
    images, prompts = [], []
    for node in spec["nodes"]:
        title = node.get("title") or ""
        if node["type"] in ("LoadImage", "LoadImageMask"):
            images.append((title or "Guidance image", workflows / node["widgets"]["image"]))
        elif node["type"] == "CLIPTextEncode" and title.startswith(("Guidance prompt", "Target prompt")):
            prompts.append((title, node["widgets"]["text"]))
    return images, prompts


def card(spec: dict, number: int, chain: list[str], workflows: Path) -> Image.Image:
    """The card of ``spec`` (its ``number`` in the template order; ``chain``: its PnP nodes' display names)."""
    img = Image.new("RGB", SIZE, BACKGROUND)
    draw = ImageDraw.Draw(img)
    draw.text((48, 34), f"Plug-and-Play (PnP) · template {number:02d}", font=_font(24), fill=ACCENT)
    draw.text((48, 70), spec["title"], font=_font(50, bold=True), fill=TEXT)
    draw.text((48, 140), spec["description"], font=_font(26), fill=MUTED)

    images, prompts = inputs_of(spec, workflows)
    top, tile = 210, 300 if len(images) < 2 else 228
    x = 48
    for label, path in images:
        with Image.open(path) as picture:
            img.paste(picture.convert("RGB").resize((tile, tile), Image.Resampling.LANCZOS), (x, top + 34))
        draw.text((x, top), label, font=_font(22), fill=MUTED)
        x += tile + 20
    guidance = [p for p in prompts if p[0].startswith("Guidance prompt")]
    for label, text in guidance:  # a generated guidance image: its prompt is the input
        draw.rounded_rectangle((x, top + 34, x + tile, top + 34 + tile), 16, fill=PANEL)
        draw.text((x, top), label, font=_font(22), fill=MUTED)
        draw.multiline_text((x + 18, top + 54), textwrap.fill(f"“{text}”", 19), font=_font(26), fill=TEXT,
                            spacing=8)
        x += tile + 20
    arrow_y = top + 34 + tile // 2
    draw.line((x + 4, arrow_y, x + 60, arrow_y), fill=ACCENT, width=8)
    draw.polygon([(x + 60, arrow_y - 18), (x + 86, arrow_y), (x + 60, arrow_y + 18)], fill=ACCENT)

    left, right = x + 110, SIZE[0] - 48
    targets = [p for p in prompts if p[0].startswith("Target prompt")]
    width_chars = max(16, (right - left - 32) // 16)
    blocks = [(label, textwrap.fill(f"“{text}”", width_chars, max_lines=3 if len(targets) == 1 else 2))
              for label, text in targets]
    heights = [40 * (wrapped.count("\n") + 1) + 24 for _, wrapped in blocks]
    y = top + max(0, (34 + tile - sum(h + 50 for h in heights) + 50) // 2)  # centred beside the inputs
    for (label, wrapped), height in zip(blocks, heights):
        draw.text((left, y), label, font=_font(22), fill=MUTED)
        draw.rounded_rectangle((left, y + 32, right, y + 32 + height), 14, fill=PANEL)
        draw.multiline_text((left + 16, y + 44), wrapped, font=_font(28), fill=TEXT, spacing=10)
        y += height + 50

    draw.line((48, SIZE[1] - 96, SIZE[0] - 48, SIZE[1] - 96), fill=PANEL, width=3)
    draw.text((48, SIZE[1] - 76), "  →  ".join(chain), font=_font(24), fill=MUTED)
    return img
