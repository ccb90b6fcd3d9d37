"""Run a PnP workflow through ComfyUI without the UI.

    python workflows/run.py "workflows/01 Real image to target prompt.json" --image photo.png \\
        --prompt "a photo of a bronze statue" [--ckpt NAME] [--steps N] [-- COMFYUI ARGS]

Takes an API-format workflow (``workflows/api/*.json``; given a UI-format file
from ``workflows/`` it uses its API twin in ``workflows/api/``), fills in the
inputs given on the command line, boots ComfyUI in this process the way its
``main.py`` does (same arguments after ``--``, same model folders, custom nodes
and output directory), runs the graph with ComfyUI's own executor and a
progress bar, and prints where the images were saved (ComfyUI's output
directory, on stdout) and the previews (Preview Image files in ComfyUI's temp
directory, Preview Any texts such as PnP Feature PCA captions, on stderr).

Which nodes the options fill: ``--image`` every Load Image, ``--mask`` every
Load Image (as Mask), ``--prompt`` (repeatable) the CLIP Text Encode nodes
titled "Target prompt..." in title order, ``--ckpt`` every Load Checkpoint,
``--steps`` PnP DDIM Inversion / PnP Generate Guidance, ``--seed`` PnP Generate
Guidance, ``--size`` Empty Latent Image and Upscale Image (the size a loaded
guidance image is scaled to, e.g. 1024x1024 for SDXL). ComfyUI is found at
``--comfyui``, ``$COMFYUI_PATH``, the ComfyUI whose ``custom_nodes/`` holds
this pack, ``~/comfy/ComfyUI`` or ``~/ComfyUI``. Exit status: 0 done, 1 the
run failed, 2 bad input (nothing is run).
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

PACK_ROOT = Path(__file__).resolve().parent.parent
DEVICE_ARGS = ("--cpu", "--directml", "--cuda-device", "--oneapi-device-selector", "--disable-ipex-optimize")


class UserError(Exception):
    """Bad input: printed as one clear message, exit status 2."""


class RunFailed(Exception):
    """The graph was refused or failed while running: exit status 1."""


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    comfy_args: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, comfy_args = argv[:cut], argv[cut + 1:]
    parser = argparse.ArgumentParser(
        prog="python workflows/run.py", description="Run a PnP workflow through ComfyUI without the UI.",
        epilog="Arguments after -- go to ComfyUI as for main.py, e.g. -- --cpu --base-directory DIR.")
    parser.add_argument("workflow", type=Path, help="API-format workflow (workflows/api/*.json) or a UI file "
                                                    "from workflows/ that has an API twin")
    parser.add_argument("--image", type=Path, help="guidance image file (fills every Load Image)")
    parser.add_argument("--mask", type=Path, help="mask image, white = inject (fills every Load Image (as Mask))")
    parser.add_argument("--prompt", action="append", default=[],
                        help="target prompt; repeat for workflows with several target prompts")
    parser.add_argument("--ckpt", help="checkpoint file name in ComfyUI's models/checkpoints")
    parser.add_argument("--steps", type=int, help="sampling steps (paper: 50)")
    parser.add_argument("--seed", type=int, help="seed of a generated guidance image")
    parser.add_argument("--size", help="WIDTHxHEIGHT of a generated guidance image (Empty Latent Image) or of the "
                                       "scaled guidance image (Upscale Image), e.g. 512x512")
    parser.add_argument("--comfyui", type=Path, help="ComfyUI folder (default: see the module docstring)")
    parser.add_argument("--traceback", action="store_true", help="show Python tracebacks of unexpected errors")
    return parser.parse_args(argv), comfy_args


# ---------------------------------------------------------------------------------------------- workflow
def load_workflow(path: Path) -> tuple[dict, Path]:
    """The API-format prompt and the file it came from."""
    if not path.is_file():
        raise UserError(f"workflow file {path} does not exist.")
    data = _read_json(path)
    if isinstance(data, dict) and "nodes" in data and "links" in data:
        twin = path.parent / "api" / path.name
        if not twin.is_file():
            raise UserError(
                f"{path} is a UI-format workflow (what the ComfyUI canvas saves); this runner needs the API "
                f"format. In ComfyUI use Workflow > Export (API) and pass that file.")
        path, data = twin, _read_json(twin)
    if not isinstance(data, dict) or not data or not all(
            isinstance(n, dict) and "class_type" in n and isinstance(n.get("inputs"), dict) for n in data.values()):
        raise UserError(f"{path} is JSON but not an API-format ComfyUI workflow (node id -> class_type, inputs).")
    return data, path


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"{path} is not a JSON workflow (not even text).") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}.") from None


def check_image(path: Path, what: str) -> None:
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise UserError(f"{what} {path} does not exist.")
    try:
        with Image.open(path) as img:
            img.verify()
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise UserError(f"{what} {path} is not an image Pillow can read ({exc}).") from None


def nodes_of(prompt: dict, *class_types: str) -> list[dict]:
    return [node for _, node in sorted(prompt.items(), key=lambda kv: _id_key(kv[0]))
            if node["class_type"] in class_types]


def _id_key(node_id: str):
    return (0, int(node_id), "") if node_id.isdigit() else (1, 0, node_id)


def apply_options(prompt: dict, args: argparse.Namespace, image_name: str | None, mask_name: str | None) -> None:
    """Write the command-line values into the prompt; raises UserError when a value has nowhere to go."""
    def fill(class_types: tuple[str, ...], values: dict, option: str) -> None:
        targets = nodes_of(prompt, *class_types)
        if not targets:
            raise UserError(f"{option} was given but the workflow has no {' / '.join(class_types)} node.")
        for node in targets:
            node["inputs"].update(values)

    if image_name is not None:
        fill(("LoadImage",), {"image": image_name}, "--image")
    if mask_name is not None:
        fill(("LoadImageMask",), {"image": mask_name}, "--mask")
    if args.ckpt is not None:
        fill(("CheckpointLoaderSimple",), {"ckpt_name": args.ckpt}, "--ckpt")
    if args.steps is not None:
        if args.steps < 1:
            raise UserError("--steps must be at least 1.")
        fill(("PnP_DDIMInversion", "PnP_GenerateGuidance"), {"steps": args.steps}, "--steps")
    if args.seed is not None:
        fill(("PnP_GenerateGuidance",), {"seed": args.seed}, "--seed")
    if args.size is not None:
        try:
            width, height = (int(v) for v in args.size.lower().split("x"))
        except ValueError:
            raise UserError(f"--size {args.size!r}: write WIDTHxHEIGHT, e.g. 512x512.") from None
        if width % 8 or height % 8 or width < 64 or height < 64:
            raise UserError(f"--size {args.size}: width and height must be multiples of 8, at least 64.")
        fill(("EmptyLatentImage", "ImageScale"), {"width": width, "height": height}, "--size")
    if args.prompt:
        targets = sorted((n for n in nodes_of(prompt, "CLIPTextEncode")
                          if n.get("_meta", {}).get("title", "").startswith("Target prompt")),
                         key=lambda n: n["_meta"]["title"])
        if len(args.prompt) > len(targets):
            raise UserError(f"{len(args.prompt)} --prompt given but the workflow has {len(targets)} "
                            f"'Target prompt' node(s).")
        for node, text in zip(targets, args.prompt):
            node["inputs"]["text"] = text


# ---------------------------------------------------------------------------------------------- ComfyUI
def find_comfyui(explicit: Path | None) -> Path:
    candidates = [explicit] if explicit else []
    if os.environ.get("COMFYUI_PATH"):
        candidates.append(Path(os.environ["COMFYUI_PATH"]).expanduser())
    candidates += [PACK_ROOT.parent.parent, Path.home() / "comfy" / "ComfyUI", Path.home() / "ComfyUI"]
    for path in candidates:
        if (path / "main.py").is_file() and (path / "comfy" / "model_patcher.py").is_file():
            return path.resolve()
    raise UserError("ComfyUI was not found (looked in: " + ", ".join(map(str, candidates)) +
                    "). Pass --comfyui PATH or set COMFYUI_PATH.")


def _has_accelerator() -> bool:
    """Asked in a child process: torch must not be imported here before ComfyUI sets itself up."""
    probe = ("import torch; xpu = getattr(torch, 'xpu', None); print(torch.cuda.is_available() or "
             "torch.backends.mps.is_available() or bool(xpu and xpu.is_available()))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    return out.stdout.strip() == "True"


def boot_comfyui(comfy_path: Path, comfy_args: list[str]):
    """Import ComfyUI's main module (argument parsing, paths, prestartup) and load the nodes as it does."""
    if not any(a.startswith(DEVICE_ARGS) for a in comfy_args) and not _has_accelerator():
        comfy_args = ["--cpu", *comfy_args]
    if not any(a.startswith("--verbose") for a in comfy_args):
        comfy_args = ["--verbose", "WARNING", *comfy_args]
    sys.argv = [str(comfy_path / "main.py"), *comfy_args]
    sys.path.insert(0, str(comfy_path))
    import main  # noqa: F401  (ComfyUI's own start-up: args, logger, model paths, prestartup scripts)
    import comfy.cli_args
    import nodes

    args = comfy.cli_args.args
    init_custom = (not args.disable_all_custom_nodes) or len(args.whitelist_custom_nodes) > 0
    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=init_custom, init_api_nodes=False))
    if "PnP_Sampler" not in nodes.NODE_CLASS_MAPPINGS:
        asyncio.run(nodes.load_custom_node(str(PACK_ROOT)))
    if "PnP_Sampler" not in nodes.NODE_CLASS_MAPPINGS:
        raise RunFailed(f"ComfyUI could not load the PnP nodes from {PACK_ROOT}; see the log above.")


def copy_to_input(path: Path) -> str:
    """Put a file in ComfyUI's input directory (as the UI's upload does); returns its name there."""
    import folder_paths

    input_dir = Path(folder_paths.get_input_directory())
    input_dir.mkdir(parents=True, exist_ok=True)
    data = path.read_bytes()
    name = path.name
    target = input_dir / name
    if target.exists() and target.read_bytes() != data:
        name = f"{path.stem}_{hashlib.sha256(data).hexdigest()[:8]}{path.suffix}"
        target = input_dir / name
    if not target.exists():
        shutil.copyfile(path, target)
    return name


def check_models(prompt: dict) -> None:
    """Every model file the workflow names exists in ComfyUI's model folders, or a clear error."""
    import folder_paths

    wanted = {"CheckpointLoaderSimple": ("checkpoints", "checkpoint", "ckpt_name", "--ckpt NAME"),
              "ControlNetLoader": ("controlnet", "ControlNet model", "control_net_name", None),
              "LoraLoaderModelOnly": ("loras", "LoRA", "lora_name", None)}
    for class_type, (folder, label, key, option) in wanted.items():
        available = folder_paths.get_filename_list(folder)
        for node in nodes_of(prompt, class_type):
            name = node["inputs"].get(key)
            if not isinstance(name, str) or name in available:
                continue
            where = ", ".join(folder_paths.get_folder_paths(folder))
            if not available:
                raise UserError(f"No {label} is available and the workflow needs {name!r}. Put the file in "
                                f"{where} (or point ComfyUI at your models with extra_model_paths.yaml).")
            choice = f"; or pass {option} with one of: {', '.join(available[:10])}" if option else ""
            raise UserError(f"The workflow needs the {label} {name!r}, which is not in {where}. Put it there"
                            f"{choice}.")


class _Server:
    """What the executor reports to, in place of the web server: node progress on the terminal."""

    def __init__(self, prompt: dict):
        self.prompt = prompt
        self.client_id = None
        self.last_node_id = None
        self.last_prompt_id = None
        self.sockets_metadata = {}
        self.errors: list[dict] = []
        self._bar = None
        self._done = 0
        self._bar_node = None

    def title(self, node_id) -> str:
        node = self.prompt.get(str(node_id), {})
        return node.get("_meta", {}).get("title") or node.get("class_type", str(node_id))

    def send_sync(self, event, data, sid=None):
        if event == "executing" and data.get("node") is not None:
            self._done += 1
            self.close_bar()
            print(f"[{self._done}/{len(self.prompt)}] {self.title(data['node'])}", file=sys.stderr, flush=True)
        elif event == "execution_cached" and data.get("nodes"):
            self._done += len(data["nodes"])
        elif event in ("execution_error", "execution_interrupted"):
            self.errors.append({"event": event, **data})

    def progress(self, value, total, node_id) -> None:
        from tqdm import tqdm

        if self._bar is None or self._bar_node != node_id or self._bar.total != total:
            self.close_bar()
            self._bar = tqdm(total=total, desc=f"  {self.title(node_id)}", unit="step", file=sys.stderr,
                             leave=True, dynamic_ncols=True)
            self._bar_node = node_id
        self._bar.n = min(value, total)
        self._bar.refresh()

    def close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def queue_updated(self):
        pass


def new_prompt_executor(server, keep_outputs: bool = True):
    """ComfyUI's PromptExecutor on every supported version, as main.py builds it with --cache-classic
    (``keep_outputs``) or --cache-none.

    v0.3.64 takes ``cache_size`` and calls --cache-none's mode DEPENDENCY_AWARE; v0.33 takes ``cache_args``,
    reads its "ram" entries on every prompt (0 = no RAM-pressure eviction) and calls it NONE.
    """
    import inspect

    import execution

    none = "NONE" if "NONE" in execution.CacheType.__members__ else "DEPENDENCY_AWARE"
    cache_type = False if keep_outputs else execution.CacheType[none]
    if "cache_args" in inspect.signature(execution.PromptExecutor).parameters:
        return execution.PromptExecutor(server, cache_type=cache_type,
                                        cache_args={"lru": 0, "ram": 0, "ram_inactive": 0})
    return execution.PromptExecutor(server, cache_type=cache_type)


def run(prompt: dict) -> list[Path]:
    import comfy.model_management
    import comfy.utils
    import execution
    import folder_paths
    from comfy_execution.utils import get_executing_context

    prompt_id = str(uuid.uuid4())
    valid = asyncio.run(execution.validate_prompt(prompt_id, prompt, None))
    if not valid[0]:
        lines = [f"ComfyUI refused the workflow: {valid[1].get('message', valid[1])}"]
        for node_id, info in valid[3].items():
            for err in info.get("errors", []):
                lines.append(f"  node {node_id} ({info.get('class_type')}): {err.get('message')}: "
                             f"{err.get('details', '')}")
        raise RunFailed("\n".join(lines))

    server = _Server(prompt)

    def hook(value, total, preview_image, prompt_id=None, node_id=None):
        comfy.model_management.throw_exception_if_processing_interrupted()
        context = get_executing_context()
        server.progress(value, total, node_id or (context.node_id if context else server.last_node_id))

    comfy.utils.set_progress_bar_global_hook(hook)
    comfy.utils.PROGRESS_BAR_ENABLED = False  # one bar per node from the hook above, not ComfyUI's own as well
    executor = new_prompt_executor(server)
    try:
        executor.execute(prompt, prompt_id, extra_data={"client_id": "run.py"}, execute_outputs=valid[2])
    finally:
        server.close_bar()
    if not executor.success:
        error = server.errors[-1] if server.errors else {}
        if error.get("event") == "execution_interrupted":
            raise RunFailed("interrupted.")
        raise RunFailed(f"node {error.get('node_id')} ({error.get('node_type')}) failed: "
                        f"{error.get('exception_message', 'see the log above').strip()}")
    saved = []
    for node_id, output in executor.history_result["outputs"].items():
        for image in output.get("images", []):
            folder = Path(folder_paths.get_directory_by_type(image.get("type")) or folder_paths.get_output_directory())
            path = folder / image.get("subfolder", "") / image["filename"]
            if image.get("type") == "output":
                saved.append(path)
            else:  # Preview Image (e.g. PnP Feature PCA grids): ComfyUI's temp folder
                print(f"preview: {path}  [{server.title(node_id)}]", file=sys.stderr)
        for text in output.get("text", []):  # Preview Any (e.g. PnP Feature PCA captions)
            print(f"{server.title(node_id)}: {text}", file=sys.stderr)
    return saved


def main(argv: list[str]) -> int:
    args, comfy_args = parse_args(argv)
    args.image = args.image.resolve() if args.image is not None else None
    args.mask = args.mask.resolve() if args.mask is not None else None
    try:
        prompt, source = load_workflow(args.workflow)
        if args.image is not None:
            check_image(args.image, "--image")
        if args.mask is not None:
            check_image(args.mask, "--mask")
        # option errors before the slow start-up
        apply_options(json.loads(json.dumps(prompt)), args, args.image and args.image.name,
                      args.mask and args.mask.name)
        comfy_path = find_comfyui(args.comfyui)
        print(f"workflow {source}; ComfyUI {comfy_path}", file=sys.stderr, flush=True)
        boot_comfyui(comfy_path, comfy_args)
        image = copy_to_input(args.image) if args.image is not None else None
        mask = copy_to_input(args.mask) if args.mask is not None else None
        apply_options(prompt, args, image, mask)
        check_models(prompt)
        saved = run(prompt)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RunFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # anything else (ComfyUI start-up, a node pack): one line, unless --traceback
        if args.traceback:
            raise
        print(f"error: {type(exc).__name__}: {exc} (run with --traceback for details)", file=sys.stderr)
        return 1
    for path in saved:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
