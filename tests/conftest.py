"""Shared fixtures: the real ComfyUI host (CPU mode), random checkpoints, loaded models."""
from __future__ import annotations

import os
import sys
from pathlib import Path

# Before torch is imported: 2 shared cores make busy-waiting OpenMP threads very slow.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402

TESTS_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS_DIR))

import comfy_host  # noqa: E402
from find_comfyui import PACK_ROOT  # noqa: E402

# Built checkpoints are cached here across runs (git-ignored); override with PNP_TEST_CACHE.
CACHE_DIR = Path(os.environ.get("PNP_TEST_CACHE", PACK_ROOT / ".test-cache"))


@pytest.fixture(scope="session")
def host(tmp_path_factory):
    """ComfyUI booted in-process with this pack loaded by ComfyUI's own loader."""
    try:
        return comfy_host.boot(tmp_path_factory.mktemp("comfy"), CACHE_DIR / "checkpoints")
    except FileNotFoundError as exc:
        pytest.fail(str(exc), pytrace=False)


class ModelCache:
    """Random checkpoints built once, loaded once per session through CheckpointLoaderSimple."""

    def __init__(self, host):
        self.host = host
        self._loaded = {}

    def checkpoint(self, layout: str) -> str:
        import checkpoints

        return checkpoints.ensure_checkpoint(layout, self.host.checkpoint_dir)

    def load(self, layout: str):
        """(MODEL, CLIP, VAE) exactly as CheckpointLoaderSimple returns them."""
        if layout not in self._loaded:
            from harness import run_node

            self._loaded[layout] = run_node("CheckpointLoaderSimple", ckpt_name=self.checkpoint(layout))[:3]
        return self._loaded[layout]


@pytest.fixture(scope="session")
def models(host):
    return ModelCache(host)


@pytest.fixture(scope="session")
def vision_models(host):
    """File names (by kind, ``vision_models.VISION_MODELS``) of the random vision models, in a registered
    clip_vision folder (built once, cached with the checkpoints)."""
    import folder_paths
    import vision_models as builder

    folder = CACHE_DIR / "clip_vision"
    folder_paths.add_model_folder_path("clip_vision", str(folder), is_default=True)
    return {kind: builder.ensure_vision_model(kind, folder) for kind in builder.VISION_MODELS}
