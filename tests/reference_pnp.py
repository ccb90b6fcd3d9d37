"""An independent reference of pnp-diffusers on diffusers' own UNet2DConditionModel.

Written from the official code (MichalGeyer/pnp-diffusers: ``preprocess.py``,
``pnp.py``, ``pnp_utils.py``), not from this pack's ``pnp_hooks``. Only the
test harness shares anything with the pack: the UNet weights, converted from the
ComfyUI checkpoint with ComfyUI's key map ``comfy.utils.unet_to_diffusers``, and
the text embeddings (ComfyUI CONDITIONING tensors fed as ``encoder_hidden_states``).

Latents here are the official ``z`` (VP space, ``z = 0.18215 * VAE latent``).

- ``ddim_inversion``: ``Preprocess.ddim_inversion``. Ascending timesteps; eps is
  ``UNet(z_prev, t_i)`` (the current latent labelled with the NEXT timestep); the
  first step starts from ``alphas_cumprod[0]`` (``final_alpha_cumprod``, SD's
  ``set_alpha_to_one=False``).
- ``pnp_sample``: ``PNP.sample_loop``/``denoise_step``. Batch ``[source, uncond,
  cond]``, the source row is ``UNet(z_t_inverted, t, "")``; for
  ``timesteps[:int(N * pnp_f_t)]`` the residual branch of ``up_blocks[1].resnets[1]``
  (after ``conv2``, before the skip add) and for ``timesteps[:int(N * pnp_attn_t)]``
  the q and k of ``attn1`` in ``up_blocks[1].attentions[1, 2]``,
  ``up_blocks[2|3].attentions[0, 1, 2]`` are replaced in the uncond and cond rows
  by the source row's; CFG; ``DDIMScheduler.step`` (the last step ends at
  ``final_alpha_cumprod``).
- ``ddim_sample``: ``Preprocess.ddim_sample`` (plain DDIM, one prompt).

v-prediction (not in the official code, which only runs eps models): the UNet
output is turned into eps with the alpha of the level the latent is AT, as
diffusers' ``DDIMInverseScheduler.step`` (inversion: the previous level, although
the UNet is labelled with the next timestep) and ``DDIMScheduler.step`` (sampling:
the current timestep) do.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, UNet2DConditionModel

SD_SCALE_FACTOR = 0.18215

# The scheduler config of runwayml/stable-diffusion-v1-5 and stabilityai/stable-diffusion-2(-1)(-base).
SD_SCHEDULER_CONFIG = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                           beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
                           steps_offset=1)

# pnp_utils.register_attention_control_efficient: "blocks 4 - 11 of the decoder".
QK_SITES = {1: (1, 2), 2: (0, 1, 2), 3: (0, 1, 2)}


def make_scheduler(prediction_type: str = "epsilon") -> DDIMScheduler:
    return DDIMScheduler(**SD_SCHEDULER_CONFIG, prediction_type=prediction_type)


def diffusers_unet_from_comfy(comfy_unet: torch.nn.Module, unet_config: dict) -> UNet2DConditionModel:
    """A fp32 diffusers UNet with the weights of a ComfyUI SD1.x/2.x ``UNetModel``.

    ``unet_config`` is ComfyUI's (``model.model.model_config.unet_config``); the
    weights move through ``comfy.utils.unet_to_diffusers`` (diffusers key -> ComfyUI key).
    """
    import comfy.utils

    mult = unet_config["channel_mult"]
    channels = [unet_config["model_channels"] * m for m in mult]
    if unet_config.get("num_heads", -1) != -1:
        heads = [unet_config["num_heads"]] * len(mult)
    else:
        heads = [c // unet_config["num_head_channels"] for c in channels]
    down_depth = unet_config["transformer_depth"][::unet_config["num_res_blocks"][0]]
    down_types = tuple("CrossAttnDownBlock2D" if d else "DownBlock2D" for d in down_depth)
    up_types = tuple("CrossAttnUpBlock2D" if d else "UpBlock2D" for d in reversed(down_depth))
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=unet_config["in_channels"], out_channels=unet_config["out_channels"],
        down_block_types=down_types, up_block_types=up_types, block_out_channels=tuple(channels),
        layers_per_block=unet_config["num_res_blocks"][0], cross_attention_dim=unet_config["context_dim"],
        attention_head_dim=heads[0] if len(set(heads)) == 1 else tuple(heads),
        use_linear_projection=unet_config["use_linear_in_transformer"],
    ).to(torch.float32)
    key_map = comfy.utils.unet_to_diffusers(unet_config)
    comfy_sd = comfy_unet.state_dict()
    wanted = unet.state_dict().keys()
    missing = [k for k in wanted if k not in key_map]
    if missing:
        raise KeyError(f"ComfyUI's key map lacks {missing[:5]}")
    unet.load_state_dict({k: comfy_sd[key_map[k]].detach().to(torch.float32).clone() for k in wanted},
                         strict=True)
    return unet.eval()


def _to_eps(model_output: torch.Tensor, sample: torch.Tensor, alpha_prod: torch.Tensor,
            prediction_type: str) -> torch.Tensor:
    if prediction_type == "epsilon":
        return model_output
    if prediction_type == "v_prediction":
        return alpha_prod ** 0.5 * model_output + (1 - alpha_prod) ** 0.5 * sample
    raise ValueError(prediction_type)


@torch.no_grad()
def ddim_inversion(unet: UNet2DConditionModel, scheduler: DDIMScheduler, z0: torch.Tensor,
                   cond: torch.Tensor, num_steps: int) -> dict[int, torch.Tensor]:
    """``Preprocess.ddim_inversion``: {timestep: inverted z at that timestep} for every inversion timestep."""
    scheduler.set_timesteps(num_steps)
    timesteps = reversed(scheduler.timesteps)
    latent = z0
    saved = {}
    for i, t in enumerate(timesteps):
        alpha_prod_t = scheduler.alphas_cumprod[t]
        alpha_prod_t_prev = scheduler.alphas_cumprod[timesteps[i - 1]] if i > 0 else scheduler.final_alpha_cumprod
        mu, mu_prev = alpha_prod_t ** 0.5, alpha_prod_t_prev ** 0.5
        sigma, sigma_prev = (1 - alpha_prod_t) ** 0.5, (1 - alpha_prod_t_prev) ** 0.5
        out = unet(latent, t, encoder_hidden_states=cond.repeat(latent.shape[0], 1, 1)).sample
        eps = _to_eps(out, latent, alpha_prod_t_prev, scheduler.config.prediction_type)
        pred_x0 = (latent - sigma_prev * eps) / mu_prev
        latent = mu * pred_x0 + sigma * eps
        saved[int(t)] = latent
    return saved


@torch.no_grad()
def ddim_sample(unet: UNet2DConditionModel, scheduler: DDIMScheduler, x: torch.Tensor, cond: torch.Tensor,
                num_steps: int) -> torch.Tensor:
    """``Preprocess.ddim_sample``: plain deterministic DDIM from ``x`` at the first timestep."""
    scheduler.set_timesteps(num_steps)
    for t in scheduler.timesteps:
        out = unet(x, t, encoder_hidden_states=cond.repeat(x.shape[0], 1, 1)).sample
        x = scheduler.step(out, t, x).prev_sample
    return x


@dataclass
class _InjectionClock:
    """``register_time``: the timestep of the current UNet call, read by the injection sites."""

    qk_timesteps: set[int]
    conv_timesteps: set[int]
    t: int | None = None
    counts: dict[str, int] = field(default_factory=lambda: {"qk": 0, "conv": 0})


def _replace_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows [source | uncond | cond] -> [source | source | source] (the official in-place copy)."""
    n = x.shape[0] // 3
    x = x.clone()
    x[n:2 * n] = x[:n]
    x[2 * n:] = x[:n]
    return x


class InjectQKProcessor:
    """Self-attention of the official ``sa_forward``: q, k of the uncond and cond rows from the source row."""

    def __init__(self, clock: _InjectionClock):
        self.clock = clock

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        if encoder_hidden_states is not None or attention_mask is not None or attn.group_norm is not None:
            raise NotImplementedError("only the plain self-attention attn1 of SD1.x/2.x is injected")
        batch, tokens, _ = hidden_states.shape
        q = attn.to_q(hidden_states)
        k = attn.to_k(hidden_states)
        v = attn.to_v(hidden_states)
        if self.clock.t in self.clock.qk_timesteps:
            q, k = _replace_rows(q), _replace_rows(k)
            self.clock.counts["qk"] += 1
        heads = attn.heads
        q, k, v = (y.view(batch, -1, heads, y.shape[-1] // heads).transpose(1, 2) for y in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2).reshape(batch, tokens, -1)
        out = attn.to_out[0](out)
        return attn.to_out[1](out)


@contextmanager
def pnp_injection(unet: UNet2DConditionModel, qk_timesteps, conv_timesteps):
    """Installs the official injection sites; yields the clock whose ``t`` the caller sets per UNet call."""
    clock = _InjectionClock({int(t) for t in qk_timesteps}, {int(t) for t in conv_timesteps})
    attn_modules = [unet.up_blocks[b].attentions[a].transformer_blocks[0].attn1
                    for b, attns in QK_SITES.items() for a in attns]
    old_processors = [m.processor for m in attn_modules]

    def conv2_hook(module, args, output):
        if clock.t in clock.conv_timesteps:
            clock.counts["conv"] += 1
            return _replace_rows(output)
        return output

    handle = unet.up_blocks[1].resnets[1].conv2.register_forward_hook(conv2_hook)
    try:
        for m in attn_modules:
            m.set_processor(InjectQKProcessor(clock))
        yield clock
    finally:
        handle.remove()
        for m, p in zip(attn_modules, old_processors):
            m.set_processor(p)


@torch.no_grad()
def pnp_sample(unet: UNet2DConditionModel, scheduler: DDIMScheduler, source_latents: dict[int, torch.Tensor],
               source_emb: torch.Tensor, uncond_emb: torch.Tensor, cond_emb: torch.Tensor, num_steps: int,
               pnp_f_t: float = 0.8, pnp_attn_t: float = 0.5, guidance_scale: float = 7.5) -> torch.Tensor:
    """``PNP.run_pnp``: translation from ``source_latents[timesteps[0]]`` (the inverted x_T)."""
    scheduler.set_timesteps(num_steps)
    timesteps = scheduler.timesteps
    conv_t = int(num_steps * pnp_f_t)
    qk_t = int(num_steps * pnp_attn_t)
    x = source_latents[int(timesteps[0])]
    text = torch.cat([source_emb, uncond_emb, cond_emb], dim=0)
    with pnp_injection(unet, timesteps[:qk_t], timesteps[:conv_t]) as clock:
        for t in timesteps:
            clock.t = int(t)
            model_input = torch.cat([source_latents[int(t)], x, x])
            noise_pred = unet(model_input, t, encoder_hidden_states=text).sample
            _, noise_pred_uncond, noise_pred_cond = noise_pred.chunk(3)
            noise_pred = noise_pred_uncond + guidance_scale * (noise_pred_cond - noise_pred_uncond)
            x = scheduler.step(noise_pred, t, x).prev_sample
    expected = {"qk": qk_t * len(QK_SITES[1] + QK_SITES[2] + QK_SITES[3]), "conv": conv_t}
    if clock.counts != expected:
        raise AssertionError(f"injection sites ran {clock.counts}, expected {expected}")
    return x
