"""Locate the ComfyUI checkouts ("hosts") the tests run against.

One host: ``$COMFYUI_PATH``, the ComfyUI whose ``custom_nodes/`` holds this
pack, ``~/comfy/ComfyUI``, ``~/ComfyUI`` (the first that exists). Several:
``$COMFYUI_PATHS``, paths joined with ``:``, one run of the suite each
(``.ci/test``). As a script:

    python3 tests/find_comfyui.py          the one host's path (exit 1 with where it looked)
    python3 tests/find_comfyui.py --hosts  "<version> <path>" per host: $COMFYUI_PATHS, else the one host
    python3 tests/find_comfyui.py --all    every checkout at the usual places, joined with ":"
                                           (``.ci/run``'s default for $COMFYUI_PATHS)
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

PACK_ROOT = Path(__file__).resolve().parent.parent

HOW_TO_GET_IT = (
    "Get ComfyUI (https://github.com/Comfy-Org/ComfyUI; v0.3.64 and v0.33.0 are the tested versions) "
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


def comfyui_version(path: Path) -> str:
    """The checkout's version from ``comfyui_version.py`` (e.g. "0.33.0")."""
    text = (path / "comfyui_version.py").read_text(encoding="utf-8")
    return re.search(r'__version__\s*=\s*"([^"]+)"', text).group(1)


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


def hosts() -> list[Path]:
    """The hosts named by ``$COMFYUI_PATHS``, else the one ``find_comfyui`` finds."""
    named = [Path(p).expanduser() for p in os.environ.get("COMFYUI_PATHS", "").split(":") if p.strip()]
    if not named:
        return [find_comfyui()]
    missing = [str(p) for p in named if not is_comfyui(p)]
    if missing:
        raise FileNotFoundError(f"COMFYUI_PATHS names {missing}, which are not ComfyUI checkouts. {HOW_TO_GET_IT}")
    return [p.resolve() for p in named]


def all_checkouts() -> list[Path]:
    """Every ComfyUI checkout at the usual places, ``~/comfy/*`` included, oldest version first."""
    found = [path for _, path in candidate_paths() if is_comfyui(path)]
    comfy_dir = Path.home() / "comfy"
    if comfy_dir.is_dir():
        found += [p for p in sorted(comfy_dir.iterdir()) if is_comfyui(p)]
    unique = list(dict.fromkeys(p.resolve() for p in found))
    return sorted(unique, key=lambda p: version_tuple(comfyui_version(p)))


def torchvision_stand_in() -> list[str]:
    """PYTHONPATH entries for the torchvision stand-in, or none where a real torchvision is installed.

    ComfyUI v0.3.64 boots beside the CPU torch with the stand-in; v0.33 imports
    torchvision.ops and torchaudio at its core and gets the real trio (``.ci/setup``).
    """
    from importlib.metadata import PackageNotFoundError, version

    try:
        version("torchvision")
    except PackageNotFoundError:
        return [str(PACK_ROOT / "tests" / "_stubs")]
    return []


def with_stand_in(env: dict[str, str]) -> dict[str, str]:
    """``env`` for a ComfyUI subprocess (main.py, the runner): the stand-in on PYTHONPATH where needed."""
    paths = torchvision_stand_in() + [p for p in [env.get("PYTHONPATH")] if p]
    return {**env, "PYTHONPATH": os.pathsep.join(paths)} if paths else dict(env)


if __name__ == "__main__":
    try:
        if sys.argv[1:] == ["--hosts"]:
            for host in hosts():
                print(comfyui_version(host), host)
        elif sys.argv[1:] == ["--all"]:
            print(":".join(map(str, all_checkouts())))
        else:
            print(find_comfyui())
    except FileNotFoundError as exc:
        print(exc, file=sys.stderr)
        sys.exit(1)
