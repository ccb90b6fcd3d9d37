"""Every shipped workflow, opened as a user does in the real ComfyUI frontend, queued and run to its images.

The real server (main.py, CPU) with this pack in custom_nodes/, random models
under the workflows' model names, and the frontend pinned by ComfyUI's
requirements (comfyui-frontend-package); Debian's Chromium through Playwright.
Per workflow: open the UI file through the UI's file input; no missing node
types, no dialog or alert; the frontend's graphToPrompt equals the shipped API
twin; lower steps/size (CPU), queue with the frontend's queuePrompt (the Run
button); the server accepts it (no validation error), runs it, and every
Save/Preview Image node shows its image in the UI; PnP Feature PCA captions
name the chosen view and layer, read from the bank. The SDXL workflow runs on
the random SDXL-layout checkpoint under its SDXL checkpoint name. Screenshots
are kept in $PNP_SCREENSHOTS (default .test-artifacts/screenshots).
"""
from __future__ import annotations

import inspect
import json
import os
import re
import time
from pathlib import Path

import pytest

import browser
import extra_models
import workflow_specs
from find_comfyui import PACK_ROOT

WORKFLOWS = PACK_ROOT / "workflows"
NAMES = [make()["name"] for make in workflow_specs.WORKFLOWS]
SCREENSHOTS = Path(os.environ.get("PNP_SCREENSHOTS", PACK_ROOT / ".test-artifacts" / "screenshots"))


@pytest.fixture(scope="module")
def server(host, models, tmp_path_factory):
    ckpts = {layout: host.checkpoint_dir / models.checkpoint(layout) for layout in set(browser.TEST_LAYOUTS.values())}
    controlnet = host.models_dir / "controlnet" / extra_models.ensure(
        host.models_dir / "controlnet", extra_models.controlnet_name(), extra_models.build_controlnet)
    started = time.monotonic()
    with browser.server_for_workflows(tmp_path_factory.mktemp("server"), ckpts, controlnet) as srv:
        print(f"\nComfyUI server ready in {time.monotonic() - started:.1f} s")
        yield srv


@pytest.fixture(scope="module")
def frontend(server):
    started = time.monotonic()
    with browser.chromium() as chromium:
        page = browser.Frontend(chromium, server)
        print(f"\nfrontend loaded in Chromium in {time.monotonic() - started:.1f} s")
        yield page


def test_server_lists_the_pack_workflows_as_templates(server):
    assert sorted(server.get("/workflow_templates")["comfyui-pnp"]) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_workflow_opens_queues_and_shows_its_images(host, frontend, name):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    result = browser.exercise_workflow(frontend, WORKFLOWS / f"{name}.json", WORKFLOWS / "api" / f"{name}.json",
                                       SCREENSHOTS / f"{name}.jpg")
    print(f"\n{name}: opened, queued, images shown in {result['seconds']:.1f} s")
    api = json.loads((WORKFLOWS / "api" / f"{name}.json").read_text())
    frames = {}  # PnP Feature PCA node -> number of steps it shows, from its caption
    for node_id, text in result["texts"].items():
        pca_id = api[node_id]["inputs"]["source"][0]
        view = api[pca_id]["inputs"]
        site = "ResBlock" if view["view"] == "resblock" else "attention"
        layer = "" if view["layer"] == "auto" else view["layer"]
        assert text[0].startswith(f"{view['view']} of {site} {layer}"), text  # the chosen view and layer
        assert text[0].endswith("; feature bank"), text  # read from the bank: no extra UNet pass
        frames[pca_id] = len(re.search(r" at steps ([\d, ]+) \(", text[0]).group(1).split(", "))
    padding = inspect.signature(host.pack_module("pnp_hooks.visualize").grid).parameters["padding"].default
    for node_id, images in result["images"].items():
        assert images, node_id
        source = api[str(node_id)]["inputs"]["images"][0]
        count = frames.get(source, 1)  # a PCA grid: its frames side by side
        for width, height, src in images:
            assert (width, height) == (count * browser.FAST_SIZE + (count - 1) * padding, browser.FAST_SIZE), \
                (node_id, width, height)
            assert "/view?" in src
    assert (SCREENSHOTS / f"{name}.jpg").stat().st_size > 10_000
    page_errors = [e for e in frontend.console_errors if e.startswith("pageerror") and "PnP" in e]
    assert not page_errors, page_errors
