"""The real ComfyUI server + its real frontend, driven by Debian's headless Chromium through Playwright.

- ``ComfyServer``: ``main.py --cpu`` on a loopback port with a throw-away base
  directory: ``custom_nodes/comfyui-pnp`` links to this repository, random
  models sit under the names the shipped workflows use, the frontend is the
  ``comfyui-frontend-package`` installed beside ComfyUI (pinned by its
  requirements).
- ``chromium()``: /usr/bin/chromium (never a downloaded browser), loopback only.
- ``Frontend``: what a user does in the page (open a workflow file through the
  UI's file input, queue, wait for the image) plus read-outs through the
  frontend's own objects (``window.app``: graph, ``graphToPrompt``, node images).
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import workflow_specs
from find_comfyui import PACK_ROOT, find_comfyui, with_stand_in

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic"]
VIEWPORT = {"width": 1920, "height": 1200}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """ComfyUI's main.py in CPU mode on 127.0.0.1 with a base directory made for the test."""

    def __init__(self, base: Path, models: dict[str, dict[str, Path]], inputs: dict[str, Path]):
        self.base = base
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = base / "server.log"
        (base / "custom_nodes").mkdir(parents=True, exist_ok=True)
        link = base / "custom_nodes" / "comfyui-pnp"
        if not link.exists():
            link.symlink_to(PACK_ROOT, target_is_directory=True)
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

    def start(self, timeout: float = 180.0) -> None:
        env = with_stand_in(dict(os.environ))
        env.setdefault("OMP_NUM_THREADS", "1")
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
             "--base-directory", str(self.base), "--disable-auto-launch", "--database-url", "sqlite:///:memory:"],
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
    """One page of the ComfyUI frontend."""

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

    def dialogs(self) -> list[str]:
        """Texts of the dialogs and toasts shown in the page (missing nodes/models, alerts, errors)."""
        return self.page.evaluate(
            "() => [...document.querySelectorAll('.p-dialog, .p-toast-message')]"
            ".filter(d => d.offsetParent !== null).map(d => d.innerText)")

    def open_workflow_file(self, path: Path) -> None:
        """Open a workflow the way a user does: the UI's Open file input (what drag and drop also calls)."""
        expected = len(json.loads(Path(path).read_text())["nodes"])
        self.page.evaluate("() => app.graph.clear()")
        self.page.set_input_files("#comfy-file-input", str(path))
        self.page.wait_for_function(f"() => app.graph.nodes.length === {expected}", timeout=30_000)
        self.page.wait_for_timeout(800)

    def unknown_node_types(self) -> list[str]:
        return self.page.evaluate(
            "() => app.graph.nodes.filter(n => !(n.type in LiteGraph.registered_node_types) || n.has_errors)"
            ".map(n => n.type)")

    def graph_to_prompt(self) -> dict:
        return json.loads(self.page.evaluate("async () => JSON.stringify((await app.graphToPrompt()).output)"))

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


# What the browser test changes before queueing, to keep CPU time small (random reduced model).
FAST_STEPS = 3
FAST_SIZE = 64
OUTPUT_NODE_TYPES = ("SaveImage", "PreviewImage")
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
    return changes


def exercise_workflow(frontend: Frontend, ui_path: Path, api_path: Path, screenshot: Path | None,
                      timeout: float = 300.0) -> dict:
    """Open a UI workflow file as a user does, check it, queue it, wait for its images in the UI.

    Returns figures and findings; raises AssertionError on the first problem.
    """
    started = time.monotonic()
    frontend.open_workflow_file(ui_path)
    unknown = frontend.unknown_node_types()
    assert not unknown, f"{ui_path.name}: missing node types {unknown}"
    dialogs = frontend.dialogs()
    assert not dialogs, f"{ui_path.name}: dialogs after loading: {dialogs}"
    api = json.loads(api_path.read_text())
    converted = frontend.graph_to_prompt()
    assert converted == api, f"{ui_path.name}: the frontend's graphToPrompt differs from {api_path.name}"

    original = frontend.widget_values()
    changes = fast_changes(api)
    frontend.set_widgets(changes)
    answer = frontend.queue()
    assert answer["http_status"] == 200 and not answer.get("node_errors") and not answer.get("error"), \
        f"{ui_path.name}: validation failed: {answer}"
    history = frontend.wait_for_history(answer["prompt_id"], timeout)
    assert history["status"]["status_str"] == "success", \
        f"{ui_path.name}: execution failed: {history['status']}\n{frontend.server.log_tail()}"
    frontend.set_widgets({nid: {name: original[str(nid)][i] for name, i in _widget_index(frontend, nid, values)}
                          for nid, values in changes.items()})
    outputs = [int(i) for i, n in api.items() if n["class_type"] in OUTPUT_NODE_TYPES]
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
    """The shipped guidance image and mask, downscaled, under their shipped names (for the server's input/)."""
    from PIL import Image

    import guidance_image

    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in (guidance_image.IMAGE_NAME, guidance_image.MASK_NAME):
        img = Image.open(guidance_image.WORKFLOWS / name)
        img.resize((size, size), Image.Resampling.LANCZOS).save(folder / name)
        out[name] = folder / name
    return out


def server_for_workflows(base: Path, checkpoints: dict[str, Path], controlnet: Path) -> ComfyServer:
    """A server whose model folders hold random models under the names the shipped workflows use.

    ``checkpoints``: the random checkpoint file for each layout of ``TEST_LAYOUTS``.
    """
    return ComfyServer(base, {"checkpoints": {name: checkpoints[layout] for name, layout in TEST_LAYOUTS.items()},
                              "controlnet": {workflow_specs.CONTROLNET: controlnet}},
                       small_inputs(base / "small-inputs"))
