"""The pack's subgraph blueprints (``subgraphs/*.json``) in the real ComfyUI server and frontends.

On every host: the shipped files are exactly what ``tests/build_blueprints.py`` builds from
``blueprint_specs`` and the shipped workflows with this host's node definitions (inner nodes, their widget
values and the template defaults, the knobs each input feeds).

On hosts with blueprint support (ComfyUI 0.33 on, ``app/subgraph_manager.py``), per frontend of
``browser.frontends_for`` (1.49.6, the one ComfyUI pins, and the newest, 1.58.1; test ids start with its
version), with the real server (main.py, CPU), random models under the template names and Debian's Chromium:
the server lists the three blueprints as this pack's; the Node Library shows them under Subgraph Blueprints ›
Comfy Blueprints › sampling › plug-and-play (the pack's category); the node search box, typed as a user does,
lists all three for "pnp" and for "plug and play"; then per blueprint: picked from the search results it is
placed on the canvas as one node with the template defaults on its widgets (target prompt, steps 50, cfg 7.5,
feature 0.8, attention 0.5); wired to a checkpoint loader, an image (and mask) loader and Save Image, with
fewer steps and another feature threshold set on the blueprint node, the frontend's prompt runs the template's
PnP chain with those values (the threshold reaching both PnP Feature Bank and PnP Sampler); queued as the Run
button does, it runs to an image shown in Save Image; a double click on its body opens it, showing PnP DDIM
Inversion, PnP Feature Bank and PnP Sampler inside. Screenshots go to $PNP_SCREENSHOTS/<frontend version>.

On hosts without blueprint support (ComfyUI 0.3.64, frontend 1.27.10) these browser tests do not exist (not
skipped): instead the pack must load as before with subgraphs/ present: the server starts, every PnP node
registers (server and frontend), ``/global_subgraphs`` is not served, no page error or server log error names
the pack or blueprints, and all of this is exactly what the same host shows for the pack without subgraphs/
(frontend 1.27.10 raises one page error at startup either way, "Cannot read properties of undefined (reading
'id')"; the host's own import tracebacks, e.g. without torchaudio, are the same too).
"""
from __future__ import annotations

import json
import os
import re
import time
import urllib.error
from pathlib import Path

import pytest

import blueprint_browser as bb
import blueprint_specs
import browser
import guidance_image
import workflow_specs
from comfy_host import PACK_NODE_IDS
from find_comfyui import PACK_ROOT, comfyui_version, find_comfyui, version_tuple

PACK_FOLDER = "comfyui-pnp"  # the folder users clone into custom_nodes (and the test server links)
BLUEPRINT_HOSTS_FROM = (0, 33)
NAMES = [spec["name"] for spec in blueprint_specs.BLUEPRINTS]
SEARCHES = ("pnp", "plug and play")
LIBRARY_FOLDERS = ["Comfy Blueprints", "sampling", "plug-and-play"]  # the pack's category under the section
PNP_CHAIN = ["PnP_DDIMInversion", "PnP_FeatureBank", "PnP_Sampler"]
# The template defaults the blueprint node shows (the paper's: 50 steps, feature 0.8, attention 0.5).
DEFAULTS = {"steps": 50, "cfg": 7.5, "feature_injection": 0.8, "attention_injection": 0.5}
FAST = {"steps": browser.FAST_STEPS, "feature_injection": 0.7}
SCREENSHOTS = Path(os.environ.get("PNP_SCREENSHOTS", PACK_ROOT / ".test-artifacts" / "screenshots"))
CHECKPOINTS = {"PnP SDXL - Plug-and-Play translation": workflow_specs.SDXL_CHECKPOINT}
try:
    COMFYUI = find_comfyui()
    HAS_BLUEPRINTS = version_tuple(comfyui_version(COMFYUI)) >= BLUEPRINT_HOSTS_FROM
    FRONTENDS = browser.frontends_for(COMFYUI)
except FileNotFoundError:  # no ComfyUI: the host fixture fails every test and says where it looked
    HAS_BLUEPRINTS, FRONTENDS = True, [browser.FrontendBuild("no-ComfyUI")]


@pytest.mark.parametrize("name", NAMES)
def test_shipped_blueprint_is_what_the_spec_builds(host, name):
    spec = next(s for s in blueprint_specs.BLUEPRINTS if s["name"] == name)
    shipped = (blueprint_specs.SUBGRAPHS / f"{name}.json").read_text(encoding="utf-8")
    assert shipped == blueprint_specs.file_text(blueprint_specs.build(spec, blueprint_specs.host_widget_types)), \
        "subgraphs/ is stale: run tests/build_blueprints.py"
    definition = json.loads(shipped)["definitions"]["subgraphs"][0]
    inner = {node["type"] for node in definition["nodes"]}
    assert set(PNP_CHAIN) <= inner, inner
    assert definition["category"] == blueprint_specs.CATEGORY and definition["description"]


def test_titles_differ_where_the_library_cuts_them():
    """The node library's sidebar (1.49.6, 1.58.1, default width) shows about 27 characters of a title."""
    assert len({name[:24] for name in NAMES}) == len(NAMES), NAMES


def _log_errors(log: str, base: Path) -> list[str]:
    """Tracebacks, and lines naming the pack with an error or a failed import (the base folder left out)."""
    return [line.replace(str(base), "<base>") for line in log.splitlines() if "Traceback" in line
            or (PACK_FOLDER in line and re.search(r"error|IMPORT FAILED|Cannot import", line, re.I))]


def _without_subgraphs(folder: Path) -> Path:
    """A copy of the pack without subgraphs/: links to everything else it ships."""
    folder.mkdir(parents=True)
    for entry in PACK_ROOT.iterdir():
        if entry.name not in ("subgraphs", ".git", ".venvs", ".test-cache", ".test-artifacts"):
            (folder / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    return folder


def _what_the_host_shows(base: Path, pack: Path) -> dict:
    """Start the server with ``pack`` as custom_nodes/comfyui-pnp and open the frontend: the node ids it
    registers, what /global_subgraphs answers, the page errors and the server log's errors."""
    (base / "custom_nodes").mkdir(parents=True)
    (base / "custom_nodes" / PACK_FOLDER).symlink_to(pack, target_is_directory=True)
    with browser.ComfyServer(base, {}, {}) as server:
        nodes = set(server.get("/object_info"))
        try:
            listing = server.get("/global_subgraphs")
        except urllib.error.HTTPError as exc:
            listing = exc.code
        with browser.chromium() as chromium:
            page = browser.Frontend(chromium, server)
            page_errors = sorted(e for e in page.console_errors if e.startswith("pageerror"))
            pack_types = page.page.evaluate(
                "ids => ids.filter(t => t in LiteGraph.registered_node_types)", list(PACK_NODE_IDS))
        log = _log_errors(server.log_path.read_text(errors="replace"), base)
    return {"nodes": nodes, "global_subgraphs": listing, "page_errors": page_errors, "pack_types": pack_types,
            "log_errors": log}


@pytest.fixture(autouse=True)
def _free_server_models(request):
    """Memory (CI: under 6 GiB a process): the server unloads its models after each test."""
    yield
    browser.free_after_test(request)


if not HAS_BLUEPRINTS:
    def test_pack_loads_unchanged_with_subgraphs_present(tmp_path):
        """ComfyUI before 0.33 has no blueprint support: with subgraphs/ the host shows exactly what it shows
        without the folder (nodes, page errors, log errors), every PnP node registers, no blueprint route."""
        assert sorted(p.stem for p in blueprint_specs.SUBGRAPHS.glob("*.json")) == sorted(NAMES)
        shown = _what_the_host_shows(tmp_path / "with", PACK_ROOT)
        assert set(PACK_NODE_IDS) <= shown["nodes"], sorted(set(PACK_NODE_IDS) - shown["nodes"])
        assert shown["pack_types"] == list(PACK_NODE_IDS), shown["pack_types"]
        assert shown["global_subgraphs"] == 404, shown["global_subgraphs"]
        assert not [e for e in shown["page_errors"] if re.search("pnp|subgraph|blueprint", e, re.I)], shown
        assert not [line for line in shown["log_errors"] if PACK_FOLDER in line], shown["log_errors"]
        without = _what_the_host_shows(tmp_path / "without", _without_subgraphs(tmp_path / "pack"))
        assert shown == without

else:
    @pytest.fixture(scope="module", params=FRONTENDS, ids=[build.version for build in FRONTENDS])
    def frontend_build(request) -> browser.FrontendBuild:
        build = request.param
        if build.static is not None and not (build.static / "index.html").is_file():
            pytest.fail(f"frontend {build.version} (.ci/newest-frontend.txt) is not installed at {build.static}: "
                        "run bash .ci/setup", pytrace=False)
        return build

    @pytest.fixture(scope="module")
    def server(host, models, frontend_build, tmp_path_factory):
        checkpoints = {name: host.checkpoint_dir / models.checkpoint(layout)
                       for name, layout in browser.TEST_LAYOUTS.items()}
        base = tmp_path_factory.mktemp("server")
        with browser.ComfyServer(base, {"checkpoints": checkpoints}, browser.small_inputs(base / "small-inputs"),
                                 frontend_build, browser.EMPTIED_CACHE) as srv:
            yield srv

    @pytest.fixture(scope="module")
    def frontend(server):
        with browser.chromium() as chromium:
            yield browser.Frontend(chromium, server)

    @pytest.fixture(scope="module")
    def screenshots(frontend_build) -> Path:
        folder = SCREENSHOTS / frontend_build.version
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def test_page_runs_the_expected_frontend(frontend, frontend_build):
        assert frontend.version == frontend_build.version

    def test_server_lists_the_blueprints_as_the_packs(server):
        listed = server.get("/global_subgraphs")
        ours = {entry["name"]: entry_id for entry_id, entry in listed.items()
                if entry["info"]["node_pack"] == f"custom_nodes.{PACK_FOLDER}"}
        assert sorted(ours) == sorted(NAMES)
        for name, entry_id in ours.items():
            data = server.get(f"/global_subgraphs/{entry_id}")["data"]
            assert data == (blueprint_specs.SUBGRAPHS / f"{name}.json").read_text(encoding="utf-8")

    def test_node_library_lists_them_under_the_packs_category(frontend, screenshots):
        page = frontend.page
        page.evaluate("() => app.graph.clear()")
        try:
            text = bb.open_library_folders(page, LIBRARY_FOLDERS, NAMES)
            page.screenshot(path=str(screenshots / "blueprints in the node library.jpg"), type="jpeg", quality=80)
        finally:
            bb.close_library(page)
        lines = [line.strip() for line in text.splitlines()]
        folder = lines.index("plug-and-play", lines.index("Comfy Blueprints"))
        assert sorted(lines[folder + 1:folder + 1 + len(NAMES)]) == sorted(NAMES), lines[folder:folder + 8]

    @pytest.mark.parametrize("query", SEARCHES)
    def test_node_search_lists_all_three(frontend, screenshots, query):
        page = frontend.page
        page.evaluate("() => app.graph.clear()")
        found = bb.search(page, query, NAMES)
        page.screenshot(path=str(screenshots / f"blueprints search {query}.jpg"), type="jpeg", quality=80)
        bb.close_search(page)
        assert set(NAMES) <= set(found), (query, [line for line in found if line.startswith("PnP")])

    @pytest.mark.parametrize("name", NAMES)
    def test_blueprint_is_placed_runs_to_an_image_and_opens(frontend, screenshots, name):
        page = frontend.page
        started = time.monotonic()
        bb.new_workflow(page)
        found = bb.search(page, "pnp", [name])
        assert name in found, found
        node_id = bb.place_from_search(page, name)
        placed = bb.blueprint_node(page, node_id)
        assert placed["is_subgraph"] and placed["title"] == name, placed
        assert {k: placed["widgets"].get(k) for k in DEFAULTS} == DEFAULTS, placed["widgets"]
        template_prompt = json.loads(blueprint_specs.workflow_files(
            next(s for s in blueprint_specs.BLUEPRINTS if s["name"] == name))[1].read_text())["3"]["inputs"]["text"]
        assert placed["widgets"]["text"] == template_prompt
        assert set(PNP_CHAIN) <= set(placed["inner"]), placed["inner"]

        ids = page.evaluate(bb.WIRE_JS, {"id": node_id, "ckpt": CHECKPOINTS.get(name, workflow_specs.CHECKPOINT),
                                         "image": guidance_image.IMAGE_NAME, "mask": guidance_image.MASK_NAME})
        bb.set_blueprint_widgets(page, node_id, FAST)
        if "ImageScale" in placed["inner"]:  # SDXL: the image size inside, changed as a user does once opened
            bb.set_inner_widgets(page, node_id, "ImageScale", {"width": browser.FAST_SIZE,
                                                               "height": browser.FAST_SIZE})
        prompt = frontend.graph_to_prompt()
        inner = {node["class_type"]: node["inputs"] for key, node in prompt.items() if key.startswith(f"{node_id}:")}
        assert set(PNP_CHAIN) <= set(inner), sorted(inner)
        assert inner["PnP_DDIMInversion"]["steps"] == FAST["steps"]
        for node_type in ("PnP_FeatureBank", "PnP_Sampler"):
            assert inner[node_type]["feature_injection"] == FAST["feature_injection"], (node_type, inner[node_type])
            assert inner[node_type]["attention_injection"] == DEFAULTS["attention_injection"]
        assert inner["PnP_Sampler"]["cfg"] == DEFAULTS["cfg"]
        assert ("mask" in inner["PnP_Sampler"]) == ("mask" in ids), inner["PnP_Sampler"]

        answer = frontend.queue()
        assert answer["http_status"] == 200 and not answer.get("node_errors") and not answer.get("error"), answer
        history = frontend.wait_for_history(answer["prompt_id"], 600)
        assert history["status"]["status_str"] == "success", f"{history['status']}\n{frontend.server.log_tail()}"
        images = frontend.wait_for_output_images([ids["save"]])
        assert [(w, h) for w, h, _ in images[str(ids["save"])]] == [(browser.FAST_SIZE, browser.FAST_SIZE)], images
        frontend.screenshot(screenshots / f"{name} ran.jpg")

        page.mouse.dblclick(*bb.body_point(page, node_id))
        page.wait_for_function("() => app.canvas.graph !== app.graph", timeout=30_000)
        shown = page.evaluate("() => app.canvas.graph.nodes.map(n => n.type)")
        page.wait_for_timeout(500)  # DOM widgets follow the canvas on the next frames
        frontend.screenshot(screenshots / f"{name} opened.jpg")
        page.evaluate("() => app.canvas.setGraph(app.graph)")
        assert set(PNP_CHAIN) <= set(shown), shown
        dialogs = frontend.dialogs()
        assert not dialogs, dialogs
        page_errors = [e for e in frontend.console_errors if e.startswith("pageerror")]
        assert not page_errors, page_errors
        print(f"\n{name} in frontend {frontend.version}: placed, ran, opened in {time.monotonic() - started:.1f} s")
