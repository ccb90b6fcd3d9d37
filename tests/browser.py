"""The real ComfyUI server + its real frontend, driven by Debian's headless Chromium through Playwright.

- ``FrontendBuild`` / ``frontends_for``: the frontends a host is tested with: the
  ``comfyui-frontend-package`` its requirements pin (installed beside it) and, on
  hosts from ComfyUI 0.33 on, the newest one of ``.ci/newest-frontend.txt``
  (installed by ``.ci/setup`` under ``.venvs/``, served with ``--front-end-root``).
- ``ComfyServer``: ``main.py --cpu`` on a loopback port with a throw-away base
  directory: ``custom_nodes/comfyui-pnp`` links to this repository, random
  models sit under the names the shipped workflows use.
- ``chromium()``: /usr/bin/chromium (never a downloaded browser), loopback only.
- ``Frontend``: what a user does in the page (open a workflow file through the
  UI's file input, queue, wait for the image) plus read-outs through the
  frontend's own objects (``window.app``: graph, ``graphToPrompt``, node images).
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import workflow_specs
from find_comfyui import PACK_ROOT, comfyui_version, find_comfyui, version_tuple, with_stand_in

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic"]
VIEWPORT = {"width": 1920, "height": 1200}
# Windows the pack's templates must open readable in, and the zoom below which the canvas draws no node text
# (LiteGraph.Canvas.MinFontSizeForLOD's default 8 px of the 14 px node font, ~57 %; users see it at 60 %).
TEMPLATE_WINDOWS = ({"width": 1600, "height": 1000}, {"width": 1920, "height": 1080})
READABLE_ZOOM = 0.6


NEWEST_FRONTEND_PIN = PACK_ROOT / ".ci" / "newest-frontend.txt"
NEWEST_FRONTEND_FROM = (0, 33)  # hosts from this ComfyUI version on are also tested with the newest frontend


@dataclass(frozen=True)
class FrontendBuild:
    """A frontend to serve: its version and static folder (None: the package installed beside ComfyUI)."""
    version: str
    static: Path | None = None


def pinned_frontend(comfyui: Path) -> FrontendBuild:
    """The frontend that ComfyUI's requirements.txt pins."""
    pin = re.search(r"^comfyui-frontend-package==(\S+)", (comfyui / "requirements.txt").read_text(), re.M)
    return FrontendBuild(pin.group(1))


def newest_frontend() -> FrontendBuild:
    """The frontend of .ci/newest-frontend.txt, where .ci/setup installs it."""
    pin = next(line for line in NEWEST_FRONTEND_PIN.read_text().splitlines() if line.strip() and line[0] != "#")
    version = pin.strip().split("==")[1]
    return FrontendBuild(version, PACK_ROOT / ".venvs" / f"frontend-{version}" / "comfyui_frontend_package" / "static")


def frontends_for(comfyui: Path) -> list[FrontendBuild]:
    """The pinned frontend; from ComfyUI 0.33 on also the newest one."""
    builds = [pinned_frontend(comfyui)]
    newest = newest_frontend()
    if version_tuple(comfyui_version(comfyui)) >= NEWEST_FRONTEND_FROM and newest.version != builds[0].version:
        builds.append(newest)
    return builds


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """ComfyUI's main.py in CPU mode on 127.0.0.1 with a base directory made for the test."""

    def __init__(self, base: Path, models: dict[str, dict[str, Path]], inputs: dict[str, Path],
                 frontend: FrontendBuild | None = None, extra_args: tuple[str, ...] = (),
                 stand_in_nodes: tuple[Path, ...] = ()):
        self.base = base
        self.front_end_root = ["--front-end-root", str(frontend.static)] if frontend and frontend.static else []
        self.extra_args = list(extra_args)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = base / "server.log"
        (base / "custom_nodes").mkdir(parents=True, exist_ok=True)
        link = base / "custom_nodes" / "comfyui-pnp"
        if not link.exists():
            link.symlink_to(PACK_ROOT, target_is_directory=True)
        for folder in stand_in_nodes:  # test-only custom node folders (flux_workflow_models.STAND_IN_NODES)
            if not (base / "custom_nodes" / folder.name).exists():
                (base / "custom_nodes" / folder.name).symlink_to(folder, target_is_directory=True)
        for kind, files in models.items():
            (base / "models" / kind).mkdir(parents=True, exist_ok=True)
            for name, source in files.items():
                target = base / "models" / kind / name
                if not target.exists():
                    target.symlink_to(source)
        (base / "input").mkdir(exist_ok=True)
        for name, source in inputs.items():
            (base / "input" / name).write_bytes(Path(source).read_bytes())
        settings = base / "user" / "default" / "comfy.settings.json"
        settings.parent.mkdir(parents=True, exist_ok=True)
        # no first-run template browser and no minimap over the canvas; node text drawn at any zoom
        settings.write_text(json.dumps({"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False,
                                        "LiteGraph.Canvas.MinFontSizeForLOD": 1}))
        self.proc: subprocess.Popen | None = None
        self.queued = 0  # prompts queued through a Frontend, and how many had been when the server last freed
        self.freed_at = 0

    def start(self, timeout: float = 180.0) -> None:
        env = with_stand_in(dict(os.environ))
        env.setdefault("OMP_NUM_THREADS", "1")
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
             "--base-directory", str(self.base), "--disable-auto-launch", "--database-url", "sqlite:///:memory:",
             *self.front_end_root, *self.extra_args],
            cwd=find_comfyui(), env=env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{self.url}/object_info/PnP_Sampler", timeout=5) as r:
                    if "PnP_Sampler" in json.load(r):
                        return
            time.sleep(0.5)
        raise RuntimeError(f"ComfyUI did not answer within {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if getattr(self, "_log", None):
            self._log.close()

    def free(self) -> None:
        """Unload the server's models and empty its node cache, as the frontend's "Unload Models" / "Free model
        and node cache" do (POST /free {"free_memory": true}: its prompt worker then unloads, resets the cache and
        collects the garbage at once; on its own it collects at most every 10 s). The worker reads the flag when
        a condition variable wakes it, and a wake-up it gets while still busy with the last prompt's clean-up is
        lost (the flag then waits for the next prompt, which runs first, from the old cache: seen once, with the
        two flags sent together). So the flag is sent twice, a second apart: the second finds the worker
        idle."""
        for attempt in range(2):
            if attempt:
                time.sleep(1.0)
            request = urllib.request.Request(f"{self.url}/free", method="POST",
                                             headers={"Content-Type": "application/json"},
                                             data=json.dumps({"free_memory": True}).encode())
            with urllib.request.urlopen(request, timeout=30):
                pass
        self.freed_at = self.queued

    def log_tail(self, chars: int = 6000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def get(self, path: str):
        with urllib.request.urlopen(f"{self.url}{path}", timeout=30) as r:
            return json.load(r)

    def __enter__(self) -> "ComfyServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def free_after_test(request) -> None:
    """For an autouse fixture's teardown: when the test queued a prompt on its ``server`` fixture (a running
    ComfyServer), the server's models and cache freed (``ComfyServer.free``), so the server holds one
    workflow's checkpoint at a time and the next workflow runs every node."""
    server = (request.node.funcargs or {}).get("server")
    if isinstance(server, ComfyServer) and server.queued != server.freed_at and server.proc is not None \
            and server.proc.poll() is None:
        server.free()


@contextlib.contextmanager
def chromium():
    """A Playwright browser on Debian's Chromium (no browser download ever)."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        raise FileNotFoundError(f"{CHROMIUM} is missing: apt-get install -y chromium (see .ci/setup)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


class Frontend:
    """One page of the ComfyUI frontend; ``version`` is the one the page runs."""

    def __init__(self, browser, server: ComfyServer):
        self.server = server
        self.page = browser.new_page(viewport=VIEWPORT)
        self.console_errors: list[str] = []
        self.page.on("console", lambda m: m.type == "error" and self.console_errors.append(m.text))
        self.page.on("pageerror", lambda e: self.console_errors.append(f"pageerror: {e}"))
        self.page.goto(server.url + "/", wait_until="load")
        self.page.wait_for_function(
            "() => window.app && app.graph && window.LiteGraph && 'PnP_Sampler' in LiteGraph.registered_node_types",
            timeout=120_000)
        self.page.wait_for_timeout(1000)
        self.version: str = self.page.evaluate("() => window.__COMFYUI_FRONTEND_VERSION__")

    def dialogs(self) -> list[str]:
        """Texts of the dialogs, toasts and error overlays shown in the page (missing nodes/models, alerts).

        PrimeVue dialogs and toasts (1.27.10, 1.49.6), the load-error overlay (1.49.6 on), reka-ui dialogs and
        toasts (1.58.1).
        """
        return self.page.evaluate(
            "() => [...document.querySelectorAll('.p-dialog, .p-toast-message, [data-testid=error-overlay], "
            "[role=dialog], [role=alertdialog], [data-testid=toast]')]"
            ".filter(d => d.offsetParent !== null).map(d => d.innerText)")

    def open_workflow_file(self, path: Path) -> None:
        """Open a workflow the way a user does: the UI's Open file input (what drag and drop also calls)."""
        expected = len(json.loads(Path(path).read_text())["nodes"])
        self.page.evaluate("() => app.graph.clear()")
        self.page.set_input_files("#comfy-file-input", str(path))
        self.page.wait_for_function(f"() => app.graph.nodes.length === {expected}", timeout=30_000)
        self.page.wait_for_timeout(800)

    def open_template(self, folder: str, stem: str, viewport: dict | None = None) -> dict:
        """Open a custom node pack's template as Browse Templates does (the card's click): fetch
        /api/workflow_templates/<folder>/<stem>.json and ``app.loadGraphData(json, true, true, stem,
        {openSource: "template"})`` (1.27.10 restores the file's saved view, extra.ds; 1.49.6 and 1.58.1 fit
        the view to the nodes). ``viewport``: the window size to open it at (the page keeps it).
        Returns the view once it has settled: {"scale", "offset", "canvas": [width, height]}."""
        if viewport is not None and self.page.viewport_size != viewport:
            self.page.set_viewport_size(viewport)
            self.page.wait_for_function(
                "([w, h]) => { const r = app.canvas.canvas.getBoundingClientRect(); "
                "return r.width > 0 && r.width <= w && r.height <= h && app.canvas.ds.element.width > 0; }",
                arg=[viewport["width"], viewport["height"]], timeout=30_000)
        return self.page.evaluate(_OPEN_TEMPLATE_JS, {"folder": folder, "stem": stem})

    def open_node_help(self, node_type: str, timeout: float = 60.0) -> dict:
        """Open a node's help as a user does: a new node of ``node_type`` on an empty canvas, selected, and the
        selection toolbox's help button (Node Info in 1.49.6 and 1.58.1: the right side panel's Info tab; "?" in
        1.27.10: the node library's help page). Returns what the pack's docs requests got (``requests``: [url,
        status] in order), the panel's width and what in it is wider than its box (``overflow``: one line per
        element that scrolls or sticks out sideways)."""
        requests: list[list] = []
        prefix = f"{self.server.url}/extensions/"

        def record(response) -> None:
            if response.url.startswith(prefix) and "/docs/" in response.url:
                requests.append([response.url.removeprefix(self.server.url), response.status])

        self.page.on("response", record)
        try:
            self.page.evaluate(
                """type => { app.graph.clear(); const node = LiteGraph.createNode(type); node.pos = [400, 400];
                     app.graph.add(node); app.canvas.ds.scale = 1; app.canvas.ds.offset[0] = 0;
                     app.canvas.ds.offset[1] = 0; app.canvas.selectNode(node); app.graph.setDirtyCanvas(true, true); }""",
                node_type)
            # the toolbox follows the selection a frame later; its button can sit under the menu bar in 1.27.10,
            # so it is clicked as its own element (what a click on it runs)
            self.page.wait_for_function("() => document.querySelector('[data-testid=info-button]')",
                                        timeout=timeout * 1000)
            self.page.evaluate("() => document.querySelector('[data-testid=info-button]').click()")
            title = self.page.evaluate("t => LiteGraph.registered_node_types[t].title.split(' (')[0]", node_type)
            self.page.wait_for_function(
                """title => [...document.querySelectorAll('.node-help-content h1')].some(h => h.innerText.trim() === title
                     && h.offsetParent !== null && [...h.closest('.node-help-content').querySelectorAll('img')]
                     .every(i => i.complete))""", arg=title, timeout=timeout * 1000)
            return {"requests": requests, **self.page.evaluate(_HELP_OVERFLOW_JS, title)}
        finally:
            self.page.remove_listener("response", record)

    def unknown_node_types(self) -> list[str]:
        return self.page.evaluate(
            "() => app.graph.nodes.filter(n => !(n.type in LiteGraph.registered_node_types) || n.has_errors)"
            ".map(n => n.type)")

    def graph_to_prompt(self) -> dict:
        return json.loads(self.page.evaluate("async () => JSON.stringify((await app.graphToPrompt()).output)"))

    def show_toast(self, text: str) -> None:
        """A warning toast through the frontend's extension API (what a failed validation shows)."""
        self.page.evaluate("text => app.extensionManager.toast.add({severity: 'warn', summary: text, detail: text})",
                           text)

    def serialize(self) -> dict:
        return json.loads(self.page.evaluate("async () => JSON.stringify((await app.graphToPrompt()).workflow)"))

    def widget_values(self) -> dict:
        return self.page.evaluate(
            "() => Object.fromEntries(app.graph.nodes.map(n => [n.id, (n.widgets || []).map(w => w.value)]))")

    def set_widgets(self, changes: dict[int, dict[str, object]]) -> None:
        self.page.evaluate(
            """changes => { for (const [id, values] of Object.entries(changes)) {
                 const node = app.graph.getNodeById(Number(id));
                 for (const [name, value] of Object.entries(values)) {
                   const w = node.widgets.find(w => w.name === name);
                   if (!w) throw new Error(`node ${id} (${node.type}) has no widget ${name}`);
                   w.value = value; w.callback?.(value);
                 } }
               app.graph.setDirtyCanvas(true, true); }""", {str(k): v for k, v in changes.items()})

    def queue(self) -> dict:
        """Queue the graph as the Run button does (app.queuePrompt); returns the server's /prompt answer."""
        with self.page.expect_response(lambda r: r.url.endswith("/api/prompt") and r.request.method == "POST",
                                       timeout=60_000) as answer:
            self.page.evaluate("() => app.queuePrompt(0, 1)")
        self.server.queued += 1
        response = answer.value
        body = response.json()
        body["http_status"] = response.status
        return body

    def wait_for_history(self, prompt_id: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                history = self.server.get(f"/history/{prompt_id}")
            except urllib.error.URLError:
                history = {}
            entry = history.get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None:
                if entry["status"].get("status_str") in ("success", "error"):
                    return entry
            time.sleep(0.5)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout:.0f} s:\n{self.server.log_tail()}")

    def wait_for_output_images(self, node_ids: list[int], timeout: float = 60.0) -> dict:
        """Wait until every given output node shows its image(s) in the UI; returns their sizes."""
        self.page.wait_for_function(
            """ids => ids.every(id => { const n = app.graph.getNodeById(id);
                 return n && n.imgs && n.imgs.length > 0 && n.imgs.every(i => i.complete && i.naturalWidth > 0); })""",
            arg=node_ids, timeout=timeout * 1000)
        return self.page.evaluate(
            "ids => Object.fromEntries(ids.map(id => [id, app.graph.getNodeById(id).imgs"
            ".map(i => [i.naturalWidth, i.naturalHeight, i.src])]))", node_ids)

    def screenshot(self, path: Path, quality: int = 85) -> None:
        self.page.mouse.move(VIEWPORT["width"] // 2, 55)  # an empty spot of the menu bar: no hover tooltip
        self.page.wait_for_timeout(300)
        kwargs = {"quality": quality, "type": "jpeg"} if str(path).endswith(".jpg") else {}
        self.page.screenshot(path=str(path), **kwargs)

    def screenshot_nodes(self, node_ids: list[int], path: Path, margin: int = 24) -> None:
        """A picture of these nodes as the canvas draws them: the view is moved to show them at up to 100 %
        clear of the side and top bars, then put back."""
        clip = self.page.evaluate(_SHOW_NODES_JS, {"ids": node_ids, "margin": margin, "chrome": SCREEN_CHROME})
        self.page.mouse.move(VIEWPORT["width"] // 2, 55)
        self.page.wait_for_timeout(600)  # DOM widgets follow the canvas on the next frames
        self.page.screenshot(path=str(path), clip=clip)
        self.page.evaluate("ds => { Object.assign(app.canvas.ds, {scale: ds.scale}); app.canvas.ds.offset[0] = "
                           "ds.offset[0]; app.canvas.ds.offset[1] = ds.offset[1]; app.canvas.setDirty(true, true); }",
                           clip["view"])

    def show_whole_graph(self) -> None:
        """Moves the view so that every node is in it, clear of the side and top bars (a file opens at its saved
        view, which may show only the graph's top left part)."""
        self.page.evaluate(_SHOW_NODES_JS, {"ids": self.page.evaluate("() => app.graph.nodes.map(n => n.id)"),
                                            "margin": 24, "chrome": SCREEN_CHROME})

    def node_boxes(self) -> dict[int, tuple[float, float, float, float]]:
        """Every node's box as the canvas has it now, (x, y, width, height) with y the top of the body."""
        boxes = self.page.evaluate("() => app.graph.nodes.map(n => [n.id, [...n.pos, ...n.size]])")
        return {node_id: tuple(box) for node_id, box in boxes}

    def title_height(self) -> float:
        return self.page.evaluate("() => LiteGraph.NODE_TITLE_HEIGHT")


# The template browser's card click: fetch the template, load it as a template; then wait until the view has
# been the same for 5 frames (1.49.6 and 1.58.1 may fit it a frame later).
_OPEN_TEMPLATE_JS = """
async ({folder, stem}) => {
  const r = await fetch(`/api/workflow_templates/${encodeURIComponent(folder)}/${encodeURIComponent(stem)}.json`);
  if (!r.ok) throw new Error(`template ${folder}/${stem}: HTTP ${r.status}`);
  const json = await r.json();
  await app.loadGraphData(json, true, true, stem, {openSource: 'template'});
  const frame = () => new Promise(done => requestAnimationFrame(() => done()));
  const view = () => JSON.stringify([app.canvas.ds.scale, ...app.canvas.ds.offset]);
  let last = view(), same = 0;
  for (let i = 0; i < 200 && same < 5; i++) { await frame(); const now = view(); same = now === last ? same + 1 : 0; last = now; }
  if (app.graph.nodes.length !== json.nodes.length) throw new Error(`template ${stem}: ${app.graph.nodes.length} nodes`);
  const rect = app.canvas.canvas.getBoundingClientRect();
  return {scale: app.canvas.ds.scale, offset: [...app.canvas.ds.offset], canvas: [rect.width, rect.height]};
}
"""

# The help page's panel: its width, and every element of the page and of the panel around it (up to the first
# box wider than half the window) that scrolls sideways or sticks out of the page's box.
_HELP_OVERFLOW_JS = """
title => {
  const heading = [...document.querySelectorAll('.node-help-content h1')].find(h => h.innerText.trim() === title);
  const page = heading.closest('.node-help-content');
  const box = page.getBoundingClientRect();
  const around = [];
  for (let e = page; e && e.clientWidth <= innerWidth / 2; e = e.parentElement) around.push(e);
  const describe = e => `${e.tagName.toLowerCase()}.${String(e.className).split(' ').slice(0, 3).join('.')} ` +
    `"${(e.innerText || '').trim().slice(0, 40)}"`;
  const overflow = [];
  for (const e of [...around, ...page.querySelectorAll('*')]) {
    const x = getComputedStyle(e).overflowX;
    if ((x === 'auto' || x === 'scroll') && e.scrollWidth > e.clientWidth + 1)
      overflow.push(`${describe(e)} scrolls: ${e.scrollWidth} px in ${e.clientWidth} px`);
  }
  for (const e of page.querySelectorAll('*')) {
    const r = e.getBoundingClientRect();
    if (r.width > 0 && (r.right > box.right + 1 || r.left < box.left - 1))
      overflow.push(`${describe(e)} sticks out: ${Math.round(r.left)}-${Math.round(r.right)} px of ` +
                    `${Math.round(box.left)}-${Math.round(box.right)} px`);
  }
  return {width: around[around.length - 1].clientWidth, text: page.innerText, overflow};
}
"""

SCREEN_CHROME = [65, 80]  # px of the frontend's side bar and top bars (over the canvas, or beside it in 1.27)
# Moves the view so that the given nodes fill the free part of the canvas (clear of the bars) at up to 100 %;
# returns the page rectangle they occupy (for a clipped screenshot) and the view as it was.
_SHOW_NODES_JS = """
({ids, margin, chrome}) => {
  const ds = app.canvas.ds, title = LiteGraph.NODE_TITLE_HEIGHT;
  const view = {scale: ds.scale, offset: [...ds.offset]};
  const nodes = ids.map(id => app.graph.getNodeById(id));
  const x0 = Math.min(...nodes.map(n => n.pos[0])) - margin, y0 = Math.min(...nodes.map(n => n.pos[1] - title)) - margin;
  const x1 = Math.max(...nodes.map(n => n.pos[0] + n.size[0])) + margin;
  const y1 = Math.max(...nodes.map(n => n.pos[1] + n.size[1])) + margin;
  const rect = app.canvas.canvas.getBoundingClientRect();
  const left = Math.max(rect.left, chrome[0]), top = Math.max(rect.top, chrome[1]);
  const scale = Math.min(1, (rect.right - left) / (x1 - x0), (rect.bottom - top) / (y1 - y0));
  ds.scale = scale;
  ds.offset[0] = (left - rect.left) / scale - x0;
  ds.offset[1] = (top - rect.top) / scale - y0;
  app.canvas.setDirty(true, true);
  return {x: left, y: top, width: Math.floor((x1 - x0) * scale), height: Math.floor((y1 - y0) * scale), view};
}
"""


# What the browser test changes before queueing, to keep CPU time small (random reduced model).
FAST_STEPS = 3
FAST_SIZE = 64
OUTPUT_NODE_TYPES = ("SaveImage", "PreviewImage")
# PnP Threshold Sweep's grid, kept to two cells (each cell is one sampling and two scorings).
SWEEP_CELLS = {"feature_injection_values": "0.4, 0.8", "attention_injection_values": "0.5"}
# The random checkpoint layout (tests/checkpoints.py) standing in for each checkpoint the workflows name.
TEST_LAYOUTS = {workflow_specs.CHECKPOINT: "sd15_reduced", workflow_specs.SDXL_CHECKPOINT: "sdxl_reduced"}


def fast_changes(api: dict) -> dict[int, dict[str, object]]:
    """Widget edits that make a shipped workflow cheap: few steps, 64 px generated, resized and PCA images."""
    changes: dict[int, dict[str, object]] = {}
    for node_id, node in api.items():
        if node["class_type"] in ("PnP_DDIMInversion", "PnP_GenerateGuidance"):
            changes[int(node_id)] = {"steps": FAST_STEPS}
        if node["class_type"] in ("EmptyLatentImage", "ImageScale"):
            changes[int(node_id)] = {"width": FAST_SIZE, "height": FAST_SIZE}
        if node["class_type"] == "PnP_FeaturePCA":
            changes[int(node_id)] = {"frame_width": FAST_SIZE}
        if node["class_type"] == "PnP_ThresholdSweep":
            changes[int(node_id)] = dict(SWEEP_CELLS)
    return changes


# Frontend 1.27.10 sends Preview Any's display-only text widget as "preview": "" in the prompt; no node declares
# it and ComfyUI ignores it; 1.49.6 and 1.58.1 leave it out (the versions between were not checked). The API
# twins hold the declared inputs only: class_type -> input names a frontend up to this version adds.
UNDECLARED_INPUTS = {"1.27.10": {"PreviewAny": {"preview"}}}
# Frontends after 1.49.6 (1.58.1 seen) copy a node's pack properties (cnr_id, aux_id, ver) into the prompt's
# _meta, which ComfyUI does not read; the twins, saved by 1.27.10, have the title only.
PACK_META_AFTER = "1.49.6"
PACK_META = ("cnr_id", "aux_id", "ver")


def declared_inputs_only(prompt: dict, frontend_version: str) -> dict:
    """An API prompt from ``graphToPrompt`` without the inputs this frontend adds that no node declares, and
    without the pack properties it copies into ``_meta``."""
    undeclared: dict[str, set[str]] = {}
    for upto, inputs in UNDECLARED_INPUTS.items():
        if version_tuple(frontend_version) <= version_tuple(upto):
            undeclared.update(inputs)
    copies_pack_meta = version_tuple(frontend_version) > version_tuple(PACK_META_AFTER)
    return {node_id: {**node, "inputs": {name: value for name, value in node["inputs"].items()
                                         if name not in undeclared.get(node["class_type"], ())},
                      **({"_meta": {k: v for k, v in node["_meta"].items() if k not in PACK_META}}
                         if copies_pack_meta and "_meta" in node else {})}
            for node_id, node in prompt.items()}


def prompt_differences(got: dict, twin: dict) -> list[str]:
    """One readable line per node, input or field where the frontend's prompt and the API twin differ."""
    lines = []
    for node_id in sorted(set(got) | set(twin), key=int):
        mine, theirs = got.get(node_id), twin.get(node_id)
        if mine is None or theirs is None:
            node = mine or theirs
            lines.append(f"node {node_id} ({node['class_type']}): only in the {'frontend' if mine else 'twin'}")
            continue
        where = f"node {node_id} ({theirs['class_type']})"
        fields = [(f"input {k}", mine["inputs"], theirs["inputs"], k) for k in {**theirs["inputs"], **mine["inputs"]}]
        fields += [(k, mine, theirs, k) for k in sorted((set(mine) | set(theirs)) - {"inputs"})]
        lines += [f"{where} {field}: frontend {_shown(a, k)}, twin {_shown(b, k)}"
                  for field, a, b, k in fields if (k in a) != (k in b) or a.get(k) != b.get(k)]
    return lines


def _shown(values: dict, key: str) -> str:
    return repr(values[key]) if key in values else "absent"


def changes_on_load(saved: dict, loaded: dict) -> list[str]:
    """What the frontend changed in a UI file by opening it: schema version, links, groups, nodes.

    Per node: type, title, mode, flags, colours, position, size, properties, widget values (none = []), the
    links of its inputs and outputs. Not compared: the graph ``id`` (the file's nil UUID means none: frontends
    from 1.49 give each opened copy its own), output slot names and unconnected outputs a host's node
    definition adds (ComfyUI 0.33 names outputs by their id, 0.3.64 by their type; its Save/Preview Image and
    Preview Any gained outputs), fields a frontend adds to every save (``widgets_values_named``, extra).
    """
    lines = [f"{key}: file {saved.get(key)!r}, opened {loaded.get(key)!r}"
             for key in ("version", "groups") if saved.get(key) != loaded.get(key)]
    links = {json.dumps(link): "file" for link in saved["links"]}
    for link in map(json.dumps, loaded["links"]):
        links[link] = "same" if link in links else "opened"
    lines += [f"link {link} only in the {where}" for link, where in links.items() if where != "same"]
    opened = {node["id"]: node for node in loaded["nodes"]}

    def essentials(node: dict) -> dict:
        return {**{k: node.get(k) for k in ("type", "title", "mode", "flags", "color", "bgcolor", "pos", "size",
                                            "properties")},
                "widgets_values": node.get("widgets_values", []),
                "inputs": [(i["name"], i.get("link")) for i in node.get("inputs", []) if i.get("link") is not None],
                "outputs": [o.get("links") for o in node.get("outputs", []) if o.get("links")]}

    for node in saved["nodes"]:
        if node["id"] not in opened:
            lines.append(f"node {node['id']} ({node['type']}): gone")
            continue
        before, after = essentials(node), essentials(opened[node["id"]])
        lines += [f"node {node['id']} ({node['type']}) {key}: file {before[key]!r}, opened {after[key]!r}"
                  for key in before if before[key] != after[key]]
    lines += [f"node {i} ({n['type']}): added" for i, n in opened.items() if i not in {m["id"] for m in saved["nodes"]}]
    return lines


def open_and_check(frontend: Frontend, ui_path: Path, api_path: Path) -> dict:
    """Open a UI workflow file as a user does and check it: no missing node type, no dialog, nothing changed by
    opening it, graphToPrompt equal to its API twin. Returns the twin; raises AssertionError on the first
    problem."""
    frontend.open_workflow_file(ui_path)
    unknown = frontend.unknown_node_types()
    assert not unknown, f"{ui_path.name}: missing node types {unknown}"
    dialogs = frontend.dialogs()
    assert not dialogs, f"{ui_path.name}: dialogs after loading: {dialogs}"
    changes = changes_on_load(json.loads(ui_path.read_text()), frontend.serialize())
    assert not changes, f"{ui_path.name}: frontend {frontend.version} changed the file on opening it:\n" + \
        "\n".join(changes)
    api = json.loads(api_path.read_text())
    differences = prompt_differences(declared_inputs_only(frontend.graph_to_prompt(), frontend.version), api)
    assert not differences, f"{ui_path.name}: frontend {frontend.version}'s graphToPrompt differs from " \
        f"{api_path.parent.name}/{api_path.name}:\n" + "\n".join(differences)
    return api


def exercise_workflow(frontend: Frontend, ui_path: Path, api_path: Path, screenshot: Path | None,
                      timeout: float = 300.0) -> dict:
    """Open a UI workflow file as a user does, check it, queue it, wait for its images in the UI.

    Returns figures and findings; raises AssertionError on the first problem.
    """
    started = time.monotonic()
    api = open_and_check(frontend, ui_path, api_path)
    original = frontend.widget_values()
    fast = fast_changes(api)
    frontend.set_widgets(fast)
    answer = frontend.queue()
    assert answer["http_status"] == 200 and not answer.get("node_errors") and not answer.get("error"), \
        f"{ui_path.name}: validation failed: {answer}"
    history = frontend.wait_for_history(answer["prompt_id"], timeout)
    assert history["status"]["status_str"] == "success", \
        f"{ui_path.name}: execution failed: {history['status']}\n{frontend.server.log_tail()}"
    frontend.set_widgets({nid: {name: original[str(nid)][i] for name, i in _widget_index(frontend, nid, values)}
                          for nid, values in fast.items()})
    outputs = [int(i) for i, n in api.items() if n["class_type"] in OUTPUT_NODE_TYPES]
    frontend.show_whole_graph()  # the canvas loads a node's images when it draws the node
    images = frontend.wait_for_output_images(outputs)
    saved = {nid: out.get("images", []) for nid, out in history["outputs"].items()}
    assert all(saved.get(str(i)) for i in outputs), f"{ui_path.name}: an output node has no image: {saved}"
    texts = {i: history["outputs"].get(i, {}).get("text") for i, n in api.items() if n["class_type"] == "PreviewAny"}
    assert all(texts.values()), f"{ui_path.name}: a Preview Any node shows nothing: {texts}"
    dialogs = frontend.dialogs()
    assert not dialogs, f"{ui_path.name}: dialogs after the run: {dialogs}"
    if screenshot is not None:
        frontend.screenshot(screenshot)
    return {"seconds": time.monotonic() - started, "images": images, "texts": texts, "prompt_id": answer["prompt_id"]}


def _widget_index(frontend: Frontend, node_id: int, names: dict[str, object]):
    order = frontend.page.evaluate("id => app.graph.getNodeById(id).widgets.map(w => w.name)", node_id)
    return [(name, order.index(name)) for name in names]


def small_inputs(folder: Path, size: int = FAST_SIZE) -> dict[str, Path]:
    """The shipped guidance image, mask and frames, downscaled, under their shipped names (for the server's
    input/)."""
    from PIL import Image, ImageSequence

    import guidance_image

    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in (guidance_image.IMAGE_NAME, guidance_image.MASK_NAME):
        img = Image.open(guidance_image.WORKFLOWS / name)
        img.resize((size, size), Image.Resampling.LANCZOS).save(folder / name)
        out[name] = folder / name
    frames = [frame.convert("RGB").resize((size, size), Image.Resampling.LANCZOS)
              for frame in ImageSequence.Iterator(Image.open(guidance_image.WORKFLOWS / guidance_image.FRAMES_NAME))]
    guidance_image.save_frames(frames, folder / guidance_image.FRAMES_NAME)
    out[guidance_image.FRAMES_NAME] = folder / guidance_image.FRAMES_NAME
    return out


# Sampling previews on every PnP node and sampler, as most users run ComfyUI (latent2rgb here: no TAESD files).
PREVIEWS_ON = ("--preview-method", "auto")
# Every queued workflow runs every node (none is served from another workflow's cache), so each shows its
# previews and what its bank holds: ComfyUI's classic cache, emptied after each test (``free_after_test``, POST
# /free). Not ``--cache-none``: with it ComfyUI 0.33 runs a Load Checkpoint again for each later consumer within
# one prompt (seen: three loads per blueprint run), and the server held three SDXL copies at once (10.6 GiB).
EMPTIED_CACHE = ("--cache-classic",)


def server_for_workflows(base: Path, checkpoints: dict[str, Path], controlnet: Path,
                         frontend: FrontendBuild | None = None,
                         score_models: dict[str, dict[str, Path]] | None = None,
                         flux_models: dict[str, dict[str, Path]] | None = None) -> ComfyServer:
    """A server whose model folders hold random models under the names the shipped workflows use, with
    previews on and a cache that the caller empties between workflows (``ComfyServer.free``).

    ``checkpoints``: the random checkpoint file for each layout of ``TEST_LAYOUTS``; ``frontend``: the one to
    serve (default: the pinned one); ``score_models``: ``vision_models.workflow_model_files``; ``flux_models``:
    ``flux_workflow_models.model_files`` (hosts that run the FLUX workflows; the server then also loads the
    test-only T5 stand-in, ``flux_workflow_models.STAND_IN_NODES``).
    """
    import flux_workflow_models

    models = {"checkpoints": {name: checkpoints[layout] for name, layout in TEST_LAYOUTS.items()},
              "controlnet": {workflow_specs.CONTROLNET: controlnet}, **(score_models or {})}
    for folder, files in (flux_models or {}).items():
        models[folder] = {**models.get(folder, {}), **files}
    stand_ins = (flux_workflow_models.STAND_IN_NODES,) if flux_models else ()
    return ComfyServer(base, models, small_inputs(base / "small-inputs"), frontend, PREVIEWS_ON + EMPTIED_CACHE,
                       stand_ins)
