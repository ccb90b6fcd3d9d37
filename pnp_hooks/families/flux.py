"""The FLUX family: FLUX.1 dev and schnell (ComfyUI's ``comfy.ldm.flux.model.Flux``, rectified flow).

What PnP does on FLUX is RF-Solver-Edit / FireFlow (docs/flux-plan.md): invert the guidance latent from
t = 0 to 1 with the source prompt at guidance 1, recording the value tensor V of the self-attention of
chosen single-stream blocks; then denoise from the inverted noise with the target prompt and put the
recorded V in place of the target's in the first ``inject`` steps.

Sites: an ``attn_v`` site ``i`` is the V of single-stream block ``single_blocks[i]``, after the QK norm,
before RoPE, on the whole joint sequence (text tokens first): (B, heads, text + image tokens, head_dim).
ComfyUI (>= 0.33) reaches it through ``attn1_patch`` with ``block_type`` "single" and ``block_index`` i; a
patch returning ``{"v": tensor}`` substitutes it. FireFlow's editing strategies (``FluxEdit``) record, replace or
add q (after the QK norm, before RoPE) and k at the same place.

Schedule: the official ``get_schedule`` (``linspace(1, 0, N + 1)``, time-shifted for dev by the image's
token count, not for schnell); sigma = t (ComfyUI's flow models); the model's velocity v gives
x(t') = x(t) + (t' - t) v.

Keys (the rule parity depends on): an evaluation belongs to the interval ``j`` = [s[j+1], s[j]] of the
schedule s (s[0] = 1 ... s[N] = 0) and is its first or second (midpoint) evaluation. Denoising evaluates
first at s[j] (the interval's noisier end), inversion at s[j+1] (its cleaner end); both evaluate second at
the midpoint. So denoising step j reads what inversion stored over the same interval: the first
evaluation gets V computed one grid point cleaner, as in the official code.

Pure: reads the objects ComfyUI hands it, imports nothing of ComfyUI.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

from .. import indices
from ..errors import PnPInputError

NAME = "flux"
# FLUX's one kind of site, "attn_v" (V of a single-stream block), is recorded and injected by the FLUX path
# (flux_sampling, flux_bank), not yet by the kinds core (families.kinds has no patch point that replaces V): the
# UNet passes refuse FLUX (``check``), so no core code reads these kinds.
KINDS = ()
# ComfyUI model_config class -> the name users know (FluxSchnell subclasses Flux in ComfyUI).
VARIANTS = {"Flux": "FLUX.1 dev", "FluxSchnell": "FLUX.1 schnell"}
# RF-Solver-Edit's sites (RF:layers.py:247, ``id > 19``) and FireFlow's argparse default: single blocks 20-37.
DEFAULT_BLOCKS = "20-37"
# FireFlow's scripts and demo ("fast editing"): every single block.
FIREFLOW_SCRIPT_BLOCKS = "0-37"
DEFAULTS = {"Flux": {"attn_v": DEFAULT_BLOCKS}, "FluxSchnell": {"attn_v": DEFAULT_BLOCKS}}
# The official examples: RF-Solver-Edit 25 steps, inject 2-5, guidance 2; FireFlow 8 steps, inject 1, guidance 2.
DEFAULT_STEPS = {"rf-solver": 25, "fireflow": 8, "euler": 25}
DEFAULT_INJECT = {"rf-solver": 3, "fireflow": 1, "euler": 3}
DEFAULT_GUIDANCE = 2.0
INVERSION_GUIDANCE = 1.0
FINGERPRINT_KEYS = ("diffusion_model.img_in.weight", "diffusion_model.final_layer.linear.weight",
                    "diffusion_model.time_in.in_layer.weight")
# comfy.model_sampling classes of ComfyUI's FLUX models: dev ModelSamplingFlux, schnell ModelSamplingDiscreteFlow.
_SAMPLING_MODULE = "comfy.model_sampling"
_FLOW_SCHEDULES = ("ModelSamplingFlux", "ModelSamplingDiscreteFlow")
_FLOW_PREDICTION = "CONST"
_PATCH = 2  # FLUX packs 2x2 latent pixels into a token
# The official time shift: mu linear in the image's token count, 0.5 at 256 tokens, 1.15 at 4096 (RF:sampling.py:46-74).
_BASE_SHIFT, _MAX_SHIFT, _BASE_TOKENS, _MAX_TOKENS = 0.5, 1.15, 256, 4096
# Two schedule times closer than this are one time (float32 rounding of a midpoint is ~6e-8).
_TIME_TOLERANCE = 1e-5
FIRST, SECOND = False, True  # an interval's first evaluation, its second (midpoint) one


@dataclass(frozen=True)
class FluxLayout:
    """The transformer's structure: block counts, width, heads (head_dim = hidden / heads)."""

    double_blocks: int
    single_blocks: int
    hidden_size: int
    num_heads: int

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def site_shape(self, text_tokens: int, image_tokens: int) -> tuple[int, int, int]:
        """Per-row shape of an ``attn_v`` site: (heads, text + image tokens, head_dim)."""
        return self.num_heads, text_tokens + image_tokens, self.head_dim


def layout_of(flux) -> FluxLayout:
    """The structure of a ComfyUI ``comfy.ldm.flux.model.Flux`` (any device, meta too)."""
    return FluxLayout(len(flux.double_blocks), len(flux.single_blocks), flux.hidden_size, flux.num_heads)


def _sampling_classes(sampling) -> list[str]:
    return [base.__name__ for base in type(sampling).__bases__ if base.__module__ == _SAMPLING_MODULE]


def is_distilled_guidance(variant: str) -> bool:
    """dev takes FLUX guidance (an embedding) and its schedule is shifted; schnell neither."""
    return variant == "Flux"


def check(model) -> tuple[str, FluxLayout, torch.Tensor]:
    """The seam's check, asked by the UNet passes (DDIM inversion, source pass, PnP sampling): they cannot run
    FLUX, so it refuses with what to load. The FLUX path asks ``check_flux``."""
    variant = type(model.model.model_config).__name__
    raise PnPInputError(
        f"PnP's DDIM nodes run SD 1.x, SD 2.x and SDXL; this MODEL is {VARIANTS.get(variant, variant)}, which they "
        f"cannot run (FLUX is translated by RF-Solver-Edit / FireFlow inversion, not DDIM). Load an SD 1.x, SD 2.x "
        f"or SDXL checkpoint."
    )


def check_flux(model) -> tuple[str, FluxLayout, torch.Tensor]:
    """A FLUX MODEL PnP runs: ("flow", layout, the model's sigma table float32 on the CPU); raises PnPInputError
    naming what to change otherwise."""
    sampling = model.get_model_object("model_sampling")
    classes = _sampling_classes(sampling)
    if _FLOW_PREDICTION not in classes or not any(name in classes for name in _FLOW_SCHEDULES):
        raise PnPInputError(
            f"PnP on FLUX needs the model's rectified-flow schedule (ModelSamplingFlux); this MODEL samples with "
            f"{type(sampling).__name__} ({', '.join(b.__name__ for b in type(sampling).__bases__)}). Remove the "
            f"ModelSampling* node that changed it."
        )
    flux = model.model.diffusion_model
    latent_channels = model.get_model_object("latent_format").latent_channels
    in_channels, patch = getattr(flux, "in_channels", None), getattr(flux, "patch_size", None)
    if in_channels != latent_channels * _PATCH * _PATCH or patch != _PATCH:
        raise PnPInputError(
            f"This FLUX transformer takes {getattr(flux, 'in_channels', '?')} input channels (a Fill, Redux or "
            f"control model); PnP needs a plain FLUX.1 text-to-image model with {latent_channels * 4}."
        )
    return "flow", layout_of(flux), sampling.sigmas.detach().float().cpu()


def blocks_of(spec: str, layout: FluxLayout, what: str = "blocks") -> tuple[int, ...]:
    """Single-block indices of a spec ("20-37", "0,5,7-9", "" for none), checked against the layout before
    a range is expanded."""
    chosen = set()
    for item in indices.items(spec):
        lo, hi = indices.parse_range(item, what, spec, '"20-37" or "0,5,7-9"')
        indices.check_below((lo, hi), layout.single_blocks, f"{what} {indices.excerpt(spec)}",
                            f"this FLUX has single blocks 0-{layout.single_blocks - 1}")
        chosen.update(range(lo, hi + 1))
    return tuple(sorted(chosen))


# ---------------------------------------------------------------- schedule

def token_grid(latent_hw: tuple[int, int]) -> tuple[int, int]:
    """(rows, columns) of the image tokens of a (H, W) latent: 2x2 patches, padded up as ComfyUI's Flux pads; the
    tokens follow the text tokens in row-major order."""
    h, w = latent_hw
    return math.ceil(h / _PATCH), math.ceil(w / _PATCH)


def image_tokens(latent_hw: tuple[int, int]) -> int:
    """Tokens of a (H, W) latent (``token_grid``)."""
    rows, columns = token_grid(latent_hw)
    return rows * columns


def time_shift_mu(tokens: int) -> float:
    """The official ``mu`` of an image of ``tokens`` tokens (= ComfyUI's ModelSamplingFlux node's shift)."""
    slope = (_MAX_SHIFT - _BASE_SHIFT) / (_MAX_TOKENS - _BASE_TOKENS)
    return slope * tokens + (_BASE_SHIFT - slope * _BASE_TOKENS)


def schedule(steps: int, tokens: int, shift: bool) -> torch.Tensor:
    """The official ``get_schedule``: (steps + 1,) float32 times from 1 to 0, time-shifted when ``shift`` (dev)."""
    if steps < 1:
        raise PnPInputError(f"steps must be at least 1, got {steps}.")
    times = torch.linspace(1, 0, steps + 1)
    if shift:
        mu = time_shift_mu(tokens)
        times = math.exp(mu) / (math.exp(mu) + (1 / times - 1))
    return times


# ---------------------------------------------------------------- sites and keys

def single_block(extra_options: dict) -> int | None:
    """The single-stream block an ``attn1_patch`` call runs in, or None (a double block, another model)."""
    if extra_options.get("block_type") != "single":
        return None
    return extra_options.get("block_index")


def evaluation_key(time: float, times: tuple[float, ...], inverse: bool) -> tuple[int, bool] | None:
    """(interval j, second evaluation?) of a model evaluation at ``time`` on the schedule ``times`` (s[0] = 1 ...
    s[N] = 0), or None when ``time`` is no evaluation time of the pass.

    Denoising (``inverse`` False) evaluates first at s[j], inversion at s[j+1]; both second at the midpoint of
    [s[j+1], s[j]]. So both passes key an interval by its noisier end, as the official ``info['t']`` does.
    """
    n = len(times) - 1
    best, best_gap = None, _TIME_TOLERANCE
    for m, s in enumerate(times):
        j = m - 1 if inverse else m
        if 0 <= j < n and abs(time - s) <= best_gap:
            best, best_gap = (j, FIRST), abs(time - s)
    for j in range(n):
        mid = times[j] + (times[j + 1] - times[j]) / 2
        if abs(time - mid) <= best_gap:
            best, best_gap = (j, SECOND), abs(time - mid)
    return best


def bank_bytes(tokens: int, hidden_size: int, blocks: int, evaluations: int, steps: int, bytes_per_element: int) -> int:
    """Bytes of the V a bank holds: (text + image) tokens x hidden x blocks x evaluations a step x steps x bytes.

    RF-Solver keeps 2 evaluations a step, FireFlow 1 (its midpoint), Euler 1. FLUX.1-dev at 1024 px (4,608 tokens,
    hidden 3,072), blocks 20-37, RF-Solver, bf16: 1,019,215,872 bytes a step, the official store's figure.
    """
    return tokens * hidden_size * blocks * evaluations * steps * bytes_per_element


# ---------------------------------------------------------------- editing strategies (FireFlow)

# FireFlow's editing strategies, in the order its denoising pass applies them (FF:layers.py:258-278); each names the
# tensor it records (the strategy's last letter) and what the denoising pass does with it.
EDIT_STRATEGIES = ("replace_v", "add_v", "replace_k", "add_k", "replace_q", "add_q")
QKV = ("q", "k", "v")  # the order of qkv_ratio
DEFAULT_EDIT = "replace_v"  # FireFlow's default (--reuse_v 1) and RF-Solver-Edit's only strategy
DEFAULT_QKV_RATIO = "1.0,1.0,1.0"


@dataclass(frozen=True)
class FluxEdit:
    """What a FLUX bank records at a single block and what the denoising pass does with it: FireFlow's
    ``--editing_strategy`` (``strategies``, in the official order) and ``--qkv_ratio`` (the scale of the recorded
    q, k, v). The default (replace_v, ratios 1) is ``--reuse_v 1``: V recorded as it is and put in place."""

    strategies: tuple[str, ...] = (DEFAULT_EDIT,)
    ratio: tuple[float, float, float] = (1.0, 1.0, 1.0)

    @property
    def recorded(self) -> tuple[str, ...]:
        """The tensors recorded ("q", "k", "v", those a strategy names; the official's substring test)."""
        return tuple(which for which in QKV if any(s.endswith(which) for s in self.strategies))

    def scale(self, which: str) -> float:
        """The factor ``which`` is recorded with (FF:layers.py:251-256)."""
        return self.ratio[QKV.index(which)]

    def tensors(self) -> str:
        """The recorded tensors as the summaries name them: "V", "q, k", "k, V"."""
        return ", ".join(which.upper() if which == "v" else which for which in self.recorded)

    def describe(self) -> str:
        """The strategies, and the ratios when any is not 1: "add_q, add_k" or "replace_v, ratio 1,1,0.8"."""
        ratio = "" if self.ratio == (1.0, 1.0, 1.0) else ", ratio " + ",".join(f"{r:g}" for r in self.ratio)
        return ", ".join(self.strategies) + ratio


def edit_of(flux_edit: str, qkv_ratio: str) -> FluxEdit:
    """PnP Feature Bank's ``flux_edit`` ("replace_v", "add_q,add_k"; FireFlow's "add_q replace_v" too) and
    ``qkv_ratio`` ("1.0,1.0,1.0") as a ``FluxEdit``; PnPInputError naming the valid values otherwise."""
    tokens = [token for token in re.split(r"[,\s]+", flux_edit.lower()) if token]  # FireFlow's own: spaces
    unknown = [token for token in tokens if token not in EDIT_STRATEGIES]
    if unknown or not tokens:
        raise PnPInputError(f"flux_edit takes a comma-separated choice among {', '.join(EDIT_STRATEGIES)} (the "
                            f"official default: {DEFAULT_EDIT}); got {flux_edit!r}.")
    parts = qkv_ratio.split(",")
    try:
        ratio = tuple(float(part) for part in parts)
    except ValueError:
        ratio = ()
    if len(ratio) != 3 or not all(math.isfinite(r) for r in ratio):
        raise PnPInputError(f"qkv_ratio takes three finite numbers, the scales of the recorded q, k and v (the "
                            f"official default: {DEFAULT_QKV_RATIO}); got {qkv_ratio!r}.")
    return FluxEdit(tuple(s for s in EDIT_STRATEGIES if s in tokens), ratio)
