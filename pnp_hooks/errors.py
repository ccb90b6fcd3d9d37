"""The one error type the pack raises for input a user can fix."""
from __future__ import annotations


class PnPInputError(ValueError):
    """Bad or mismatched input; the message says what to connect or change."""
