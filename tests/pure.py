"""The pack's pure-torch modules (``pnp_hooks``), imported on their own: no ComfyUI, nothing added to sys.path.

``pure("layers")`` is ``pnp_hooks.layers`` under the package name ``PACKAGE``
(the pack root is never put on sys.path: its ``nodes`` package would shadow
ComfyUI's ``nodes`` module).
"""
from __future__ import annotations

import importlib
import importlib.util
import sys

from find_comfyui import PACK_ROOT

PACKAGE = "comfyui_pnp_pure_hooks"
# Modules that must import without ComfyUI (``patcher``, ``sampling`` and ``probe`` wire them to it).
PURE_MODULES = ("errors", "indices", "schedule", "layers", "masks", "bank", "injection", "sources", "live_source",
                "bank_file", "visualize", "host_api", "metrics", "charts", "background", "families",
                "families.unet", "families.vp_schedule", "families.kinds", "families.flux", "flow_solvers",
                "flux_bank")


def pure(module: str):
    if PACKAGE not in sys.modules:
        spec = importlib.util.spec_from_file_location(PACKAGE, PACK_ROOT / "pnp_hooks" / "__init__.py",
                                                      submodule_search_locations=[str(PACK_ROOT / "pnp_hooks")])
        package = importlib.util.module_from_spec(spec)
        sys.modules[PACKAGE] = package
        spec.loader.exec_module(package)
    return importlib.import_module(f"{PACKAGE}.{module}")
