"""Boot the real ComfyUI host in-process (CPU mode) and load this pack with its loader.

Everything here follows ../shared/COMFY_HOST.md: CPU mode is set before
``comfy.model_management`` is imported, a torchvision stand-in goes on the path
(PyPI's torchvision cannot load beside the CPU torch), ``utils.extra_config`` is
imported before ``nodes``, and the pack is loaded through
``nodes.load_custom_node`` exactly as ComfyUI loads custom nodes at start-up.
"""
from __future__ import annotations

import asyncio
import importlib.util
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from find_comfyui import PACK_ROOT, find_comfyui, torchvision_stand_in

# The pack's published node IDs (saved in users' workflows: they never change).
PACK_NODE_IDS = ("PnP_DDIMInversion", "PnP_FeatureBank", "PnP_GenerateGuidance", "PnP_Sampler", "PnP_SaveFeatures",
                 "PnP_LoadFeatures", "PnP_FeaturePCA", "PnP_StructureScore", "PnP_TextScore", "PnP_ThresholdSweep",
                 "PnP_Guider", "PnP_WeakenBackground", "PnP_RestoreBrightness")


@dataclass
class Host:
    comfy_path: Path
    pack_module_name: str
    checkpoint_dir: Path
    models_dir: Path
    output_dir: Path
    progress_events: list = field(default_factory=list)

    def pack_module(self, dotted: str):
        """A submodule of the loaded pack, e.g. ``pack_module("pnp_hooks.bank")`` (imported under the pack's package
        if no node has imported it yet)."""
        return importlib.import_module(f"{self.pack_module_name}.{dotted}")


class RecordingServer:
    """Stands in for PromptServer when the executor runs without the web server."""

    def __init__(self):
        self.client_id = None
        self.last_node_id = None
        self.last_prompt_id = None
        self.sockets_metadata = {}
        self.messages: list[tuple[str, object]] = []

    def send_sync(self, event, data, sid=None):
        self.messages.append((event, data))

    def queue_updated(self):
        pass


_HOST: Host | None = None


def boot(work_dir: Path, checkpoint_dir: Path) -> Host:
    """Import ComfyUI in CPU mode, register test folders, load the pack. Idempotent.

    ``checkpoint_dir`` (where the random checkpoints are cached) is registered as
    ComfyUI's default checkpoints folder; other model kinds live under ``work_dir``.
    """
    global _HOST
    if _HOST is not None:
        return _HOST
    comfy_path = find_comfyui()
    if str(comfy_path) not in sys.path:
        sys.path.insert(0, str(comfy_path))
    # diffusers (the parity reference) must be imported before the stand-in goes on the path.
    try:
        import diffusers  # noqa: F401
    except ImportError:
        pass
    for stand_in in torchvision_stand_in():
        if stand_in not in sys.path:
            sys.path.append(stand_in)

    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import comfy.model_management  # noqa: F401  (must come after args.cpu)
    import utils.extra_config  # noqa: F401  (before nodes: see COMFY_HOST.md)
    import folder_paths
    import nodes

    models_dir = work_dir / "models"
    output_dir = work_dir / "output"
    for sub in ("controlnet", "loras", "pnp_banks"):
        (models_dir / sub).mkdir(parents=True, exist_ok=True)
    output_dir.mkdir(parents=True, exist_ok=True)
    (work_dir / "input").mkdir(parents=True, exist_ok=True)
    (work_dir / "temp").mkdir(parents=True, exist_ok=True)
    folder_paths.set_output_directory(str(output_dir))
    folder_paths.set_input_directory(str(work_dir / "input"))
    folder_paths.set_temp_directory(str(work_dir / "temp"))
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    folder_paths.add_model_folder_path("checkpoints", str(checkpoint_dir), is_default=True)
    for kind in ("controlnet", "loras"):
        folder_paths.add_model_folder_path(kind, str(models_dir / kind), is_default=True)

    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    loaded = asyncio.run(nodes.load_custom_node(str(PACK_ROOT)))
    if not loaded:
        raise RuntimeError(f"ComfyUI's loader failed to load the pack at {PACK_ROOT}; see the log above.")
    missing = [n for n in PACK_NODE_IDS if n not in nodes.NODE_CLASS_MAPPINGS]
    if missing:
        raise RuntimeError(f"The pack loaded but did not register {missing}")
    # Banks saved by tests go to the work dir, not to ComfyUI's own models/pnp_banks (the pack registered that).
    folder_paths.add_model_folder_path("pnp_banks", str(models_dir / "pnp_banks"), is_default=True)

    module_name = next(
        name for name, mod in sys.modules.items()
        if getattr(mod, "__file__", None) and Path(mod.__file__).resolve() == PACK_ROOT / "__init__.py"
    )
    _HOST = Host(comfy_path, module_name, checkpoint_dir, models_dir, output_dir)
    _install_progress_hook(_HOST)
    return _HOST


def _install_progress_hook(host: Host) -> None:
    """Like main.py's hijack_progress: record progress, honour Cancel."""
    import comfy.model_management
    import comfy.utils

    def hook(value, total, preview_image, prompt_id=None, node_id=None):
        comfy.model_management.throw_exception_if_processing_interrupted()
        host.progress_events.append((value, total, preview_image is not None))

    comfy.utils.set_progress_bar_global_hook(hook)
    comfy.utils.PROGRESS_BAR_ENABLED = False  # no tqdm bars in test logs; the hook above still runs


@dataclass
class PromptResult:
    success: bool
    outputs: dict
    messages: list
    executor: object

    def error(self) -> dict | None:
        for event, data in self.messages:
            if event in ("execution_error", "execution_interrupted"):
                return data
        return None


def validate(prompt: dict):
    import execution

    return asyncio.run(execution.validate_prompt(str(uuid.uuid4()), prompt, None))


# Prompts run so far (conftest frees what a test's prompts loaded as soon as the test ends).
prompts_run = 0


def run_prompt(prompt: dict, executor=None) -> PromptResult:
    """Validate and execute an API-format prompt through ComfyUI's own executor."""
    global prompts_run

    prompts_run += 1
    valid = validate(prompt)
    if not valid[0]:
        raise AssertionError(f"prompt failed validation: {valid[1]} {valid[3]}")
    server = executor.server if executor is not None else RecordingServer()
    if executor is None:
        executor = runner().new_prompt_executor(server)
    server.messages.clear()
    prompt_id = str(uuid.uuid4())
    executor.execute(prompt, prompt_id, extra_data={"client_id": "tests"}, execute_outputs=valid[2])
    return PromptResult(executor.success, executor.history_result["outputs"], list(server.messages), executor)


def new_executor(keep_outputs: bool = True):
    return runner().new_prompt_executor(RecordingServer(), keep_outputs)


def runner():
    """The pack's headless runner module (workflows/run.py): its ComfyUI boot helpers serve the tests too."""
    name = "comfyui_pnp_workflow_runner"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, PACK_ROOT / "workflows" / "run.py")
        sys.modules[name] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules[name]

