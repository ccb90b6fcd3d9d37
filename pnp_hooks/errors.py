"""The one error type the pack raises for input a user can fix, and the number check every node uses."""
from __future__ import annotations

# The module name ComfyUI shows with an error's type ("comfyui_pnp.PnPInputError"). ComfyUI imports a custom
# node pack under its folder's path, so without it the frontend would show a server path in the type.
ERROR_MODULE = "comfyui_pnp"


def named_for_users(error_type: type) -> type:
    """``error_type`` with the stable module name ComfyUI prints in front of it."""
    error_type.__module__ = ERROR_MODULE
    return error_type


@named_for_users
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
