"""PnP Save / Load Feature Bank nodes: banks as safetensors files in ComfyUI's models/pnp_banks folder."""
from __future__ import annotations

import logging
import os

import comfy.model_management
import folder_paths
from comfy_api.v0_0_2 import io, ui

from ..pnp_hooks import bank_file, patcher
from ..pnp_hooks.bank import check_one_frame
from ..pnp_hooks.errors import PnPInputError
from . import flux
from .common import queue_time_answer, queue_time_check
from .types import BANK_FILES_CATEGORY, PnPFeatures, PnPInversion, pnp_schema

log = logging.getLogger("comfyui_pnp")

BANK_FOLDER = "pnp_banks"
# The dropdown's only entry while no bank is saved (an empty list shows "undefined" in the frontend).
NO_BANK_YET = "no bank saved yet: see this node's help page"
NO_BANK_YET_MESSAGE = (
    "No feature bank is saved in models/pnp_banks yet. Make one: connect PnP Feature Bank (or PnP Generate "
    "Guidance) to PnP Save Feature Bank and run the graph once, then refresh (R) and pick the file here.")
# PnP Save Feature Bank's queue-time check of its file name (the extension may be typed or not).
FILE_NAME_CHECKS = {
    "filename_prefix": lambda text: bank_file.check_name(text.removesuffix(bank_file.EXTENSION), "file name"),
}


def register_bank_folder() -> None:
    """Register models/pnp_banks with ComfyUI's folder_paths and create it (idempotent; paths a user configured
    stay first)."""
    default = os.path.join(folder_paths.models_dir, BANK_FOLDER)
    os.makedirs(default, exist_ok=True)
    folder_paths.add_model_folder_path(BANK_FOLDER, default)
    paths, _ = folder_paths.folder_names_and_paths[BANK_FOLDER]
    folder_paths.folder_names_and_paths[BANK_FOLDER] = (paths, {bank_file.EXTENSION})


def bank_names() -> list[str]:
    register_bank_folder()
    return folder_paths.get_filename_list(BANK_FOLDER) or [NO_BANK_YET]


def _bank_path(bank_name: str):
    if bank_name == NO_BANK_YET:
        raise PnPInputError(NO_BANK_YET_MESSAGE)
    register_bank_folder()
    return bank_file.find_bank(bank_name, folder_paths.get_folder_paths(BANK_FOLDER))


class PnPSaveFeatures(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return pnp_schema(
            node_id="PnP_SaveFeatures",
            display_name="PnP Save Feature Bank",
            category=BANK_FILES_CATEGORY,
            description=(
                "Saves a feature bank (with its inversion trajectory and what it was recorded with) as a "
                "safetensors file in models/pnp_banks, so later sessions translate the same guidance image without "
                "inverting or recording again."),
            is_output_node=True,
            inputs=[
                PnPFeatures.Input("features", tooltip="From PnP Feature Bank or PnP Generate Guidance."),
                io.String.Input("filename_prefix", default="pnp_bank", tooltip=(
                    "File name inside models/pnp_banks (subfolders allowed, e.g. 'portraits/anna'; no '..', no "
                    "absolute paths). A counter is appended (_00001_) unless overwrite is on.")),
                io.Boolean.Input("overwrite", default=False, tooltip=(
                    "Off: never replaces a file (ComfyUI's counter suffix). On: writes exactly "
                    "<filename_prefix>.safetensors, replacing it if it exists.")),
            ],
            outputs=[io.String.Output("bank_name", display_name="bank_name", tooltip=(
                "The saved file's name as PnP Load Feature Bank lists it."))],
        )

    @classmethod
    def validate_inputs(cls, filename_prefix):
        return queue_time_check(FILE_NAME_CHECKS, filename_prefix=filename_prefix)

    @classmethod
    def execute(cls, features, filename_prefix, overwrite) -> io.NodeOutput:
        flux.refuse_flux_bank(features, "PnP Save Feature Bank")
        check_one_frame(features, "PnP Save Feature Bank")
        register_bank_folder()
        folder = folder_paths.get_folder_paths(BANK_FOLDER)[0]
        path = bank_file.save_path(folder, filename_prefix, overwrite)
        name = os.path.relpath(path, folder).replace(os.sep, "/")
        size = bank_file.write_bank(features, path, name)
        log.info("PnP feature bank saved to %s: %d bytes on disk (%d bytes of features); %s", path, size,
                 features.nbytes, features.describe())
        return io.NodeOutput(name, ui=ui.PreviewText(f"saved as {name}\n{size / 1e6:.1f} MB on disk"))


class PnPLoadFeatures(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return pnp_schema(
            node_id="PnP_LoadFeatures",
            display_name="PnP Load Feature Bank",
            category=BANK_FILES_CATEGORY,
            description=(
                "Loads a feature bank saved by PnP Save Feature Bank. The file is checked before anything is "
                "loaded: safetensors framing, content hash, and that it was recorded with the MODEL (weights, "
                "noise schedule) and image size connected here; the error names what differs."),
            inputs=[
                io.Model.Input("model", tooltip="The model the bank will be used with; it must be the one it was "
                                                "recorded with (LoRAs may be added)."),
                io.Combo.Input("bank_name", options=bank_names(), tooltip=(
                    "A bank file in models/pnp_banks, saved by PnP Save Feature Bank (press R to refresh the list).")),
                io.Latent.Input("latent", optional=True, tooltip=(
                    "Optional: the guidance image's latent (or an Empty Latent Image of the size you sample); "
                    "its size must be the bank's.")),
            ],
            outputs=[
                PnPFeatures.Output("features", display_name="features", tooltip="The feature bank for PnP Sampler."),
                PnPInversion.Output("inversion", display_name="inversion", tooltip=(
                    "The bank's inversion trajectory, e.g. to record another bank with other layers.")),
            ],
        )

    @classmethod
    def validate_inputs(cls, bank_name) -> bool | str:
        return queue_time_answer(_bank_path, bank_name)

    @classmethod
    def fingerprint_inputs(cls, model, bank_name, latent=None):
        try:
            stat = _bank_path(bank_name).stat()
        except (OSError, PnPInputError):
            return bank_name
        return f"{bank_name}:{stat.st_mtime_ns}:{stat.st_size}"

    @classmethod
    def execute(cls, model, bank_name, latent=None) -> io.NodeOutput:
        path = _bank_path(bank_name)
        facts = patcher.model_facts(model)
        latent_shape = None if latent is None else tuple(latent["samples"].shape[1:])
        bank, meta = bank_file.read_bank(path, bank_name, comfy.model_management.intermediate_device(),
                                         facts.identity, facts.layout, latent_shape)
        log.info("PnP feature bank loaded from %s (pack %s): %s", path, meta.get("pack_version"), bank.describe())
        return io.NodeOutput(bank, bank.trajectory, ui=ui.PreviewText(f"{bank_name}\n{bank.summary()}"))
