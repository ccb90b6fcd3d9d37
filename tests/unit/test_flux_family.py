"""The FLUX family's pure parts on stand-ins (no ComfyUI): recognition and checks, the official schedule, the key
rule, block specs, the bank's size formula, the solvers on a velocity field with a known solution."""
from __future__ import annotations

import math
import types

import pytest
import torch

from pure import pure

families, flux, errors = pure("families"), pure("families.flux"), pure("errors")
solvers, flux_bank = pure("flow_solvers"), pure("flux_bank")


def _comfy_class(name: str) -> type:
    return type(name, (), {"__module__": "comfy.model_sampling"})


def _model(config: str = "Flux", bases=("ModelSamplingFlux", "CONST"), in_channels: int = 64, patch_size: int = 2,
           single: int = 38):
    sampling = type("ModelSampling", tuple(_comfy_class(b) for b in bases), {})()
    sampling.sigmas = torch.linspace(1e-4, 1, 10000)
    net = types.SimpleNamespace(in_channels=in_channels, patch_size=patch_size, double_blocks=[0] * 19,
                                single_blocks=[0] * single, hidden_size=3072, num_heads=24)
    base = types.SimpleNamespace(model_config=type(config, (), {})(), diffusion_model=net)
    objects = {"model_sampling": sampling, "latent_format": types.SimpleNamespace(latent_channels=16)}
    return types.SimpleNamespace(model=base, get_model_object=objects.__getitem__)


def test_flux_dev_and_schnell_are_the_flux_family_and_checked():
    assert families.family_of(_model("Flux")) is flux
    assert families.family_of(_model("FluxSchnell", bases=("ModelSamplingDiscreteFlow", "CONST"))) is flux
    prediction, layout, sigmas = flux.check_flux(_model())
    assert prediction == "flow" and sigmas.dtype == torch.float32
    assert layout == flux.FluxLayout(19, 38, 3072, 24) and layout.head_dim == 128
    assert layout.site_shape(512, 4096) == (24, 4608, 128)
    with pytest.raises(errors.PnPInputError, match="rectified-flow schedule.*Remove the ModelSampling"):
        flux.check_flux(_model(bases=("ModelSamplingDiscrete", "EPS")))
    with pytest.raises(errors.PnPInputError, match="takes 384 input channels.*with 64"):
        flux.check_flux(_model(in_channels=384))  # FLUX.1 Fill
    with pytest.raises(errors.PnPInputError, match="DDIM nodes run SD 1.x, SD 2.x and SDXL; this MODEL is FLUX.1 dev"):
        flux.check(_model())  # what the UNet passes ask
    with pytest.raises(errors.PnPInputError, match="the MODEL connected is Chroma"):
        families.family_of(_model("Chroma"))


def test_the_schedule_is_the_official_get_schedule():
    assert flux.schedule(4, 4096, shift=False).tolist() == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert flux.time_shift_mu(256) == pytest.approx(0.5) and flux.time_shift_mu(4096) == pytest.approx(1.15)
    times = flux.schedule(25, 4096, shift=True)
    t = torch.linspace(1, 0, 26)
    expected = math.exp(1.15) / (math.exp(1.15) + (1 / t - 1))
    assert times.dtype == torch.float32 and torch.equal(times, expected)
    assert times[0] == 1 and times[-1] == 0 and bool((times[1:] < times[:-1]).all())
    assert flux.image_tokens((128, 128)) == 4096 and flux.image_tokens((17, 9)) == 9 * 5
    with pytest.raises(errors.PnPInputError, match="steps must be at least 1"):
        flux.schedule(0, 16, shift=True)


def test_the_key_is_the_intervals_noisier_end_and_the_evaluation():
    """Denoising evaluates first at s[j], inversion at s[j+1]; both second at the midpoint (docs/flux-plan.md)."""
    s = tuple(flux.schedule(4, 16, shift=False).tolist())  # 1, .75, .5, .25, 0
    assert [flux.evaluation_key(t, s, inverse=False) for t in (1.0, 0.75, 0.5, 0.25)] == [
        (0, False), (1, False), (2, False), (3, False)]
    assert [flux.evaluation_key(t, s, inverse=True) for t in (0.0, 0.25, 0.5, 0.75)] == [
        (3, False), (2, False), (1, False), (0, False)]
    for inverse in (False, True):
        assert [flux.evaluation_key(t, s, inverse) for t in (0.875, 0.625, 0.375, 0.125)] == [
            (0, True), (1, True), (2, True), (3, True)]
    assert flux.evaluation_key(0.0, s, inverse=False) is None  # denoising never evaluates at t = 0
    assert flux.evaluation_key(1.0, s, inverse=True) is None  # nor inversion at t = 1
    assert flux.evaluation_key(0.3, s, inverse=False) is None
    assert flux.evaluation_key(float(torch.tensor(0.875 + 3e-8)), s, inverse=False) == (0, True)  # float32 rounding


def test_single_blocks_and_block_specs():
    assert flux.single_block({"block_type": "single", "block_index": 21}) == 21
    assert flux.single_block({"block_type": "double", "block_index": 1}) is None
    assert flux.single_block({"block": ("output", 4)}) is None
    layout = flux.FluxLayout(19, 38, 3072, 24)
    assert flux.blocks_of(flux.DEFAULT_BLOCKS, layout) == tuple(range(20, 38))
    assert flux.blocks_of("0, 5,7-9;7", layout) == (0, 5, 7, 8, 9)
    assert flux.blocks_of("", layout) == ()
    with pytest.raises(errors.PnPInputError, match="single blocks 0-37"):
        flux.blocks_of("30-38", layout)
    with pytest.raises(errors.PnPInputError, match="runs backwards"):
        flux.blocks_of("37-20", layout)
    assert flux.DEFAULTS == {"Flux": {"attn_v": "20-37"}, "FluxSchnell": {"attn_v": "20-37"}}


def test_bank_size_formula_against_the_official_store():
    """1024 px FLUX.1-dev (4,096 image + 512 text tokens, hidden 3,072), bf16: RF-Solver-Edit's 18 blocks x 2
    evaluations = 1,019,215,872 bytes a step (the official store's figure); FireFlow's scripts (38 blocks, midpoint,
    inject 1) 1,075,838,976; the pack records only the chosen steps and blocks."""
    assert flux.bank_bytes(4608, 3072, 18, 2, 1, 2) == 1_019_215_872
    assert flux.bank_bytes(4608, 3072, 18, 2, 20, 2) == 20_384_317_440
    assert flux.bank_bytes(4608, 3072, 38, solvers.EVALUATIONS_PER_STEP["fireflow"], 1, 2) == 1_075_838_976
    assert flux.bank_bytes(4608, 3072, 18, 2, 3, 4) == 2 * flux.bank_bytes(4608, 3072, 18, 2, 3, 2)


class Field:
    """dx/dt = a x (exact: x(t1) = x(t0) exp(a (t1 - t0))), counting calls and the times asked."""

    def __init__(self, a: float = -0.7):
        self.a, self.times = a, []

    def __call__(self, x, sigma, **extra):
        self.times.append(float(sigma[0]))
        return self.a * x


@pytest.mark.parametrize("solver", solvers.SOLVERS)
def test_solvers_follow_the_flow_with_their_order_and_nfe(solver):
    x0 = torch.ones(1, 2, dtype=torch.float64)
    errors_by_steps = {}
    for steps in (4, 8):
        sigmas = torch.linspace(0, 1, steps + 1)
        field = Field()
        x1 = solvers.FUNCTIONS[solver](field, x0, sigmas)
        assert len(field.times) == solvers.model_calls(solver, steps)
        errors_by_steps[steps] = (x1 - math.exp(field.a)).abs().max().item()
    ratio = errors_by_steps[4] / errors_by_steps[8]
    assert (1.7 < ratio < 2.3) if solver == "euler" else (3.4 < ratio < 4.6), (solver, errors_by_steps)


def test_fireflow_reuses_the_midpoint_velocity_within_a_pass_only():
    field = Field()
    sigmas = torch.tensor([0.0, 0.25, 0.5])
    solvers.fireflow(field, torch.ones(1, 1), sigmas)
    assert field.times == [0.0, 0.125, 0.375]  # first evaluation in step 0 only
    field.times.clear()
    solvers.fireflow(field, torch.ones(1, 1), sigmas.flip(0))
    assert field.times == [0.5, 0.375, 0.125]  # a new pass evaluates its first step again
    field.times.clear()
    solvers.rf_solver(field, torch.ones(1, 1), sigmas)
    assert field.times == [0.0, 0.125, 0.25, 0.375]


def test_the_bank_is_immutable_and_checks_its_model():
    values = {(0, True, 20): torch.zeros(1, 1, 3, 4)}
    inputs = {(0, True): (torch.zeros(1, 16, 2, 2), 0.75)}
    inversion = flux_bank.FluxInversion("Flux", "abc", "fireflow", (1.0, 0.5, 0.0), torch.zeros(1, 16, 2, 2), inputs)
    bank = flux_bank.FluxBank(inversion, (20,), 1, values, 1)
    values[(1, True, 20)] = torch.zeros(1)
    inputs[(1, True)] = (torch.zeros(1), 0.25)
    assert set(inversion.inputs) == {(0, True)} and bank.solver == "fireflow" and bank.times == (1.0, 0.5, 0.0)
    assert set(bank.values) == {(0, True, 20)} and bank.nbytes == 48 and bank.steps == 2
    assert bank.value(0, True, 20) is not None and bank.value(0, False, 20) is None
    with pytest.raises(TypeError):
        bank.values[(2, True, 20)] = torch.zeros(1)
    with pytest.raises(AttributeError):
        bank.inject = 2
    bank.check_model("Flux", "abc")
    with pytest.raises(errors.PnPInputError, match=r"This FLUX bank was made with another model \(Flux\); connect"):
        bank.check_model("FluxSchnell", "abc")


def test_fireflow_strategies_are_read_in_the_official_order_and_checked():
    """``flux_edit`` / ``qkv_ratio`` (FireFlow's --editing_strategy / --qkv_ratio): strategies kept in the order the
    official code applies them, the tensors they name recorded, FireFlow's space-separated strings accepted, a
    token or ratio it cannot read refused naming what it takes; the default is ``FluxEdit()`` (--reuse_v 1)."""
    edit = flux.edit_of("add_q, replace_v add_k", "0.5,2,1")
    assert edit.strategies == ("replace_v", "add_k", "add_q") and edit.ratio == (0.5, 2.0, 1.0)
    assert edit.recorded == ("q", "k", "v") and [edit.scale(w) for w in "qkv"] == [0.5, 2.0, 1.0]
    assert edit.tensors() == "q, k, V" and edit.describe() == "replace_v, add_k, add_q, ratio 0.5,2,1"
    default = flux.edit_of(flux.DEFAULT_EDIT, flux.DEFAULT_QKV_RATIO)
    assert default == flux.FluxEdit() and default.recorded == ("v",) and default.describe() == "replace_v"
    assert flux.edit_of("replace_k", "1,1,1").recorded == ("k",)
    for text in ("replace_x", "replace_v,bad", "", " , ", "add q"):
        with pytest.raises(errors.PnPInputError, match="flux_edit takes a comma-separated choice among replace_v, "
                                                       "add_v, replace_k, add_k, replace_q, add_q"):
            flux.edit_of(text, "1,1,1")
    for text in ("1,1", "1,1,1,1", "1,nan,1", "1,x,1", ""):
        with pytest.raises(errors.PnPInputError, match="qkv_ratio takes three finite numbers"):
            flux.edit_of("add_v", text)


def test_a_strategys_tensors_are_keyed_by_their_letter_v_as_before():
    """V under (interval, second, block) as every bank of the default strategy; q and k with their letter."""
    assert flux_bank.tensor_key(0, True, 20) == flux_bank.tensor_key(0, True, 20, "v") == (0, True, 20)
    assert flux_bank.tensor_key(0, True, 20, "q") == (0, True, 20, "q")
    inversion = flux_bank.FluxInversion("Flux", "abc", "fireflow", (1.0, 0.5, 0.0), torch.zeros(1, 16, 2, 2), {})
    values = {(0, True, 20, "q"): torch.ones(1, 1, 3, 4), (0, True, 20, "k"): torch.zeros(1, 1, 3, 4)}
    bank = flux_bank.FluxBank(inversion, (20,), 1, values, 1, flux.edit_of("add_q,add_k", "1,1,1"))
    assert torch.equal(bank.value(0, True, 20, "q"), torch.ones(1, 1, 3, 4)) and bank.value(0, True, 20) is None
    assert bank.nbytes == 96 and "add_k, add_q: 2 tensors (q, k)" in bank.summary()
