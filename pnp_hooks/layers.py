"""Which sites PnP injects: the layer specs users type, read against a family's layout.

Sites: a ResBlock site ``b`` (decoder block b) and an attention site
``(b, j)`` (transformer j of decoder block b); what they are inside the
model, their layout and the paper's defaults per variant are the family's
(``families.unet``).

Specs are strings a user types in a node: ``"4"``, ``"4-11"``, ``"1-5:0"``,
``"0:0-1, 3"`` (block or block range, optionally ``:transformer`` index or range;
transformer 0 when omitted), read with the grammar of ``indices``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from . import families, indices
from .errors import PnPInputError
from .families import unet

# The UNet family's layout and defaults, under the names the pack has always used.
UNetLayout = unet.UNetLayout
decoder_layout = unet.layout_of
DEFAULTS = unet.DEFAULTS


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
    """The first site of the default ResBlock or attention spec of ``family`` (a variant, e.g. "SD15"), as
    (block, transformer)."""
    defaults = families.family_named(family).DEFAULTS[family]
    (block, _), (transformer, _) = _parse(defaults[1 if attention else 0], "default layers", True)[0]
    return block, transformer
