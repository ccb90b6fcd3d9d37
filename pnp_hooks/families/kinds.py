"""Kinds of site: what the core knows of a site, declared by the family that has it (pure, no ComfyUI)."""
from __future__ import annotations

from dataclasses import dataclass

# How a kind's tensor is reached inside ComfyUI's model (``SiteKind.patch``): the forward output of a module
# (hooked for one model call), or the q/k input of self-attention through ComfyUI's ``attn1_patch``.
MODULE_OUTPUT = "module output"
ATTN1_QK_INPUT = "attn1_patch q/k input"
# The two injection thresholds of the paper, as a kind names the one that applies to it (``SiteKind.threshold``).
FEATURE_THRESHOLD, ATTENTION_THRESHOLD = "feature", "attention"


@dataclass(frozen=True)
class SiteKind:
    """One kind of site of a family, with everything the core needs to know about it.

    A site of a kind is a block index ``b`` (``indexed`` False: specs ``"4"``,
    ``"4,7"``) or a pair ``(b, j)`` (``indexed`` True: specs ``"4-11"``,
    ``"1-5:0"``, j 0 when omitted). Its tensors are stored per site as
    (steps, branches, *row shape) and named ``"{name}.{b}"`` /
    ``"{name}.{b}.{j}"`` in bank files.
    """

    name: str  # key of every per-kind mapping, prefix of its tensors' names in bank files
    input: str  # the node input users type its sites in, e.g. "resblock_layers"
    file_key: str  # its key in a bank file's "sites" metadata
    label: str  # one site in messages: "ResBlock 4"
    plural: str  # its sites in a bank's description: "ResBlocks [4]"
    short: str  # its sites in a bank's summary: "ResBlock 4"
    indexed: bool  # sites (b, j) rather than b
    example: str  # specs to show in a message
    threshold: str  # FEATURE_THRESHOLD or ATTENTION_THRESHOLD: whose step count it is injected and recorded for
    patch: str  # MODULE_OUTPUT or ATTN1_QK_INPUT
    spatial_dims: int  # how a row is laid out: 2 = (C, h, w), 1 = (h*w, C) (masks and blends follow it)
    views: tuple[str, ...] = ()  # the PnP Feature PCA views of its tensors
    file_rank: int = 0  # rank of its stored tensors: 2 (steps, branches) + the row's

    def steps(self, feature_steps: int, attention_steps: int) -> int:
        """Of the step counts of the two thresholds, the one this kind is recorded and injected for."""
        return feature_steps if self.threshold == FEATURE_THRESHOLD else attention_steps

    def site_of(self, block: int, index: int = 0):
        """The site key of block ``block`` (and index ``index`` for an indexed kind)."""
        return (block, index) if self.indexed else block

    def block_index(self, site) -> tuple[int, int]:
        """(block, index) of a site key (index 0 for a kind without one)."""
        return tuple(site) if self.indexed else (site, 0)

    def spec(self, site) -> str:
        """A site in the grammar users type: "4" or "4:0"."""
        block, index = self.block_index(site)
        return f"{block}:{index}" if self.indexed else str(block)

    def tensor_name(self, site) -> str:
        """The site's tensor name in a bank file: "resblock.4", "attention.4.0"."""
        return f"{self.name}." + ".".join(map(str, self.block_index(site)[:2 if self.indexed else 1]))

    def site_of_name(self, tensor: str):
        """The site a tensor name of this kind (``tensor_name``) stands for."""
        parts = tuple(int(p) for p in tensor.split(".")[1:])
        return parts if self.indexed else parts[0]

    def site_of_file(self, value):
        """A site as a bank file's metadata lists it (an int, or a [b, j] list)."""
        return tuple(value) if self.indexed else value

    def file_value(self, site):
        """A site as a bank file's metadata lists it."""
        return list(site) if self.indexed else site


def kinds_named(kinds: tuple[SiteKind, ...]) -> dict[str, SiteKind]:
    return {kind.name: kind for kind in kinds}
