"""The foundation: ComfyUI loads the pack, the random checkpoints are what they claim, sampling runs."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import checkpoints
from find_comfyui import PACK_ROOT, with_stand_in
from host import PACK_NODE_IDS, run_prompt

PUBLIC_NODE_IDS = ("PnP_DDIMInversion", "PnP_FeatureBank", "PnP_GenerateGuidance", "PnP_Sampler", "PnP_FeaturePCA")


def test_comfy_loader_registers_every_node_with_tooltips(host):
    import nodes

    for node_id in PUBLIC_NODE_IDS:
        assert node_id in nodes.NODE_CLASS_MAPPINGS, node_id
        assert nodes.NODE_DISPLAY_NAME_MAPPINGS[node_id].startswith("PnP ")
        cls = nodes.NODE_CLASS_MAPPINGS[node_id]
        schema = cls.GET_SCHEMA()
        assert schema.category == "sampling/plug-and-play"
        assert schema.description
        for item in schema.inputs + schema.outputs:
            assert item.tooltip, f"{node_id}.{item.id} has no tooltip"
    assert set(PACK_NODE_IDS) <= set(PUBLIC_NODE_IDS)


@pytest.mark.parametrize("layout", ["sd15_reduced", "sd2_reduced", "sd2v_reduced"])
def test_random_checkpoint_is_detected_as_intended(models, layout):
    model, clip, vae = models.load(layout)
    family, prediction = checkpoints.EXPECTED_DETECTION[layout]
    assert type(model.model.model_config).__name__ == family
    assert model.model.model_type.name == prediction
    assert clip is not None and vae is not None
    unet = model.model.diffusion_model
    assert len(unet.output_blocks) == 12
    assert type(unet.output_blocks[4][0]).__name__ == "ResBlock"
    for b in range(12):
        has_transformer = len(unet.output_blocks[b]) > 1 and type(unet.output_blocks[b][1]).__name__ == "SpatialTransformer"
        assert has_transformer == (b >= 3), b


def test_full_sd15_checkpoint_has_real_size_and_is_detected(host):
    import nodes

    assert checkpoints.unet_parameter_count("sd15") == pytest.approx(859.5e6, rel=1e-3)
    assert checkpoints.unet_parameter_count("sd15_reduced") == pytest.approx(111.5e6, rel=1e-2)
    name = checkpoints.ensure_checkpoint("sd15", host.checkpoint_dir)
    model, clip, vae = nodes.CheckpointLoaderSimple().load_checkpoint(name)[:3]
    try:
        assert type(model.model.model_config).__name__ == "SD15"
        assert model.model.model_type.name == "EPS"
        assert model.model.diffusion_model.output_blocks[4][0].out_layers[3].weight.shape[0] == 1280
    finally:
        del model, clip, vae


def _write_input_image(host, name="guidance.png", size=64, seed=0):
    import folder_paths

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    disc = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (size / 3) ** 2
    img = np.where(disc[..., None], [220, 60, 40], [40, 90, 200]).astype(np.float64)
    img += rng.normal(0, 8, img.shape)
    Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(os.path.join(folder_paths.get_input_directory(), name))
    return name


def test_smoke_core_pipeline_through_the_executor(host, models):
    ckpt = models.checkpoint("sd15_reduced")
    image = _write_input_image(host)
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a red disc"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
        "4": {"class_type": "LoadImage", "inputs": {"image": image}},
        "5": {"class_type": "VAEEncode", "inputs": {"pixels": ["4", 0], "vae": ["1", 2]}},
        "6": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["5", 0],
            "seed": 1, "steps": 10, "cfg": 7.5, "sampler_name": "ddim", "scheduler": "ddim_uniform",
            "denoise": 1.0}},
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}},
        "8": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": "smoke"}},
    }
    result = run_prompt(prompt)
    assert result.success, result.error()
    saved = result.outputs["8"]["images"][0]
    path = host.output_dir / saved.get("subfolder", "") / saved["filename"]
    pixels = np.asarray(Image.open(path))
    assert pixels.shape == (64, 64, 3)
    assert np.isfinite(pixels).all()


def test_random_unet_predictions_stay_order_one_over_50_steps(models):
    """The init is scaled so the UNet's eps stays finite and of order 1 at every step under CFG 7.5."""
    import nodes

    model, clip, _ = models.load("sd15_reduced")
    pos = nodes.CLIPTextEncode().encode(clip, "a photo")[0]
    neg = nodes.CLIPTextEncode().encode(clip, "")[0]
    eps_std = []

    def record_eps(apply_model, args):
        denoised = apply_model(args["input"], args["timestep"], **args["c"])
        sigma = args["timestep"].view(-1, 1, 1, 1)
        eps_std.append(float(((args["input"] - denoised) / sigma).std()))
        return denoised

    recording = model.clone()
    recording.set_model_unet_function_wrapper(record_eps)
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    with torch.inference_mode():
        out = nodes.KSampler().sample(recording, 3, 50, 7.5, "ddim", "ddim_uniform", pos, neg, latent)[0]["samples"]
    assert torch.isfinite(out).all()
    assert len(eps_std) == 50
    assert all(0.05 < s < 5.0 for s in eps_std), eps_std


def test_comfyui_main_starts_with_the_pack_and_logs_no_import_error(host, tmp_path):
    base = tmp_path / "base"
    (base / "custom_nodes").mkdir(parents=True)
    (base / "custom_nodes" / "comfyui-pnp").symlink_to(PACK_ROOT, target_is_directory=True)
    env = with_stand_in(dict(os.environ))
    proc = subprocess.run(
        [sys.executable, "main.py", "--cpu", "--quick-test-for-ci", "--base-directory", str(base),
         "--disable-auto-launch", "--database-url", "sqlite:///:memory:"],
        cwd=host.comfy_path, env=env, capture_output=True, text=True, timeout=300,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    pack_lines = [line for line in log.splitlines() if "comfyui-pnp" in line]
    assert any("custom_nodes" in line and "IMPORT FAILED" not in line for line in pack_lines), log[-4000:]
    assert not any("IMPORT FAILED" in line or "Cannot import" in line for line in pack_lines), pack_lines
