"""The pack's nodes. Node IDs are saved in users' workflows: once published they never change."""
from __future__ import annotations

from .background import PnPRestoreBrightness, PnPWeakenBackground
from .features import PnPFeatureBank, PnPGenerateGuidance
from .files import PnPLoadFeatures, PnPSaveFeatures
from .inversion import PnPDDIMInversion
from .sampler import PnPGuider, PnPSampler
from .visualize import PnPFeaturePCA

NODES = [PnPDDIMInversion, PnPFeatureBank, PnPGenerateGuidance, PnPSampler, PnPSaveFeatures, PnPLoadFeatures,
         PnPFeaturePCA, PnPGuider, PnPWeakenBackground, PnPRestoreBrightness]
