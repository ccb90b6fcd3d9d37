"""Which sites PnP injects: the layer specs users type, read against a family's layout.

A site is a kind (a ``families.SiteKind`` the family declares, e.g. the UNet's
"resblock" and "attention") and a site key of that kind: a block ``b``, or
``(b, j)`` (index j inside block b) for an indexed kind. What a site is inside
the model, its layout and the paper's defaults per variant are the family's
(``families.unet``).

Specs are strings a user types in a node, one per kind (its node input, e.g.
``resblock_layers``): ``"4"``, ``"4-11"``, ``"1-5:0"``, ``"0:0-1, 3"`` (block
or block range, optionally ``:index`` or range for an indexed kind; index 0
when omitted), read with the grammar of ``indices``.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Iterator, Mapping

from . import families, indices
from .errors import PnPInputError
from .families import SiteKind


@dataclass(frozen=True)
class LayerSites:
    """The sites PnP records and injects: per kind of the family (in its order), the sites in order, each once."""

    kinds: tuple[SiteKind, ...]
    by_kind: Mapping[str, tuple]

    def __post_init__(self):
        object.__setattr__(self, "by_kind", MappingProxyType({kind.name: tuple(self.by_kind.get(kind.name, ()))
                                                              for kind in self.kinds}))

    def __getitem__(self, kind: str) -> tuple:
        return self.by_kind.get(kind, ())

    def __eq__(self, other) -> bool:
        return isinstance(other, LayerSites) and self.kinds == other.kinds and dict(self.by_kind) == dict(
            other.by_kind)

    def __hash__(self) -> int:
        return hash((self.kinds, tuple(self.by_kind.items())))

    def items(self) -> Iterator[tuple[SiteKind, tuple]]:
        """(kind, its sites) for every kind, in the family's order."""
        return ((kind, self.by_kind[kind.name]) for kind in self.kinds)

    def describe(self) -> str:
        return ", ".join(f"{kind.plural} [{', '.join(map(kind.spec, sites)) or 'none'}]"
                         for kind, sites in self.items())

    def compact(self) -> str:
        """The sites in the layer inputs' own grammar, e.g. "ResBlock 4, attention 4-11:0"."""
        return ", ".join(f"{kind.short} {_compact(kind, sites) or 'none'}" for kind, sites in self.items())

    @property
    def count(self) -> int:
        return sum(len(sites) for sites in self.by_kind.values())


def _compact(kind: SiteKind, sites: tuple) -> str:
    if not kind.indexed:
        return _ranges(sites)
    by_index: dict[int, list[int]] = {}
    for site in sites:
        block, index = kind.block_index(site)
        by_index.setdefault(index, []).append(block)
    return ", ".join(f"{_ranges(blocks)}:{j}" for j, blocks in sorted(by_index.items()))


def _ranges(numbers) -> str:
    """Sorted integers as "a-b" runs joined by ",": (4, 5, 6, 9) -> "4-6,9"."""
    runs: list[list[int]] = []
    for n in sorted(set(numbers)):
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    return ",".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in runs)


def bank_shapes(layout, sites: LayerSites, latent_hw: tuple[int, int], feature_steps: int,
                attention_steps: int, branches: int) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor a stored bank holds, by its file name (``resblock.4``, ``attention.4.0``):
    (the steps of the kind's threshold, branches, the site's per-row shape)."""
    shapes = {}
    for kind, kind_sites in sites.items():
        steps = kind.steps(feature_steps, attention_steps)
        for site in kind_sites if steps else ():
            block = kind.block_index(site)[0]
            shapes[kind.tensor_name(site)] = (steps, branches, *layout.site_shape(kind.name, block, latent_hw))
    return shapes


def bank_nbytes(layout, sites: LayerSites, latent_hw: tuple[int, int], feature_steps: int,
                attention_steps: int, branches: int, element_size: int) -> int:
    """Bytes of a stored bank's tensors: sum over sites of steps x branches x per-row elements x element size."""
    shapes = bank_shapes(layout, sites, latent_hw, feature_steps, attention_steps, branches)
    return sum(math.prod(shape) for shape in shapes.values()) * element_size


def _parse(spec: str, what: str, kind: SiteKind) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """(block range, index range) per item of ``spec``, unexpanded (see ``indices``)."""
    ranges = []
    for item in indices.items(spec):
        blocks, sep, transformers = item.partition(":")
        if sep and not kind.indexed:
            raise PnPInputError(f"Cannot read {what} {indices.excerpt(spec)} at {indices.excerpt(item)}: a "
                                f"{kind.label} layer has no transformer index; write e.g. {kind.example}.")
        block_range = indices.parse_range(blocks, what, spec, kind.example)
        transformer_range = indices.parse_range(transformers, what, spec, kind.example) if sep else (0, 0)
        ranges.append((block_range, transformer_range))
    return ranges


def check_spec(spec: str, kind: SiteKind) -> None:
    """Syntax only (no model needed; for queue-time checks): ``auto`` or a list ``indices`` reads."""
    if spec.strip().lower() != "auto":
        _parse(spec, kind.input, kind)


def _expand(ranges, layout, kind: SiteKind) -> list:
    """Every site of ``ranges``, in order, each once; ranges are bounded by ``layout`` before expanding."""
    n, what = layout.num_output_blocks, kind.input
    available, where = layout.available(kind.name), layout.where(kind.name)
    sites, seen = [], set()
    for (b0, b1), (t0, t1) in ranges:
        indices.check_below((b0, b1), n, f"{what} (output block)", where)
        for b in range(b0, b1 + 1):
            if b not in available:
                raise PnPInputError(f"{what} names output block {b}, but {where}.")
            if kind.indexed:
                depth = layout.depth(kind.name, b)
                indices.check_below((t0, t1), depth, f"{what} (transformer of output block {b})",
                                    f"it has {depth} transformer(s) (indices 0-{depth - 1})")
            for t in range(t0, t1 + 1):
                site = kind.site_of(b, t)
                if site not in seen:
                    seen.add(site)
                    sites.append(site)
    return sites


def specs_of_inputs(inputs: Mapping[str, str], kinds: tuple[SiteKind, ...], defaults: Mapping[str, str]
                    ) -> dict[str, str]:
    """The spec of every kind from the node inputs users typed (by input name; ``auto`` = ``defaults``, by kind).

    A typed layer list for an input whose kind the model's family lacks is refused."""
    names = {kind.input for kind in kinds}
    for name, text in inputs.items():
        if name not in names and text.strip().lower() not in ("auto", ""):
            raise PnPInputError(f"{name} names layers, but this model has no such layers: set it to 'auto' or ''.")
    specs = {}
    for kind in kinds:
        text = inputs.get(kind.input, "auto")
        specs[kind.name] = defaults.get(kind.name, "") if text.strip().lower() == "auto" else text
    return specs


def resolve_sites(specs: Mapping[str, str], layout, kinds: tuple[SiteKind, ...]) -> LayerSites:
    """Parse every kind's spec (by kind name; a kind not given has none) and check every site exists in
    ``layout``."""
    ranges = {kind.name: _parse(specs.get(kind.name, ""), kind.input, kind) for kind in kinds}
    sites = LayerSites(kinds, {kind.name: tuple(_expand(ranges[kind.name], layout, kind)) for kind in kinds})
    if not sites.count:
        inputs = " and ".join(kind.input for kind in kinds)
        raise PnPInputError(f"{'Both ' if len(kinds) == 2 else ''}{inputs} {'are' if len(kinds) > 1 else 'is'} "
                            f"empty: name at least one layer to record.")
    return sites


def parse_site(spec: str, kind: SiteKind) -> tuple[int, int]:
    """Exactly one site typed in a node: a block ``"4"``, or for an indexed kind ``"4"`` / ``"4:0"``; as
    (block, index)."""
    ranges = _parse(spec, "layer", kind)
    if len(ranges) != 1 or ranges[0][0][0] != ranges[0][0][1] or ranges[0][1][0] != ranges[0][1][1]:
        example = '"4:0"' if kind.indexed else '"4"'
        raise PnPInputError(f"layer {indices.excerpt(spec)} does not name exactly one layer; name one, e.g. {example}.")
    (block, _), (transformer, _) = ranges[0]
    return block, transformer


def first_default_site(variant: str, kind: SiteKind) -> tuple[int, int]:
    """The first site of the default spec of ``kind`` for ``variant`` (e.g. "SD15"), as (block, index)."""
    defaults = families.family_named(variant).DEFAULTS[variant]
    indexed = dataclasses.replace(kind, indexed=True)  # defaults are read with the full grammar
    (block, _), (transformer, _) = _parse(defaults[kind.name], "default layers", indexed)[0]
    return block, transformer
