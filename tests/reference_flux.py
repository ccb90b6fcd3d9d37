"""An independent reference of RF-Solver-Edit and FireFlow (FLUX.1) on diffusers' FluxTransformer2DModel.

Written from the official code, not from this pack:

- RF-Solver-Edit: ``wangjiangshan0725/RF-Solver-Edit`` at 3388e29 (2025-04-11),
  folder ``FLUX_Image_Edit/src``: ``edit.py``, ``flux/sampling.py``,
  ``flux/model.py``, ``flux/modules/layers.py``. Cited below as ``RF:file:line``.
- FireFlow: ``HolmesShuan/FireFlow-Fast-Inversion-of-Rectified-Flow-for-Image-Semantic-Editing``
  at 98588a6 (2025-01-25), folder ``src``: ``edit.py``, ``flux/sampling.py``,
  ``flux/model.py``, ``flux/modules/layers.py``, ``gradio_demo.py``. Cited as ``FF:file:line``.
  (Forks add solvers of their own; they are not FireFlow.)

Checked once against the official code itself (the fetched repos imported as they are, ``.cuda()``
made a no-op, the same random weights, fp32 CPU): bit-identical inverted and edited latents and the
same stored keys for RF-Solver-Edit and for FireFlow's fireflow / rf_solver / reflow solvers, block
ranges 0-37, 20-37, 5-30, strategies replace_v, add_q, "replace_v add_k replace_q", dev and schnell.

Only the test harness is shared with ComfyUI: the transformer's weights, converted
from the ComfyUI/BFL checkpoint with ComfyUI's key map ``comfy.utils.flux_to_diffusers``
(RMSNorm ``_norm.scale`` read as ``_norm.weight``; the map swaps the final layer's
shift/scale halves), and the text embeddings (fed as tensors).

The official pipeline (RF:edit.py:146-164, FF:edit.py:161-188)
---------------------------------------------------------------
1. ``prepare``: the VAE latent (B, 16, H/8, W/8) is packed 2x2 into tokens
   (B, H/16 * W/16, 64) (``pack``); ``img_ids`` are (0, row, col); ``txt_ids`` zeros;
   ``txt`` = T5 tokens (512 for dev, 256 for schnell), ``vec`` = CLIP-L pooled.
2. ``get_schedule(num_steps, image_tokens, shift=(name != "flux-schnell"))``:
   ``linspace(1, 0, num_steps + 1)``; for dev a time shift
   ``exp(mu) / (exp(mu) + (1/t - 1))`` with ``mu`` linear in the image's token count
   (0.5 at 256 tokens, 1.15 at 4096); schnell: no shift (RF:sampling.py:46-74).
3. Inversion: the solver on ``timesteps[::-1]`` (t from 0 to 1) with the SOURCE prompt
   and guidance 1; then denoising from the inverted latent on ``timesteps`` (1 to 0) with
   the TARGET prompt and the user's guidance. The same ``info`` dict carries the feature
   store from the first call to the second.
4. Solvers (one model call = one NFE):
   - RF-Solver (RF:sampling.py:77-136, FF:sampling.py:123-182): ``pred = v(x, t_curr)``;
     ``x_mid = x + dt/2 * pred``; ``pred_mid = v(x_mid, t_curr + dt/2)``;
     ``x += dt * pred + dt**2 / 2 * (pred_mid - pred) / (dt/2)`` (algebraically the midpoint
     step). 2 NFE a step: 2N per pass, 4N for an edit.
   - FireFlow (FF:sampling.py:185-248): the same midpoint step, but ``pred`` of step i > 0
     is the previous step's ``pred_mid`` (the model runs only at the midpoint after the
     first step); ``x += dt * pred_mid``. N + 1 NFE a pass, 2N + 2 for an edit.
   - ``denoise`` (FF:sampling.py:77-120, "reflow"): Euler, 1 NFE a step (a baseline).
   Timesteps and guidance go to the model as tensors of the latent's dtype (bf16 in the
   official runs: ``encode`` returns bf16, RF:edit.py:39); this reference runs in the
   latent's dtype too (fp32 in the tests).
5. Injection (RF:layers.py:230-258, FF:layers.py:230-284): in the SINGLE-stream blocks
   only, after the QK RMSNorm and before RoPE, on the whole joint sequence (text tokens
   first), tensors (B, heads, tokens, head_dim). Stored during inversion in
   ``info['feature']`` (moved to the CPU) under the key
   ``f"{info['t']}_{info['second_order']}_{block}_single_V"`` (``_Q``/``_K`` for FireFlow's
   q/k strategies); read back during denoising under the same key.

Which inversion evaluation serves which denoising evaluation (parity depends on it)
-----------------------------------------------------------------------------------
Let ``s = get_schedule(N, ...)``, s[0] = 1 > s[1] > ... > s[N] = 0.
- Keys: in inversion step i (``t_curr = s[N-i]``, ``t_prev = s[N-1-i]``) ``info['t'] = t_prev``,
  the step's END (the noisier end); in denoising step j (``t_curr = s[j]``) ``info['t'] = t_curr``,
  the step's START (RF:sampling.py:102, FF:sampling.py:148/211). Both are s[j] for i = N-1-j:
  denoising step j reads what inversion step N-1-j wrote, the step over the same interval
  [s[j+1], s[j]].
- ``inject_list = [True]*inject + [False]*(N-inject)``, reversed for inversion
  (RF:sampling.py:92-96): inversion stores in its LAST ``inject`` steps, denoising reads in
  its FIRST ``inject`` steps: the same intervals.
- First evaluation (``second_order`` False): inversion evaluates at t = s[j+1] (the CLEANER end,
  on the latent there); denoising evaluates at t = s[j] (the noisier end). So the V substituted
  in the first evaluation of denoising step j comes from the inversion's evaluation one grid
  point earlier in noise: off by one interval, by construction of the key.
- Second evaluation (``second_order`` True): both at the interval's midpoint
  (s[j+1] + (s[j]-s[j+1])/2 in inversion, s[j] + (s[j+1]-s[j])/2 in denoising: the same time
  up to rounding), on each pass's own midpoint latent.
- RF-Solver: every key read is present (``info['feature'][name]`` without a check,
  RF:layers.py:252): 2 x inject x 18 V tensors.
- FireFlow: the first evaluation runs only in step 0 of each pass. Inversion's step 0
  (key s[N-1]) stores only when inject >= N; denoising's step 0 (key s[0]) finds a key only when
  N = 1. Reads are guarded (``if name in info['feature']``, FF:layers.py:257-278), so in practice
  only midpoint evaluations inject: inject x blocks tensors read, one per injected step and block
  (plus one stored-but-never-read first-evaluation set when inject >= N, N > 1).

Sites and strategies
--------------------
- RF-Solver-Edit: ``info['id'] > 19`` (single blocks 20-37 of 38), V replaced
  (RF:layers.py:247). No block range option.
- FireFlow: ``start_layer_index <= id <= end_layer_index`` (FF:layers.py:239). ``reuse_v=1``
  (default): store V, replace V. ``reuse_v=0``: ``editing_strategy`` (a string; substring tests):
  store ``q*qkv_ratio[0]`` if "q" in it, ``k*ratio[1]`` if "k", ``v*ratio[2]`` if "v"; then in
  denoising, in this order: replace_v, add_v, replace_k, add_k, replace_q, add_q, each only if
  its key is present (FF:layers.py:243-278).

Official defaults and examples (steps / inject / guidance / blocks)
-------------------------------------------------------------------
- RF-Solver-Edit ``edit.py`` argparse (RF:edit.py:224-244): flux-dev, num_steps 25, inject 20,
  guidance 5, blocks 20-37 (fixed). README command: guidance 2, 30 steps, inject 2-8. Scripts
  ``run_*.sh``: 25 steps with inject 2-5 (guidance 2, 2.5 for nobel) and 15 steps with inject 2-3
  (boy, hiking, horse; guidance 2); source prompt "" for the stylisations. Gradio demo: 25 steps,
  inject 5, guidance 2 (sliders). Inversion guidance always 1. schnell: no shift; T5 256 tokens.
- FireFlow ``edit.py`` argparse (FF:edit.py:248-283): flux-dev, num_steps 25, inject 20,
  guidance 5, start 20, end 37, sampling_strategy rf_solver, reuse_v 1, editing_strategy
  replace_v, qkv_ratio 1,1,1. The README and scripts run ``--sampling_strategy fireflow`` with
  num_steps 8 (also 10, 15), inject 1 (2 with 15 steps in the README), guidance 2 (2.5-3 for
  nobel), blocks 0-37; "better instruction following": ``--reuse_v 0 --editing_strategy add_q``.
  Gradio demo: 8 steps, inject 1, guidance 2, blocks 0-37, reuse_v False, strategies ticked
  (default replace_v) joined with spaces. Reconstruction script: 10 steps, inject 0, guidance 1,
  same prompt for both passes (FF:inversion_reconstruction.sh).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers import FluxTransformer2DModel
from diffusers.models.embeddings import apply_rotary_emb

RF_SOLVER_FIRST_BLOCK = 20  # RF:layers.py:247 ``info['id'] > 19``


# ---------------------------------------------------------------------------
# Schedule and packing (RF:sampling.py:12-74, 139-147)
# ---------------------------------------------------------------------------
def time_shift(mu: float, sigma: float, t: torch.Tensor) -> torch.Tensor:
    return math.exp(mu) / (math.exp(mu) + (1 / t - 1) ** sigma)


def get_lin_function(x1: float = 256, y1: float = 0.5, x2: float = 4096, y2: float = 1.15) -> Callable[[float], float]:
    m = (y2 - y1) / (x2 - x1)
    b = y1 - m * x1
    return lambda x: m * x + b


def get_schedule(num_steps: int, image_seq_len: int, base_shift: float = 0.5, max_shift: float = 1.15,
                 shift: bool = True) -> list[float]:
    """Times from 1 to 0 (num_steps + 1 values), shifted for dev (``shift=True``), as Python floats of float32."""
    timesteps = torch.linspace(1, 0, num_steps + 1)
    if shift:
        mu = get_lin_function(y1=base_shift, y2=max_shift)(image_seq_len)
        timesteps = time_shift(mu, 1.0, timesteps)
    return timesteps.tolist()


def pack(latent: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/2 * W/2, C*4): ``b c (h ph) (w pw) -> b (h w) (c ph pw)``."""
    b, c, h, w = latent.shape
    x = latent.reshape(b, c, h // 2, 2, w // 2, 2)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(x: torch.Tensor, latent_h: int, latent_w: int) -> torch.Tensor:
    """Inverse of ``pack`` for a latent of (latent_h, latent_w)."""
    b, _, d = x.shape
    c = d // 4
    x = x.reshape(b, latent_h // 2, latent_w // 2, c, 2, 2)
    return x.permute(0, 3, 1, 4, 2, 5).reshape(b, c, latent_h, latent_w)


def image_ids(latent_h: int, latent_w: int) -> torch.Tensor:
    """(tokens, 3): (0, row, col) per packed token (``prepare``)."""
    ids = torch.zeros(latent_h // 2, latent_w // 2, 3)
    ids[..., 1] = ids[..., 1] + torch.arange(latent_h // 2)[:, None]
    ids[..., 2] = ids[..., 2] + torch.arange(latent_w // 2)[None, :]
    return ids.reshape(-1, 3)


# ---------------------------------------------------------------------------
# The transformer: diffusers' FluxTransformer2DModel with ComfyUI's weights
# ---------------------------------------------------------------------------
def diffusers_flux_from_comfy(comfy_state_dict: dict[str, torch.Tensor], params: dict) -> FluxTransformer2DModel:
    """A fp32 ``FluxTransformer2DModel`` with the weights of a ComfyUI/BFL FLUX.1 state dict.

    ``params``: ComfyUI's FluxParams values (hidden_size, num_heads, depth, depth_single_blocks,
    context_in_dim, vec_in_dim, in_channels, patch_size, axes_dim, guidance_embed). Keys go
    through ``comfy.utils.flux_to_diffusers`` (diffusers key -> ComfyUI key, a slice of a fused
    tensor, or a function: the final layer's shift/scale swap); RMSNorm weights may be named
    ``_norm.scale`` (BFL files, ComfyUI v0.3.64) or ``_norm.weight`` (ComfyUI v0.33).
    """
    import comfy.utils

    hidden = params["hidden_size"]
    model = FluxTransformer2DModel(
        patch_size=1, in_channels=params["in_channels"] * params["patch_size"] ** 2,
        num_layers=params["depth"], num_single_layers=params["depth_single_blocks"],
        attention_head_dim=hidden // params["num_heads"], num_attention_heads=params["num_heads"],
        joint_attention_dim=params["context_in_dim"], pooled_projection_dim=params["vec_in_dim"],
        guidance_embeds=params["guidance_embed"], axes_dims_rope=tuple(params["axes_dim"]),
    ).to(torch.float32)
    source = {k.replace("_norm.scale", "_norm.weight"): v for k, v in comfy_state_dict.items()}
    key_map = comfy.utils.flux_to_diffusers({"depth": params["depth"], "hidden_size": hidden,
                                             "depth_single_blocks": params["depth_single_blocks"]})
    wanted = model.state_dict()
    out = {}
    for key in wanted:
        if key not in key_map:
            raise KeyError(f"ComfyUI's FLUX key map lacks {key}")
        target = key_map[key]
        if isinstance(target, str):
            tensor = source[target.replace("_norm.scale", "_norm.weight")]
        else:
            name, narrow = target[0], target[1]
            tensor = source[name.replace("_norm.scale", "_norm.weight")]
            if narrow is not None:
                tensor = tensor.narrow(*narrow)
            if len(target) > 2:
                tensor = target[2](tensor)
        out[key] = tensor.detach().to(torch.float32).clone()
    model.load_state_dict(out, strict=True)
    return model.eval()


@dataclass
class StoreEvent:
    """One access to the feature store: which key, stored or read, in which pass and at which model time."""

    key: str
    action: str  # "store" | "read"
    t_eval: float
    block: int


class _OfficialSingleBlockAttn:
    """The official SingleStreamBlock's attention with its store/inject step (diffusers layout inside).

    diffusers keeps q/k/v as (B, tokens, heads, head_dim); the official code as (B, heads, tokens,
    head_dim): the store holds the official layout.
    """

    def __init__(self, owner: OfficialFlux, block: int):
        self.owner = owner
        self.block = block

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        if encoder_hidden_states is not None or attention_mask is not None:
            raise NotImplementedError("single-stream blocks only")
        q = attn.norm_q(attn.to_q(hidden_states).unflatten(-1, (attn.heads, -1))).transpose(1, 2)
        k = attn.norm_k(attn.to_k(hidden_states).unflatten(-1, (attn.heads, -1))).transpose(1, 2)
        v = attn.to_v(hidden_states).unflatten(-1, (attn.heads, -1)).transpose(1, 2)
        info = self.owner.info
        if info is not None:
            q, k, v = _store_or_inject(info, self.block, q, k, v, self.owner)
        q, k, v = (x.transpose(1, 2) for x in (q, k, v))
        if image_rotary_emb is not None:
            q = apply_rotary_emb(q, image_rotary_emb, sequence_dim=1)
            k = apply_rotary_emb(k, image_rotary_emb, sequence_dim=1)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2).flatten(2, 3).to(q.dtype)


def _feature_name(info: dict, block: int, which: str) -> str:
    return str(info['t']) + '_' + str(info['second_order']) + '_' + str(block) + '_' + 'single' + '_' + which


def _store_or_inject(info: dict, block: int, q, k, v, owner: OfficialFlux):
    """RF:layers.py:246-252 (variant "rf_solver") or FF:layers.py:238-278 (variant "fireflow")."""
    store = info['feature']
    log = info.setdefault('log', [])
    t_eval = owner.t_eval
    if info['variant'] == "rf_solver":
        if info['inject'] and block >= RF_SOLVER_FIRST_BLOCK:
            name = _feature_name(info, block, 'V')
            if info['inverse']:
                store[name] = v.detach().clone()
                log.append(StoreEvent(name, "store", t_eval, block))
            else:
                v = store[name]  # the official code reads without a check
                log.append(StoreEvent(name, "read", t_eval, block))
        return q, k, v
    if not (info['inject'] and info['start_layer_index'] <= block <= info['end_layer_index']):
        return q, k, v
    names = {which: _feature_name(info, block, which) for which in ('Q', 'K', 'V')}
    if info['inverse']:
        if info['reuse_v']:
            store[names['V']] = v.detach().clone()
            log.append(StoreEvent(names['V'], "store", t_eval, block))
        else:
            strategy, ratio = info['editing_strategy'], info['qkv_ratio']
            for letter, tensor, r in (('q', q, ratio[0]), ('k', k, ratio[1]), ('v', v, ratio[2])):
                if letter in strategy:
                    name = names[letter.upper()]
                    store[name] = (tensor * r).detach().clone()
                    log.append(StoreEvent(name, "store", t_eval, block))
        return q, k, v

    def read(name):
        log.append(StoreEvent(name, "read", t_eval, block))
        return store[name]

    if info['reuse_v']:
        if names['V'] in store:
            v = read(names['V'])
        return q, k, v
    strategy = info['editing_strategy']
    if 'replace_v' in strategy and names['V'] in store:
        v = read(names['V'])
    if 'add_v' in strategy and names['V'] in store:
        v = v + read(names['V'])
    if 'replace_k' in strategy and names['K'] in store:
        k = read(names['K'])
    if 'add_k' in strategy and names['K'] in store:
        k = k + read(names['K'])
    if 'replace_q' in strategy and names['Q'] in store:
        q = read(names['Q'])
    if 'add_q' in strategy and names['Q'] in store:
        q = q + read(names['Q'])
    return q, k, v


class OfficialFlux:
    """The official ``Flux.forward(img, img_ids, txt, txt_ids, timesteps, y, guidance, info)`` on diffusers.

    Returns ``(pred, info)`` like the official model; counts calls (NFE). ``info`` None runs the
    plain transformer (no store, no injection).
    """

    def __init__(self, transformer: FluxTransformer2DModel):
        self.transformer = transformer
        self.calls = 0
        self.info = None
        self.t_eval = None
        for i, block in enumerate(transformer.single_transformer_blocks):
            block.attn.set_processor(_OfficialSingleBlockAttn(self, i))

    @property
    def guidance_embed(self) -> bool:
        return bool(self.transformer.config.guidance_embeds)

    @torch.no_grad()
    def __call__(self, img, img_ids, txt, txt_ids, y, timesteps, guidance=None, info=None):
        self.calls += 1
        self.info = info
        self.t_eval = float(timesteps[0])
        try:
            pred = self.transformer(
                hidden_states=img, encoder_hidden_states=txt, pooled_projections=y, timestep=timesteps,
                img_ids=img_ids, txt_ids=txt_ids, guidance=guidance if self.guidance_embed else None,
                return_dict=False)[0]
        finally:
            self.info = None
        return pred, info


# ---------------------------------------------------------------------------
# Solvers (FF:sampling.py:77-248; RF:sampling.py:77-136 is the rf_solver one)
# ---------------------------------------------------------------------------
def _inject_list(info: dict, timesteps: list[float], inverse: bool) -> list[bool]:
    inject_list = [True] * info['inject_step'] + [False] * (len(timesteps[:-1]) - info['inject_step'])
    return inject_list[::-1] if inverse else inject_list


def _step_info(info: dict, inverse: bool, t_curr: float, t_prev: float, inject: bool) -> None:
    info['t'] = t_prev if inverse else t_curr
    info['inverse'] = inverse
    info['second_order'] = False
    info['inject'] = inject


def denoise_rf_solver(model: OfficialFlux, img, img_ids, txt, txt_ids, vec, timesteps: list[float], inverse: bool,
                      info: dict, guidance: float = 4.0):
    """RF:sampling.py:77-136 (= FF:sampling.py:123-182): second order, 2 NFE a step."""
    inject_list = _inject_list(info, timesteps, inverse)
    if inverse:
        timesteps = timesteps[::-1]
    guidance_vec = torch.full((img.shape[0],), guidance, device=img.device, dtype=img.dtype)
    for i, (t_curr, t_prev) in enumerate(zip(timesteps[:-1], timesteps[1:])):
        t_vec = torch.full((img.shape[0],), t_curr, dtype=img.dtype, device=img.device)
        _step_info(info, inverse, t_curr, t_prev, inject_list[i])
        pred, info = model(img=img, img_ids=img_ids, txt=txt, txt_ids=txt_ids, y=vec, timesteps=t_vec,
                           guidance=guidance_vec, info=info)
        img_mid = img + (t_prev - t_curr) / 2 * pred
        t_vec_mid = torch.full((img.shape[0],), (t_curr + (t_prev - t_curr) / 2), dtype=img.dtype, device=img.device)
        info['second_order'] = True
        pred_mid, info = model(img=img_mid, img_ids=img_ids, txt=txt, txt_ids=txt_ids, y=vec, timesteps=t_vec_mid,
                               guidance=guidance_vec, info=info)
        first_order = (pred_mid - pred) / ((t_prev - t_curr) / 2)
        img = img + (t_prev - t_curr) * pred + 0.5 * (t_prev - t_curr) ** 2 * first_order
    return img, info


def denoise_fireflow(model: OfficialFlux, img, img_ids, txt, txt_ids, vec, timesteps: list[float], inverse: bool,
                     info: dict, guidance: float = 4.0):
    """FF:sampling.py:185-248: midpoint step reusing the last midpoint velocity; N + 1 NFE a pass."""
    inject_list = _inject_list(info, timesteps, inverse)
    if inverse:
        timesteps = timesteps[::-1]
    guidance_vec = torch.full((img.shape[0],), guidance, device=img.device, dtype=img.dtype)
    next_step_velocity = None
    for i, (t_curr, t_prev) in enumerate(zip(timesteps[:-1], timesteps[1:])):
        t_vec = torch.full((img.shape[0],), t_curr, dtype=img.dtype, device=img.device)
        _step_info(info, inverse, t_curr, t_prev, inject_list[i])
        if next_step_velocity is None:
            pred, info = model(img=img, img_ids=img_ids, txt=txt, txt_ids=txt_ids, y=vec, timesteps=t_vec,
                               guidance=guidance_vec, info=info)
        else:
            pred = next_step_velocity
        img_mid = img + (t_prev - t_curr) / 2 * pred
        t_vec_mid = torch.full((img.shape[0],), t_curr + (t_prev - t_curr) / 2, dtype=img.dtype, device=img.device)
        info['second_order'] = True
        pred_mid, info = model(img=img_mid, img_ids=img_ids, txt=txt, txt_ids=txt_ids, y=vec, timesteps=t_vec_mid,
                               guidance=guidance_vec, info=info)
        next_step_velocity = pred_mid
        img = img + (t_prev - t_curr) * pred_mid
    return img, info


def denoise_euler(model: OfficialFlux, img, img_ids, txt, txt_ids, vec, timesteps: list[float], inverse: bool,
                  info: dict, guidance: float = 4.0):
    """FF:sampling.py:77-120 (``denoise``, the "reflow" baseline): Euler, 1 NFE a step."""
    inject_list = _inject_list(info, timesteps, inverse)
    if inverse:
        timesteps = timesteps[::-1]
    guidance_vec = torch.full((img.shape[0],), guidance, device=img.device, dtype=img.dtype)
    for i, (t_curr, t_prev) in enumerate(zip(timesteps[:-1], timesteps[1:])):
        t_vec = torch.full((img.shape[0],), t_curr, dtype=img.dtype, device=img.device)
        _step_info(info, inverse, t_curr, t_prev, inject_list[i])
        pred, info = model(img=img, img_ids=img_ids, txt=txt, txt_ids=txt_ids, y=vec, timesteps=t_vec,
                           guidance=guidance_vec, info=info)
        img = img + (t_prev - t_curr) * pred
    return img, info


SOLVERS = {"rf_solver": denoise_rf_solver, "fireflow": denoise_fireflow, "reflow": denoise_euler}


# ---------------------------------------------------------------------------
# Edits (RF:edit.py:139-164, FF:edit.py:144-188)
# ---------------------------------------------------------------------------
@dataclass
class EditResult:
    latent: torch.Tensor  # (B, 16, h, w): the edited latent
    inverted: torch.Tensor  # packed (B, tokens, 64): the inversion's end point (t = 1)
    info: dict
    timesteps: list[float]
    nfe_inversion: int
    nfe_denoising: int
    store_bytes: int = field(default=0)


def official_store_bytes(image_tokens: int, text_tokens: int, hidden_size: int, blocks: int, evaluations: int,
                         inject: int, bytes_per_element: int) -> int:
    """Size of the official feature store: one (B=1, heads, text + image tokens, head_dim) tensor per block,
    per stored evaluation of a step (RF-Solver: 2; FireFlow: 1, the midpoint), per injected step."""
    return (text_tokens + image_tokens) * hidden_size * bytes_per_element * blocks * evaluations * inject


def rf_solver_info(inject: int) -> dict:
    """``info`` as RF:edit.py:139-142 builds it (blocks > 19, V)."""
    return {'feature': {}, 'inject_step': inject, 'variant': 'rf_solver'}


def fireflow_info(inject: int, start_layer_index: int = 20, end_layer_index: int = 37, reuse_v: int = 1,
                  editing_strategy: str = 'replace_v', qkv_ratio: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> dict:
    """``info`` as FF:edit.py:144-152 builds it (argparse defaults; the scripts pass start 0, end 37)."""
    return {'feature': {}, 'inject_step': inject, 'start_layer_index': start_layer_index,
            'end_layer_index': end_layer_index, 'reuse_v': reuse_v, 'editing_strategy': editing_strategy,
            'qkv_ratio': list(qkv_ratio), 'variant': 'fireflow'}


@torch.no_grad()
def edit(model: OfficialFlux, latent: torch.Tensor, source: tuple[torch.Tensor, torch.Tensor],
         target: tuple[torch.Tensor, torch.Tensor], num_steps: int, info: dict, guidance: float,
         solver: str = "rf_solver", shift: bool | None = None) -> EditResult:
    """Invert ``latent`` (B, 16, h, w) with the source (T5 tokens, pooled) at guidance 1, then denoise
    with the target at ``guidance``; ``shift`` defaults to the model's kind (dev: True, schnell: False)."""
    if shift is None:
        shift = model.guidance_embed
    denoise = SOLVERS[solver]
    _, _, h, w = latent.shape
    img = pack(latent)
    img_ids = image_ids(h, w).to(latent)
    txt_ids = torch.zeros(source[0].shape[1], 3).to(latent)
    timesteps = get_schedule(num_steps, img.shape[1], shift=shift)
    calls = model.calls
    z, info = denoise(model, img, img_ids, source[0], txt_ids, source[1], timesteps=timesteps, inverse=True,
                      info=info, guidance=1)
    nfe_inversion = model.calls - calls
    store_bytes = sum(t.numel() * t.element_size() for t in info['feature'].values())
    timesteps = get_schedule(num_steps, z.shape[1], shift=shift)
    txt_ids = torch.zeros(target[0].shape[1], 3).to(latent)
    x, info = denoise(model, z, img_ids, target[0], txt_ids, target[1], timesteps=timesteps, inverse=False,
                      info=info, guidance=guidance)
    return EditResult(unpack(x, h, w), z, info, timesteps, nfe_inversion, model.calls - calls - nfe_inversion,
                      store_bytes)
