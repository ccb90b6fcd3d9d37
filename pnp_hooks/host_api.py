"""The ComfyUI API this pack needs, checked once at start-up.

``REQUIRED`` names every ComfyUI module attribute the pack uses and the
methods it calls on ComfyUI objects (ModelPatcher, BaseModel, CFGGuider).
``tests/host/test_host_api.py`` keeps it complete (every ``comfy...`` name in the
pack's source is listed) and checks it on each host the suite runs on; see
COMPATIBILITY.md for what differs between the supported versions.

Imports ComfyUI only inside ``missing_names`` (a host too old to have a
module must not break the import of this one).
"""
from __future__ import annotations

import importlib

MIN_COMFYUI = "0.3.64"

REQUIRED = (
    "comfy_api.v0_0_2.ComfyExtension",
    "comfy_api.v0_0_2.io.ComfyNode",
    "comfy_api.v0_0_2.io.Schema",
    "comfy_api.v0_0_2.io.NodeOutput",
    "comfy_api.v0_0_2.io.Custom",
    "comfy_api.v0_0_2.io.Boolean",
    "comfy_api.v0_0_2.io.ClipVision",
    "comfy_api.v0_0_2.io.Combo",
    "comfy_api.v0_0_2.io.Conditioning",
    "comfy_api.v0_0_2.io.Float",
    "comfy_api.v0_0_2.io.Guider",
    "comfy_api.v0_0_2.io.Image",
    "comfy_api.v0_0_2.io.Int",
    "comfy_api.v0_0_2.io.Latent",
    "comfy_api.v0_0_2.io.Mask",
    "comfy_api.v0_0_2.io.Model",
    "comfy_api.v0_0_2.io.Noise",
    "comfy_api.v0_0_2.io.Sigmas",
    "comfy_api.v0_0_2.io.String",
    "comfy_api.v0_0_2.io.Vae",
    "comfy_api.v0_0_2.ui.PreviewText",
    "comfy.clip_model.CLIPVisionModelProjection",
    "comfy.clip_vision.ClipVisionModel.encode_image",
    "comfy.image_encoders.dino2.Dinov2Model",
    "comfy.k_diffusion.sampling.trange",
    "comfy.model_management.get_free_memory",
    "comfy.model_management.intermediate_device",
    "comfy.model_management.load_models_gpu",
    "comfy.model_management.throw_exception_if_processing_interrupted",
    "comfy.model_patcher.ModelPatcher.add_object_patch",
    "comfy.model_patcher.ModelPatcher.add_wrapper_with_key",
    "comfy.model_patcher.ModelPatcher.clone",
    "comfy.model_patcher.ModelPatcher.get_model_object",
    "comfy.model_patcher.ModelPatcher.set_model_attn1_patch",
    "comfy.model_patcher.ModelPatcher.set_model_input_block_patch",
    "comfy.model_patcher.ModelPatcher.set_model_output_block_patch",
    "comfy.model_base.BaseModel.memory_required",
    "comfy.model_base.BaseModel.process_latent_in",
    "comfy.model_sampling.EPS",
    "comfy.model_sampling.ModelSamplingDiscrete",
    "comfy.model_sampling.V_PREDICTION",
    "comfy.patcher_extension.WrappersMP.CALC_COND_BATCH",
    "comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL",
    "comfy.patcher_extension.WrappersMP.OUTER_SAMPLE",
    "comfy.patcher_extension.WrappersMP.PREDICT_NOISE",
    "comfy.sample.prepare_noise",
    "comfy.samplers.CFGGuider",
    "comfy.samplers.CFGGuider.inner_set_conds",
    "comfy.samplers.CFGGuider.sample",
    "comfy.samplers.CFGGuider.set_cfg",
    "comfy.samplers.CFGGuider.set_conds",
    "comfy.samplers.KSAMPLER",
    "comfy.samplers.calc_cond_batch",
    "comfy.samplers.ksampler",
    "comfy.sd.VAE.decode",
    "comfy.utils.PROGRESS_BAR_ENABLED",
    "comfy.utils.ProgressBar",
    "comfy.utils.get_attr",
    "folder_paths.add_model_folder_path",
    "folder_paths.folder_names_and_paths",
    "folder_paths.get_filename_list",
    "folder_paths.get_folder_paths",
    "folder_paths.models_dir",
    "latent_preview.prepare_callback",
)


def resolves(name: str) -> bool:
    """Whether ``name`` (module path, then attributes) exists in the running ComfyUI."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return False
        return True
    return False


def missing_names() -> list[str]:
    return [name for name in REQUIRED if not resolves(name)]


def comfyui_version() -> str:
    try:
        return importlib.import_module("comfyui_version").__version__
    except (ImportError, AttributeError):
        return "unknown"


def host_problem() -> str | None:
    """One log line saying why this ComfyUI cannot run the pack, or None when it can."""
    missing = missing_names()
    if not missing:
        return None
    shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
    return (f"comfyui-pnp needs ComfyUI {MIN_COMFYUI} or newer; this ComfyUI ({comfyui_version()}) lacks {shown}. "
            f"The PnP nodes are not loaded: update ComfyUI.")
