"""The shipped subgraph blueprints (``subgraphs/*.json``), as specs cut out of the shipped workflows.

ComfyUI from 0.33 lists every ``custom_nodes/<pack>/subgraphs/*.json`` at
``/global_subgraphs`` (``app/subgraph_manager.py``); the frontends (1.49.6,
1.58.1) turn each into a node of the node library: its title is the file name,
its folder ``Subgraph Blueprints/<the subgraph's category>``, its description the
subgraph's ``description``. The node search matches a listed blueprint by its
title only: the frontends take its aliases from the server's listing, which
ComfyUI 0.33 leaves without any (``extra.BlueprintSearchAliases`` is read for a
user's own blueprints), and their fuzzy search counts a word's distance from the
title's start (a word after about 30 characters is not found), and the node
library's sidebar shows about the first 27 characters. So a title starts with
"PnP", then what sets it apart from the other two, then "Plug-and-Play
translation": found by "pnp" and "plug and play", told apart in the library.
No ":" or "/" (the title is the file name, also on Windows). A blueprint file has the
shape the frontend itself writes when it publishes one (``subgraphStore.
publishSubgraph``, as in ComfyUI's own ``blueprints/``): a root graph holding one
node of the subgraph's type, and the subgraph definition with its inputs,
outputs, inner nodes and links.

Each spec names a shipped workflow (UI file and API twin) and which of its nodes
go inside; the nodes outside it that fed them (checkpoint loader, image and mask
loaders) become the blueprint's socket inputs, the node it fed (Save Image) its
output. ``widgets`` are the few knobs shown on the blueprint node: a subgraph
input linked to an inner widget (one input may feed the same widget of several
inner nodes, e.g. the two thresholds of PnP Feature Bank and PnP Sampler). Inner
nodes keep their ids, positions, sizes, titles, colours and widget values from the
workflow (paper defaults: 50 steps, feature 0.8, attention 0.5). Ids of the
definition are UUIDs derived from the file name, so a rebuild writes the same
bytes: ``python tests/build_blueprints.py`` (``build`` takes the widget input
types from the host's node definitions).
"""
from __future__ import annotations

import copy
import json
import uuid
from pathlib import Path

import workflow_specs
from find_comfyui import PACK_ROOT

SUBGRAPHS = PACK_ROOT / "subgraphs"
WORKFLOWS = PACK_ROOT / "workflows"
CATEGORY = "sampling/plug-and-play"  # nodes/types.py CATEGORY: under Subgraph Blueprints/ in the node library
# The format's own field for search words (workflow extra): read for blueprints a user saves (e.g. a copy
# of one of these); for listed ones frontends 1.49.6 and 1.58.1 search the title (see above).
SEARCH_ALIASES = ["plug-and-play", "plug and play", "pnp", "image-to-image translation",
                  "structure-preserving translation", "translation"]
UUID_NAMESPACE = uuid.UUID("5d1c4b1e-8f0c-4a53-9b0e-7e2f5c0b9a11")
INPUT_NODE_ID, OUTPUT_NODE_ID = -10, -20
SLOT_STEP = 20  # px between the input node's slots

# What a user sets on the blueprint node: (input name, label, [(inner node id, widget name), ...]).
KNOBS = [
    ("text", "target prompt", [(3, "text")]),
    ("steps", "steps", [(7, "steps")]),
    ("cfg", "cfg", [(9, "cfg")]),
    ("feature_injection", "feature_injection", [(8, "feature_injection"), (9, "feature_injection")]),
    ("attention_injection", "attention_injection", [(8, "attention_injection"), (9, "attention_injection")]),
]
SD_INNER = [2, 3, 4, 6, 7, 8, 9, 10]


def _spec(name: str, workflow: str, inner: list[int], sockets: list[tuple[str, int, int]], description: str,
          **extra) -> dict:
    """``sockets``: (input name, outside node id, its output slot) in the order the blueprint node shows them."""
    return {"name": name, "workflow": workflow, "inner": inner, "sockets": sockets, "widgets": KNOBS,
            "output": ("IMAGE", 10, 0), "description": description, **extra}


BLUEPRINTS = [
    _spec("PnP SD 1.5, 2.x - Plug-and-Play translation", "pnp_real_image", SD_INNER,
          [("image", 5, 0), ("model", 1, 0), ("clip", 1, 1), ("vae", 1, 2)],
          "Plug-and-Play Diffusion Features (PnP): redraws an image to a target prompt while keeping its "
          "layout. Inside: PnP DDIM Inversion (empty source prompt), PnP Feature Bank and PnP Sampler, as the "
          "'Real image to target prompt' template. SD 1.x / 2.x checkpoints; image sides a multiple of 8 px."),
    _spec("PnP SDXL - Plug-and-Play translation", "pnp_sdxl", SD_INNER + [12],
          [("image", 5, 0), ("model", 1, 0), ("clip", 1, 1), ("vae", 1, 2)],
          "Plug-and-Play Diffusion Features (PnP) on an SDXL base checkpoint: redraws an image to a target "
          "prompt while keeping its layout. The image is scaled to 1024 px inside (open the blueprint to "
          "change it); PnP DDIM Inversion, PnP Feature Bank and PnP Sampler as the SDXL template."),
    _spec("PnP subject mask - Plug-and-Play translation", "pnp_mask", SD_INNER,
          [("image", 5, 0), ("mask", 12, 0), ("model", 1, 0), ("clip", 1, 1), ("vae", 1, 2)],
          "Plug-and-Play Diffusion Features (PnP) restricted to a mask: the subject (white) keeps the image's "
          "structure, the rest follows the target prompt freely. SD 1.x / 2.x checkpoints; as the 'With a "
          "subject mask' template (outside_mask_strength 0 inside)."),
]


def workflow_files(spec: dict) -> tuple[Path, Path]:
    """The spec's workflow: its UI file and its API twin."""
    specs = [make() for make in workflow_specs.WORKFLOWS]
    stem = workflow_specs.file_stems(specs)[spec["workflow"]]
    return WORKFLOWS / f"{stem}.json", WORKFLOWS / "api" / f"{stem}.json"


def _uuid(*parts: object) -> str:
    return str(uuid.uuid5(UUID_NAMESPACE, "/".join(map(str, parts))))


def build(spec: dict, widget_types) -> dict:
    """The blueprint file of ``spec``. ``widget_types(node_type)`` -> {widget input name: socket type}
    (COMBO for a list of choices), from the host's node definitions."""
    ui_path, api_path = workflow_files(spec)
    ui, api = json.loads(ui_path.read_text()), json.loads(api_path.read_text())
    by_id = {node["id"]: node for node in ui["nodes"]}
    links = {link[0]: link for link in ui["links"]}  # id, origin, origin slot, target, target slot, type
    inner = spec["inner"]
    name = spec["name"]
    new_links: list[dict] = []

    def add_link(origin, origin_slot, target, target_slot, kind) -> int:
        link_id = len(new_links) + 1
        new_links.append({"id": link_id, "origin_id": origin, "origin_slot": origin_slot, "target_id": target,
                          "target_slot": target_slot, "type": kind})
        return link_id

    socket_index = {(node_id, slot): i for i, (_, node_id, slot) in enumerate(spec["sockets"])}
    widget_index = {(node_id, widget): len(spec["sockets"]) + i
                    for i, (_, _, targets) in enumerate(spec["widgets"]) for node_id, widget in targets}
    input_links: dict[int, list[int]] = {}
    inner_nodes = []
    for node_id in inner:
        node = copy.deepcopy(by_id[node_id])
        declared = widget_types(node["type"])
        widget_names = [k for k, v in api[str(node_id)]["inputs"].items() if not isinstance(v, list)]
        inputs = []
        for slot in node.get("inputs", []):
            entry = {"localized_name": slot["name"], **slot, "link": None}
            old = links.get(slot.get("link"))
            if old is not None:
                origin, origin_slot = old[1], old[2]
                if origin in inner:
                    entry["link"] = ("inner", origin, origin_slot, node_id, len(inputs), old[5])
                else:
                    index = socket_index[(origin, origin_slot)]
                    entry["link"] = ("input", index, node_id, len(inputs), old[5])
            inputs.append(entry)
        for widget in widget_names:
            entry = {"localized_name": widget, "name": widget, "type": declared[widget], "widget": {"name": widget},
                     "link": None}
            if (node_id, widget) in widget_index:
                entry["link"] = ("input", widget_index[(node_id, widget)], node_id, len(inputs), declared[widget])
            inputs.append(entry)
        node["inputs"] = inputs
        node["outputs"] = [{"localized_name": o["name"], **o, "links": []} for o in node.get("outputs", [])]
        inner_nodes.append(node)
    # links in a stable order: inner links by target, then the input links, then the output
    pending = [(n["id"], i, e["link"]) for n in inner_nodes for i, e in enumerate(n["inputs"]) if e["link"]]
    for kind in ("inner", "input"):
        for node_id, slot, link in pending:
            if link[0] != kind:
                continue
            node = next(n for n in inner_nodes if n["id"] == node_id)
            if kind == "inner":
                _, origin, origin_slot, target, target_slot, socket = link
                link_id = add_link(origin, origin_slot, target, target_slot, socket)
                source = next(n for n in inner_nodes if n["id"] == origin)
                source["outputs"][origin_slot]["links"].append(link_id)
            else:
                _, index, target, target_slot, socket = link
                link_id = add_link(INPUT_NODE_ID, index, target, target_slot, socket)
                input_links.setdefault(index, []).append(link_id)
            node["inputs"][slot]["link"] = link_id
    out_type, out_node, out_slot = spec["output"]
    output_link = add_link(out_node, out_slot, OUTPUT_NODE_ID, 0, out_type)
    next(n for n in inner_nodes if n["id"] == out_node)["outputs"][out_slot]["links"].append(output_link)
    for node in inner_nodes:
        for output in node["outputs"]:
            output["links"] = output["links"] or None

    x0 = min(n["pos"][0] for n in inner_nodes)
    y0 = min(n["pos"][1] for n in inner_nodes)
    x1 = max(n["pos"][0] + n["size"][0] for n in inner_nodes)
    names = [s[0] for s in spec["sockets"]] + [w[0] for w in spec["widgets"]]
    labels = {w[0]: w[1] for w in spec["widgets"] if w[1] != w[0]}
    types = [socket_type(spec, by_id, s) for s in spec["sockets"]] + \
        [widget_types(by_id[w[2][0][0]]["type"])[w[2][0][1]] for w in spec["widgets"]]
    in_box = [x0 - 220, y0, 140, SLOT_STEP * (len(names) + 1)]
    sub_inputs = [{"id": _uuid(name, "input", n), "name": n, "type": t, "linkIds": input_links.get(i, []),
                   **({"label": labels[n]} if n in labels else {}),
                   "localized_name": n, "pos": [in_box[0] + 120, in_box[1] + SLOT_STEP * (i + 1)]}
                  for i, (n, t) in enumerate(zip(names, types))]
    out_box = [x1 + 80, y0, 120, 2 * SLOT_STEP]
    sub_outputs = [{"id": _uuid(name, "output", out_type), "name": out_type, "type": out_type,
                    "linkIds": [output_link], "localized_name": out_type, "pos": [out_box[0] + 20, y0 + SLOT_STEP]}]
    subgraph_id = _uuid(name)
    last_node = max(inner) + 1
    definition = {
        "id": subgraph_id, "version": 1,
        "state": {"lastGroupId": 0, "lastNodeId": last_node, "lastLinkId": len(new_links), "lastRerouteId": 0},
        "revision": 0, "config": {}, "name": name,
        "inputNode": {"id": INPUT_NODE_ID, "bounding": in_box},
        "outputNode": {"id": OUTPUT_NODE_ID, "bounding": out_box},
        "inputs": sub_inputs, "outputs": sub_outputs, "widgets": [], "nodes": inner_nodes, "groups": [],
        "links": new_links, "extra": {}, "category": CATEGORY, "description": spec["description"],
    }
    instance = {
        "id": last_node, "type": subgraph_id, "pos": [0, 0], "size": [400, 260], "flags": {}, "order": 0, "mode": 0,
        "inputs": [{"localized_name": n, "name": n, "type": t, **({"label": labels[n]} if n in labels else {}),
                    **({"widget": {"name": n}} if i >= len(spec["sockets"]) else {}), "link": None}
                   for i, (n, t) in enumerate(zip(names, types))],
        "outputs": [{"localized_name": out_type, "name": out_type, "type": out_type, "links": []}],
        "title": name,
        "properties": {"proxyWidgets": [[str(targets[0][0]), targets[0][1]] for _, _, targets in spec["widgets"]],
                       "cnr_id": workflow_specs.PACK_ID, "ver": workflow_specs.PACK_VERSION},
        "widgets_values": [],
    }
    return {"revision": 0, "last_node_id": last_node, "last_link_id": 0, "nodes": [instance], "links": [],
            "version": 0.4, "definitions": {"subgraphs": [definition]},
            "extra": {"BlueprintDescription": spec["description"], "BlueprintSearchAliases": SEARCH_ALIASES}}


def socket_type(spec: dict, by_id: dict, socket: tuple[str, int, int]) -> str:
    _, node_id, slot = socket
    return by_id[node_id]["outputs"][slot]["type"]


def file_text(blueprint: dict) -> str:
    return json.dumps(blueprint, indent=2, ensure_ascii=False) + "\n"


def host_widget_types(node_type: str) -> dict[str, str]:
    """{widget input name: type} of a node as the booted host declares it (a list of choices is COMBO)."""
    import nodes

    declared = nodes.NODE_CLASS_MAPPINGS[node_type].INPUT_TYPES()
    types = {}
    for group in ("required", "optional"):
        for input_name, spec in declared.get(group, {}).items():
            kind = spec[0]
            types[input_name] = "COMBO" if isinstance(kind, (list, tuple)) else str(kind)
    return types
