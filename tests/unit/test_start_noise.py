"""PnP Guider's NOISE (``bank.StartNoise``, pure): DisableNoise's zeros on SD, the inverted latent on FLUX."""
from __future__ import annotations

import pytest
import torch

from pure import pure

bank, errors = pure("bank"), pure("errors")


def test_without_a_start_it_is_disable_noise():
    """Zeros of the latent's shape and dtype on the CPU, seed 0: what ComfyUI's DisableNoise hands the sampler."""
    latent = {"samples": torch.randn(1, 4, 8, 8, dtype=torch.float16)}
    noise = bank.StartNoise()
    out = noise.generate_noise(latent)
    assert torch.equal(out, torch.zeros(1, 4, 8, 8, dtype=torch.float16)) and out.device.type == "cpu"
    assert noise.seed == 0


def test_a_flow_at_sigma_one_starts_exactly_from_the_start():
    """A flow's noise scaling sigma * noise + (1 - sigma) * latent_image (ComfyUI's CONST) at sigma 1 gives the
    start bit for bit, whatever latent_image holds; the start itself is handed out as a copy."""
    start = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(1))
    latent = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(2)) * 3.0
    noise = bank.StartNoise(start)
    out = noise.generate_noise({"samples": latent})
    sigma = torch.tensor(1.0)
    assert torch.equal(sigma * out + (1.0 - sigma) * latent, start)
    out.add_(1.0)
    assert not torch.equal(out, start) and noise.seed == 0


def test_a_latent_of_another_size_is_refused_with_what_to_connect():
    noise = bank.StartNoise(torch.zeros(1, 16, 8, 8))
    with pytest.raises(errors.PnPInputError, match=r"latent_image is \[1, 16, 4, 4\]: connect PnP Guider's x_T"):
        noise.generate_noise({"samples": torch.zeros(1, 16, 4, 4)})
