"""Shared fixtures: the real ComfyUI host (CPU mode), random checkpoints, loaded models; memory kept low.

Memory: the CI runs one pytest process per ComfyUI host side by side on a 24 GB machine, each to stay under
6 GB resident. A loaded ``sdxl_reduced`` holds 2.7 GB (fp32 UNet, fp16 CLIP-L + CLIP-G) and needs 2 GB more
while it loads (the file's state dict). So ``ModelCache`` drops every other loaded layout before it loads a
big one, and when a test module ends every layout but the shared ``sd15_reduced``; the copies a test's prompts
loaded in ComfyUI's executor are freed when the test ends (freed: unreferenced models, cyclic garbage, glibc's
free heap). The run ends with its peak resident memory per test module and overall, this process and every
child process (``memory_watch.py``: VmHWM reset around each test, children sampled from /proc).
"""
from __future__ import annotations

import ctypes
import gc
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
import memory_watch  # noqa: E402
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


# Layouts that take gigabytes: loading (or building) one first drops every other cached layout.
BIG_LAYOUTS = frozenset({"sdxl_reduced"})
# Kept from one test module to the next (most modules use it; a reload takes seconds).
SHARED_LAYOUT = "sd15_reduced"


def release_memory() -> None:
    """Free what nothing references any more: cyclic garbage (ComfyUI's executor and patchers hold cycles, so
    a dropped model can outlive its last test), ComfyUI's dead loaded-model entries, then glibc's free heap,
    which it otherwise keeps resident."""
    gc.collect()
    model_management = sys.modules.get("comfy.model_management")
    if model_management is not None:
        model_management.cleanup_models()
        model_management.soft_empty_cache()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


_MODEL_CACHES: list["ModelCache"] = []


class ModelCache:
    """Random checkpoints built once, loaded through CheckpointLoaderSimple and kept while they are used: within
    a test module a layout is loaded once; across modules only ``SHARED_LAYOUT`` stays loaded."""

    def __init__(self, host):
        self.host = host
        self._loaded = {}
        _MODEL_CACHES.append(self)

    def checkpoint(self, layout: str) -> str:
        """The layout's checkpoint file name, built first if missing (a big one with nothing else loaded)."""
        import checkpoints

        if layout in BIG_LAYOUTS and not (self.host.checkpoint_dir / checkpoints.checkpoint_name(layout)).exists():
            self.evict()
        return checkpoints.ensure_checkpoint(layout, self.host.checkpoint_dir)

    def load(self, layout: str):
        """(MODEL, CLIP, VAE) exactly as CheckpointLoaderSimple returns them."""
        if layout not in self._loaded:
            from harness import run_node

            if layout in BIG_LAYOUTS:
                self.evict()
            self._loaded[layout] = run_node("CheckpointLoaderSimple", ckpt_name=self.checkpoint(layout))[:3]
        return self._loaded[layout]

    def evict(self, keep: tuple[str, ...] = ()) -> None:
        """Drop the cached models of every layout not in ``keep`` and free the memory nothing else holds
        (a test or fixture that still holds a model keeps it alive)."""
        for layout in [name for name in self._loaded if name not in keep]:
            del self._loaded[layout]
        release_memory()


@pytest.fixture(scope="session")
def models(host):
    cache = ModelCache(host)
    yield cache
    cache.evict()  # before interpreter shutdown, where ComfyUI's ModelPatcher.__del__ fails on half-torn modules


@pytest.fixture(autouse=True, scope="module")
def _release_models_after_module():
    """When a test module ends (after its own fixtures): only the shared layout stays loaded."""
    yield
    for cache in _MODEL_CACHES:
        cache.evict(keep=(SHARED_LAYOUT,))
    if not _MODEL_CACHES:
        release_memory()


@pytest.fixture(autouse=True)
def _release_prompt_models():
    """A prompt run through ComfyUI's executor loads its own copy of the checkpoint, which reference cycles keep
    alive after the test (0.7 GiB for sd15_reduced): collected as soon as the test ends."""
    runs = comfy_host.prompts_run
    yield
    if comfy_host.prompts_run != runs:
        release_memory()


@pytest.fixture
def no_cached_models(models):
    """For a test that loads a big checkpoint itself (through ComfyUI's executor): no other loaded copy beside
    it (its own copy is freed when it ends, by ``_release_prompt_models``)."""
    models.evict()


# Peak resident memory per test and per module, this process and its children (see memory_watch.py).
_MEMORY = memory_watch.MemoryReport()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _MEMORY.begin()
    yield
    _MEMORY.end(item.nodeid)


def pytest_terminal_summary(terminalreporter):
    for line in _MEMORY.lines():
        terminalreporter.write_line(line)
    own, children = _MEMORY.peaks()
    # .ci/test reads this line.
    terminalreporter.write_line(f"peak resident memory: {own / 2**30:.2f} GiB this pytest process, "
                                f"{children / 2**30:.2f} GiB its largest child process")


@pytest.fixture(scope="session")
def vision_models(host):
    """File names (by kind, ``vision_models.VISION_MODELS``) of the random vision models, in a registered
    clip_vision folder (built once, cached with the checkpoints)."""
    import folder_paths
    import vision_models as builder

    folder = CACHE_DIR / "clip_vision"
    folder_paths.add_model_folder_path("clip_vision", str(folder), is_default=True)
    return {kind: builder.ensure_vision_model(kind, folder) for kind in builder.VISION_MODELS}
