"""The only module that touches ComfyUI's ModelPatcher.

It reads model facts (family, prediction type, sigma table, latent format,
decoder layout, a fingerprint of the base weights) and returns patched
*clones*; the MODEL a node was given is never changed.

PnP patches on a clone, all under the key ``comfyui_pnp``:
- a DIFFUSION_MODEL wrapper: once per UNet call it asks the handler (an
  ``injection.Injector`` or ``injection.Recorder``) for a plan from the call's
  ``timesteps`` (derived by ComfyUI from the sigmas) and ``cond_or_uncond``,
  stores it in the call's ``transformer_options`` and, for that call only,
  hooks ``output_blocks[b][0].out_layers`` (the ResBlock residual branch,
  before the skip add). Hooks and plan are removed in ``finally``.
- an ``attn1_patch``: at the attention sites it hands ``n`` (the attn1 input
  after norm1, (rows, h*w, C)) to the handler and returns the result as the
  q/k input, keeping the target's own ``n`` for v. Attention itself stays
  ComfyUI's optimized attention, and any attn1 replace patch another node put
  on the model still runs (it receives the injected q and k).
- on the fly (a bank with no stored tensors): an APPLY_MODEL wrapper. When the
  call's ``transformer_options`` carry ``SourceRows`` (the PnP guider puts them
  there for injecting steps), it prepends the source row to the batch: x = the
  trajectory latent at this step, the same sigma, the source prompt's processed
  conds (cross-attention padded as ComfyUI pads it), zero ControlNet residuals;
  ``cond_or_uncond`` gains ``injection.SOURCE_CHUNK`` in front. ComfyUI then
  scales and casts all rows alike, the site hooks inject the source rows'
  tensors into the target rows, and the wrapper drops the source rows from the
  output.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import partial

import torch

import comfy.model_management
import comfy.model_sampling
import comfy.patcher_extension
import comfy.utils

from .bank import ModelIdentity
from .errors import PnPInputError
from .injection import SOURCE_CHUNK, control_with_source_rows, rows_per_chunk
from .layers import UNetLayout

PATCH_KEY = "comfyui_pnp"
# transformer_options key of the live source rows of one UNet call (on-the-fly mode).
SOURCE_KEY = f"{PATCH_KEY}.source"

SUPPORTED_FAMILIES = {"SD15": "SD 1.x", "SD20": "SD 2.x", "SDXL": "SDXL"}
_PREDICTIONS = {comfy.model_sampling.EPS: "eps", comfy.model_sampling.V_PREDICTION: "v"}
# Base weights that identify a checkpoint (LoRAs rarely touch these).
_FINGERPRINT_KEYS = ("diffusion_model.input_blocks.0.0.weight", "diffusion_model.out.2.weight",
                     "diffusion_model.time_embed.0.weight")


@dataclass(frozen=True)
class ModelFacts:
    identity: ModelIdentity
    layout: UNetLayout
    sigmas: torch.Tensor  # (1000,) float32: sigma of each training timestep
    latent_format: object  # comfy.latent_formats: process_in (LATENT -> model space), process_out

    def sigma(self, timestep: int) -> float:
        return float(self.sigmas[timestep])

    def sigmas_at(self, timesteps: list[int]) -> torch.Tensor:
        return self.sigmas[torch.tensor(timesteps, dtype=torch.long)]


def model_facts(model) -> ModelFacts:
    """Check the model is one PnP supports and describe it; raises PnPInputError otherwise."""
    base = model.model
    family = type(base.model_config).__name__
    if family not in SUPPORTED_FAMILIES:
        raise PnPInputError(
            f"PnP supports {', '.join(SUPPORTED_FAMILIES.values())} checkpoints; the MODEL connected is "
            f"{family}. Load an SD 1.x, SD 2.x or SDXL (base) checkpoint."
        )
    sampling = model.get_model_object("model_sampling")
    bases = type(sampling).__bases__
    prediction = next((_PREDICTIONS[b] for b in bases if b in _PREDICTIONS), None)
    if comfy.model_sampling.ModelSamplingDiscrete not in bases or prediction is None or len(sampling.sigmas) != 1000:
        raise PnPInputError(
            f"PnP needs the model's discrete 1000-step schedule with eps or v prediction; this MODEL samples "
            f"with {type(sampling).__name__} ({', '.join(b.__name__ for b in bases)}). Remove the "
            f"ModelSampling* node that changed it."
        )
    latent_format = model.get_model_object("latent_format")
    unet = base.diffusion_model
    if unet.in_channels != latent_format.latent_channels:
        raise PnPInputError(
            f"This {SUPPORTED_FAMILIES[family]} UNet takes {unet.in_channels} input channels (an inpainting or "
            f"instruct model); PnP needs a plain text-to-image checkpoint with {latent_format.latent_channels}."
        )
    layout = UNetLayout(
        has_resblock=tuple(type(block[0]).__name__ == "ResBlock" for block in unet.output_blocks),
        transformer_depth=tuple(
            len(block[1].transformer_blocks) if len(block) > 1 and hasattr(block[1], "transformer_blocks") else 0
            for block in unet.output_blocks
        ),
    )
    sigmas = sampling.sigmas.detach().float().cpu()
    identity = ModelIdentity(family, prediction, _fingerprint(model), _schedule_hash(sigmas))
    return ModelFacts(identity, layout, sigmas, latent_format)


def _schedule_hash(sigmas: torch.Tensor) -> str:
    """Hash of the sigma table (1000 float32 values): tells a changed noise schedule apart."""
    return hashlib.sha256(sigmas.contiguous().numpy().tobytes()).hexdigest()[:16]


def _fingerprint(model) -> str:
    """Hash of a few base (un-LoRA'd) weights, taken from the patcher's backup when patched in place."""
    digest = hashlib.sha256()
    for key in _FINGERPRINT_KEYS:
        backup = model.backup.get(key)
        weight = backup.weight if backup is not None else comfy.utils.get_attr(model.model, key)
        digest.update(weight.detach().to(device="cpu", dtype=torch.float16).numpy().tobytes())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class SourceRows:
    """The live source pass of one sampling step, as ``apply_model`` inputs.

    ``x``: (rows, C, H, W), the trajectory latent at the step in sampling space
    (what ``apply_model`` receives); ``conds``: the source prompt's processed
    model conds (``comfy.conds`` objects for that many rows, e.g.
    ``c_crossattn``, ``y``); ``uuid``: the source cond's id for ``uuids``.
    """

    x: torch.Tensor
    conds: dict
    uuid: object


def _with_source(name: str, target, source, rows: int):
    """One apply_model input with the source rows in front (ComfyUI's own concat pads cross-attention)."""
    batched = isinstance(target, torch.Tensor) and target.ndim > 0 and target.shape[0] == rows
    batched = batched or (isinstance(target, list) and bool(target) and all(
        isinstance(t, torch.Tensor) and t.shape[0] == rows for t in target))
    if not batched:
        return target
    if source is None:
        raise PnPInputError(
            f"The on-the-fly source pass has no '{name}' input, which this model's calls carry (an inpainting or "
            f"otherwise conditioned model). Set PnP Feature Bank's mode to 'stored'."
        )
    if isinstance(target, torch.Tensor):
        source = type(source)(source.cond.to(device=target.device, dtype=target.dtype))
        return source.concat([type(source)(target)])
    return source.concat([type(source)(target)])


class _SitePatch:
    """Wires a handler (Injector or Recorder) to the UNet sites for every call."""

    def __init__(self, handler):
        self.handler = handler
        self._attention_sites = frozenset(handler.sites.attention)

    def __deepcopy__(self, memo):
        # ModelPatcher.clone deep-copies model_options; share the handler (and the bank) instead.
        return self

    def diffusion_model_wrapper(self, executor, x, timesteps, context, y, control, transformer_options, **kwargs):
        cond_or_uncond = transformer_options.get("cond_or_uncond")
        call = None
        if cond_or_uncond:
            call = self.handler.plan_call(timesteps.detach().float().cpu().tolist(), list(cond_or_uncond))
        if call is None:
            return executor(x, timesteps, context, y, control, transformer_options, **kwargs)
        unet = executor.class_obj
        hooks = []
        try:
            transformer_options[PATCH_KEY] = call
            for block in self.handler.sites.resblocks:
                hook = partial(self._resblock_hook, block, call)
                hooks.append(unet.output_blocks[block][0].out_layers.register_forward_hook(hook))
            return executor(x, timesteps, context, y, control, transformer_options, **kwargs)
        finally:
            for hook in hooks:
                hook.remove()
            transformer_options.pop(PATCH_KEY, None)

    def apply_model_wrapper(self, executor, x, t, c_concat, c_crossattn, control, transformer_options, **kwargs):
        source: SourceRows | None = transformer_options.get(SOURCE_KEY)
        if source is None:
            return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
        chunks = list(transformer_options["cond_or_uncond"])
        n, rows = source.x.shape[0], x.shape[0]
        if rows_per_chunk(rows, chunks) != n:
            raise RuntimeError(f"{n} source rows do not match chunks of {rows // len(chunks)} rows")
        inputs = {"c_concat": c_concat, "c_crossattn": c_crossattn, **kwargs}
        inputs = {k: _with_source(k, v, source.conds.get(k), rows) for k, v in inputs.items()}
        options = dict(transformer_options)
        del options[SOURCE_KEY]
        options["cond_or_uncond"] = [SOURCE_CHUNK] + chunks
        options["uuids"] = [source.uuid] + list(options.get("uuids", []))
        out = executor(torch.cat([source.x.to(device=x.device, dtype=x.dtype), x]), torch.cat([t[:n], t]),
                       inputs.pop("c_concat"), inputs.pop("c_crossattn"), control_with_source_rows(control, n, rows),
                       options, **inputs)
        return out[n:]

    def _resblock_hook(self, block, call, module, args, output):
        return self.handler.resblock(block, output, call)

    def attn1_patch(self, n, context_attn1, value_attn1, extra_options):
        call = extra_options.get(PATCH_KEY)
        block = extra_options.get("block")
        if call is None or block is None or block[0] != "output":
            return n, context_attn1, value_attn1
        site = (block[1], extra_options.get("block_index", 0))
        if site not in self._attention_sites:
            return n, context_attn1, value_attn1
        spatial = tuple(extra_options["activations_shape"][-2:])
        qk_input = self.handler.attention(site, n, spatial, call)
        if qk_input is n:
            return n, context_attn1, value_attn1
        return qk_input, qk_input, value_attn1


def with_pnp_sites(model, handler):
    """A clone of ``model`` whose UNet calls go through ``handler`` at the PnP sites.

    A live handler (on-the-fly bank) also gets the APPLY_MODEL wrapper that
    adds the source rows its calls need.
    """
    clone = model.clone()
    patch = _SitePatch(handler)
    clone.set_model_attn1_patch(patch.attn1_patch)
    clone.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, PATCH_KEY,
                               patch.diffusion_model_wrapper)
    if getattr(handler, "live", False):
        clone.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, PATCH_KEY,
                                   patch.apply_model_wrapper)
    return clone


def with_next_timestep_labels(model, next_label: dict[int, int]):
    """A clone whose UNet sees timestep ``next_label[t]`` where ComfyUI derived ``t``.

    The official DDIM inversion evaluates eps on the current latent (scaled and
    converted with the current sigma, as ComfyUI does) but labels the UNet with
    the next timestep; only the label changes.
    """
    clone = model.clone()

    def relabel(executor, x, timesteps, *args, **kwargs):
        labels = [next_label.get(int(round(t)), t) for t in timesteps.detach().float().cpu().tolist()]
        timesteps = torch.tensor(labels, dtype=timesteps.dtype, device=timesteps.device)
        return executor(x, timesteps, *args, **kwargs)

    clone.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, f"{PATCH_KEY}.inversion", relabel)
    return clone


def attention_qk(model, site: tuple[int, int], n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """q and k of ``output_blocks[b][1].transformer_blocks[j].attn1`` for attn1 inputs ``n`` (..., tokens, C).

    Runs the model's own ``to_q`` / ``to_k`` (LoRA patches included: the model
    is loaded the way samplers load it) on its load device in its compute
    dtype. Returns float32 q, k (..., tokens, heads*dim_head) on that device
    and the head count.
    """
    block, index = site
    comfy.model_management.load_models_gpu([model])
    base = model.model
    attn1 = base.diffusion_model.output_blocks[block][1].transformer_blocks[index].attn1
    dtype = base.manual_cast_dtype if base.manual_cast_dtype is not None else base.get_dtype()
    x = n.to(device=model.load_device, dtype=dtype)
    with torch.no_grad():
        return attn1.to_q(x).float(), attn1.to_k(x).float(), int(attn1.heads)
