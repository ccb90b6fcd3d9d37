"""Regenerate workflows/*.json (UI format), workflows/api/*.json (API twins), the template cards (.jpg), the
screenshots of workflows/screenshots/ and the help pages' pictures (web/docs/images/).

Run from the repository root with the oldest host's test environment:
``COMFYUI_PATH=<ComfyUI v0.3.64> .venvs/comfyui-0.3.64/bin/python tests/build_workflows.py [NAME ...]``
(spec names such as ``pnp_sdxl`` rebuild only those workflows; none = every workflow saved by this host).
Each workflow is saved by the ComfyUI it requires (``requires_comfyui`` of its spec) and that host's pinned
frontend: the SD workflows by v0.3.64 (1.27.10), the FLUX workflows, which need v0.33.0, by v0.33.0 (1.49.6):
``COMFYUI_PATH=<ComfyUI v0.33.0> .venvs/comfyui-0.33.0/bin/python tests/build_workflows.py``. A host runs the
FLUX workflows on random stand-ins for their models (``flux_workflow_models``).
It boots ComfyUI in-process only to build the random test models, then starts
the real server (previews on, as most users run it) and frontend, builds each
spec of ``workflow_specs`` in the page, lays it out (``workflow_specs.settle``),
saves what the frontend serialises under the spec's file name
(``workflow_specs.file_stems``), re-opens the saved file through the UI, runs it
small, screenshots the result (workflows/screenshots/<name>.jpg, for docs/workflows.md)
and draws the template card (``template_cards``). Saved by the oldest frontend
(1.27.10), the files open unchanged in the newer ones (docs/workflows.md, Format); the
API twins leave out the input 1.27.10 adds that no node declares
(``browser.UNDECLARED_INPUTS``).
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))

import browser  # noqa: E402
import checkpoints  # noqa: E402
import extra_models  # noqa: E402
import flux_workflow_models  # noqa: E402
import guidance_image  # noqa: E402
import comfy_host  # noqa: E402
import vision_models  # noqa: E402
import template_cards  # noqa: E402
import workflow_specs  # noqa: E402
from conftest import CACHE_DIR  # noqa: E402
from find_comfyui import comfyui_version, find_comfyui, version_tuple  # noqa: E402

WORKFLOWS = guidance_image.WORKFLOWS
SCREENSHOTS = WORKFLOWS / "screenshots"
HELP_IMAGES = WORKFLOWS.parent / "web" / "docs" / "images"
# Help page pictures: node id -> (workflow spec, the nodes shown), taken after the workflow's run.
HELP_PICTURES = {"PnP_FeatureBank": ("pnp_real_image", [8]),
                 "PnP_Sampler": ("pnp_real_image", [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]),
                 "PnP_FeaturePCA": ("pnp_feature_pca", [30, 31, 32])}


def build(frontend: browser.Frontend, spec: dict) -> dict:
    """The spec built, laid out and serialised by the frontend: {"workflow": UI file, "output": API prompt}."""
    page_spec = {**spec, "preview_types": list(workflow_specs.PREVIEW_NODE_TYPES),
                 "preview_room": workflow_specs.PREVIEW_ROOM}
    created = frontend.page.evaluate(workflow_specs.CREATE_JS, page_spec)
    sizes = {int(node_id): size for node_id, size in created["sizes"].items()}
    positions = workflow_specs.settle(spec["nodes"], sizes, created["title_height"])
    view = workflow_specs.saved_view({i: (*positions[i], *sizes[i]) for i in positions}, created["title_height"],
                                     browser.SCREEN_CHROME)
    return json.loads(frontend.page.evaluate(workflow_specs.FINISH_JS, {"positions": positions, "view": view}))


def pnp_chain(frontend: browser.Frontend, spec: dict) -> list[str]:
    """The display names (without their search subtitle) of the spec's PnP nodes, in the spec's order."""
    types = list(dict.fromkeys(n["type"] for n in spec["nodes"] if n["type"].startswith("PnP_")))
    titles = frontend.page.evaluate("types => types.map(t => LiteGraph.registered_node_types[t].title)", types)
    return [title.split(" (")[0] for title in titles]


def main(names: list[str]) -> None:
    specs = [make() for make in workflow_specs.WORKFLOWS]
    unknown = set(names) - {spec["name"] for spec in specs}
    if unknown:
        raise SystemExit(f"unknown workflow(s) {sorted(unknown)}; known: {[spec['name'] for spec in specs]}")
    stems = workflow_specs.file_stems(specs)
    version = comfyui_version(find_comfyui())
    if names:
        too_old = [spec["name"] for spec in specs if spec["name"] in names
                   and not workflow_specs.runs_on(spec, version_tuple(version))]
        if too_old:
            raise SystemExit(f"{too_old} need a newer ComfyUI than {version}")
    else:
        names = [spec["name"] for spec in specs if spec["requires_comfyui"] == version]
        if not names:
            raise SystemExit(f"no workflow is saved by ComfyUI {version}; name the ones to build")
    work = Path(tempfile.mkdtemp(prefix="pnp-build-"))
    host = comfy_host.boot(work / "host", CACHE_DIR / "checkpoints")
    ckpts = {layout: host.checkpoint_dir / checkpoints.ensure_checkpoint(layout, host.checkpoint_dir)
             for layout in set(browser.TEST_LAYOUTS.values())}
    cn = host.models_dir / "controlnet" / extra_models.ensure(
        host.models_dir / "controlnet", extra_models.controlnet_name(), extra_models.build_controlnet)
    guidance_image.write()
    for folder in (WORKFLOWS / "api", SCREENSHOTS, HELP_IMAGES):
        folder.mkdir(parents=True, exist_ok=True)
    score_models = vision_models.workflow_model_files(CACHE_DIR / "clip_vision")
    flux_specs = [spec for spec in specs if spec["name"] in names
                  and spec["requires_comfyui"] == workflow_specs.FLUX_REQUIRES_COMFYUI]
    flux_models = flux_workflow_models.model_files(CACHE_DIR / "flux") if flux_specs else None
    with browser.server_for_workflows(work / "server", ckpts, cn, score_models=score_models,
                                      flux_models=flux_models) as server, \
            browser.chromium() as chromium:
        frontend = browser.Frontend(chromium, server)
        for spec in specs:
            if names and spec["name"] not in names:
                continue
            built = build(frontend, spec)
            ui_path = WORKFLOWS / f"{stems[spec['name']]}.json"
            api_path = WORKFLOWS / "api" / f"{stems[spec['name']]}.json"
            ui_path.write_text(json.dumps(built["workflow"], indent=2) + "\n")
            twin = browser.declared_inputs_only(built["output"], frontend.version)
            api_path.write_text(json.dumps(twin, indent=2) + "\n")
            result = browser.exercise_workflow(frontend, ui_path, api_path, SCREENSHOTS / f"{spec['name']}.jpg")
            server.free()  # the next workflow runs every node (server_for_workflows: a cache emptied by /free)
            for node_id, (workflow, shown) in HELP_PICTURES.items():
                if workflow == spec["name"]:
                    frontend.screenshot_nodes(shown, HELP_IMAGES / f"{node_id}.png")
            card = template_cards.card(spec, spec["order"], pnp_chain(frontend, spec), WORKFLOWS)
            card.save(WORKFLOWS / f"{stems[spec['name']]}.jpg", quality=88, optimize=True)
            print(f"{stems[spec['name']]}: built, re-opened, ran in {result['seconds']:.1f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
