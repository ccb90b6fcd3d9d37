"""Index lists typed in a node ("4-11", "0,10,20", "1-5:0-1"): one grammar, linear time (pure Python).

Items are separated by "," or ";" (spaces ignored); an item is an index "a"
or a range "a-b" with a <= b, each number of at most ``MAX_DIGITS`` digits.
Callers check a range against what it indexes *before* expanding it, so no
text can make the parser do more work than the model or bank has indices.
Error messages quote at most ``EXCERPT_CHARS`` characters of what was typed.
"""
from __future__ import annotations

import re

from .errors import PnPInputError

MAX_DIGITS = 4
EXCERPT_CHARS = 40
_RANGE = re.compile(r"(\d{1,%d})(?:-(\d{1,%d}))?" % (MAX_DIGITS, MAX_DIGITS))


def excerpt(text: str) -> str:
    """``text`` quoted for an error message, cut to ``EXCERPT_CHARS`` characters."""
    text = str(text)
    return repr(text) if len(text) <= EXCERPT_CHARS else repr(text[:EXCERPT_CHARS - 3]) + "..."


def items(spec: str) -> list[str]:
    """The non-empty items of ``spec``, spaces removed."""
    return [item for item in re.split(r"[,;]", spec.replace(" ", "")) if item]


def parse_range(item: str, what: str, spec: str, example: str) -> tuple[int, int]:
    """``"a"`` or ``"a-b"`` as (a, b); refuses anything else, and ranges that run backwards."""
    m = _RANGE.fullmatch(item)
    if m is None:
        raise PnPInputError(f"Cannot read {what} {excerpt(spec)} at {excerpt(item)}; write e.g. {example} "
                            f"(indices of up to {MAX_DIGITS} digits).")
    lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
    if hi < lo:
        raise PnPInputError(f"Range {excerpt(item)} in {what} runs backwards; write the smaller index first.")
    return lo, hi


def check_below(lo_hi: tuple[int, int], limit: int, what: str, available: str) -> None:
    """Refuse a range reaching ``limit`` or beyond (``available`` says what exists)."""
    if lo_hi[1] >= limit:
        lo, hi = lo_hi
        shown = str(lo) if lo == hi else f"{lo}-{hi}"
        raise PnPInputError(f"{what} names {shown}, but {available}.")
