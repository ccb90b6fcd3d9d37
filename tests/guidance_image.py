"""The guidance image shipped in workflows/ (and its subject mask), drawn procedurally.

A 512x512 scene: sky, sun, two hills, a house (the subject: walls, roof,
chimney, door, windows) and a tree. The mask is the house's silhouette. The
frames are a camera pan over the scene (448x448 crops moving right), an
animated PNG that Load Image reads as a batch. Run
``python tests/guidance_image.py`` to rewrite ``workflows/pnp_guidance.png``,
``workflows/pnp_guidance_mask.png`` and ``workflows/pnp_frames.png``; a test
checks the shipped files equal what this draws.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SIZE = 512
WORKFLOWS = Path(__file__).resolve().parent.parent / "workflows"
IMAGE_NAME = "pnp_guidance.png"
MASK_NAME = "pnp_guidance_mask.png"
FRAMES_NAME = "pnp_frames.png"
FRAME_COUNT = 4
FRAME_SIZE = 448
FRAME_PAN = 16  # px the camera moves right per frame

HOUSE = [(150, 250, 362, 420)]  # walls
ROOF = [(130, 255), (256, 150), (382, 255)]
CHIMNEY = (300, 165, 330, 225)


def _house_shapes(draw: ImageDraw.ImageDraw, wall, roof, chimney) -> None:
    draw.rectangle(CHIMNEY, fill=chimney)
    draw.polygon(ROOF, fill=roof)
    draw.rectangle(HOUSE[0], fill=wall)


def draw_scene() -> tuple[Image.Image, Image.Image]:
    """(RGB guidance image, L mask of the house: 255 inside)."""
    yy = np.linspace(0.0, 1.0, SIZE)[:, None, None]
    sky = (1 - yy) * np.array([92, 150, 222]) + yy * np.array([196, 222, 245])
    img = Image.fromarray(np.broadcast_to(sky, (SIZE, SIZE, 3)).astype(np.uint8))
    d = ImageDraw.Draw(img)
    d.ellipse((390, 40, 470, 120), fill=(255, 214, 90))
    d.ellipse((-200, 330, 330, 700), fill=(96, 160, 72))
    d.ellipse((180, 350, 760, 720), fill=(74, 138, 58))
    # tree
    d.rectangle((416, 300, 436, 420), fill=(104, 70, 40))
    d.ellipse((376, 220, 476, 330), fill=(40, 110, 48))
    _house_shapes(d, wall=(230, 214, 180), roof=(170, 60, 48), chimney=(120, 64, 52))
    d.rectangle((236, 330, 276, 420), fill=(110, 70, 44))  # door
    for x0 in (172, 300):
        d.rectangle((x0, 290, x0 + 40, 330), fill=(120, 170, 210), outline=(255, 255, 255), width=4)
    img = img.filter(ImageFilter.GaussianBlur(0.8))
    mask = Image.new("L", (SIZE, SIZE), 0)
    _house_shapes(ImageDraw.Draw(mask), wall=255, roof=255, chimney=255)
    return img, mask


def draw_frames() -> list[Image.Image]:
    """The camera pan: FRAME_COUNT crops of the scene, FRAME_SIZE px, FRAME_PAN px apart."""
    img, _ = draw_scene()
    top = (SIZE - FRAME_SIZE) // 2
    return [img.crop((k * FRAME_PAN, top, k * FRAME_PAN + FRAME_SIZE, top + FRAME_SIZE)) for k in range(FRAME_COUNT)]


def save_frames(frames: list[Image.Image], path: Path) -> None:
    """An animated PNG (Load Image gives its frames as one IMAGE batch)."""
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=125, loop=0, optimize=True)


def write(folder: Path = WORKFLOWS) -> None:
    img, mask = draw_scene()
    img.save(folder / IMAGE_NAME, optimize=True)
    mask.save(folder / MASK_NAME, optimize=True)
    save_frames(draw_frames(), folder / FRAMES_NAME)


if __name__ == "__main__":
    write()
