"""The pack's custom socket types (their names are saved in users' workflows: never rename)."""
from __future__ import annotations

from comfy_api.v0_0_2 import io

PnPInversion = io.Custom("PNP_INVERSION")
PnPFeatures = io.Custom("PNP_FEATURES")

CATEGORY = "sampling/plug-and-play"
