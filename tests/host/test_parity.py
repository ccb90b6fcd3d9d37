"""The nodes against an independent pnp-diffusers reference on diffusers' UNet (tests/reference_pnp.py).

Set-up shared by every test: the random reduced checkpoint's UNet is converted to a
diffusers ``UNet2DConditionModel`` with ComfyUI's key map; both sides get the SAME
text-embedding tensors (ComfyUI's CLIPTextEncode output), fp32 everywhere, a 64 px
image (latent 8x8) and a random source whose official ``z = 0.18215 * LATENT`` has
unit standard deviation, like a real image's. The nodes' outputs are compared in the
official units: the trajectory (LATENT, VE: ``z / sqrt(alpha_bar)`` / scale factor)
is mapped to ``z`` with the model's own sigma table, and PnP Sampler's
``final_step="official"`` latent is the official ``z / 0.18215``.

Measured (CPU, torch 2.13, diffusers 0.35.2, ComfyUI v0.3.64), max abs in z units:
- UNet conversion: 2.7e-7 (SD1.5 reduced), 2.8e-7 (SD2 v reduced); |eps| ~0.3.
- Inversion trajectory, 50 steps: at most 1.3e-6 over the 50 sampling timesteps
  (x_T is 3.2 away from the source).
- Full PnP, 50/50 steps, f 0.8, attn 0.5, cfg 7.5, API prompt: 1.7e-5 (|z| up to
  3.6; the same reference without injection is 0.27 away).
- 30 steps (not a divisor of 1000): trajectory 1.5e-6, final 1.6e-5.
- steps 10 / inversion_steps 50: trajectory 1.2e-6, final 1.5e-5 (0.10 without injection).
- Not in the suite (8 minutes): 50 steps / inversion_steps 999 (the officials'
  choice): trajectory 6.8e-6, final 1.5e-5.
- SD2 v-prediction, 25 steps, API prompt: x_T 1.2e-6, final 2.3e-6.
- Reconstruction (thresholds 0, "" prompt, cfg 1): equal to the official ddim_sample
  within 2.7e-6; 0.54 from the source at 10 steps, 0.20 at 50.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass

import pytest
import torch

import reference_pnp as ref
from comfy_host import run_prompt
from harness import Prompt, encode, run_node

TOL = 1e-4
TARGET = "a photo of a golden retriever"
NEGATIVE = "ugly, blurry, black, low res, unrealistic"  # pnp-diffusers' default negative prompt
SEED = 0


@dataclass
class Pair:
    """One checkpoint as ComfyUI loaded it and as the diffusers reference sees it."""

    layout: str
    model: object
    unet: object  # diffusers UNet2DConditionModel, same weights
    scheduler: object  # diffusers DDIMScheduler with SD's config
    empty: list  # CONDITIONING of "", the inversion and source prompt
    positive: list
    negative: list

    @staticmethod
    def emb(conditioning) -> torch.Tensor:
        return conditioning[0][0].to(torch.float32)


def _pair(models, layout: str) -> Pair:
    model, clip, _ = models.load(layout)
    unet = ref.diffusers_unet_from_comfy(model.model.diffusion_model, model.model.model_config.unet_config)
    prediction = {"EPS": "epsilon", "V_PREDICTION": "v_prediction"}[model.model.model_type.name]
    return Pair(layout, model, unet, ref.make_scheduler(prediction), encode(clip, ""), encode(clip, TARGET),
                encode(clip, NEGATIVE))


@pytest.fixture(scope="module")
def sd15(models) -> Pair:
    return _pair(models, "sd15_reduced")


@pytest.fixture(scope="module")
def sd2v(models) -> Pair:
    return _pair(models, "sd2v_reduced")


@dataclass
class Inverted:
    """The source inverted with 50 steps by the node and by the reference (shared: inversion is the slow part)."""

    latent: torch.Tensor
    trajectory: object  # PNP_INVERSION
    noise: dict  # the node's noise LATENT
    reference: dict[int, torch.Tensor]  # official z at every inversion timestep


@pytest.fixture(scope="module")
def sd15_inverted(sd15) -> Inverted:
    latent = source_latent()
    trajectory, noise = invert(sd15, latent, 50)
    return Inverted(latent, trajectory, noise, reference_inversion(sd15, latent, 50))


def source_latent(seed: int = SEED, size: int = 8) -> torch.Tensor:
    """A LATENT whose official z (0.18215 * LATENT) is standard normal."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 4, size, size, generator=g) / ref.SD_SCALE_FACTOR


def trajectory_as_official_z(model, trajectory) -> dict[int, torch.Tensor]:
    """PNP_INVERSION latents (LATENT units, VE) -> official z, with the model's own sigma table."""
    assert model.model.latent_format.scale_factor == ref.SD_SCALE_FACTOR
    sigmas = model.model.model_sampling.sigmas.to(torch.float64)
    return {t: trajectory.latents[i].to(torch.float64) * ref.SD_SCALE_FACTOR / torch.sqrt(1 + sigmas[t] ** 2)
            for i, t in enumerate(trajectory.timesteps)}


def invert(pair: Pair, latent: torch.Tensor, steps: int, inversion_steps: int = 0):
    """PnP DDIM Inversion's outputs: (PNP_INVERSION, noise LATENT)."""
    return run_node("PnP_DDIMInversion", model=pair.model, latent={"samples": latent}, conditioning=pair.empty,
                    steps=steps, inversion_steps=inversion_steps)


def translate(pair: Pair, trajectory, positive, negative, cfg: float, f: float, attn: float) -> torch.Tensor:
    """PnP Feature Bank (fp32 bank, "" source prompt) then PnP Sampler (final_step official): LATENT samples."""
    bank = run_node("PnP_FeatureBank", model=pair.model, inversion=trajectory, conditioning=pair.empty,
                    feature_injection=f, attention_injection=attn, bank_dtype="fp32", batch_size=1)[0]
    return run_node("PnP_Sampler", model=pair.model, positive=positive, negative=negative, features=bank, cfg=cfg,
                    feature_injection=f, attention_injection=attn, final_step="official")[0]["samples"]


def reference_pnp(pair: Pair, trajectory_z: dict[int, torch.Tensor], steps: int, f: float = 0.8,
                  attn: float = 0.5) -> torch.Tensor:
    return ref.pnp_sample(pair.unet, pair.scheduler, trajectory_z, Pair.emb(pair.empty), Pair.emb(pair.negative),
                          Pair.emb(pair.positive), steps, pnp_f_t=f, pnp_attn_t=attn, guidance_scale=7.5)


def reference_inversion(pair: Pair, latent: torch.Tensor, inversion_steps: int) -> dict[int, torch.Tensor]:
    return ref.ddim_inversion(pair.unet, pair.scheduler, latent * ref.SD_SCALE_FACTOR, Pair.emb(pair.empty),
                              inversion_steps)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.to(torch.float64) - b.to(torch.float64)).abs().max())


def official_timesteps(pair: Pair, steps: int) -> tuple[int, ...]:
    pair.scheduler.set_timesteps(steps)
    return tuple(int(t) for t in pair.scheduler.timesteps)


# --- the PnP graph through ComfyUI's executor ------------------------------------------------------------------

def _write_latent_file(latent: torch.Tensor) -> str:
    """A .latent file for LoadLatent (SaveLatent's format: no rescaling on load)."""
    import folder_paths
    from safetensors.torch import save_file

    name = f"parity_{uuid.uuid4().hex[:8]}.latent"
    save_file({"latent_tensor": latent.contiguous(), "latent_format_version_0": torch.tensor([])},
              f"{folder_paths.get_input_directory()}/{name}")
    return name


def _read_saved_latent(host, result, node_id: str) -> torch.Tensor:
    from safetensors.torch import load_file

    saved = result.outputs[node_id]["latents"][0]
    return load_file(str(host.output_dir / saved["subfolder"] / saved["filename"]))["latent_tensor"]


def run_pnp_prompt(host, models, layout: str, latent: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """CheckpointLoaderSimple -> CLIPTextEncode x3 -> LoadLatent -> PnP nodes -> SaveLatent: (final, noise)."""
    p = Prompt()
    ckpt = p.add("CheckpointLoaderSimple", ckpt_name=models.checkpoint(layout))
    empty, target, negative = (p.add("CLIPTextEncode", clip=ckpt[1], text=t) for t in ("", TARGET, NEGATIVE))
    inversion = p.add("PnP_DDIMInversion", model=ckpt[0], conditioning=empty[0], steps=steps,
                      latent=p.add("LoadLatent", latent=_write_latent_file(latent))[0])
    bank = p.add("PnP_FeatureBank", model=ckpt[0], inversion=inversion[0], conditioning=empty[0], bank_dtype="fp32",
                 batch_size=1)
    sampled = p.add("PnP_Sampler", model=ckpt[0], positive=target[0], negative=negative[0], features=bank[0],
                    cfg=7.5, steps=steps, final_step="official")
    final = p.add("SaveLatent", samples=sampled[0], filename_prefix="parity/final")
    noise = p.add("SaveLatent", samples=inversion[1], filename_prefix="parity/noise")
    result = run_prompt(p.api)
    assert result.success, result.error()
    return _read_saved_latent(host, result, final.node_id), _read_saved_latent(host, result, noise.node_id)


# --- tests ------------------------------------------------------------------------------------------------------

# First in the module, before the module's SD 1.5 pair (its diffusers UNet and inversions) exists: this test holds
# the SD 2 pair and the executor's own copy of the SD 2 checkpoint at once, the module's highest memory.
def test_sd2_v_prediction_end_to_end_matches_reference(host, models, sd2v):
    """SD2.x v-prediction (sd2v_reduced), 25 steps, as an API prompt.

    The official code only runs eps models; the reference turns v into eps with the
    alpha of the level the latent is at, as diffusers' DDIMInverseScheduler.step
    (inversion: the previous level, though the UNet is labelled with the next
    timestep) and DDIMScheduler.step (sampling) do. Measured: x_T 1.2e-6, final z 2.3e-6.
    """
    assert sd2v.model.model.model_type.name == "V_PREDICTION"
    assert sd2v.scheduler.config.prediction_type == "v_prediction"
    latent = source_latent()
    final, noise = run_pnp_prompt(host, models, "sd2v_reduced", latent, 25)
    expected_traj = reference_inversion(sd2v, latent, 25)
    t_first = official_timesteps(sd2v, 25)[0]
    sigma_T = sd2v.model.model.model_sampling.sigmas[t_first].to(torch.float64)
    z_T = noise.to(torch.float64) * ref.SD_SCALE_FACTOR / torch.sqrt(1 + sigma_T ** 2)
    assert max_diff(z_T, expected_traj[t_first]) < TOL
    diff = max_diff(final * ref.SD_SCALE_FACTOR, reference_pnp(sd2v, expected_traj, 25))
    assert diff < TOL, f"SD2 v: final latent differs by {diff:.3g}"


@pytest.mark.parametrize("pair_name", ["sd15", "sd2v"])
def test_diffusers_conversion_reproduces_comfyui_unet(request, pair_name):
    """A plain forward pass of the converted diffusers UNet equals ComfyUI's (measured 2.7e-7 / 2.8e-7)."""
    pair = request.getfixturevalue(pair_name)
    layout = pair.layout
    comfy_unet = pair.model.model.diffusion_model
    assert len(pair.unet.up_blocks) == 4 and len(pair.unet.up_blocks[3].attentions) == 3
    x = source_latent(seed=5) * ref.SD_SCALE_FACTOR
    context = Pair.emb(pair.positive)
    with torch.no_grad():
        for t in (1, 500, 981):
            expected = comfy_unet(x, timesteps=torch.tensor([float(t)]), context=context)
            got = pair.unet(x, t, encoder_hidden_states=context).sample
            assert expected.abs().max() > 0.05
            assert max_diff(got, expected) < 1e-5, (layout, t, max_diff(got, expected))


def test_inversion_trajectory_matches_official_at_every_sampling_timestep(sd15, sd15_inverted):
    """50 steps: the nodes' PNP_INVERSION equals preprocess.ddim_inversion's z at every timestep (measured 1.3e-6)."""
    latent, trajectory, expected = sd15_inverted.latent, sd15_inverted.trajectory, sd15_inverted.reference
    assert trajectory.timesteps == official_timesteps(sd15, 50) == tuple(range(981, 0, -20))
    assert torch.equal(sd15_inverted.noise["samples"], trajectory.latents[0:1])
    got = trajectory_as_official_z(sd15.model, trajectory)
    diffs = {t: max_diff(got[t], expected[t]) for t in trajectory.timesteps}
    assert max(diffs.values()) < TOL, diffs
    # The trajectory moves: x_T is far from the source, so agreement is not trivial.
    assert max_diff(expected[981], latent * ref.SD_SCALE_FACTOR) > 1.0


def test_full_pnp_through_the_executor_matches_official(host, models, sd15, sd15_inverted):
    """50 inversion + 50 sampling steps, f 0.8, attn 0.5, cfg 7.5, fp32 bank, 64 px, run as an API prompt.

    Measured: final z within 1.7e-5 of the reference (|z| up to 3.6).
    """
    final, noise = run_pnp_prompt(host, models, "sd15_reduced", sd15_inverted.latent, 50)
    expected_traj = sd15_inverted.reference
    sigma_T = sd15.model.model.model_sampling.sigmas[981].to(torch.float64)
    z_T = noise.to(torch.float64) * ref.SD_SCALE_FACTOR / torch.sqrt(1 + sigma_T ** 2)
    assert max_diff(z_T, expected_traj[981]) < TOL
    expected = reference_pnp(sd15, expected_traj, 50)
    diff = max_diff(final * ref.SD_SCALE_FACTOR, expected)
    assert diff < TOL, f"final latent differs from pnp-diffusers by {diff:.3g}"


def test_step_count_not_dividing_1000_uses_official_timesteps(sd15):
    """N = 30: ComfyUI's ddim_uniform would add t = 991 (31 steps); the nodes follow diffusers.

    Measured: trajectory 1.5e-6, final z 1.6e-5.
    """
    import comfy.samplers

    ms = sd15.model.model.model_sampling
    comfy_sigmas = comfy.samplers.calculate_sigmas(ms, "ddim_uniform", 30)
    comfy_ts = [int(ms.timestep(s)) for s in comfy_sigmas[:-1]]
    assert len(comfy_ts) == 31 and comfy_ts[0] == 991  # why this case matters
    latent = source_latent()
    trajectory, _ = invert(sd15, latent, 30)
    assert trajectory.timesteps == official_timesteps(sd15, 30)
    assert trajectory.timesteps[0] == 958 and trajectory.timesteps[-1] == 1
    expected_traj = reference_inversion(sd15, latent, 30)
    got = trajectory_as_official_z(sd15.model, trajectory)
    assert max(max_diff(got[t], expected_traj[t]) for t in trajectory.timesteps) < TOL
    final = translate(sd15, trajectory, sd15.positive, sd15.negative, 7.5, 0.8, 0.5)
    diff = max_diff(final * ref.SD_SCALE_FACTOR, reference_pnp(sd15, expected_traj, 30))
    assert diff < TOL, f"N=30: final latent differs by {diff:.3g}"


def test_inversion_steps_other_than_sampling_steps(sd15, sd15_inverted):
    """steps 10, inversion_steps 50: trajectory at 901..1 of the 50-step inversion, then PnP.

    Measured: trajectory 1.2e-6, final z 1.5e-5; the reference without injection ends
    0.10 away (asserted > 1e-2), so the tolerance tells injection apart.
    """
    trajectory, _ = invert(sd15, sd15_inverted.latent, 10, 50)
    assert trajectory.timesteps == official_timesteps(sd15, 10) == tuple(range(901, 0, -100))
    assert trajectory.inversion_steps == 50
    expected_traj = sd15_inverted.reference
    got = trajectory_as_official_z(sd15.model, trajectory)
    assert max(max_diff(got[t], expected_traj[t]) for t in trajectory.timesteps) < TOL
    final = translate(sd15, trajectory, sd15.positive, sd15.negative, 7.5, 0.8, 0.5)
    expected = reference_pnp(sd15, expected_traj, 10)
    diff = max_diff(final * ref.SD_SCALE_FACTOR, expected)
    assert diff < TOL, f"steps 10 / inversion 50: final latent differs by {diff:.3g}"
    without_injection = reference_pnp(sd15, expected_traj, 10, f=0.0, attn=0.0)
    assert max_diff(final * ref.SD_SCALE_FACTOR, without_injection) > 1e-2


def test_inversion_then_plain_ddim_reconstructs_the_source(sd15, sd15_inverted):
    """Issue test 3: invert, then resample with both thresholds 0, the "" prompt and cfg 1.

    Both routes (PnP_Sampler, final_step official; KSamplerAdvanced from the
    ``noise`` output, ddim/ddim_uniform, add_noise disabled) reconstruct the source.
    PnP_Sampler equals the official ``Preprocess.ddim_sample`` (measured 2.7e-6);
    KSampler ends at sigma 0 instead, so it is only checked against the source.
    Random UNets are not smooth, so the reconstruction is not tight; measured max
    abs error in z units (z ~ N(0, 1)): 10 steps 0.54 (KSampler 0.54), 50 steps
    0.20 (KSampler 0.20); RMS 0.16 -> 0.065. With 999 inversion steps and 50
    sampling steps (too slow for the suite; trajectory 6.8e-6 and final z 1.5e-5 from
    the reference): 0.17.
    """
    latent = sd15_inverted.latent
    inverted = {10: (*invert(sd15, latent, 10), reference_inversion(sd15, latent, 10)),
                50: (sd15_inverted.trajectory, sd15_inverted.noise, sd15_inverted.reference)}
    errors = {}
    for steps, (trajectory, noise, expected_traj) in inverted.items():
        recon = translate(sd15, trajectory, sd15.empty, sd15.empty, 1.0, 0.0, 0.0)
        ks = run_node("KSamplerAdvanced", model=sd15.model, add_noise="disable", noise_seed=0, steps=steps, cfg=1.0,
                      sampler_name="ddim", scheduler="ddim_uniform", positive=sd15.empty, negative=sd15.empty,
                      latent_image=noise, start_at_step=0, end_at_step=steps)[0]["samples"]
        official = ref.ddim_sample(sd15.unet, sd15.scheduler, expected_traj[trajectory.timesteps[0]],
                                   Pair.emb(sd15.empty), steps)
        assert max_diff(recon * ref.SD_SCALE_FACTOR, official) < TOL, steps
        errors[steps] = (max_diff(recon, latent) * ref.SD_SCALE_FACTOR, max_diff(ks, latent) * ref.SD_SCALE_FACTOR)
    (pnp10, ks10), (pnp50, ks50) = errors[10], errors[50]
    assert pnp50 < 0.75 * pnp10 and ks50 < 0.75 * ks10, errors
    assert pnp50 < 0.3 and ks50 < 0.3, errors
    assert pnp10 < 0.8 and ks10 < 0.8, errors
