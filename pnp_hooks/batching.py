"""How many timesteps each source-pass UNet call of PnP Feature Bank carries (pure Python).

Rows of the source pass are independent, so batching timesteps saves the
per-call overhead; but progress moves only when a call ends (Cancel is seen
between the blocks of a call: ``patcher.with_cancel_between_blocks``). With
``batch_size`` 0 (automatic) a call holds at most ``CALL_LATENT_PIXELS``
latent pixels (rows x h x w): 16 timesteps of a 64 px image, whose calls are
mostly overhead; 4 at 128 px; one from 256 px up, where calls are long. The
rule depends on the image size only, never on timings, so a bank is the same
on every run (batch composition changes fp32 rounding). It never exceeds what
ComfyUI's memory estimate fits.
"""
from __future__ import annotations

CALL_LATENT_PIXELS = 1024


def rows_per_call(total: int, latent_hw: tuple[int, int], fits: int, batch_size: int = 0) -> int:
    """Timesteps per call: ``batch_size`` if set (a user's choice), else the size rule within ``fits``."""
    if batch_size:
        return min(batch_size, total)
    by_size = CALL_LATENT_PIXELS // max(1, latent_hw[0] * latent_hw[1])
    return max(1, min(by_size, fits, total))
