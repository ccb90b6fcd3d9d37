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
transformer 0 when omitted), read with the grammar of ``indices``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from . import indices
from .errors import PnPInputError

# The paper's choice for the SD 1.x/2.x UNet (12 decoder blocks).
SD_DEFAULT_RESBLOCKS = "4"
SD_DEFAULT_ATTENTION = "4-11"
# SDXL (9 decoder blocks; transformers only in blocks 0-5): see docs/choosing-layers.md.
SDXL_DEFAULT_RESBLOCKS = "1"
SDXL_DEFAULT_ATTENTION = "1-5:0"

DEFAULTS = {
    "SD15": (SD_DEFAULT_RESBLOCKS, SD_DEFAULT_ATTENTION),
    "SD20": (SD_DEFAULT_RESBLOCKS, SD_DEFAULT_ATTENTION),
    "SDXL": (SDXL_DEFAULT_RESBLOCKS, SDXL_DEFAULT_ATTENTION),
}


@dataclass(frozen=True)
class UNetLayout:
    """Decoder structure, per output block ``b``: whether ``[0]`` is a ResBlock and its output channels,
    the depth of the SpatialTransformer ``[1]`` and its attn1 width, and how many stride-2 downsamplings
    lie between the latent and the block's resolution."""

    has_resblock: tuple[bool, ...]
    transformer_depth: tuple[int, ...]
    resblock_channels: tuple[int, ...]
    attention_channels: tuple[int, ...]
    downsamplings: tuple[int, ...]

    @property
    def num_output_blocks(self) -> int:
        return len(self.has_resblock)

    def resolution(self, block: int, latent_hw: tuple[int, int]) -> tuple[int, int]:
        """(h, w) of output block ``block`` for a (H, W) latent (each downsampling: ceil(x / 2))."""
        h, w = latent_hw
        for _ in range(self.downsamplings[block]):
            h, w = (h + 1) // 2, (w + 1) // 2
        return h, w

    def site_shape(self, kind: str, block: int, latent_hw: tuple[int, int]) -> tuple[int, ...]:
        """Per-row shape at a site: ResBlock (C, h, w), attention (h*w, C)."""
        h, w = self.resolution(block, latent_hw)
        if kind == "resblock":
            return self.resblock_channels[block], h, w
        return h * w, self.attention_channels[block]


def decoder_layout(unet) -> UNetLayout:
    """The decoder structure of a ComfyUI ``UNetModel`` (openaimodel), read from its modules (any device, meta too)."""
    downsamplings = sum(type(block[-1]).__name__ == "Downsample" for block in unet.input_blocks)
    has_resblock, depth, resblock_channels, attention_channels, levels = [], [], [], [], []
    for block in unet.output_blocks:
        resblock = type(block[0]).__name__ == "ResBlock"
        transformers = block[1].transformer_blocks if len(block) > 1 and hasattr(block[1], "transformer_blocks") else []
        has_resblock.append(resblock)
        depth.append(len(transformers))
        resblock_channels.append(block[0].out_layers[-1].out_channels if resblock else 0)
        attention_channels.append(transformers[0].attn1.to_q.in_features if len(transformers) else 0)
        levels.append(downsamplings)
        downsamplings -= type(block[-1]).__name__ == "Upsample"
    return UNetLayout(tuple(has_resblock), tuple(depth), tuple(resblock_channels), tuple(attention_channels),
                      tuple(levels))


@dataclass(frozen=True)
class LayerSites:
    resblocks: tuple[int, ...]
    attention: tuple[tuple[int, int], ...]

    def describe(self) -> str:
        att = ", ".join(f"{b}:{j}" for b, j in self.attention) or "none"
        res = ", ".join(map(str, self.resblocks)) or "none"
        return f"ResBlocks [{res}], self-attention [{att}]"

    def compact(self) -> str:
        """The sites in the layer inputs' own grammar, e.g. "ResBlock 4, attention 4-11:0"."""
        by_transformer: dict[int, list[int]] = {}
        for b, j in self.attention:
            by_transformer.setdefault(j, []).append(b)
        att = ", ".join(f"{_ranges(blocks)}:{j}" for j, blocks in sorted(by_transformer.items())) or "none"
        return f"ResBlock {_ranges(self.resblocks) or 'none'}, attention {att}"

    @property
    def count(self) -> int:
        return len(self.resblocks) + len(self.attention)


def _ranges(numbers) -> str:
    """Sorted integers as "a-b" runs joined by ",": (4, 5, 6, 9) -> "4-6,9"."""
    runs: list[list[int]] = []
    for n in sorted(set(numbers)):
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    return ",".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in runs)


def bank_shapes(layout: UNetLayout, sites: LayerSites, latent_hw: tuple[int, int], feature_steps: int,
                attention_steps: int, branches: int) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor a stored bank holds, by its file name (``resblock.4``, ``attention.4.0``)."""
    shapes = {f"resblock.{b}": (feature_steps, branches, *layout.site_shape("resblock", b, latent_hw))
              for b in sites.resblocks if feature_steps}
    shapes.update({f"attention.{b}.{j}": (attention_steps, branches, *layout.site_shape("attention", b, latent_hw))
                   for b, j in sites.attention if attention_steps})
    return shapes


def bank_nbytes(layout: UNetLayout, sites: LayerSites, latent_hw: tuple[int, int], feature_steps: int,
                attention_steps: int, branches: int, element_size: int) -> int:
    """Bytes of a stored bank's tensors: sum over sites of steps x branches x per-row elements x element size."""
    shapes = bank_shapes(layout, sites, latent_hw, feature_steps, attention_steps, branches)
    return sum(math.prod(shape) for shape in shapes.values()) * element_size


_RESBLOCK_EXAMPLE = '"4" or "4,7"'
_ATTENTION_EXAMPLE = '"4-11" or "1-5:0"'


def _parse(spec: str, what: str, allow_transformer: bool) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """(block range, transformer range) per item of ``spec``, unexpanded (see ``indices``)."""
    example = _ATTENTION_EXAMPLE if allow_transformer else _RESBLOCK_EXAMPLE
    ranges = []
    for item in indices.items(spec):
        blocks, sep, transformers = item.partition(":")
        if sep and not allow_transformer:
            raise PnPInputError(f"Cannot read {what} {indices.excerpt(spec)} at {indices.excerpt(item)}: a ResBlock "
                                f"layer has no transformer index; write e.g. {example}.")
        block_range = indices.parse_range(blocks, what, spec, example)
        transformer_range = indices.parse_range(transformers, what, spec, example) if sep else (0, 0)
        ranges.append((block_range, transformer_range))
    return ranges


def check_spec(spec: str, what: str, attention: bool) -> None:
    """Syntax only (no model needed; for queue-time checks): ``auto`` or a list ``indices`` reads."""
    if spec.strip().lower() != "auto":
        _parse(spec, what, allow_transformer=attention)


def _expand(ranges, layout: UNetLayout, what: str, attention: bool) -> list[tuple[int, int]]:
    """Every site of ``ranges``, in order, each once; ranges are bounded by ``layout`` before expanding."""
    n = layout.num_output_blocks
    if attention:
        available = [i for i in range(n) if layout.transformer_depth[i] > 0]
        where = f"this UNet has self-attention only in decoder blocks {available}"
    else:
        available = [i for i in range(n) if layout.has_resblock[i]]
        where = f"this UNet's decoder has blocks 0-{n - 1} and ResBlocks in {available}"
    sites, seen = [], set()
    for (b0, b1), (t0, t1) in ranges:
        indices.check_below((b0, b1), n, f"{what} (output block)", where)
        for b in range(b0, b1 + 1):
            depth = layout.transformer_depth[b] if attention else 1
            if b not in available:
                raise PnPInputError(f"{what} names output block {b}, but {where}.")
            if attention:
                indices.check_below((t0, t1), depth, f"{what} (transformer of output block {b})",
                                    f"it has {depth} transformer(s) (indices 0-{depth - 1})")
            for t in range(t0, t1 + 1):
                if (b, t) not in seen:
                    seen.add((b, t))
                    sites.append((b, t))
    return sites


def resolve_sites(resblock_spec: str, attention_spec: str, layout: UNetLayout) -> LayerSites:
    """Parse both specs and check every site exists in ``layout``."""
    resblock_ranges = _parse(resblock_spec, "resblock_layers", allow_transformer=False)
    attention_ranges = _parse(attention_spec, "attention_layers", allow_transformer=True)
    resblocks = tuple(b for b, _ in _expand(resblock_ranges, layout, "resblock_layers", attention=False))
    attention = tuple(_expand(attention_ranges, layout, "attention_layers", attention=True))
    if not resblocks and not attention:
        raise PnPInputError("Both resblock_layers and attention_layers are empty: name at least one layer to record.")
    return LayerSites(resblocks, attention)


def parse_site(spec: str, attention: bool) -> tuple[int, int]:
    """Exactly one site typed in a node: a block ``"4"``, or for attention ``"4"`` / ``"4:0"`` (block, transformer)."""
    ranges = _parse(spec, "layer", allow_transformer=attention)
    if len(ranges) != 1 or ranges[0][0][0] != ranges[0][0][1] or ranges[0][1][0] != ranges[0][1][1]:
        example = '"4:0"' if attention else '"4"'
        raise PnPInputError(f"layer {indices.excerpt(spec)} does not name exactly one layer; name one, e.g. {example}.")
    (block, _), (transformer, _) = ranges[0]
    return block, transformer


def first_default_site(family: str, attention: bool) -> tuple[int, int]:
    """The first site of the family's default ResBlock or attention spec, as (block, transformer)."""
    (block, _), (transformer, _) = _parse(DEFAULTS[family][1 if attention else 0], "default layers", True)[0]
    return block, transformer
