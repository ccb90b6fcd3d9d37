"""Regenerate workflows/*.json (UI format), workflows/api/*.json (API twins) and the .jpg thumbnails.

Run from the repository root with the oldest host's test environment:
``COMFYUI_PATH=<ComfyUI v0.3.64> .venvs/comfyui-0.3.64/bin/python tests/build_workflows.py [NAME ...]``
(names such as ``pnp_sdxl`` rebuild only those workflows; none = all).
It boots ComfyUI in-process only to build the random test models, then starts
the real server and frontend, builds each spec of ``workflow_specs`` in the
page, saves what the frontend serialises, re-opens the saved file through the
UI, runs it small and screenshots the result as the thumbnail. Saved by the
oldest frontend (1.27.10), the files open unchanged in the newer ones (README,
Workflows); the API twins leave out the input 1.27.10 adds that no node
declares (``browser.UNDECLARED_INPUTS``).
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
import guidance_image  # noqa: E402
import comfy_host  # noqa: E402
import vision_models  # noqa: E402
import workflow_specs  # noqa: E402
from conftest import CACHE_DIR  # noqa: E402

WORKFLOWS = guidance_image.WORKFLOWS
CHROME = [65, 80]  # px of the frontend's side bar and top bars over the canvas


def main(names: list[str]) -> None:
    specs = [make() for make in workflow_specs.WORKFLOWS]
    unknown = set(names) - {spec["name"] for spec in specs}
    if unknown:
        raise SystemExit(f"unknown workflow(s) {sorted(unknown)}; known: {[spec['name'] for spec in specs]}")
    work = Path(tempfile.mkdtemp(prefix="pnp-build-"))
    host = comfy_host.boot(work / "host", CACHE_DIR / "checkpoints")
    ckpts = {layout: host.checkpoint_dir / checkpoints.ensure_checkpoint(layout, host.checkpoint_dir)
             for layout in set(browser.TEST_LAYOUTS.values())}
    cn = host.models_dir / "controlnet" / extra_models.ensure(
        host.models_dir / "controlnet", extra_models.controlnet_name(), extra_models.build_controlnet)
    guidance_image.write()
    (WORKFLOWS / "api").mkdir(exist_ok=True)
    score_models = vision_models.workflow_model_files(CACHE_DIR / "clip_vision")
    with browser.server_for_workflows(work / "server", ckpts, cn, score_models=score_models) as server, \
            browser.chromium() as chromium:
        frontend = browser.Frontend(chromium, server)
        for spec in specs:
            if names and spec["name"] not in names:
                continue
            spec["chrome"] = CHROME
            built = json.loads(frontend.page.evaluate(workflow_specs.BUILD_JS, spec))
            ui_path = WORKFLOWS / f"{spec['name']}.json"
            api_path = WORKFLOWS / "api" / f"{spec['name']}.json"
            ui_path.write_text(json.dumps(built["workflow"], indent=2) + "\n")
            twin = browser.declared_inputs_only(built["output"], frontend.version)
            api_path.write_text(json.dumps(twin, indent=2) + "\n")
            result = browser.exercise_workflow(frontend, ui_path, api_path, WORKFLOWS / f"{spec['name']}.jpg")
            print(f"{spec['name']}: built, re-opened, ran in {result['seconds']:.1f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
