"""The one error type the pack raises for input a user can fix, and the number check every node uses."""
from __future__ import annotations


class PnPInputError(ValueError):
    """Bad or mismatched input; the message says what to connect or change."""


def require_finite(name: str, value: float, low: float | None = None, high: float | None = None) -> float:
    """``value`` as a float if it is a finite number within [low, high]; otherwise a PnPInputError naming ``name``.

    JSON prompts can carry NaN and infinities, which pass ComfyUI's own min/max checks.
    """
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise PnPInputError(f"{name} must be a number, got {type(value).__name__}.") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise PnPInputError(f"{name} is {number}; it must be a finite number.")
    if (low is not None and number < low) or (high is not None and number > high):
        raise PnPInputError(f"{name} must be between {low} and {high}, got {number}.")
    return number
