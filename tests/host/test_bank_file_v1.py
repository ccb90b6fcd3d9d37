"""Bank files of format 1 stay readable: files written by the pack before banks named their family and site kinds.

``tests/data/bank_v1_sd15_reduced*.safetensors`` were written by comfyui-pnp at commit a799678 (bank format 1)
on ComfyUI 0.33.0 with ``PNP_WRITE_V1_BANKS=1`` set for this module: ``_fresh`` records each bank (reduced
SD1.5 random checkpoint, 64 px, 5 steps, the default layers, fp16), PnP Save Feature Bank writes it and it is
copied here. ``bank_v1_translations.safetensors`` holds, per ComfyUI version, PnP Sampler's latent (the
paper's defaults) from each loaded file, written at the same commit with ``PNP_WRITE_V1_TRANSLATIONS=1`` on
each host. Without the variables the files are only read.

Loading a file must translate to that latent bit for bit, and, on the host that wrote it, give the bank a
fresh recording gives today (the inversion's last bits differ between ComfyUI versions; elsewhere the fresh
bank must agree to fp16 rounding).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from safetensors.torch import load_file, save_file

from find_comfyui import comfyui_version, find_comfyui
from harness import Translation, run_node

DATA = Path(__file__).resolve().parent.parent / "data"
LAYOUT = "sd15_reduced"
STEPS = 5
FILES = {"stored": "bank_v1_sd15_reduced.safetensors", "on the fly": "bank_v1_sd15_reduced_on_the_fly.safetensors"}
TRANSLATIONS = DATA / "bank_v1_translations.safetensors"
WRITTEN_ON = "0.33.0"


@pytest.fixture(scope="module")
def pnp(models):
    latent = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(7))
    return Translation.make(models, LAYOUT, latent=latent, steps=STEPS, bank_dtype="fp16")


def _fresh(pnp, mode: str):
    return pnp.record(bank_dtype="fp16", mode=mode)


def _bank_folder() -> Path:
    import folder_paths

    return Path(folder_paths.get_folder_paths("pnp_banks")[0])


def _installed(pnp, mode: str) -> str:
    """The kept file of ``mode`` copied into the bank folder (written first with PNP_WRITE_V1_BANKS=1)."""
    name = f"v1/{FILES[mode]}"
    if os.environ.get("PNP_WRITE_V1_BANKS") == "1":
        saved = run_node("PnP_SaveFeatures", features=_fresh(pnp, mode), filename_prefix=name, overwrite=True)[0]
        DATA.mkdir(exist_ok=True)
        shutil.copyfile(_bank_folder() / saved, DATA / FILES[mode])
    (_bank_folder() / "v1").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(DATA / FILES[mode], _bank_folder() / name)
    return name


@pytest.mark.parametrize("mode", list(FILES))
def test_a_format_1_bank_file_loads_as_the_bank_a_fresh_recording_gives(pnp, mode):
    name = _installed(pnp, mode)
    with safe_open(str(DATA / FILES[mode]), framework="pt") as f:
        assert json.loads(f.metadata()["comfyui_pnp"])["format_version"] == 1
    loaded, trajectory = run_node("PnP_LoadFeatures", model=pnp.model, bank_name=name, latent=pnp.latent)
    translated = pnp.sample(features=loaded)
    version = comfyui_version(find_comfyui())
    key = f"{version}/{mode}"
    if os.environ.get("PNP_WRITE_V1_TRANSLATIONS") == "1":
        kept = load_file(str(TRANSLATIONS)) if TRANSLATIONS.exists() else {}
        save_file({**kept, key: translated.contiguous()}, str(TRANSLATIONS))
    assert torch.equal(translated, load_file(str(TRANSLATIONS))[key])

    fresh = _fresh(pnp, mode)
    exact = version == WRITTEN_ON
    assert (loaded.mode, loaded.sites, loaded.branches, loaded.storage_dtype) == (
        fresh.mode, fresh.sites, fresh.branches, fresh.storage_dtype)
    assert (loaded.feature_steps, loaded.attention_steps) == (fresh.feature_steps, fresh.attention_steps)
    assert trajectory.model == fresh.trajectory.model and trajectory.timesteps == fresh.trajectory.timesteps
    assert _same(trajectory.latents, fresh.trajectory.latents, exact)
    assert all(sorted(loaded.stored.get(kind, {})) == sorted(fresh.stored.get(kind, {}))
               for kind in ("resblock", "attention"))
    for kind, site, t in [(kind, site, t) for kind, store in fresh.stored.items() for site, t in store.items()]:
        stored = loaded.stored[kind][site]
        assert stored.dtype == t.dtype and _same(stored, t, exact)
    assert _same(translated, pnp.sample(features=fresh), exact)


def _same(a: torch.Tensor, b: torch.Tensor, exact: bool) -> bool:
    return torch.equal(a, b) if exact else torch.allclose(a.float(), b.float(), rtol=1e-2, atol=1e-2)
