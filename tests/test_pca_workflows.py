"""workflows/pnp_feature_pca.json and pnp_sdxl.json: well-formed UI files whose API twins run on the real executor.

The UI files (frontend format 0.4) are what users drag onto the canvas; the
``.api.json`` twins are what the frontend's graphToPrompt turns them into.
Here: every link and socket type is consistent with the nodes' schemas, the
UI file converts (links + widget values in the frontend's widget order) to
exactly its twin, and the twin runs with the random test checkpoint (a small
image, few steps).
"""
from __future__ import annotations

import copy
import json

import pytest

from find_comfyui import PACK_ROOT
from host import run_prompt
from test_host import _write_input_image

WORKFLOWS = {"pnp_feature_pca": "sd15_reduced", "pnp_sdxl": "sdxl_reduced"}
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")


def _load(name: str, api: bool = False) -> dict:
    return json.loads((PACK_ROOT / "workflows" / f"{name}{'.api' if api else ''}.json").read_text())


def _inputs(node_cls) -> list[tuple[str, object, dict]]:
    types = node_cls.INPUT_TYPES()
    return [(name, spec[0], spec[1] if len(spec) > 1 else {})
            for section in ("required", "optional") for name, spec in types.get(section, {}).items()]


def _is_widget(kind) -> bool:
    return isinstance(kind, list) or kind in WIDGET_TYPES


def _to_api(ui: dict) -> dict:
    """The frontend's conversion for these graphs: socket links and widget values by widget order."""
    import nodes

    links = {link[0]: link for link in ui["links"]}
    api = {}
    for node in ui["nodes"]:
        node_cls = nodes.NODE_CLASS_MAPPINGS[node["type"]]
        inputs = {}
        values = list(node["widgets_values"])
        for name, kind, opts in _inputs(node_cls):
            if _is_widget(kind):
                inputs[name] = values.pop(0)
                if opts.get("image_upload") or opts.get("control_after_generate"):
                    values.pop(0)
        assert not values, f"node {node['id']} ({node['type']}) has more widget values than widgets"
        for slot in node["inputs"]:
            if slot.get("link") is not None:
                link = links[slot["link"]]
                inputs[slot["name"]] = [str(link[1]), link[2]]
        api[str(node["id"])] = {"inputs": inputs, "class_type": node["type"]}
    return api


@pytest.mark.parametrize("name", list(WORKFLOWS))
def test_ui_workflow_is_consistent_and_converts_to_its_api_twin(host, name):
    import nodes

    ui = _load(name)
    assert ui["version"] == 0.4
    by_id = {node["id"]: node for node in ui["nodes"]}
    assert len(by_id) == len(ui["nodes"]) and ui["last_node_id"] >= max(by_id)
    assert ui["last_link_id"] == max(link[0] for link in ui["links"])
    for link_id, src, slot, dst, dst_slot, kind in ui["links"]:
        out = by_id[src]["outputs"][slot]
        target = by_id[dst]["inputs"][dst_slot]
        assert link_id in out["links"] and target["link"] == link_id
        assert kind == out["type"] and target["type"] in (kind, "*")
    for node in ui["nodes"]:
        node_cls = nodes.NODE_CLASS_MAPPINGS[node["type"]]
        assert [o["type"] for o in node["outputs"]] == list(node_cls.RETURN_TYPES)
        sockets = {n: kind for n, kind, _ in _inputs(node_cls) if not _is_widget(kind)}
        required = node_cls.INPUT_TYPES()["required"]
        for slot in node["inputs"]:
            assert sockets[slot["name"]] == slot["type"], (node["type"], slot["name"])
            if slot["name"] in required:
                assert slot["link"] is not None, f"{node['type']}.{slot['name']} is not connected"
    twin = _load(name, api=True)
    assert _to_api(ui) == {k: {"inputs": v["inputs"], "class_type": v["class_type"]} for k, v in twin.items()}
    assert {v["class_type"] for v in twin.values()} >= {"PnP_DDIMInversion", "PnP_FeatureBank", "PnP_Sampler",
                                                        "PnP_FeaturePCA"}


@pytest.mark.parametrize("name", list(WORKFLOWS))
def test_api_twin_runs_with_the_test_checkpoint(host, models, name):
    prompt = copy.deepcopy(_load(name, api=True))
    image = _write_input_image(host, f"{name}.png", size=64)
    pca_nodes = []
    for node_id, node in prompt.items():
        inputs = node["inputs"]
        if node["class_type"] == "CheckpointLoaderSimple":
            inputs["ckpt_name"] = models.checkpoint(WORKFLOWS[name])
        elif node["class_type"] == "LoadImage":
            inputs["image"] = image
        elif node["class_type"] == "PnP_DDIMInversion":
            inputs["steps"] = 5  # 50 in the file; a few steps keep the CPU test short
        elif node["class_type"] == "PnP_FeaturePCA":
            pca_nodes.append(node_id)
    result = run_prompt(prompt)
    assert result.success, result.error()
    previews = [k for k, v in prompt.items() if v["class_type"] == "PreviewImage"]
    assert len(previews) == len(pca_nodes) == 3
    for node_id in previews:
        assert len(result.outputs[node_id]["images"]) == 1
    captions = [k for k, v in prompt.items() if v["class_type"] == "PreviewAny"]
    assert all("steps 0, 1, 2" in result.outputs[k]["text"][0] for k in captions)
    assert len(result.outputs[next(k for k, v in prompt.items() if v["class_type"] == "SaveImage")]["images"]) == 1
