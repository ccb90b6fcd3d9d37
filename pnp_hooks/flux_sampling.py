"""PnP on FLUX.1 (RF-Solver-Edit / FireFlow), run with ComfyUI's own sampling machinery.

Two passes, each through ``comfy.samplers.CFGGuider`` (cfg 1: FLUX has no CFG) on a patched clone of the
MODEL, with a ``flow_solvers`` KSAMPLER function over the official schedule (``families.flux.schedule``):

- ``invert``: from t = 0 to 1 with the source conditioning at FLUX guidance 1; an ``attn1_patch`` records
  V (single-stream blocks, (B, heads, text + image tokens, head_dim)) of the evaluations of the ``inject``
  noisiest intervals into a ``FluxBank`` (immutable), keyed by interval and first/second evaluation, both
  found from the sigma ComfyUI passes (``families.flux.evaluation_key``), never from a call counter. A FireFlow
  editing strategy (``families.flux.FluxEdit``) records the q (after the QK norm), k and/or V it names instead,
  times their ratios; the denoising pass replaces or adds them in the official order (``_VPatch``).
- ``sample``: from the inverted noise (t = 1 to 0) with the target conditioning at the user's guidance; the
  ``attn1_patch`` returns ``{"v": recorded V}`` wherever the bank holds one under the evaluation's key. With a
  mask or an injection strength below 1 it returns a blend instead, ``lerp(own V, recorded V, w)`` per token
  (``token_weights``): image tokens (the packed 2x2 latent patches, row-major after the text tokens) take the
  weight map (``masks.injection_weight_map``) area-averaged over their patch, times the strength; text tokens,
  which have no place in the image, take the strength times the map's largest weight (the strength itself for
  any mask that is 1 somewhere; 0 for a mask of zeros with outside strength 0, so such a mask injects nothing).
- ``guider`` (PnP Guider): the same injection for ComfyUI's own samplers (SamplerCustomAdvanced): CFGGuider
  (cfg 1) on a clone carrying ``sample``'s patch but the model's own model_sampling, sigmas = the bank's times,
  started at the inverted latent by a NOISE (``start_noise``). Injection follows the sigma: an evaluation at a
  bank time injects that key's V, one elsewhere (dpm_2's midpoints) nothing. On the fly, a PREDICT_NOISE wrapper
  runs the source call before each injected evaluation instead of the solver.
- On the fly (``live_bank``, mode ``bank.ON_THE_FLY``): the bank holds no V; the guider carries the source
  conditioning as one more conditioning (``live_source.SOURCE_COND``) and, just before each denoising evaluation
  that injects, the solver runs the model once on the inversion's stored input under the same key (source prompt,
  guidance 1, recording V at the blocks as ``record_bank`` does), hands that V to the ``attn1_patch`` and drops it
  after the evaluation.

The clones get a model_sampling whose ``calculate_denoised`` hands the solvers FLUX's velocity as it is
(the official solvers need v at t = 0, where x - t v says nothing) and whose final rescale is the identity
(inversion ends at t = 1). ComfyUI's FLUX blocks call ``attn1_patch`` from v0.33 on: older hosts are
refused with one line. The MODEL a caller gives is never changed.
"""
from __future__ import annotations

import copy
from functools import partial

import torch

import comfy.model_management
import comfy.samplers
import comfy.utils
import latent_preview

from . import families, flow_solvers, host_api, patcher
from .bank import StartNoise
from .errors import PnPInputError
from .families import flux as flux_family
from .flux_bank import FluxBank, FluxInversion, FluxLiveBank, tensor_key
from .injection import mask_at_resolution
from .live_source import SOURCE_COND, check_conditioning

# The first ComfyUI whose FLUX blocks call attn1_patch (with block_type / block_index) that PnP was tested on.
MIN_COMFYUI_FOR_FLUX = (0, 33, 0)


def _version_tuple(version: str) -> tuple[int, ...] | None:
    try:
        return tuple(int(part) for part in version.split(".")[:3])
    except ValueError:
        return None


def check_host() -> None:
    """Refuse a ComfyUI whose FLUX blocks have no attn1_patch, naming the version needed."""
    version = host_api.comfyui_version()
    parsed = _version_tuple(version)
    if parsed is not None and parsed < MIN_COMFYUI_FOR_FLUX:
        needed = ".".join(map(str, MIN_COMFYUI_FOR_FLUX))
        raise PnPInputError(f"PnP on FLUX needs ComfyUI {needed} or newer (its FLUX blocks call attn1_patch); this "
                            f"ComfyUI is {version}: update ComfyUI (SD 1.x/2.x/SDXL work on this one).")


def is_flux(model) -> bool:
    """Whether the MODEL takes the FLUX path (PnPInputError for a model no family supports)."""
    return families.family_of(model) is flux_family


def noise_latent(model, inversion: FluxInversion) -> dict:
    """The inversion's end point (t = 1) as a LATENT, for other samplers."""
    return {"samples": model.get_model_object("latent_format").process_out(inversion.inverted.clone())}


def _fingerprint(model) -> str:
    return patcher.fingerprint(model, flux_family.FINGERPRINT_KEYS)


def check_model(model) -> flux_family.FluxLayout:
    """A FLUX MODEL this host can run PnP on: its layout; PnPInputError otherwise."""
    if families.family_of(model) is not flux_family:
        raise PnPInputError(f"This is the FLUX path of PnP; the MODEL connected is {families.variant_of(model)}.")
    check_host()
    _, layout, _ = flux_family.check_flux(model)
    return layout


def _check_latent(samples: torch.Tensor, model) -> None:
    channels = model.get_model_object("latent_format").latent_channels
    if samples.ndim != 4 or samples.shape[0] != 1 or samples.shape[1] != channels:
        raise PnPInputError(f"PnP on FLUX inverts one image latent of {channels} channels (encode it with the FLUX "
                            f"VAE, batch 1); got shape {list(samples.shape)}.")


def _with_guidance(conditioning, guidance: float | None):
    """The conditioning with FLUX guidance set (what the FluxGuidance node does), entries copied; ``guidance``
    None keeps the conditioning's own (a FluxGuidance node's, else ComfyUI's default)."""
    if guidance is None:
        return conditioning
    return [[tensor, {**options, "guidance": guidance}] for tensor, options in conditioning]


class _VelocityOut:
    """model_sampling mixin: the model's output (FLUX's velocity) as it is, no final rescale."""

    def calculate_denoised(self, sigma, model_output, model_input):
        return model_output

    def inverse_noise_scaling(self, sigma, latent):
        return latent


def _velocity_sampling(model):
    """A copy of the model's model_sampling that returns the velocity (the original is left as it is: a deep copy,
    so its buffers dict is not shared when ComfyUI moves the clone's copy between devices)."""
    sampling = model.get_model_object("model_sampling")
    velocity = copy.deepcopy(sampling)
    velocity.__class__ = type(f"PnPVelocity{type(sampling).__name__}", (_VelocityOut, type(sampling)), {})
    return velocity


class _VPatch:
    """The ``attn1_patch`` on FLUX single blocks: records V into ``recorded`` (inversion) or puts the bank's V in
    place of the target's (denoising). One per pass, on that pass's clone only. Under a FireFlow strategy
    (``edit``; denoising: the bank's) it records the q, k, V the strategy names, each times its ratio, and applies
    the strategies in the official order: replace (``lerp(own, recorded, w)``) or add (``own + w * recorded``)."""

    def __init__(self, times: tuple[float, ...], blocks: tuple[int, ...], inverse: bool, inject: int,
                 bank: FluxBank | None = None, storage_dtype: torch.dtype = torch.float32,
                 weights: torch.Tensor | None = None, edit: flux_family.FluxEdit = flux_family.FluxEdit()):
        self.times, self.blocks, self.inverse, self.inject = times, frozenset(blocks), inverse, inject
        self.bank, self.storage_dtype = bank, storage_dtype
        self.edit = bank.edit if bank is not None else edit
        # read once, not in each block of each evaluation: (tensor, ratio) recorded; (action, tensor) applied
        self._recording = tuple((which, self.edit.scale(which)) for which in self.edit.recorded)
        self._actions = tuple(tuple(strategy.split("_")) for strategy in self.edit.strategies)
        self.weights = weights  # None: replace V; else (text + image tokens,) blend weights (``token_weights``)
        self._weights_at: dict[tuple, torch.Tensor] = {}  # the weights on each (device, dtype) V came in, made once
        self.recorded: dict[tuple, torch.Tensor] = {}  # keyed by ``flux_bank.tensor_key``
        self.injected: list[tuple[int, bool, int]] = []

    def __deepcopy__(self, memo):
        # ModelPatcher.clone deep-copies model_options; the clone this patch lives on shares it.
        return self

    def __call__(self, q, k, v, pe=None, attn_mask=None, extra_options=None):
        block = flux_family.single_block(extra_options)
        if block is None or block not in self.blocks:
            return {}
        key = flux_family.evaluation_key(float(extra_options["sigmas"][0]), self.times, self.inverse)
        if key is None or key[0] >= self.inject:
            return {}
        key = key + (block,)
        own = {"q": q, "k": k, "v": v}
        if self.inverse:
            device = comfy.model_management.intermediate_device()
            for which, scale in self._recording:
                tensor = own[which] if scale == 1.0 else own[which] * scale  # ratio 1 (the default): as it is
                self.recorded[tensor_key(*key, which)] = tensor.detach().to(device=device, dtype=self.storage_dtype,
                                                                            copy=True)  # one copy
            return {}
        out = {}
        for action, which in self._actions:
            stored = self.bank.value(*key, which)
            if stored is None:
                continue
            if stored.shape[-2] != v.shape[-2]:
                raise PnPInputError(
                    f"The target conditioning gives {v.shape[-2] - (stored.shape[-2] - self.bank.source_tokens)} "
                    f"text tokens; the source had {self.bank.source_tokens}. Encode both prompts with the same text "
                    f"encoder settings.")
            out[which] = own[which] = self._apply(action, own[which], stored.to(v).expand_as(v))
        if out:
            self.injected.append(key)
        return out

    def _apply(self, action: str, own: torch.Tensor, stored: torch.Tensor) -> torch.Tensor:
        """``action`` ("replace", "add") of the recorded ``stored`` on the target's ``own``, weighted per token."""
        if self.weights is None:
            return stored if action == "replace" else own + stored
        weight = self._weights_at.get((own.device, own.dtype))
        if weight is None:  # not moved again in each block of each evaluation
            weight = self._weights_at[(own.device, own.dtype)] = self.weights.to(device=own.device,
                                                                                 dtype=own.dtype).view(1, 1, -1, 1)
        # lerp is exact at both ends: weight 1 gives the recorded tensor, weight 0 the target's own
        return torch.lerp(own, stored, weight) if action == "replace" else own + weight * stored


def _clone(model, patch: _VPatch):
    return patcher.with_attn1_patch_and_sampling(model, patch, _velocity_sampling(model))


def _run(clone, conditioning, function, noise: torch.Tensor, latent: torch.Tensor, times: torch.Tensor,
         steps: int, source=None):
    """One pass of the KSAMPLER ``function`` through ComfyUI's CFGGuider (cfg 1): the pass's end point in model
    space (float32, CPU) and the guider's output (LATENT space). ``source``: the source conditioning of an
    on-the-fly bank, carried by the guider under ``SOURCE_COND`` (processed by ComfyUI with the target's);
    ``function`` is then also given the guider (``guider=``) to run it."""
    kept = {}
    guider = comfy.samplers.CFGGuider(clone)
    with_guider = {} if source is None else {"guider": guider}

    def solve(model, x, sigmas, extra_args=None, callback=None, disable=None):
        kept["x"] = function(model, x, sigmas, extra_args, callback, disable,
                             check_interrupt=comfy.model_management.throw_exception_if_processing_interrupted,
                             **with_guider)
        return kept["x"]

    guider.set_conds(conditioning, [])
    if source is not None:
        guider.inner_set_conds({SOURCE_COND: source})
    guider.set_cfg(1.0)
    callback = latent_preview.prepare_callback(clone, steps)
    out = guider.sample(noise, latent, comfy.samplers.KSAMPLER(solve), times, callback=callback,
                        disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=0)
    return kept["x"].float().cpu(), out


def _observing(solver: str, times: tuple[float, ...], inputs: dict):
    """The solver, keeping the input (latent, time) of every model evaluation under its key (inversion)."""
    function = flow_solvers.FUNCTIONS[solver]

    def observed(model, x, sigmas, extra_args=None, callback=None, disable=None, check_interrupt=None):
        def evaluate(latent, sigma, **kwargs):
            time = float(sigma[0])
            inputs[flux_family.evaluation_key(time, times, inverse=True)] = (latent.to(device="cpu", dtype=torch.float32, copy=True), time)
            return model(latent, sigma, **kwargs)

        return function(evaluate, x, sigmas, extra_args, callback, disable, check_interrupt)

    return observed


def _check_recording(solver: str, steps: int, inject: int) -> None:
    if solver not in flow_solvers.SOLVERS:
        raise PnPInputError(f"solver must be one of {', '.join(flow_solvers.SOLVERS)}, got {solver!r}.")
    if not 0 <= inject <= steps:
        raise PnPInputError(f"inject must be between 0 and the steps ({steps}), got {inject}.")


def invert(model, samples: torch.Tensor, conditioning, steps: int, solver: str = flow_solvers.RF_SOLVER,
           blocks: str = flux_family.DEFAULT_BLOCKS, inject: int = 0, storage_dtype: torch.dtype = torch.float32,
           edit: flux_family.FluxEdit = flux_family.FluxEdit()) -> FluxBank:
    """Invert a LATENT (1, 16, H, W) from t = 0 to 1 (source ``conditioning``, guidance 1), as the official code:
    V (or what the FireFlow strategy ``edit`` names) at the single ``blocks`` is recorded in the same pass for the
    first ``inject`` denoising steps (``inject`` 0: none; ``record_bank`` records from ``bank.inversion`` later).
    Returns the bank ``sample`` translates from."""
    layout = check_model(model)
    _check_latent(samples, model)
    _check_recording(solver, steps, inject)
    chosen = flux_family.blocks_of(blocks, layout)
    variant = families.variant_of(model)
    tokens = flux_family.image_tokens(tuple(samples.shape[-2:]))
    times = flux_family.schedule(steps, tokens, shift=flux_family.is_distilled_guidance(variant))
    as_floats = tuple(float(t) for t in times)
    patch = _VPatch(as_floats, chosen, inverse=True, inject=inject, storage_dtype=storage_dtype, edit=edit)
    source = _with_guidance(conditioning, flux_family.INVERSION_GUIDANCE)
    inputs = {}
    inverted, _ = _run(_clone(model, patch), source, _observing(solver, as_floats, inputs), torch.zeros_like(samples),
                       samples, times.flip(0), steps)
    inversion = FluxInversion(variant, _fingerprint(model), solver, as_floats, inverted, inputs)
    return FluxBank(inversion, chosen, inject, patch.recorded, int(conditioning[0][0].shape[1]), edit)


def _replay(model, x, sigmas, extra_args=None, callback=None, disable=None, check_interrupt=None, inputs=()):
    """KSAMPLER function: the model on each stored (latent, time) of ``inputs`` (the source pass of a bank);
    ``x`` is returned unchanged."""
    extra_args = {} if extra_args is None else extra_args
    for i, (latent, time) in enumerate(inputs):
        if check_interrupt is not None:
            check_interrupt()
        model(latent.to(x), torch.full((x.shape[0],), time, dtype=torch.float32, device=x.device), **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": torch.tensor(time), "sigma_hat": torch.tensor(time), "denoised": x})
    return x


def record_bank(model, inversion: FluxInversion, conditioning, blocks: str = flux_family.DEFAULT_BLOCKS,
                inject: int = 3, storage_dtype: torch.dtype = torch.float32,
                edit: flux_family.FluxEdit = flux_family.FluxEdit()) -> FluxBank:
    """Record V (or what the FireFlow strategy ``edit`` names) at the single ``blocks`` for the first ``inject``
    denoising steps from a stored inversion: the model runs again on the inputs the inversion evaluated (source
    ``conditioning``, guidance 1), so the bank is the one the inversion would have recorded (bit for bit on the same
    device), at one model call per recorded evaluation."""
    layout = check_model(model)
    inversion.check_model(families.variant_of(model), _fingerprint(model))
    _check_recording(inversion.solver, inversion.steps, inject)
    chosen = flux_family.blocks_of(blocks, layout)
    patch = _VPatch(inversion.times, chosen, inverse=True, inject=inject, storage_dtype=storage_dtype, edit=edit)
    wanted = [inversion.inputs[key] for key in sorted(inversion.inputs) if key[0] < inject] if chosen else []
    if wanted:
        source = _with_guidance(conditioning, flux_family.INVERSION_GUIDANCE)
        shape = inversion.inverted.shape
        replay = partial(_replay, inputs=tuple(wanted))
        sigmas = torch.tensor([time for _, time in wanted] + [0.0], dtype=torch.float32)
        _run(_clone(model, patch), source, replay, torch.zeros(shape), torch.zeros(shape), sigmas, len(wanted))
    return FluxBank(inversion, chosen, inject, patch.recorded, int(conditioning[0][0].shape[1]), edit)


def live_bank(model, inversion: FluxInversion, conditioning, blocks: str = flux_family.DEFAULT_BLOCKS,
              inject: int = 3, storage_dtype: torch.dtype = torch.float32,
              edit: flux_family.FluxEdit = flux_family.FluxEdit()) -> FluxLiveBank:
    """The bank "on the fly" (``bank.ON_THE_FLY``) of a stored inversion: ``record_bank``'s arguments, nothing
    recorded now. ``sample`` computes the V of each injected evaluation just before the denoising evaluation that
    reads it: one model call on the inversion's stored input under that key with the source ``conditioning`` (one
    plain prompt) at guidance 1, V at the single ``blocks`` kept in ``storage_dtype``, injected, then dropped. The
    translation is the stored bank's bit for bit (same device); it costs one model call per injected evaluation
    (``FluxLiveBank.source_keys``) and holds one evaluation's V (``peak_nbytes``) instead of all of them
    (``stored_nbytes``)."""
    layout = check_model(model)
    inversion.check_model(families.variant_of(model), _fingerprint(model))
    _check_recording(inversion.solver, inversion.steps, inject)
    check_conditioning(conditioning)
    chosen = flux_family.blocks_of(blocks, layout)
    return FluxLiveBank(inversion, chosen, inject, conditioning, storage_dtype, int(conditioning[0][0].shape[1]),
                        layout.hidden_size, edit)


class _LiveSource:
    """Per-run state of an on-the-fly bank's denoising pass (made by ``sample``, dropped with it): the V (or the
    strategy's tensors) of the evaluation about to run, which ``_VPatch`` reads through ``value`` as it reads a
    stored bank."""

    def __init__(self, bank: FluxLiveBank, active: bool):
        self.bank, self.source_tokens, self.edit = bank, bank.source_tokens, bank.edit
        self.keys = frozenset(bank.source_keys) if active else frozenset()
        self.current: dict[tuple, torch.Tensor] = {}

    def value(self, interval: int, second: bool, block: int, which: str = "v") -> torch.Tensor | None:
        return self.current.get(tensor_key(interval, second, block, which))

    def around(self, evaluate, guider, x: torch.Tensor, sigma: torch.Tensor, model_options: dict,
               injecting: _VPatch):
        """``evaluate()`` (one denoising evaluation at ``sigma`` of ``x``) with the V of the inversion's evaluation
        under the same key in ``current`` while it runs (nothing for a key the bank does not inject)."""
        key = flux_family.evaluation_key(float(sigma[0]), self.bank.times, inverse=False)
        if key in self.keys:
            self.current = self._source_values(guider, key, x, model_options, injecting)
        try:
            return evaluate()
        finally:
            self.current = {}

    def solver(self, injecting: _VPatch):
        """The bank's solver as a KSAMPLER function that computes each injected evaluation's V just before it."""
        function = flow_solvers.FUNCTIONS[self.bank.solver]

        def solve(model, x, sigmas, extra_args=None, callback=None, disable=None, check_interrupt=None, guider=None):
            def evaluate(latent, sigma, **kwargs):
                return self.around(partial(model, latent, sigma, **kwargs), guider, latent, sigma,
                                   kwargs.get("model_options", {}), injecting)

            return function(evaluate, x, sigmas, extra_args, callback, disable, check_interrupt)

        return solve

    def predict_noise_wrapper(self, injecting: _VPatch):
        """The same for any ComfyUI sampler (PnP Guider): a PREDICT_NOISE wrapper (one call per evaluation, the
        guider as its executor's object)."""

        def wrapper(executor, x, timestep, model_options={}, *args, **kwargs):
            return self.around(partial(executor, x, timestep, model_options, *args, **kwargs), executor.class_obj,
                               x, timestep, model_options, injecting)

        return wrapper

    def _source_values(self, guider, key: tuple[int, bool], x: torch.Tensor, model_options: dict,
                       injecting: _VPatch) -> dict:
        """V at the bank's blocks of the inversion's evaluation ``key``: the model on its stored (latent, time) with
        the guider's source conditioning, this pass's options with the recording patch in place of ``injecting``
        (what ``record_bank``'s replay runs)."""
        latent, time = self.bank.inversion.inputs[key]
        recording = _VPatch(self.bank.times, self.bank.blocks, inverse=True, inject=self.bank.inject,
                            storage_dtype=self.bank.storage_dtype, edit=self.bank.edit)
        transformer_options = dict(model_options.get("transformer_options", {}))
        patches = dict(transformer_options.get("patches", {}))
        patches["attn1_patch"] = [p for p in patches.get("attn1_patch", []) if p is not injecting] + [recording]
        transformer_options["patches"] = patches
        options = {**model_options, "transformer_options": transformer_options}
        sigma = torch.full((x.shape[0],), time, dtype=torch.float32, device=x.device)
        comfy.samplers.calc_cond_batch(guider.inner_model, [guider.conds[SOURCE_COND]], latent.to(x), sigma, options)
        return recording.recorded


def token_weights(weight_map: torch.Tensor | None, strength: float, latent_hw: tuple[int, int],
                  text_tokens: int) -> torch.Tensor | None:
    """The blend weight of each token of a single block's joint sequence (text first, then the image tokens, one per
    2x2 latent patch in row-major order), float32 (text + image tokens,); None for plain replacement (no map and
    strength 1). ``weight_map``: ``masks.injection_weight_map``'s (1, H, W) at pixel or latent size, area-averaged
    to the token grid (``injection.mask_at_resolution``); text tokens take ``strength`` times the map's largest
    weight (module docstring)."""
    if weight_map is None and strength == 1.0:
        return None
    grid = flux_family.token_grid(latent_hw)
    if weight_map is None:
        image, text = torch.full((grid[0] * grid[1],), float(strength)), float(strength)
    else:
        if weight_map.shape[0] != 1:
            raise PnPInputError(f"PnP on FLUX translates one image: connect one mask (got {weight_map.shape[0]}).")
        image = mask_at_resolution(weight_map, grid).reshape(-1) * strength
        text = float(weight_map.max()) * strength
    return torch.cat([torch.full((text_tokens,), text), image.float()])


def _denoising_patch(model, bank: FluxBank | FluxLiveBank, conditioning, inject: bool,
                     weight_map: torch.Tensor | None, strength: float, live: _LiveSource | None = None) -> _VPatch:
    """The ``attn1_patch`` of a denoising pass of ``bank`` with the target ``conditioning`` (checks the model and
    the strength; blend weights by ``token_weights``)."""
    check_model(model)
    bank.check_model(families.variant_of(model), _fingerprint(model))
    if not 0.0 <= strength <= 1.0:
        raise PnPInputError(f"injection_strength must be in [0, 1], got {strength}.")
    weights = token_weights(weight_map, strength, tuple(bank.inverted.shape[-2:]),
                            int(conditioning[0][0].shape[1]))
    return _VPatch(bank.times, bank.blocks if inject else (), inverse=False, inject=bank.inject,
                   bank=bank if live is None else live, weights=weights)


def sample(model, bank: FluxBank | FluxLiveBank, conditioning, guidance: float | None = flux_family.DEFAULT_GUIDANCE,
           inject: bool = True, weight_map: torch.Tensor | None = None,
           strength: float = 1.0) -> tuple[dict, list[tuple[int, bool, int]]]:
    """Denoise the bank's inverted noise (t = 1 to 0) with the target ``conditioning`` at FLUX ``guidance`` (None:
    the conditioning's own, as set by FluxGuidance), putting the bank's V in place wherever it holds one (``inject``
    False: plain denoising). ``weight_map`` (``masks.injection_weight_map``, (1, H, W), None: everywhere) and
    ``strength`` in [0, 1] blend the recorded V with the target's own per token (``token_weights``); no map and
    strength 1 is the official replacement, bit for bit. An on-the-fly bank (``live_bank``) computes each injected V
    just before the evaluation that reads it. Returns the LATENT and the keys injected, in order."""
    live = _LiveSource(bank, inject) if isinstance(bank, FluxLiveBank) else None
    patch = _denoising_patch(model, bank, conditioning, inject, weight_map, strength, live)
    target = _with_guidance(conditioning, guidance)
    times = torch.tensor(bank.times, dtype=torch.float32)
    function, source = flow_solvers.FUNCTIONS[bank.solver], None
    if live is not None:
        function, source = live.solver(patch), _with_guidance(bank.conditioning, flux_family.INVERSION_GUIDANCE)
    _, out = _run(_clone(model, patch), target, function, bank.inverted, torch.zeros_like(bank.inverted), times,
                  bank.steps, source=source)
    return {"samples": out}, patch.injected


def guider(model, bank: FluxBank | FluxLiveBank, conditioning, weight_map: torch.Tensor | None = None,
           strength: float = 1.0) -> comfy.samplers.CFGGuider:
    """PnP Guider on FLUX: ComfyUI's own CFGGuider (cfg 1) with the target ``conditioning`` (its own FLUX guidance)
    on a clone carrying ``sample``'s V patch, with the model's own model_sampling (ComfyUI's samplers read the
    denoised latent x - t v). An evaluation at a time of the bank's schedule (``families.flux.evaluation_key``)
    injects what the bank recorded under its key, blended as in ``sample``; one at any other time injects nothing.
    Sample it on ``bank.times`` from ``start_noise``. A bank on the fly: the guider carries its source prompt
    (``SOURCE_COND``) and a PREDICT_NOISE wrapper computes each injected evaluation's V just before it, as
    ``sample``'s solver does."""
    live = _LiveSource(bank, True) if isinstance(bank, FluxLiveBank) else None
    patch = _denoising_patch(model, bank, conditioning, True, weight_map, strength, live)
    wrapper = None if live is None else live.predict_noise_wrapper(patch)

    def each_run(executor, *args, **kwargs):
        patch.injected.clear()  # ComfyUI may sample a cached guider again: the keys of this run only
        return executor(*args, **kwargs)

    cfg_guider = comfy.samplers.CFGGuider(patcher.with_attn1_patch(model, patch, wrapper, each_run))
    cfg_guider.set_conds(conditioning, [])
    if live is not None:
        cfg_guider.inner_set_conds({SOURCE_COND: _with_guidance(bank.conditioning, flux_family.INVERSION_GUIDANCE)})
    cfg_guider.set_cfg(1.0)
    return cfg_guider


def bank_sigmas(bank: FluxBank | FluxLiveBank) -> torch.Tensor:
    """The sigmas of the bank's schedule, (steps + 1,) float32 from 1 to 0: FLUX's sigma is its time t."""
    return torch.tensor(bank.times, dtype=torch.float32)


def start_noise(bank: FluxBank | FluxLiveBank) -> StartNoise:
    """The NOISE that starts ComfyUI's samplers at the inverted latent: at sigma 1 FLUX's noise scaling
    (sigma * noise + (1 - sigma) * latent_image) is the noise itself."""
    return StartNoise(bank.inverted)
