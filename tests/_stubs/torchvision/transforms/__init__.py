"""Test-only stand-in for torchvision.transforms (see the parent package)."""
from .. import _Missing


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    return _Missing(f"torchvision.transforms.{name}")
