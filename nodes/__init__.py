"""The pack's nodes. Node IDs are saved in users' workflows: once published they never change."""
from __future__ import annotations

from .background import PnPRestoreBrightness, PnPWeakenBackground
from .features import PnPFeatureBank, PnPGenerateGuidance
from .files import PnPLoadFeatures, PnPSaveFeatures
from .inversion import PnPDDIMInversion
from .metrics import PnPStructureScore, PnPTextScore, PnPThresholdSweep
from .sampler import PnPGuider, PnPSampler
from .visualize import PnPFeaturePCA

NODES = [PnPDDIMInversion, PnPFeatureBank, PnPGenerateGuidance, PnPSampler, PnPSaveFeatures, PnPLoadFeatures,
         PnPFeaturePCA, PnPStructureScore, PnPTextScore, PnPThresholdSweep, PnPGuider, PnPWeakenBackground,
         PnPRestoreBrightness]
