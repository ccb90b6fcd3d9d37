"""FLUX.1 figures: model calls (NFE) per translation against the official counts, CPU time against a plain FLUX
sampling run, bank bytes against the formula. Writes bench/FLUX.md.

From the repository root, on ComfyUI 0.33.0 (the FLUX path needs it):
``COMFYUI_PATH=/root/comfy/ComfyUI-0.33.0 OMP_NUM_THREADS=1 .venvs/comfyui-0.33.0/bin/python bench/flux.py``

The tiny random FLUX.1 dev of ``tests/flux_checkpoints.py`` (hidden 128, 2 double + 38 single blocks), a 32x32
latent (256 px, 256 image tokens), random T5/CLIP-L-shaped conditioning (8 text tokens). Not a test: nothing is
asserted, the figures are recorded. Times are CPU wall seconds (best of ``REPEATS``).
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import torch  # noqa: E402

import comfy_host  # noqa: E402
import flux_checkpoints as fc  # noqa: E402
from conftest import CACHE_DIR  # noqa: E402
from harness import run_node  # noqa: E402

REPEATS = 2
LATENT = (1, 16, 32, 32)
RECIPES = (  # name, solver, steps, inject, blocks, official NFE per translation
    ("RF-Solver-Edit (scripts)", "rf-solver", 25, 3, "20-37", 100),
    ("FireFlow fast editing", "fireflow", 8, 1, "0-37", 18),
    ("Euler (reflow)", "euler", 25, 3, "20-37", 50),
)


class Calls:
    def __init__(self, module):
        self.module, self.count = module, 0

    def __enter__(self):
        self.handle = self.module.register_forward_pre_hook(lambda *_: setattr(self, "count", self.count + 1))
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def timed(fn):
    best, out = None, None
    for _ in range(REPEATS):
        start = time.perf_counter()
        out = fn()
        elapsed = time.perf_counter() - start
        best = elapsed if best is None else min(best, elapsed)
    return best, out


def main() -> None:
    host = comfy_host.boot(Path(tempfile.mkdtemp(prefix="pnp-flux-bench-")), CACHE_DIR / "checkpoints")
    import folder_paths

    folder = host.checkpoint_dir.parent / "diffusion_models"
    folder_paths.add_model_folder_path("diffusion_models", str(folder), is_default=True)
    name = fc.ensure_model("flux_dev_tiny", folder)
    (model,) = run_node("UNETLoader", unet_name=name, weight_dtype="default")
    flux_sampling = sys.modules[f"{host.pack_module_name}.pnp_hooks.flux_sampling"]
    flux_family = sys.modules[f"{host.pack_module_name}.pnp_hooks.families.flux"]
    tokens, pooled = fc.random_conditioning("source")
    source = [[tokens, {"pooled_output": pooled}]]
    tokens, pooled = fc.random_conditioning("target")
    (target,) = run_node("FluxGuidance", conditioning=[[tokens, {"pooled_output": pooled}]], guidance=2.0)
    latent = {"samples": torch.randn(*LATENT, generator=torch.Generator().manual_seed(0))}
    net = model.model.diffusion_model
    image_tokens = (LATENT[2] // 2) * (LATENT[3] // 2)
    rows = []
    with torch.inference_mode():
        for title, solver, steps, inject, blocks, official in RECIPES:
            def plain():
                return run_node("KSampler", model=model, seed=0, steps=steps, cfg=1.0, sampler_name="euler",
                                scheduler="simple", positive=target, negative=source, latent_image=latent,
                                denoise=1.0)

            plain_s, _ = timed(plain)

            def one_pass():
                with Calls(net) as calls:
                    bank = flux_sampling.invert(model, latent["samples"], source, steps, solver=solver, blocks=blocks,
                                                inject=inject)
                    flux_sampling.sample(model, bank, target, guidance=None)
                return calls.count, bank

            hooks_s, (hooks_nfe, bank) = timed(one_pass)

            def nodes():
                with Calls(net) as calls:
                    inversion, _ = run_node("PnP_DDIMInversion", model=model, latent=latent, conditioning=source,
                                            steps=steps, solver=solver)
                    (features,) = run_node("PnP_FeatureBank", model=model, inversion=inversion, conditioning=source,
                                           attention_layers=blocks, inject_steps=inject, bank_dtype="fp16")
                    run_node("PnP_Sampler", model=model, positive=target, negative=source, features=features)
                return calls.count, features

            nodes_s, (nodes_nfe, features) = timed(nodes)
            evaluations = {"rf-solver": 2, "fireflow": 1, "euler": 1}[solver]
            n_blocks = len(bank.blocks)
            formula = flux_family.bank_bytes(image_tokens + source[0][0].shape[1], net.hidden_size, n_blocks,
                                             evaluations, inject, 4)
            real = flux_family.bank_bytes(4096 + 512, 3072, n_blocks, evaluations, inject, 2)
            rows.append((title, steps, inject, blocks, official, hooks_nfe, nodes_nfe, plain_s, hooks_s, nodes_s,
                         bank.nbytes, formula, features.nbytes, real))
    lines = [
        "# FLUX.1 benchmark (bench/flux.py)", "",
        "Command: `COMFYUI_PATH=/root/comfy/ComfyUI-0.33.0 OMP_NUM_THREADS=1 .venvs/comfyui-0.33.0/bin/python "
        "bench/flux.py` (ComfyUI 0.33.0, CPU, 2 shared cores).",
        f"Tiny random FLUX.1 dev (hidden 128, 2 double + 38 single blocks), latent {LATENT[2]}x{LATENT[3]} "
        f"({image_tokens} image tokens), 8 text tokens; best of {REPEATS}. `plain` = ComfyUI's KSampler (euler, "
        "simple, cfg 1) at the same steps: one model call a step, no inversion.", "",
        "| recipe | steps | inject | blocks | official NFE | ours, recorded in the inversion | ours, nodes "
        "(bank recorded after) | plain s | hooks s (x plain) | nodes s (x plain) | bank B (fp32) | formula B | "
        "node bank B (fp16) | 1024 px FLUX.1-dev bf16 B |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for (title, steps, inject, blocks, official, hooks_nfe, nodes_nfe, plain_s, hooks_s, nodes_s, nbytes, formula,
         node_bytes, real) in rows:
        lines.append(f"| {title} | {steps} | {inject} | {blocks} | {official} | {hooks_nfe} | {nodes_nfe} | "
                     f"{plain_s:.2f} | {hooks_s:.2f} ({hooks_s / plain_s:.1f}x) | {nodes_s:.2f} "
                     f"({nodes_s / plain_s:.1f}x) | {nbytes:,} | {formula:,} | {node_bytes:,} | {real:,} |")
    lines += ["", "The nodes record V after the inversion from its stored inputs (PnP Feature Bank), one model call per "
              "recorded evaluation on top of the official count; the hooks-level `invert(..., inject=k)` records in "
              "the inversion pass, at exactly the official count."]
    text = "\n".join(lines) + "\n"
    (ROOT / "bench" / "FLUX.md").write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
