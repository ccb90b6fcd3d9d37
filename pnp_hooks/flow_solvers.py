"""Rectified-flow solvers of RF-Solver-Edit and FireFlow, as ComfyUI KSAMPLER functions.

Each is ``f(model, x, sigmas, extra_args=None, callback=None, disable=None, check_interrupt=None)`` as
``comfy.samplers.KSAMPLER`` calls it, with one difference: ``model(x, sigma)`` must return the VELOCITY
v (FLUX's raw output), not a denoised latent (``flux_sampling`` gives the clone a model_sampling that
does). Inversion and denoising are the same function: ``sigmas`` ascend (0 -> 1) or descend (1 -> 0);
the step is x' = x + (t' - t) * velocity.

- ``rf_solver`` (RF:sampling.py:77-136): v = v(x, t); x_mid = x + dt/2 v; v_mid = v(x_mid, t + dt/2);
  x += dt v + dt^2/2 (v_mid - v)/(dt/2). Two model calls a step.
- ``fireflow`` (FF:sampling.py:185-248): the same midpoint step, but step i > 0 takes step i-1's v_mid as
  its v (no call); x += dt v_mid. N + 1 calls a pass. The carried velocity lives in one call of the
  function: it never crosses from the inversion to the denoising pass.
- ``euler`` (FF:sampling.py:77-120, "reflow"): x += dt v(x, t). One call a step.

Times go to the model as float32 like the official code (Python floats of the float32 schedule,
midpoints computed in double and cast). Pure: no ComfyUI imports (``check_interrupt`` is ComfyUI's Cancel,
passed in).
"""
from __future__ import annotations

from collections.abc import Callable

import torch

RF_SOLVER, FIREFLOW, EULER = "rf-solver", "fireflow", "euler"
SOLVERS = (RF_SOLVER, FIREFLOW, EULER)
# Model evaluations a step keeps as separate features: RF-Solver's first and midpoint; FireFlow's midpoint (its
# first evaluation runs only in step 0); Euler's one.
EVALUATIONS_PER_STEP = {RF_SOLVER: 2, FIREFLOW: 1, EULER: 1}


def model_calls(solver: str, steps: int) -> int:
    """Model calls (NFE) of one pass of ``steps`` steps."""
    return {RF_SOLVER: 2 * steps, FIREFLOW: steps + 1, EULER: steps}[solver]


def _time(x: torch.Tensor, t: float) -> torch.Tensor:
    return torch.full((x.shape[0],), t, dtype=torch.float32, device=x.device)


def _report(callback, i: int, x: torch.Tensor, t: float, v: torch.Tensor) -> None:
    if callback is not None:
        sigma = torch.tensor(t)
        callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": x - t * v})


@torch.no_grad()
def _solve(solver: str, model, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None,
           callback, check_interrupt: Callable[[], None] | None) -> torch.Tensor:
    extra_args = {} if extra_args is None else extra_args
    times = [float(t) for t in sigmas]
    carried = None  # FireFlow: the last midpoint velocity, reused as the next step's first
    for i, (t_curr, t_next) in enumerate(zip(times[:-1], times[1:])):
        if check_interrupt is not None:
            check_interrupt()
        dt = t_next - t_curr
        v = model(x, _time(x, t_curr), **extra_args) if carried is None else carried
        _report(callback, i, x, t_curr, v)
        if solver == EULER:
            x = x + dt * v
            continue
        t_mid = t_curr + dt / 2
        v_mid = model(x + dt / 2 * v, _time(x, t_mid), **extra_args)
        if solver == FIREFLOW:
            carried = v_mid
            x = x + dt * v_mid
        else:
            x = x + dt * v + 0.5 * dt ** 2 * ((v_mid - v) / (dt / 2))
    return x


def rf_solver(model, x, sigmas, extra_args=None, callback=None, disable=None, check_interrupt=None):
    """RF-Solver (second order, 2 NFE a step) over ``sigmas``."""
    return _solve(RF_SOLVER, model, x, sigmas, extra_args, callback, check_interrupt)


def fireflow(model, x, sigmas, extra_args=None, callback=None, disable=None, check_interrupt=None):
    """FireFlow (midpoint with the previous midpoint velocity reused, N + 1 NFE a pass) over ``sigmas``."""
    return _solve(FIREFLOW, model, x, sigmas, extra_args, callback, check_interrupt)


def euler(model, x, sigmas, extra_args=None, callback=None, disable=None, check_interrupt=None):
    """Euler ("reflow", 1 NFE a step) over ``sigmas``."""
    return _solve(EULER, model, x, sigmas, extra_args, callback, check_interrupt)


FUNCTIONS = {RF_SOLVER: rf_solver, FIREFLOW: fireflow, EULER: euler}
