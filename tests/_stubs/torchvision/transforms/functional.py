"""Test-only stand-in for torchvision.transforms.functional (see the parent package).

spandrel (ComfyUI's upscale-model loader) imports names from here at module
level and uses them only inside model code the tests never run.
"""
from .. import _Missing


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    return _Missing(f"torchvision.transforms.functional.{name}")
