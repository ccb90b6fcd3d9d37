"""Every shipped workflow, opened as a user does in the real ComfyUI frontend, queued and run to its images.

The real server (main.py, CPU) with this pack in custom_nodes/, random models
under the workflows' model names, and each frontend of ``browser.frontends_for``
(the one ComfyUI's requirements pin; from ComfyUI 0.33 on also the newest of
.ci/newest-frontend.txt, served with --front-end-root): test ids start with the
frontend version. Debian's Chromium through Playwright. The page must run the
expected frontend version. Per workflow: open the UI file through the UI's file
input; no missing node types, no dialog, toast or error overlay; the frontend
changed nothing of the file on opening it; its graphToPrompt equals the shipped
API twin; lower steps/size (CPU), queue with the frontend's queuePrompt (the Run
button); the server accepts it (no validation error), runs it, and every
Save/Preview Image node shows its image in the UI; PnP Feature PCA captions
name the chosen view and layer, read from the bank; PnP Threshold Sweep (two
cells here) shows its grid, plot and a table line per cell. The SDXL workflow runs on
the random SDXL-layout checkpoint under its SDXL checkpoint name. Screenshots
are kept in $PNP_SCREENSHOTS/<frontend version> (default .test-artifacts/screenshots).
The server runs with sampling previews on (``--preview-method auto``, as most users run it), and its cache
and models are freed after each test (``browser.free_after_test``), so every workflow runs every node:
after each run no node's box, title bar included, comes near another's (``workflow_specs.boxes_clash``), and PnP
Feature Bank shows what its bank holds. Per frontend, also what makes the pack feel native: every PnP output is
labelled with its name (not its type), every help page opens from the first URL the frontend asks and fits its
narrow side panel, the pack's templates open at a zoom that draws node text, the nodes are found
by the paper's name ("plug and play", "translation", ...) in the node search, and Browse Templates shows the
pack's workflows as numbered titles in their order, each card with its picture. Last per frontend: the page
checks do see a missing node type and a toast.
"""
from __future__ import annotations

import inspect
import itertools
import json
import math
import os
import re
import time
from pathlib import Path

import pytest

import browser
import extra_models
import flux_workflow_models
import vision_models
import workflow_specs
from conftest import CACHE_DIR
from comfy_host import PACK_NODE_IDS
from find_comfyui import PACK_ROOT, comfyui_version, find_comfyui, version_tuple

WORKFLOWS = PACK_ROOT / "workflows"
SPECS = [make() for make in workflow_specs.WORKFLOWS]
NAMES = [spec["name"] for spec in SPECS]
STEMS = workflow_specs.file_stems(SPECS)
PACK_FOLDER = "comfyui-pnp"  # the folder users clone into custom_nodes (and the test server links)
SEARCHES = ("plug and play", "plug-and-play", "translation", "structure", "pnp")
SCREENSHOTS = Path(os.environ.get("PNP_SCREENSHOTS", PACK_ROOT / ".test-artifacts" / "screenshots"))
try:
    FRONTENDS = browser.frontends_for(find_comfyui())
except FileNotFoundError:  # no ComfyUI: the host fixture fails every test and says where it looked
    FRONTENDS = [browser.FrontendBuild("no-ComfyUI")]
# The FLUX workflows (spec requires_comfyui 0.33.0): run where the host is new enough; on older hosts opened only
# (test_workflow_below_its_comfyui_opens_and_is_not_queued).
FLUX_SPECS = [spec for spec in SPECS if spec["requires_comfyui"] != workflow_specs.MIN_COMFYUI]


def _runs_here(spec: dict) -> bool:
    try:
        return workflow_specs.runs_on(spec, version_tuple(comfyui_version(find_comfyui())))
    except FileNotFoundError:  # no ComfyUI: the host fixture fails the tests and says where it looked
        return True


RUN_NAMES = [spec["name"] for spec in SPECS if _runs_here(spec)]


@pytest.fixture(autouse=True)
def _free_server_models(request):
    """Memory (CI: under 6 GiB a process): the server unloads its models after each test."""
    yield
    browser.free_after_test(request)


@pytest.fixture(scope="module", params=FRONTENDS, ids=[build.version for build in FRONTENDS])
def frontend_build(request) -> browser.FrontendBuild:
    build = request.param
    if build.static is not None and not (build.static / "index.html").is_file():
        pytest.fail(f"frontend {build.version} (.ci/newest-frontend.txt) is not installed at {build.static}: "
                    "run bash .ci/setup", pytrace=False)
    return build


@pytest.fixture(scope="module")
def server(host, models, frontend_build, tmp_path_factory):
    ckpts = {layout: host.checkpoint_dir / models.checkpoint(layout) for layout in set(browser.TEST_LAYOUTS.values())}
    controlnet = host.models_dir / "controlnet" / extra_models.ensure(
        host.models_dir / "controlnet", extra_models.controlnet_name(), extra_models.build_controlnet)
    started = time.monotonic()
    score_models = vision_models.workflow_model_files(CACHE_DIR / "clip_vision")
    # on every host (below 0.33 too, where they are opened only: no Missing Models dialog for their files)
    flux_models = flux_workflow_models.model_files(CACHE_DIR / "flux") if FLUX_SPECS else None
    with browser.server_for_workflows(tmp_path_factory.mktemp("server"), ckpts, controlnet, frontend_build,
                                      score_models, flux_models) as srv:
        print(f"\nComfyUI server ready in {time.monotonic() - started:.1f} s")
        yield srv


@pytest.fixture(scope="module")
def frontend(server):
    started = time.monotonic()
    with browser.chromium() as chromium:
        page = browser.Frontend(chromium, server)
        print(f"\nfrontend {page.version} loaded in Chromium in {time.monotonic() - started:.1f} s")
        yield page


def test_page_runs_the_expected_frontend(frontend, frontend_build):
    assert frontend.version == frontend_build.version


def test_server_lists_the_pack_workflows_as_templates(server):
    assert sorted(server.get("/workflow_templates")[PACK_FOLDER]) == sorted(STEMS.values())


def host_schema(node_id: str):
    import nodes

    return nodes.NODE_CLASS_MAPPINGS[node_id].GET_SCHEMA()


def test_every_pnp_output_is_labelled_with_its_name(frontend):
    """What the frontend draws beside an output slot (label, else localized name, else name) is the output's
    display name, never its socket type."""
    shown = frontend.page.evaluate(
        """types => Object.fromEntries(types.map(t => { const node = LiteGraph.createNode(t);
             return [t, node.outputs.map(o => [o.label || o.localized_name || o.name, o.type])]; }))""",
        list(PACK_NODE_IDS))
    for node_id, outputs in shown.items():
        expected = [o.display_name for o in host_schema(node_id).outputs]
        assert [label for label, _ in outputs] == expected, (node_id, outputs)
        assert all(label != kind for label, kind in outputs), (node_id, outputs)


@pytest.fixture(scope="module")
def help_page(frontend, server):
    """A second page of the same frontend for the help panel (the first keeps its layout for the workflows), in the
    smallest window the pack is made for (browser.TEMPLATE_WINDOWS), where the side panel is narrowest."""
    page = browser.Frontend(frontend.page.context.browser, server)
    page.page.set_viewport_size(browser.TEMPLATE_WINDOWS[0])
    yield page
    page.page.close()


@pytest.mark.parametrize("node_id", PACK_NODE_IDS)
def test_help_page_opens_in_the_side_panel_without_sideways_scrolling(help_page, frontend_build, node_id):
    """The selection toolbox's help button (Node Info in 1.49.6 and 1.58.1, "?" in 1.27.10) shows the shipped page:
    the frontends ask /extensions/<pack folder>/docs/<node id>/<locale>.md first, then <node id>.md; the page is
    web/docs/<node id>/en.md, so the first request gets it (no 404 for the pack's docs). In the narrow side panel
    (~285-375 px) nothing scrolls sideways or sticks out of the page (inputs are a list, not a table)."""
    python_module = help_page.page.evaluate("t => LiteGraph.registered_node_types[t].nodeData.python_module",
                                            node_id)
    assert python_module.split(".")[1] == PACK_FOLDER, python_module
    shown = help_page.open_node_help(node_id)
    screenshots = SCREENSHOTS / frontend_build.version
    screenshots.mkdir(parents=True, exist_ok=True)
    if node_id == "PnP_Sampler":
        help_page.page.screenshot(path=str(screenshots / "help PnP_Sampler.jpg"), type="jpeg", quality=80)
    first = f"/extensions/{PACK_FOLDER}/docs/{node_id}/en.md"
    assert shown["requests"] and shown["requests"][0] == [first, 200], shown["requests"]
    assert all(status < 400 for _, status in shown["requests"]), shown["requests"]
    assert not shown["overflow"], f"help panel {shown['width']} px wide:\n" + "\n".join(shown["overflow"])
    page = (PACK_ROOT / "web" / "docs" / node_id / "en.md").read_text(encoding="utf-8")
    served = help_page.page.evaluate("async url => { const r = await fetch(url); return [r.status, await r.text()]; }",
                                     first)
    assert served == [200, page], first
    print(f"\n{node_id} help in {help_page.version}: panel {shown['width']} px, requests {shown['requests']}")


# The node search box: the shown dialog that holds a text input (1.27.10: a PrimeVue dialog whose autocomplete lists
# its options inside it; 1.49.6 and 1.58.1: the newer search box, whose results have no common class; in 1.58.1 a
# fixed reka-ui dialog, so shown = checkVisibility(), not offsetParent) and, in the newer ones, the first result's
# preview. Found by what is shown, not by the focus: a box opened while the page was busy may not hold the focus.
SEARCH_BOX = ("() => [...document.querySelectorAll('[role=dialog], .p-dialog')]"
              ".find(d => d.checkVisibility() && d.querySelector('input')) ?? null")


def _close_search_box(page) -> None:
    """Escape until no search box is shown (a box left open by a busy page would swallow the next double click)."""
    for _ in range(3):
        if page.evaluate(f"() => ({SEARCH_BOX})() === null"):
            return
        page.keyboard.press("Escape")
        try:
            page.wait_for_function(f"() => ({SEARCH_BOX})() === null", timeout=5_000)
        except Exception:  # noqa: BLE001 - pressed again; the caller's own wait says what is wrong
            pass


@pytest.mark.parametrize("query", SEARCHES)
def test_node_search_finds_the_pack_by_the_papers_name(frontend, frontend_build, query):
    """The node search box (double click on the canvas), typed as a user does, lists a PnP node."""
    from playwright.sync_api import TimeoutError as PageTimeout

    page = frontend.page
    screenshots = SCREENSHOTS / frontend_build.version
    screenshots.mkdir(parents=True, exist_ok=True)
    page.evaluate("() => app.graph.clear()")
    # waits on what the page shows, not on fixed delays: with two suites side by side on two cores the search
    # box can take seconds to open or to list its results
    for attempt in itertools.count(1):  # a double click on a canvas still busy closing the last dialog is lost
        _close_search_box(page)
        page.mouse.dblclick(browser.VIEWPORT["width"] // 2, browser.VIEWPORT["height"] // 2)
        try:
            page.wait_for_function(f"() => ({SEARCH_BOX})() !== null", timeout=5_000)
            if attempt > 1:
                print(f"\nnode search box opened on double click {attempt}")
            break
        except PageTimeout:
            if attempt == 4:
                page.screenshot(path=str(screenshots / f"search {query} not opened.jpg"), type="jpeg", quality=80)
            focus = page.evaluate("() => document.activeElement?.outerHTML.slice(0, 200)")
            assert attempt < 4, ("four double clicks on the canvas did not open the node search box; shown: "
                                 f"{frontend.dialogs()}; focus on {focus}")
    # what a click into the box does, where the page was too busy to move the focus there itself
    focused = page.evaluate(f"""() => {{ const box = ({SEARCH_BOX})(); if (box.contains(document.activeElement))
                                 return true; box.querySelector('input').focus(); return false; }}""")
    if not focused:
        print("\nthe node search box opened without the focus: its input was focused")
    page.keyboard.type(query, delay=30)
    box_text = f"() => ({SEARCH_BOX})()?.innerText ?? ''"
    try:
        page.wait_for_function(
            f"() => ({box_text})().split('\\n').some(line => line.trim().startsWith('PnP '))", timeout=20_000)
    except PageTimeout:
        pass  # the assertion below shows what the box listed instead
    found = [line.strip() for line in page.evaluate(box_text).splitlines()]
    page.screenshot(path=str(screenshots / f"search {query}.jpg"), type="jpeg", quality=80)
    _close_search_box(page)
    assert any(line.startswith("PnP ") for line in found), (query, found)


def test_template_browser_shows_the_pack_workflows_in_numbered_order(frontend, frontend_build):
    """Browse Templates, the pack's category as locales/en/main.json names it: a card per shipped workflow, titled
    by its file name, in numbered order (ComfyUI up to 0.33 lists them in the file system's order; the pack's
    web/pnp_template_order.js sorts them), each with its thumbnail drawn."""
    page = frontend.page
    locale = json.loads((PACK_ROOT / "locales" / "en" / "main.json").read_text(encoding="utf-8"))
    category = locale["templateWorkflows"]["category"][PACK_FOLDER]
    stems = set(STEMS.values())
    dialog_text = "() => [...document.querySelectorAll('.p-dialog, [role=dialog]')].map(d => d.innerText).join('\\n')"

    def titles_shown() -> list[str]:
        lines = [line.strip() for line in page.evaluate(dialog_text).splitlines()]
        shown = [line for line in lines if line in stems]
        return [title for i, title in enumerate(shown) if i == 0 or shown[i - 1] != title]  # 1.27.10: title, text

    page.evaluate("() => app.graph.clear()")
    page.evaluate("() => app.extensionManager.command.execute('Comfy.BrowseTemplates')")
    page.get_by_text(category, exact=True).first.click(timeout=30_000)
    # 1.27.10 draws the first 12 cards and the others as the grid is scrolled (below): the titles are gathered
    # in the order they appear; 1.49.6 and 1.58.1 draw them all at once
    deadline = time.monotonic() + 30
    while len(titles_shown()) < min(len(stems), 12) and time.monotonic() < deadline:
        page.wait_for_timeout(300)
    titles = titles_shown()

    def gather_titles() -> None:
        titles.extend(title for title in titles_shown() if title not in titles)

    screenshots = SCREENSHOTS / frontend_build.version
    screenshots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(screenshots / "templates.jpg"), type="jpeg", quality=80)
    # each card's picture (an image whose smallest enclosing element names one template), drawn once at least:
    # the frontends load a card's picture when it comes into view (scrolled to here, as a user does), and may
    # drop it, or the whole card, when it leaves
    thumbnails_js = """stems => { const drawn = {};
        for (const image of document.querySelectorAll('.p-dialog img, [role=dialog] img')) {
          if (image.src.startsWith('data:')) continue;
          let card = image, title;
          while (card && !(title = stems.find(s => card.innerText?.includes(s)))) card = card.parentElement;
          if (title) drawn[title] = drawn[title] || (image.complete && image.naturalWidth > 0);
        }
        return drawn; }"""
    page.mouse.move(browser.VIEWPORT["width"] // 2, browser.VIEWPORT["height"] // 2)
    drawn = set()
    deadline = time.monotonic() + 40
    while drawn != stems and time.monotonic() < deadline:
        page.wait_for_timeout(300)
        drawn |= {title for title, ok in page.evaluate(thumbnails_js, sorted(stems)).items() if ok}
        gather_titles()
        page.mouse.wheel(0, 150)
    gather_titles()
    page.keyboard.press("Escape")
    deadline = time.monotonic() + 20
    while frontend.dialogs() and time.monotonic() < deadline:
        page.wait_for_timeout(200)
    assert not frontend.dialogs(), "the template browser did not close on Escape"
    assert titles == sorted(stems), titles
    assert drawn == stems, f"no picture drawn on the cards of {sorted(stems - drawn)}"


@pytest.mark.parametrize("viewport", browser.TEMPLATE_WINDOWS, ids=lambda v: f"{v['width']}x{v['height']}")
def test_templates_open_at_a_zoom_that_draws_node_text(frontend, frontend_build, viewport):
    """Every pack template, opened as Browse Templates opens it (``Frontend.open_template``) in a window of this
    size, shows its nodes at READABLE_ZOOM or more (the canvas draws no node text below 60 % by default) with the
    graph's top left node in view, clear of the side and top bars."""
    zooms, hidden = {}, []
    try:
        for stem in sorted(STEMS.values()):
            view = frontend.open_template(PACK_FOLDER, stem, viewport)
            zooms[stem[:2]] = round(view["scale"], 3)
            corner = frontend.page.evaluate(
                """() => { const ds = app.canvas.ds, title = LiteGraph.NODE_TITLE_HEIGHT;
                     const x = Math.min(...app.graph.nodes.map(n => n.pos[0]));
                     const y = Math.min(...app.graph.nodes.map(n => n.pos[1] - title));
                     return [(x + ds.offset[0]) * ds.scale, (y + ds.offset[1]) * ds.scale]; }""")
            if not (0 <= corner[0] < viewport["width"] / 2 and 0 <= corner[1] < viewport["height"] / 2):
                hidden.append((stem[:2], corner))
        screenshots = SCREENSHOTS / frontend_build.version
        screenshots.mkdir(parents=True, exist_ok=True)
        frontend.page.screenshot(path=str(screenshots / f"template {viewport['width']}x{viewport['height']}.jpg"),
                                 type="jpeg", quality=80)
    finally:
        frontend.page.set_viewport_size(browser.VIEWPORT)
    print(f"\nopening zoom in {frontend.version} at {viewport['width']}x{viewport['height']}: {zooms}")
    assert all(zoom >= browser.READABLE_ZOOM for zoom in zooms.values()), zooms
    assert not hidden, f"the graph's top left corner is out of view: {hidden}"


@pytest.mark.parametrize("name", RUN_NAMES)
def test_workflow_opens_queues_and_shows_its_images(host, frontend, frontend_build, name):
    screenshots = SCREENSHOTS / frontend_build.version
    screenshots.mkdir(parents=True, exist_ok=True)
    ui_path, api_path = WORKFLOWS / f"{STEMS[name]}.json", WORKFLOWS / "api" / f"{STEMS[name]}.json"
    result = browser.exercise_workflow(frontend, ui_path, api_path, screenshots / f"{name}.jpg")
    print(f"\n{name} in frontend {frontend.version}: opened, queued, images shown in {result['seconds']:.1f} s")
    api = json.loads(api_path.read_text())
    # with the previews of the run drawn: no node near another, title bars included
    boxes, title = frontend.node_boxes(), frontend.title_height()
    clashes = [(a, b) for a, b in itertools.combinations(boxes, 2)
               if workflow_specs.boxes_clash(boxes[a], boxes[b], title)]
    assert not clashes, (clashes, {i: boxes[i] for pair in clashes for i in pair})
    summaries = frontend.page.evaluate(
        """() => app.graph.nodes.filter(n => n.type === 'PnP_FeatureBank' || n.type === 'PnP_GenerateGuidance')
             .map(n => n.widgets.find(w => w.name === 'pnp_bank_summary').element.textContent)""")
    assert all(re.match(r"\d+ \+ \d+ of \d+ steps, \d+ sites, [\d.]+ MB fp16\n", s) for s in summaries), summaries
    frames = {}  # PnP Feature PCA node -> number of steps it shows, from its caption
    for node_id, text in result["texts"].items():
        pca_id = api[node_id]["inputs"]["source"][0]
        if api[pca_id]["class_type"] == "PnP_ThresholdSweep":  # its table: a header and one line per cell
            cells = math.prod(len(v.split(",")) for v in browser.SWEEP_CELLS.values())
            lines = text[0].splitlines()
            assert lines[0].split()[:3] == ["cell", "feature_injection", "attention_injection"], text
            assert [line.split()[0] for line in lines[1:cells + 1]] == [str(i) for i in range(1, cells + 1)], text
            continue
        view = api[pca_id]["inputs"]
        site = "ResBlock" if view["view"] == "resblock" else "attention"
        layer = "" if view["layer"] == "auto" else view["layer"]
        assert text[0].startswith(f"{view['view']} of {site} {layer}"), text  # the chosen view and layer
        assert text[0].endswith("; feature bank"), text  # read from the bank: no extra UNet pass
        frames[pca_id] = len(re.search(r" at steps ([\d, ]+) \(", text[0]).group(1).split(", "))
    padding = inspect.signature(host.pack_module("pnp_hooks.visualize").grid).parameters["padding"].default
    for node_id, images in result["images"].items():
        assert images, node_id
        source, slot = api[str(node_id)]["inputs"]["images"]
        count = frames.get(source, 1)  # a PCA grid: its frames side by side
        expected = (count * browser.FAST_SIZE + (count - 1) * padding, browser.FAST_SIZE)
        if api[source]["class_type"] == "PnP_ThresholdSweep":  # its grid (one column per tau_f) or plot
            columns = len(browser.SWEEP_CELLS["feature_injection_values"].split(","))
            expected = (columns * browser.FAST_SIZE, None) if slot == 0 else (720, 540)
        for width, height, src in images:
            assert (width, height if expected[1] else None) == expected, (node_id, width, height)
            assert "/view?" in src
    assert (screenshots / f"{name}.jpg").stat().st_size > 10_000
    page_errors = [e for e in frontend.console_errors if e.startswith("pageerror") and "PnP" in e]
    assert not page_errors, page_errors


def test_flux_workflows_run_from_their_comfyui_on_and_open_below_it(host, server, frontend):
    """The FLUX workflows need ComfyUI 0.33.0 (its FLUX blocks call attn1_patch). From there on they are queued and
    run above (RUN_NAMES), with random models under the names they load (``flux_workflow_models``). Below it they
    open in the frontend unchanged, with graphToPrompt equal to the twin, and are not queued: the pack refuses
    FLUX there with one line naming the version (as test_flux_pnp asserts for the nodes)."""
    assert FLUX_SPECS and all(spec["requires_comfyui"] == "0.33.0" for spec in FLUX_SPECS)
    assert workflow_specs.FLUX_UNET in server.get("/models/diffusion_models")
    assert {workflow_specs.FLUX_CLIP_L, workflow_specs.FLUX_T5XXL} <= set(server.get("/models/text_encoders"))
    if _runs_here(FLUX_SPECS[0]):
        assert all(spec["name"] in RUN_NAMES for spec in FLUX_SPECS)
        return
    assert not any(spec["name"] in RUN_NAMES for spec in FLUX_SPECS)
    for spec in FLUX_SPECS:
        browser.open_and_check(frontend, WORKFLOWS / f"{STEMS[spec['name']]}.json",
                               WORKFLOWS / "api" / f"{STEMS[spec['name']]}.json")
    errors = host.pack_module("pnp_hooks.errors")
    with pytest.raises(errors.PnPInputError) as refused:
        host.pack_module("pnp_hooks.flux_sampling").check_host()
    assert "\n" not in str(refused.value)
    assert str(refused.value).startswith("PnP on FLUX needs ComfyUI 0.33.0 or newer")


def test_page_checks_see_a_missing_node_type_and_a_toast(frontend, tmp_path):
    """The checks above are not blind in this frontend (last: the page keeps what this test opens)."""
    broken = json.loads((WORKFLOWS / f"{STEMS['pnp_real_image']}.json").read_text())
    broken["nodes"][0]["type"] = "PnP_NoSuchNode"
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    frontend.open_workflow_file(tmp_path / "broken.json")
    assert frontend.unknown_node_types() == ["PnP_NoSuchNode"]
    assert frontend.dialogs(), "no dialog or error overlay for a missing node type"
    frontend.show_toast("PnP toast check")
    deadline = time.monotonic() + 20  # the toast is drawn on a later frame: seconds with two suites side by side
    while not any("PnP toast check" in text for text in frontend.dialogs()) and time.monotonic() < deadline:
        frontend.page.wait_for_timeout(200)
    assert any("PnP toast check" in text for text in frontend.dialogs()), frontend.dialogs()
