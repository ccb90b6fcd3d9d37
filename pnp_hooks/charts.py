"""Pictures of the scores, pure torch + Pillow: the sweep's labelled grid, its trade-off plot, self-similarity maps.

Every picture is a ComfyUI IMAGE, (1, H, W, 3) float32 in [0, 1].
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from .metrics import ScoredCell

BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)
FRONT = (214, 39, 40)
OTHER = (120, 120, 120)
MAP_SIZE = 256


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size
        return ImageFont.load_default()


def _to_pil(image: torch.Tensor) -> Image.Image:
    """(H, W, 3) in [0, 1] -> RGB picture."""
    array = (image.float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    return Image.fromarray(array, "RGB")


def _to_image(picture: Image.Image) -> torch.Tensor:
    array = torch.frombuffer(bytearray(picture.convert("RGB").tobytes()), dtype=torch.uint8)
    return array.view(picture.height, picture.width, 3).float().div(255).unsqueeze(0)


def labelled_grid(images: torch.Tensor, labels: list[str], columns: int) -> torch.Tensor:
    """Images (N, H, W, 3) tiled ``columns`` wide in reading order, each with its label in a strip below."""
    count, height, width = images.shape[0], images.shape[1], images.shape[2]
    rows = math.ceil(count / columns)
    size = max(10, min(24, width // 12))
    strip = size + 8
    sheet = Image.new("RGB", (columns * width, rows * (height + strip)), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font = _font(size)
    for index in range(count):
        x, y = (index % columns) * width, (index // columns) * (height + strip)
        sheet.paste(_to_pil(images[index]), (x, y))
        draw.text((x + 4, y + height + 4), labels[index], fill=INK, font=font)
    return _to_image(sheet)


def _ticks(low: float, high: float, count: int = 5) -> list[tuple[float, str]]:
    """Evenly spaced tick values and their labels, with as many decimals as the span needs to tell them apart."""
    step = (high - low) / (count - 1)
    decimals = max(0, 1 - math.floor(math.log10(step)))
    return [(low + step * i, f"{low + step * i:.{decimals}f}") for i in range(count)]


def tradeoff_plot(scored: list[ScoredCell], width: int = 720, height: int = 540) -> torch.Tensor:
    """The paper's trade-off plot: structure distance (x, lower is better) against text score (y, higher is
    better); each cell is its number from the grid and table, the front's cells red and joined by a line."""
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font, small = _font(15), _font(12)
    left, right, top, bottom = 90, width - 30, 40, height - 70
    xs, ys = [c.distance for c in scored], [c.score for c in scored]

    def span(values: list[float]) -> tuple[float, float]:
        low, high = min(values), max(values)
        pad = (high - low) * 0.08 or max(abs(high) * 0.05, 1e-6)
        return low - pad, high + pad

    (x0, x1), (y0, y1) = span(xs), span(ys)

    def at(x: float, y: float) -> tuple[float, float]:
        return left + (x - x0) / (x1 - x0) * (right - left), bottom - (y - y0) / (y1 - y0) * (bottom - top)

    draw.rectangle((left, top, right, bottom), outline=INK)
    for value, text in _ticks(x0, x1):
        px, _ = at(value, y0)
        draw.line((px, bottom, px, bottom + 5), fill=INK)
        draw.text((px, bottom + 8), text, fill=INK, font=small, anchor="mt")
    for value, text in _ticks(y0, y1):
        _, py = at(x0, value)
        draw.line((left - 5, py, left, py), fill=INK)
        draw.text((left - 8, py), text, fill=INK, font=small, anchor="rm")
    draw.text(((left + right) / 2, height - 30), "structure distance (lower = more guidance structure)",
              fill=INK, font=font, anchor="mm")
    draw.text((left, 12), "text score (higher = follows the prompt more)", fill=INK, font=font)
    front = sorted((c.distance, c.score) for c in scored if c.on_front)
    if len(front) > 1:
        draw.line([at(x, y) for x, y in front], fill=FRONT, width=2)
    for number, cell in enumerate(scored, 1):
        px, py = at(cell.distance, cell.score)
        colour = FRONT if cell.on_front else OTHER
        draw.ellipse((px - 5, py - 5, px + 5, py + 5), fill=colour)
        draw.text((px + 8, py - 8), str(number), fill=colour, font=small)
    return _to_image(sheet)


def _heatmap(matrix: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """(T, T) -> (MAP_SIZE, MAP_SIZE, 3): area-averaged, low..high mapped dark blue..yellow."""
    small = F.adaptive_avg_pool2d(matrix.float()[None, None], (MAP_SIZE, MAP_SIZE))[0, 0] \
        if matrix.shape[-1] > MAP_SIZE else F.interpolate(matrix.float()[None, None], size=(MAP_SIZE, MAP_SIZE),
                                                          mode="nearest")[0, 0]
    t = ((small - low) / max(high - low, 1e-12)).clamp(0, 1)[..., None]
    dark, light = torch.tensor([0.12, 0.05, 0.35]), torch.tensor([0.99, 0.91, 0.14])
    return dark + t * (light - dark)


def similarity_maps(guidance: torch.Tensor, image: torch.Tensor, caption: str) -> torch.Tensor:
    """Three maps side by side: the guidance image's and the image's self-similarity (T, T), cosine -1..1,
    and their absolute difference (0..its largest value), with a caption strip."""
    difference = (guidance.float() - image.float()).abs()
    panels = [_heatmap(guidance, -1.0, 1.0), _heatmap(image, -1.0, 1.0),
              _heatmap(difference, 0.0, float(difference.max()))]
    names = ["guidance self-similarity", "image self-similarity", "|difference|"]
    strip = 44
    sheet = Image.new("RGB", (3 * MAP_SIZE + 20, MAP_SIZE + strip), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font = _font(13)
    for index, (panel, name) in enumerate(zip(panels, names)):
        x = index * (MAP_SIZE + 10)
        sheet.paste(_to_pil(panel), (x, 0))
        draw.text((x + 2, MAP_SIZE + 4), name, fill=INK, font=font)
    draw.text((2, MAP_SIZE + 24), caption, fill=INK, font=font)
    return _to_image(sheet)
