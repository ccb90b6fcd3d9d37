"""The sweep grid and trade-off plot of docs/choosing-thresholds.md, on random weights (the only models this
repository can run).

PnP Threshold Sweep on the random SD 2.x checkpoint (its CLIP's projected pooled prompt is the joint space of the
random CLIP ViT-H/14 that scores text; tests/checkpoints.py, tests/vision_models.py), the shipped guidance image
at 128 px, 10 steps, tau_f 0.2/0.5/0.8 x tau_A 0.2/0.5, structure scored by the random DINOv2-L. Writes
workflows/screenshots/sweep_grid_random.png and sweep_plot_random.png and prints the table.

Run from the repository root: ``OMP_NUM_THREADS=1 .venvs/comfyui-0.3.64/bin/python bench/sweep_figures.py``
(ComfyUI found as the tests find it; about 10 minutes on 2 shared cores, most of it DINOv2 at 518 px).
"""
from __future__ import annotations

import bench_env  # first: the environment before torch, the test support modules on sys.path

import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

PACK_ROOT = bench_env.ROOT

import checkpoints  # noqa: E402
import comfy_host  # noqa: E402
import vision_models  # noqa: E402
from conftest import CACHE_DIR  # noqa: E402

SIZE, STEPS = 128, 10
TARGET = "a photo of a gingerbread house on a snowy hill, winter"
OUT = PACK_ROOT / "workflows" / "screenshots"


def main() -> None:
    import numpy as np
    import torch
    from PIL import Image

    comfy_host.boot(Path(tempfile.mkdtemp(prefix="pnp-sweep-figures-")), CACHE_DIR / "checkpoints")
    import folder_paths
    from harness import run_node

    folder = CACHE_DIR / "clip_vision"
    folder_paths.add_model_folder_path("clip_vision", str(folder), is_default=True)
    ckpt = checkpoints.ensure_checkpoint("sd2_reduced", CACHE_DIR / "checkpoints")
    model, clip, vae = run_node("CheckpointLoaderSimple", ckpt_name=ckpt)[:3]
    dino = run_node("CLIPVisionLoader", clip_name=vision_models.ensure_vision_model("dinov2", folder))[0]
    vit = run_node("CLIPVisionLoader", clip_name=vision_models.ensure_vision_model("clip_vision_h", folder))[0]
    picture = Image.open(PACK_ROOT / "workflows" / "pnp_guidance.png").convert("RGB").resize((SIZE, SIZE))
    guidance = torch.from_numpy(np.asarray(picture, dtype=np.float32) / 255).unsqueeze(0)
    empty = run_node("CLIPTextEncode", clip=clip, text="")[0]
    target = run_node("CLIPTextEncode", clip=clip, text=TARGET)[0]
    negative = run_node("CLIPTextEncode", clip=clip, text="ugly, blurry, black, low res, unrealistic")[0]
    latent = run_node("VAEEncode", pixels=guidance, vae=vae)[0]
    inversion = run_node("PnP_DDIMInversion", model=model, latent=latent, conditioning=empty, steps=STEPS)[0]
    bank = run_node("PnP_FeatureBank", model=model, inversion=inversion, conditioning=empty)[0]
    started = time.monotonic()
    grid, plot, table, _, _ = run_node(
        "PnP_ThresholdSweep", model=model, positive=target, negative=negative, features=bank, vae=vae,
        guidance=guidance, structure_model=dino, text_model=vit, feature_injection_values="0.2, 0.5, 0.8",
        attention_injection_values="0.2, 0.5", injection_strength_values="1.0")
    OUT.mkdir(parents=True, exist_ok=True)
    for name, image in (("sweep_grid_random.png", grid), ("sweep_plot_random.png", plot)):
        Image.fromarray((image[0].numpy() * 255).round().astype(np.uint8)).save(OUT / name)
    print(table)
    print(f"sweep of 6 cells in {time.monotonic() - started:.0f} s; wrote {OUT}/sweep_grid_random.png, "
          f"sweep_plot_random.png")


if __name__ == "__main__":
    main()
