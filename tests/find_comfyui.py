"""Locate the ComfyUI checkout the tests run against.

Order: ``$COMFYUI_PATH``, the ComfyUI whose ``custom_nodes/`` holds this pack,
``~/comfy/ComfyUI``, ``~/ComfyUI``. Run as a script it prints the path (used by
``.ci/setup``) or exits 1 with the places it looked.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

PACK_ROOT = Path(__file__).resolve().parent.parent

HOW_TO_GET_IT = (
    "Get ComfyUI (https://github.com/Comfy-Org/ComfyUI, v0.3.64 is the tested version) "
    "and either set COMFYUI_PATH to it, clone this pack into its custom_nodes/, or "
    "check it out at ~/comfy/ComfyUI."
)


def candidate_paths() -> list[tuple[str, Path]]:
    candidates = []
    env = os.environ.get("COMFYUI_PATH")
    if env:
        candidates.append(("COMFYUI_PATH", Path(env).expanduser()))
    candidates.append(("the ComfyUI that contains this pack", PACK_ROOT.parent.parent))
    candidates.append(("~/comfy/ComfyUI", Path.home() / "comfy" / "ComfyUI"))
    candidates.append(("~/ComfyUI", Path.home() / "ComfyUI"))
    return candidates


def is_comfyui(path: Path) -> bool:
    return (path / "comfy" / "model_patcher.py").is_file() and (path / "nodes.py").is_file()


def find_comfyui() -> Path:
    """Return the first ComfyUI checkout found, or raise with where we looked."""
    looked = []
    for label, path in candidate_paths():
        if is_comfyui(path):
            return path.resolve()
        looked.append(f"  - {label}: {path}")
    raise FileNotFoundError(
        "ComfyUI was not found. Looked in:\n" + "\n".join(looked) + "\n" + HOW_TO_GET_IT
    )


if __name__ == "__main__":
    try:
        print(find_comfyui())
    except FileNotFoundError as exc:
        print(exc, file=sys.stderr)
        sys.exit(1)
