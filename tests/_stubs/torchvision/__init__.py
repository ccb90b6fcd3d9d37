"""Test-only stand-in for torchvision.

PyPI's torchvision cannot be imported beside the CPU torch used here, and
ComfyUI imports it at module level in a few model files it never runs for SD
(cascade, cosmos, ace). Anything actually used raises ImportError.
"""
__version__ = "0.0.0-stub"


class _Missing:
    def __init__(self, name):
        self._name = name

    def __getattr__(self, attr):
        raise ImportError(f"torchvision is not installed in this test environment ({self._name}.{attr})")

    def __call__(self, *args, **kwargs):
        raise ImportError(f"torchvision is not installed in this test environment ({self._name})")


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    return _Missing(f"torchvision.{name}")
