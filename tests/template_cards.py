"""Template thumbnails: a card that says what a workflow is for, drawn from its spec.

The frontends show a custom node pack's template as its file name and the
same-name .jpg (``workflow_specs``), about 256 px wide. The card carries what
the name cannot: the title in large type, the one-line description, what goes
in (the guidance image and mask the workflow loads, or its guidance prompt),
the target prompts, and the PnP nodes it chains. No result picture: the only
models here have random weights, so a "result" would show nothing true.
"""
from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

SIZE = (1024, 768)
FONTS = Path("/usr/share/fonts/truetype/dejavu")
BACKGROUND, PANEL, TEXT, MUTED, ACCENT = "#202430", "#2c3242", "#f2f2f2", "#a9b1c4", "#e0a040"


def _font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(FONTS / ("DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf")), size)


MARGIN = 48  # every line of text stays this far inside the card's edges


def description_fits(text: str) -> bool:
    """Whether a description fits the card's one line."""
    return _font(26).getlength(text) <= SIZE[0] - 2 * MARGIN


def _wrap(text: str, font: ImageFont.FreeTypeFont, width: float, sep: str = " ") -> list[str]:
    """Greedy wrap at ``sep`` by drawn width; a piece wider than ``width`` stays on its own line."""
    lines: list[str] = []
    for word in text.split(sep):
        if lines and font.getlength(f"{lines[-1]}{sep}{word}") <= width:
            lines[-1] = f"{lines[-1]}{sep}{word}"
        else:
            lines.append(word)
    return lines or [""]


def fit_text(text: str, width: float, size: int, min_size: int, max_lines: int = 1,
             bold: bool = False, sep: str = " ") -> tuple[ImageFont.FreeTypeFont, list[str]]:
    """The largest font from ``size`` down to ``min_size`` at which ``text`` wraps (at ``sep``) into at most
    ``max_lines`` lines no wider than ``width``; at ``min_size`` the last line that fits ends with an ellipsis."""
    for px in range(size, min_size - 1, -1):
        font = _font(px, bold)
        lines = _wrap(text, font, width, sep)
        if len(lines) <= max_lines and all(font.getlength(line) <= width for line in lines):
            return font, lines
    lines = _wrap(text, font, width, sep)[:max_lines]
    while lines[-1] and font.getlength(lines[-1] + "…") > width:
        lines[-1] = lines[-1][:-1]
    lines[-1] = lines[-1].rstrip() + "…"
    return font, lines


class _Card:
    """A card being drawn; every line of text goes through ``text``, which records its box and the area it had
    to stay in (``lines``: (text, box, area), boxes as (left, top, right, bottom))."""

    def __init__(self):
        self.img = Image.new("RGB", SIZE, BACKGROUND)
        self.draw = ImageDraw.Draw(self.img)
        self.lines: list[tuple[str, tuple, tuple]] = []

    def text(self, xy: tuple[float, float], lines: list[str], font, fill: str, area: tuple,
             spacing: int = 8) -> float:
        """Draws ``lines`` from ``xy`` down; returns the y under the last line."""
        x, y = xy
        for line in lines:
            self.draw.text((x, y), line, font=font, fill=fill)
            self.lines.append((line, self.draw.textbbox((x, y), line, font=font), area))
            y += font.size + spacing
        return y


def inputs_of(spec: dict, workflows: Path) -> tuple[list[tuple[str, Path]], list[tuple[str, str]]]:
    """What the workflow takes: (label, image file) of its Load Image nodes, and (label, text) of its prompts
    (the guidance prompt of a generated guidance image, then the target prompts)."""
    images, prompts = [], []
    for node in spec["nodes"]:
        title = node.get("title") or ""
        if node["type"] in ("LoadImage", "LoadImageMask"):
            # the title without its note in brackets: "Subject mask (or a SAM node's MASK)" -> "Subject mask"
            images.append(((title or "Guidance image").split(" (")[0], workflows / node["widgets"]["image"]))
        elif node["type"] == "CLIPTextEncode" and title.startswith(("Guidance prompt", "Target prompt")):
            prompts.append((title, node["widgets"]["text"]))
    return images, prompts


def card(spec: dict, number: int, chain: list[str], workflows: Path) -> Image.Image:
    """The card of ``spec`` (its ``number`` in the template order; ``chain``: its PnP nodes' display names)."""
    return draw_card(spec, number, chain, workflows).img


def draw_card(spec: dict, number: int, chain: list[str], workflows: Path) -> _Card:
    """The card of ``card``, with the box of every line of text it drew (``.lines``)."""
    c = _Card()
    inside = (MARGIN, MARGIN // 2, SIZE[0] - MARGIN, SIZE[1] - MARGIN // 2)
    width = inside[2] - inside[0]
    c.text((MARGIN, 34), [f"Plug-and-Play (PnP) · template {number:02d}"], _font(24), ACCENT, inside)
    font, lines = fit_text(spec["title"], width, 50, 34, bold=True)
    c.text((MARGIN, 70 + (50 - font.size) // 2), lines, font, TEXT, inside)
    font, lines = fit_text(spec["description"], width, 26, 20)
    c.text((MARGIN, 140), lines, font, MUTED, inside)

    images, prompts = inputs_of(spec, workflows)
    top, tile = 210, 300 if len(images) < 2 else 228
    x = MARGIN
    for label, path in images:
        with Image.open(path) as picture:
            c.img.paste(picture.convert("RGB").resize((tile, tile), Image.Resampling.LANCZOS), (x, top + 34))
        font, lines = fit_text(label, tile, 22, 14)
        c.text((x, top), lines, font, MUTED, (x, top, x + tile, top + 34))
        x += tile + 20
    guidance = [p for p in prompts if p[0].startswith("Guidance prompt")]
    for label, text in guidance:  # a generated guidance image: its prompt is the input
        panel = (x, top + 34, x + tile, top + 34 + tile)
        c.draw.rounded_rectangle(panel, 16, fill=PANEL)
        font, lines = fit_text(label, tile, 22, 14)
        c.text((x, top), lines, font, MUTED, (x, top, x + tile, top + 34))
        font, lines = fit_text(f"“{text}”", tile - 36, 26, 18, max_lines=7)
        c.text((x + 18, top + 54), lines, font, TEXT, panel)
        x += tile + 20
    arrow_y = top + 34 + tile // 2
    c.draw.line((x + 4, arrow_y, x + 60, arrow_y), fill=ACCENT, width=8)
    c.draw.polygon([(x + 60, arrow_y - 18), (x + 86, arrow_y), (x + 60, arrow_y + 18)], fill=ACCENT)

    left, right = x + 110, SIZE[0] - MARGIN
    targets = [p for p in prompts if p[0].startswith("Target prompt")]
    blocks = [fit_text(f"“{text}”", right - left - 32, 28, 20, max_lines=3 if len(targets) == 1 else 2)
              for _, text in targets]
    heights = [(font.size + 12) * len(lines) + 22 for font, lines in blocks]
    y = top + max(0, (34 + tile - sum(h + 50 for h in heights) + 50) // 2)  # centred beside the inputs
    for (label, _), (font, lines), height in zip(targets, blocks, heights):
        label_font, label_lines = fit_text(label, right - left, 22, 14)
        c.text((left, y), label_lines, label_font, MUTED, (left, y, right, y + 32))
        panel = (left, y + 32, right, y + 32 + height)
        c.draw.rounded_rectangle(panel, 14, fill=PANEL)
        c.text((left + 16, y + 44), lines, font, TEXT, panel, spacing=12)
        y += height + 50

    c.draw.line((MARGIN, SIZE[1] - 96, SIZE[0] - MARGIN, SIZE[1] - 96), fill=PANEL, width=3)
    font, lines = fit_text("  →  ".join(chain), width, 24, 18, max_lines=2, sep="  →  ")
    lines = [line if i == len(lines) - 1 else line + "  →" for i, line in enumerate(lines)]
    c.text((MARGIN, SIZE[1] - 82 if len(lines) > 1 else SIZE[1] - 76), lines, font, MUTED, inside, spacing=6)
    return c
