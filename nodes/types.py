"""The pack's custom socket types (their names are saved in users' workflows: never rename), its node
categories, and the schema fields every node shares."""
from __future__ import annotations

import dataclasses

from comfy_api.v0_0_2 import io

PnPInversion = io.Custom("PNP_INVERSION")
PnPFeatures = io.Custom("PNP_FEATURES")

# Node library folders: the nodes that run the model, the bank's files, the image nodes (PCA pictures, scores,
# the background preprocessing).
CATEGORY = "sampling/plug-and-play"
BANK_FILES_CATEGORY = "loaders/plug-and-play"
IMAGE_CATEGORY = "image/plug-and-play"

# What people type to find the method (frontends from 1.49 search these; 1.27 searches names only).
SEARCH_ALIASES = ("plug-and-play", "plug and play", "pnp diffusion features", "image-to-image translation",
                  "text-driven translation", "structure-preserving translation", "structure", "translation")


def pnp_schema(**fields) -> io.Schema:
    """``io.Schema(**fields)`` with the pack's search aliases where the host's schema has ``search_aliases``
    (ComfyUI 0.33 on; 0.3.64's raises TypeError on the keyword)."""
    if "search_aliases" in {field.name for field in dataclasses.fields(io.Schema)}:
        fields.setdefault("search_aliases", list(SEARCH_ALIASES))
    return io.Schema(**fields)
