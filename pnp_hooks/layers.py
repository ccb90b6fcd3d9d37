"""Which UNet decoder sites PnP injects, and the paper's defaults per model family.

Sites are named in ComfyUI/LDM terms:
- a ResBlock site ``b`` is the residual branch of ``output_blocks[b][0]``:
  the output of its ``out_layers`` (after the second conv, before the skip
  add), shape (B, C, h, w);
- an attention site ``(b, j)`` is ``attn1`` (self-attention) of transformer
  ``j`` of the SpatialTransformer ``output_blocks[b][1]``; its input hidden
  states (after ``norm1``) have shape (B, h*w, C) and give q and k.

Specs are strings a user types in a node: ``"4"``, ``"4-11"``, ``"1-5:0"``,
``"0:0-1, 3"`` (block or block range, optionally ``:transformer`` index or range;
transformer 0 when omitted).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import PnPInputError

# The paper's choice for the SD 1.x/2.x UNet (12 decoder blocks).
SD_DEFAULT_RESBLOCKS = "4"
SD_DEFAULT_ATTENTION = "4-11"
# SDXL (9 decoder blocks; transformers only in blocks 0-5): see README "Choosing layers".
SDXL_DEFAULT_RESBLOCKS = "1"
SDXL_DEFAULT_ATTENTION = "1-5:0"

DEFAULTS = {
    "SD15": (SD_DEFAULT_RESBLOCKS, SD_DEFAULT_ATTENTION),
    "SD20": (SD_DEFAULT_RESBLOCKS, SD_DEFAULT_ATTENTION),
    "SDXL": (SDXL_DEFAULT_RESBLOCKS, SDXL_DEFAULT_ATTENTION),
}


@dataclass(frozen=True)
class UNetLayout:
    """Decoder structure: per output block, whether [0] is a ResBlock and the depth of [1]."""

    has_resblock: tuple[bool, ...]
    transformer_depth: tuple[int, ...]

    @property
    def num_output_blocks(self) -> int:
        return len(self.has_resblock)


@dataclass(frozen=True)
class LayerSites:
    resblocks: tuple[int, ...]
    attention: tuple[tuple[int, int], ...]

    def describe(self) -> str:
        att = ", ".join(f"{b}:{j}" for b, j in self.attention) or "none"
        res = ", ".join(map(str, self.resblocks)) or "none"
        return f"ResBlocks [{res}], self-attention [{att}]"


_ITEM = re.compile(r"^(\d+)(?:-(\d+))?(?::(\d+)(?:-(\d+))?)?$")


def _parse(spec: str, what: str, allow_transformer: bool) -> list[tuple[int, int]]:
    sites: list[tuple[int, int]] = []
    for raw in spec.replace(";", ",").split(","):
        item = raw.strip().replace(" ", "")
        if not item:
            continue
        m = _ITEM.match(item)
        if m is None or (m.group(3) is not None and not allow_transformer):
            example = '"4-11" or "1-5:0"' if allow_transformer else '"4" or "4,7"'
            raise PnPInputError(f"Cannot read {what} {spec!r} at {raw.strip()!r}; write e.g. {example}.")
        b0 = int(m.group(1))
        b1 = int(m.group(2)) if m.group(2) else b0
        t0 = int(m.group(3)) if m.group(3) else 0
        t1 = int(m.group(4)) if m.group(4) else t0
        if b1 < b0 or t1 < t0:
            raise PnPInputError(f"Range {item!r} in {what} runs backwards; write the smaller index first.")
        for b in range(b0, b1 + 1):
            for t in range(t0, t1 + 1):
                if (b, t) not in sites:
                    sites.append((b, t))
    return sites


def resolve_sites(resblock_spec: str, attention_spec: str, layout: UNetLayout) -> LayerSites:
    """Parse both specs and check every site exists in ``layout``."""
    resblocks = tuple(b for b, _ in _parse(resblock_spec, "resblock_layers", allow_transformer=False))
    attention = tuple(_parse(attention_spec, "attention_layers", allow_transformer=True))
    n = layout.num_output_blocks
    for b in resblocks:
        if b >= n or not layout.has_resblock[b]:
            raise PnPInputError(
                f"resblock_layers names output block {b}, but this UNet's decoder has blocks 0-{n - 1} "
                f"and ResBlocks in {[i for i in range(n) if layout.has_resblock[i]]}."
            )
    for b, j in attention:
        if b >= n or layout.transformer_depth[b] == 0:
            with_attn = [i for i in range(n) if layout.transformer_depth[i] > 0]
            raise PnPInputError(
                f"attention_layers names output block {b}, but this UNet has self-attention only in "
                f"decoder blocks {with_attn}."
            )
        if j >= layout.transformer_depth[b]:
            raise PnPInputError(
                f"attention_layers names transformer {j} of output block {b}, which has "
                f"{layout.transformer_depth[b]} transformer(s) (indices 0-{layout.transformer_depth[b] - 1})."
            )
    if not resblocks and not attention:
        raise PnPInputError("Both resblock_layers and attention_layers are empty: name at least one layer to record.")
    return LayerSites(resblocks, attention)


def parse_site(spec: str, attention: bool) -> tuple[int, int]:
    """Exactly one site typed in a node: a block ``"4"``, or for attention ``"4"`` / ``"4:0"`` (block, transformer)."""
    sites = _parse(spec, "layer", allow_transformer=attention)
    if len(sites) != 1:
        example = '"4:0"' if attention else '"4"'
        raise PnPInputError(f"layer {spec!r} names {len(sites)} layers; name exactly one, e.g. {example}.")
    return sites[0]


def first_default_site(family: str, attention: bool) -> tuple[int, int]:
    """The first site of the family's default ResBlock or attention spec, as (block, transformer)."""
    return _parse(DEFAULTS[family][1 if attention else 0], "default layers", allow_transformer=True)[0]
