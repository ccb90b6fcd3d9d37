"""What a user does with the pack's subgraph blueprints in the real frontend (1.49.6, 1.58.1), for
``host/test_blueprints.py``: open the node library's blueprint folders, search the node search box, place a
blueprint from its results, wire it to loaders and a Save Image node, open it (double click on its body).

Everything waits on what the page shows (the machine may be busy), never on fixed delays.
"""
from __future__ import annotations

import itertools

import browser

# The text of the dialog around the focused search input (1.49.6 and 1.58.1: the newer search box; in 1.58.1
# a fixed reka-ui dialog).
DIALOG_TEXT = "() => document.activeElement.closest('[role=dialog], .p-dialog')?.innerText ?? null"
# Where a user double clicks to open the search box: the middle of the canvas.
CANVAS_MIDDLE = (browser.VIEWPORT["width"] // 2, browser.VIEWPORT["height"] // 2)


def new_workflow(page) -> None:
    """A new blank workflow in its own tab (the frontend's New command), with a graph id of its own.

    Not ``app.graph.clear()``: that keeps the graph's id and restarts node ids, and frontend 1.49.6 keeps a
    blueprint's promoted widget values by graph id, node id and inner node, so a blueprint placed after a clear
    shows the values of the one placed before it under the same node id (seen; 1.58.1 does not)."""
    old = page.evaluate("() => app.graph.id")
    page.evaluate("() => app.extensionManager.command.execute('Comfy.NewBlankWorkflow')")
    page.wait_for_function("old => app.graph.id !== old && app.graph.nodes.length === 0", arg=old,
                           timeout=30_000)


def open_library_folders(page, folders: list[str], expected: list[str], timeout_ms: int = 30_000) -> str:
    """Open the Node Library tab, click each folder in turn (the first of that name shown), wait until every
    ``expected`` text shows; returns the tab's text. Closes nothing."""
    page.get_by_role("button", name="Node Library (n)").click()
    for folder in folders:
        page.get_by_text(folder, exact=True).first.click(timeout=timeout_ms)
    page.wait_for_function("names => names.every(n => document.body.innerText.includes(n))", arg=expected,
                           timeout=timeout_ms)
    return page.evaluate("() => document.body.innerText")


def close_library(page) -> None:
    page.get_by_role("button", name="Node Library (n)").click()


def open_search(page) -> None:
    """Double click the canvas until the node search box has the focus (a double click on a canvas still busy
    closing the last dialog is lost)."""
    from playwright.sync_api import TimeoutError as PageTimeout

    for attempt in itertools.count(1):
        page.mouse.dblclick(*CANVAS_MIDDLE)
        try:
            page.wait_for_function(f"() => ({DIALOG_TEXT})() !== null", timeout=5_000)
            return
        except PageTimeout:
            assert attempt < 4, "four double clicks on the canvas did not open the node search box"


def search(page, query: str, expected: list[str], timeout_ms: int = 20_000) -> list[str]:
    """Type ``query`` into a freshly opened search box; wait until every ``expected`` title is listed (or the
    time is up); returns the listed lines. The box stays open."""
    from playwright.sync_api import TimeoutError as PageTimeout

    open_search(page)
    page.keyboard.type(query, delay=30)
    try:
        page.wait_for_function(
            f"names => {{ const lines = (({DIALOG_TEXT})() ?? '').split('\\n').map(l => l.trim());"
            " return names.every(n => lines.includes(n)); }", arg=expected, timeout=timeout_ms)
    except PageTimeout:
        pass  # the caller's assertion shows what was listed instead
    return [line.strip() for line in (page.evaluate(DIALOG_TEXT) or "").splitlines()]


def close_search(page) -> None:
    page.keyboard.press("Escape")
    page.wait_for_function(f"() => ({DIALOG_TEXT})() === null", timeout=10_000)


def place_from_search(page, title: str) -> int:
    """With the search box listing ``title``: click it, then click the canvas where the new node follows the
    pointer (newer frontends add it as a 'ghost' until that click). Returns the placed node's id."""
    before = page.evaluate("() => app.graph.nodes.map(n => n.id)")
    page.get_by_role("dialog").get_by_text(title, exact=True).first.click()
    page.wait_for_function("n => app.graph.nodes.length === n", arg=len(before) + 1, timeout=30_000)
    node_id = page.evaluate("before => app.graph.nodes.find(n => !before.includes(n.id)).id", before)
    from playwright.sync_api import TimeoutError as PageTimeout

    # the frontend starts dragging the ghost a moment after adding it (the search box closes first): a click
    # before that is lost, so click again until the node has landed
    x, y = CANVAS_MIDDLE
    for attempt in itertools.count(1):
        page.mouse.move(x - 40, y - 40)
        page.mouse.move(x, y)
        page.mouse.click(x, y)
        try:
            page.wait_for_function("id => !app.graph.getNodeById(id).flags?.ghost", arg=node_id, timeout=3_000)
            return node_id
        except PageTimeout:
            assert attempt < 6, f"six clicks on the canvas did not put down the new {title} node"


def body_point(page, node_id: int) -> tuple[float, float]:
    """A point of the page on the node's body, clear of its slots and widgets: the middle of its first row."""
    return tuple(page.evaluate(
        """id => { const n = app.canvas.graph.getNodeById(id); const r = app.canvas.canvas.getBoundingClientRect();
             const [x, y] = app.canvas.ds.convertOffsetToCanvas([n.pos[0] + n.size[0] * 0.5, n.pos[1] + 10]);
             const dpr = window.devicePixelRatio || 1; return [r.left + x / dpr, r.top + y / dpr]; }""", node_id))


# Adds the nodes a user connects to a placed blueprint: a checkpoint loader (model, clip, vae), an image
# loader, a mask loader where the blueprint takes a mask, and Save Image on its output. Returns their ids.
WIRE_JS = """({id, ckpt, image, mask}) => {
  const bp = app.graph.getNodeById(id);
  const add = (type, dx, dy, values) => {
    const n = LiteGraph.createNode(type);
    n.pos = [bp.pos[0] + dx, bp.pos[1] + dy];
    app.graph.add(n);
    for (const [k, v] of Object.entries(values)) {
      const w = n.widgets.find(w => w.name === k); w.value = v; w.callback?.(v);
    }
    return n; };
  const slot = name => { const i = bp.inputs.findIndex(s => s.name === name);
    if (i < 0) throw new Error(`the blueprint has no input ${name}`); return i; };
  const ckpt_node = add('CheckpointLoaderSimple', -450, 0, {ckpt_name: ckpt});
  const image_node = add('LoadImage', -450, 180, {image});
  ckpt_node.connect(0, bp, slot('model'));
  ckpt_node.connect(1, bp, slot('clip'));
  ckpt_node.connect(2, bp, slot('vae'));
  image_node.connect(0, bp, slot('image'));
  const ids = {checkpoint: ckpt_node.id, image: image_node.id};
  if (bp.inputs.some(s => s.name === 'mask')) {
    const mask_node = add('LoadImageMask', -450, 600, {image: mask, channel: 'red'});
    mask_node.connect(0, bp, slot('mask'));
    ids.mask = mask_node.id;
  }
  const save = add('SaveImage', bp.size[0] + 80, 0, {filename_prefix: 'pnp/blueprint'});
  bp.connect(0, save, 0);
  ids.save = save.id;
  app.graph.setDirtyCanvas(true, true);
  return ids; }"""


def blueprint_node(page, node_id: int) -> dict:
    """The placed blueprint as the canvas has it: type, title, inputs, its widgets, the types inside."""
    return page.evaluate(
        """id => { const n = app.graph.getNodeById(id);
             return {type: n.type, title: n.title, is_subgraph: !!n.isSubgraphNode?.(),
                     inputs: n.inputs.map(i => i.name),
                     widgets: Object.fromEntries((n.widgets || []).map(w => [w.name, w.value])),
                     inner: n.subgraph ? n.subgraph.nodes.map(m => m.type) : []}; }""", node_id)


def set_blueprint_widgets(page, node_id: int, values: dict[str, object]) -> None:
    """Set widgets on the blueprint node itself (what a user edits without opening it)."""
    page.evaluate(
        """({id, values}) => { const n = app.graph.getNodeById(id);
             for (const [k, v] of Object.entries(values)) { const w = n.widgets.find(w => w.name === k);
               if (!w) throw new Error(`the blueprint shows no widget ${k}`); w.value = v; w.callback?.(v); }
             app.graph.setDirtyCanvas(true, true); }""", {"id": node_id, "values": values})


def set_inner_widgets(page, node_id: int, inner_type: str, values: dict[str, object]) -> None:
    """Set widgets of the first node of ``inner_type`` inside the blueprint (what a user changes after opening
    it)."""
    page.evaluate(
        """({id, type, values}) => { const inner = app.graph.getNodeById(id).subgraph.nodes.find(n => n.type === type);
             for (const [k, v] of Object.entries(values)) { const w = inner.widgets.find(w => w.name === k);
               w.value = v; w.callback?.(v); } }""", {"id": node_id, "type": inner_type, "values": values})
