"""Injection and recording at the sites, and both feature sources, on plain tensors (pure torch)."""
from __future__ import annotations

import pytest
import torch

from pure import pure

injection, sources, live_source = pure("injection"), pure("sources"), pure("live_source")
bank, layers, schedule, errors = pure("bank"), pure("layers"), pure("schedule"), pure("errors")
unet = pure("families.unet")
RES, ATT = unet.RESBLOCK, unet.ATTENTION

SITES = layers.LayerSites(unet.KINDS, {"resblock": (4,), "attention": ((4, 0), (5, 0))})


def test_branch_map():
    assert [injection.branch_of(c, bank.SOURCE_SINGLE) for c in (0, 1, 2)] == [0, 0, 0]
    # A generated guidance image: cond reads "cond", the uncond and the paper's negative read "uncond".
    assert [injection.branch_of(c, bank.SOURCE_CFG) for c in (0, 1, 2)] == [1, 0, 0]


def test_blend_is_exact_at_both_ends():
    target, source = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    assert injection.Blend(1.0)(target, source, (4, 4), 2) is source
    assert torch.equal(injection.Blend(0.0)(target, source, (4, 4), 2), target)
    mask = torch.zeros(1, 8, 8)
    mask[..., :4] = 1.0
    out = injection.Blend(1.0, mask)(target, source, (4, 4), 2)
    assert torch.equal(out[..., :2], source[..., :2]) and torch.equal(out[..., 2:], target[..., 2:])
    tokens = injection.Blend(1.0, mask)(target.flatten(2).transpose(1, 2), source.flatten(2).transpose(1, 2),
                                        (4, 4), 1)
    assert torch.equal(tokens.transpose(1, 2).reshape(2, 3, 4, 4)[..., :2], source[..., :2])


def _stored(branches=bank.SOURCE_CFG, steps=3):
    g = torch.Generator().manual_seed(0)
    b = len(branches)
    return sources.StoredSource({"resblock": {4: torch.randn(steps, b, 3, 4, 4, generator=g)},
                                 "attention": {(4, 0): torch.randn(steps, b, 16, 3, generator=g),
                                               (5, 0): torch.randn(steps, b, 16, 3, generator=g)}}, branches)


def test_injector_takes_each_rows_branch_in_calls_of_any_chunk_order():
    source = _stored()
    plan = schedule.InjectionPlan(3, 2, 1)
    injector = injection.Injector(SITES, source, plan, (3, 3))
    assert injector.step_context([2], None) is None  # past both thresholds
    assert injector.step_context([0, 1], None) is None  # rows at different steps never inject
    step = injector.step_context([1], None)
    assert (step.injects["resblock"], step.injects["attention"]) == (True, False)
    call = step.plan_call([1, 0], 2)  # uncond first, as ComfyUI batches them
    assert call.row_branches == (0, 1)
    h = torch.zeros(2, 3, 4, 4)
    assert torch.equal(call.at(RES, 4, h, (4, 4)), source.stored["resblock"][4][1][[0, 1]])
    n = torch.zeros(2, 16, 3)
    assert call.at(ATT, (4, 0), n, (4, 4)) is n  # attention stops after step 0
    assert injector.step_context([0], None).plan_call([0], 1).row_branches == (1,)


def test_injector_refuses_thresholds_the_bank_did_not_record():
    with pytest.raises(errors.PnPInputError, match="holds only 2 and 1"):
        injection.Injector(SITES, _stored(), schedule.InjectionPlan(3, 3, 1), (2, 1))


def test_recorder_keeps_each_row_under_its_step_and_branch():
    recorder = injection.Recorder(SITES, 2, 1, bank.SOURCE_SINGLE)
    assert recorder.step_context([5, 6], None) is None
    context = recorder.step_context([0, 1], None)  # one source call holding two timesteps
    call = context.plan_call([0], 2)
    h = torch.arange(2 * 3 * 16, dtype=torch.float32).reshape(2, 3, 4, 4)
    assert call.at(RES, 4, h, (4, 4)) is h
    call.at(ATT, (4, 0), h.flatten(2).transpose(1, 2), (4, 4))
    with pytest.raises(RuntimeError, match="missing"):
        recorder.build()  # attention site (5, 0) was never seen
    call.at(ATT, (5, 0), h.flatten(2).transpose(1, 2), (4, 4))
    built = recorder.build()
    resblock, attention = built["resblock"], built["attention"]
    assert resblock[4].shape == (2, 1, 3, 4, 4) and torch.equal(resblock[4][1, 0], h[1])
    assert attention[(4, 0)].shape == (1, 1, 16, 3)  # one attention step recorded
    assert set(recorder.step_features(0).tensors["attention"]) == {(4, 0), (5, 0)}


def test_stored_source_gives_step_slices_and_its_size():
    source = _stored(bank.SOURCE_SINGLE)
    features = source.features_at(2, None)
    assert torch.equal(features.tensors["resblock"][4], source.stored["resblock"][4][2])
    assert source.nbytes == (3 * 48 + 2 * 3 * 48) * 4
    assert source.mode == "stored" and source.guider_conds() == {}
    with pytest.raises(TypeError):
        source.stored["resblock"][5] = torch.zeros(1)  # read-only


class FakeEvaluation:
    """Stands in for patcher.Evaluation: runs "the source pass" by calling the sites with known tensors."""

    def __init__(self):
        self.runs = []

    def latent_in(self, latents):
        return latents * 2

    def run_alone(self, cond_key, x, sites):
        self.runs.append((cond_key, x))
        call = sites.plan_call([0], 1)
        call.at(RES, 4, torch.full((1, 3, 4, 4), float(x.sum())), (4, 4))
        call.at(ATT, (4, 0), torch.ones(1, 16, 3), (4, 4))
        call.at(ATT, (5, 0), torch.zeros(1, 16, 3), (4, 4))


def test_live_source_runs_the_steps_source_pass_alone_and_keeps_its_tensors():
    latents = torch.ones(3, 4, 2, 2)
    trajectory = bank.Trajectory(bank.ModelIdentity("SD15", "eps", "f"), (981, 481, 1), latents, 3, "inverted")
    live = live_source.LiveSource(trajectory, SITES, [["prompt", {}]])
    evaluation = FakeEvaluation()
    features = live.features_at(1, evaluation)
    [(key, x)] = evaluation.runs
    assert key == live_source.SOURCE_COND and torch.equal(x, latents[1:2] * 2)
    assert torch.equal(features.tensors["resblock"][4], torch.full((1, 3, 4, 4), 32.0))
    assert features.branches == bank.SOURCE_SINGLE
    assert live.nbytes == 0 and not live.stored and live.guider_conds() == {live_source.SOURCE_COND:
                                                                              [["prompt", {}]]}


def test_live_source_takes_one_plain_prompt_only():
    live_source.check_conditioning([["c", {"pooled_output": None}]])
    with pytest.raises(errors.PnPInputError, match="exactly one source prompt"):
        live_source.check_conditioning([["a", {}], ["b", {}]])
    with pytest.raises(errors.PnPInputError, match="area"):
        live_source.check_conditioning([["a", {"area": (8, 8, 0, 0)}]])


def test_source_pass_calls_hold_few_timesteps_of_large_images_and_many_of_small_ones():
    batching = pure("batching")
    assert batching.rows_per_call(41, (8, 8), 16) == 16  # 64 px: calls are mostly overhead
    assert batching.rows_per_call(41, (16, 16), 16) == 4  # 128 px
    assert batching.rows_per_call(41, (32, 32), 16) == 1  # 256 px: Cancel waits for one timestep at most
    assert batching.rows_per_call(41, (64, 64), 16) == 1
    assert batching.rows_per_call(3, (8, 8), 16) == 3 and batching.rows_per_call(41, (8, 8), 5) == 5  # memory
    assert batching.rows_per_call(41, (64, 64), 16, batch_size=8) == 8  # a batch_size the user chose is kept
