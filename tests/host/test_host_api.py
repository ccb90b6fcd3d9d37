"""The ComfyUI API the pack and its tests use exists on this host; a too-old host gets one clear line.

The names come from the source itself (every ``comfy...``, ``folder_paths...``
chain the modules import or reach), so the audit cannot go stale: a new use of
a ComfyUI name fails here until it is listed in ``pnp_hooks/host_api.py``
(the pack's start-up check) and exists on every host the suite runs on.
"""
from __future__ import annotations

import ast
import asyncio
import logging
import shutil
import sys
from pathlib import Path

import pytest

from find_comfyui import PACK_ROOT

HOST_MODULES = {"comfy", "comfy_api", "comfy_extras", "comfy_execution", "folder_paths", "latent_preview", "nodes",
                "execution", "node_helpers", "utils"}
PACK_SOURCES = [PACK_ROOT / "__init__.py", *sorted((PACK_ROOT / "nodes").glob("*.py")),
                *sorted((PACK_ROOT / "pnp_hooks").glob("*.py"))]
OTHER_SOURCES = [PACK_ROOT / "workflows" / "run.py", *sorted((PACK_ROOT / "tests").glob("*.py")),
                 *sorted((PACK_ROOT / "bench").glob("*.py"))]


def host_names(path: Path) -> set[str]:
    """Dotted ComfyUI names a module imports or reaches through imported names (longest chains)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    bound: dict[str, str] = {}
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in HOST_MODULES:
                    bound[alias.asname or alias.name.split(".")[0]] = alias.name if alias.asname else \
                        alias.name.split(".")[0]
                    names.add(alias.name)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and node.module.split(".")[0] in HOST_MODULES:
            for alias in node.names:
                bound[alias.asname or alias.name] = f"{node.module}.{alias.name}"
                names.add(f"{node.module}.{alias.name}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            chain, base = [], node
            while isinstance(base, ast.Attribute):
                chain.append(base.attr)
                base = base.value
            if isinstance(base, ast.Name) and base.id in bound:
                names.add(".".join([bound[base.id], *reversed(chain)]))
    return {n for n in names if not any(other.startswith(n + ".") for other in names)}


def _host_api(host):
    return host.pack_module("pnp_hooks.host_api")


def test_every_comfyui_name_in_the_pack_is_in_its_start_up_check(host):
    required = _host_api(host).REQUIRED
    unlisted = sorted(
        f"{name} ({path.relative_to(PACK_ROOT)})" for path in PACK_SOURCES for name in host_names(path)
        if not any(name == r or name.startswith(r + ".") for r in required))
    assert not unlisted, f"add these to pnp_hooks/host_api.py REQUIRED: {unlisted}"


def test_every_comfyui_name_the_pack_runner_tests_and_bench_use_exists_on_this_host(host):
    host_api = _host_api(host)
    used = set(host_api.REQUIRED) | {n for path in OTHER_SOURCES for n in host_names(path)}
    missing = sorted(n for n in used if not host_api.resolves(n))
    assert not missing, f"ComfyUI {host_api.comfyui_version()} at {host.comfy_path} lacks {missing}"
    assert host_api.host_problem() is None


def _hide_patcher_wrappers(monkeypatch):
    import comfy.patcher_extension

    monkeypatch.delattr(comfy.patcher_extension.WrappersMP, "DIFFUSION_MODEL")
    return "comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL"


def _hide_v3_api(monkeypatch):
    import comfy_api

    monkeypatch.setitem(sys.modules, "comfy_api.v0_0_2", None)  # import comfy_api.v0_0_2 now raises ImportError
    monkeypatch.delattr(comfy_api, "v0_0_2")
    return "comfy_api.v0_0_2.ComfyExtension"


@pytest.mark.parametrize("hide", [_hide_patcher_wrappers, _hide_v3_api], ids=["no DIFFUSION_MODEL wrapper",
                                                                             "no comfy_api.v0_0_2"])
def test_a_host_without_a_needed_api_loads_no_node_and_logs_one_line(host, tmp_path, monkeypatch, caplog, hide):
    """ComfyUI's own loader on a copy of the pack, with one API hidden as on an older ComfyUI."""
    import nodes

    copy = tmp_path / "comfyui-pnp-on-old-host"
    copy.mkdir()
    shutil.copy(PACK_ROOT / "__init__.py", copy)
    for package in ("nodes", "pnp_hooks"):
        shutil.copytree(PACK_ROOT / package, copy / package, ignore=shutil.ignore_patterns("__pycache__"))
    hidden = hide(monkeypatch)
    registered = dict(nodes.NODE_CLASS_MAPPINGS)
    with caplog.at_level(logging.INFO):
        loaded = asyncio.run(nodes.load_custom_node(str(copy)))

    assert loaded, "ComfyUI's loader treats the pack as failed instead of loading it with no node"
    assert nodes.NODE_CLASS_MAPPINGS == registered
    module = sys.modules[str(copy).replace(".", "_x_")]
    assert module.NODE_CLASS_MAPPINGS == {} and not hasattr(module, "comfy_entrypoint")
    lines = [r for r in caplog.records if r.name == "comfyui_pnp" or "comfyui-pnp" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.ERROR, [r.getMessage() for r in lines]
    message = lines[0].getMessage()
    assert "needs ComfyUI 0.3.64 or newer" in message and hidden in message and "update ComfyUI" in message
