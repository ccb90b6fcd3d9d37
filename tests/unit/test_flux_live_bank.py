"""The FLUX bank "on the fly" (``flux_bank.FluxLiveBank``) on stand-ins: which evaluations it recomputes (checked
against the solvers' own model calls), its memory against the formula at FLUX.1-dev 1024 px, its mode names."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from pure import pure

flux, solvers, flux_bank, bank = pure("families.flux"), pure("flow_solvers"), pure("flux_bank"), pure("bank")


def _evaluated_keys(solver: str, steps: int, inverse: bool) -> list:
    """The keys of the model calls ``solver`` makes over the schedule (descending: denoising; ascending: inversion),
    from a stand-in velocity field."""
    times = tuple(float(t) for t in flux.schedule(steps, 4096, shift=True))
    keys = []

    def model(x, sigma, **kwargs):
        keys.append(flux.evaluation_key(float(sigma[0]), times, inverse=inverse))
        return -x

    sigmas = torch.tensor(times[::-1] if inverse else times)
    solvers.FUNCTIONS[solver](model, torch.ones(1, 4), sigmas)
    return keys


def _live(solver: str, steps: int, inject: int, blocks: tuple[int, ...], latent_hw=(128, 128), text_tokens=512,
          dtype=torch.bfloat16):
    """An on-the-fly bank of FLUX.1 dev (hidden 3,072) over an inversion whose inputs are the solver's own keys."""
    times = tuple(float(t) for t in flux.schedule(steps, 4096, shift=True))
    inputs = {key: (torch.zeros(1), 0.0) for key in _evaluated_keys(solver, steps, inverse=True)}
    inversion = flux_bank.FluxInversion("Flux", "abc", solver, times, torch.zeros(1, 16, *latent_hw), inputs)
    return flux_bank.FluxLiveBank(inversion, blocks, inject, [[torch.zeros(1, text_tokens, 8), {}]], dtype,
                                  text_tokens, 3072)


@pytest.mark.parametrize("solver", solvers.SOLVERS)
@pytest.mark.parametrize("steps", [1, 3, 8])
def test_the_evaluations_a_denoising_pass_makes_are_the_solvers_own(solver, steps):
    assert flux_bank.denoising_evaluations(solver, steps) == tuple(_evaluated_keys(solver, steps, inverse=False))


def test_an_on_the_fly_bank_recomputes_each_injected_evaluation_the_inversion_made():
    rf = _live("rf-solver", 25, 3, tuple(range(20, 38)))
    assert rf.source_keys == ((0, False), (0, True), (1, False), (1, True), (2, False), (2, True))
    fireflow = _live("fireflow", 8, 1, tuple(range(38)))
    assert fireflow.source_keys == ((0, True),)  # FireFlow's denoising step 0 first evaluation has no stored input
    # inject = steps: the inversion's step-0 first evaluation (interval N-1) is stored but never read.
    everything = _live("fireflow", 4, 4, (20,))
    assert everything.source_keys == tuple((j, True) for j in range(4))
    assert everything.stored_nbytes == 5 * everything.evaluation_nbytes
    assert _live("euler", 25, 3, (20,)).source_keys == ((0, False), (1, False), (2, False))
    assert _live("rf-solver", 25, 3, ()).source_keys == () and _live("rf-solver", 25, 0, (20,)).source_keys == ()


def test_memory_on_the_fly_against_stored_and_the_official_store_at_1024px():
    """FLUX.1 dev at 1024 px (4,096 image + 512 text tokens, hidden 3,072), bf16."""
    rf = _live("rf-solver", 25, 3, tuple(range(20, 38)))
    assert rf.nbytes == 0 and rf.values == {} and rf.value(0, False, 20) is None
    assert rf.evaluation_nbytes == rf.peak_nbytes == flux.bank_bytes(4608, 3072, 18, 1, 1, 2) == 509_607_936
    assert rf.stored_nbytes == flux.bank_bytes(4608, 3072, 18, 2, 3, 2) == 3_057_647_616
    official_default = flux.bank_bytes(4608, 3072, 18, 2, 20, 2)  # RF-Solver-Edit keeps every injected step
    assert official_default == 20_384_317_440 == 40 * rf.peak_nbytes
    fireflow = _live("fireflow", 8, 1, tuple(range(38)))
    assert fireflow.peak_nbytes == fireflow.stored_nbytes == 1_075_838_976  # one evaluation either way
    assert _live("rf-solver", 25, 0, (20,)).peak_nbytes == 0
    assert _live("rf-solver", 25, 3, (20,), dtype=torch.float32).evaluation_nbytes == 4608 * 3072 * 4
    summary = rf.summary()
    assert "\n" not in summary and "on the fly" in summary and "nothing stored" in summary
    assert "509.6 MB bfloat16" in summary and "3057.6 MB" in summary and "6 extra model calls" in summary


def test_the_modes_are_the_banks_mode_names_and_the_bank_is_immutable():
    live = _live("euler", 4, 2, (20,))
    assert live.mode == bank.ON_THE_FLY and flux_bank.FluxBank.mode == bank.STORED
    assert (flux_bank.FluxBank.mode, flux_bank.FluxLiveBank.mode) == bank.BANK_MODES
    with pytest.raises(dataclasses.FrozenInstanceError):
        live.inject = 3
    assert live.times == live.inversion.times and live.steps == 4 and live.solver == "euler"
    assert torch.equal(live.inverted, live.inversion.inverted)
