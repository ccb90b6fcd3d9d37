"""What the ComfyUI frontend gets from the pack, checked on the host (the browser test checks what it shows):
registry metadata as ComfyUI's own parser reads it, a help page per node in the web folder ComfyUI serves,
output names, search aliases where the host's schema has them, the bank folder and its empty dropdown."""
from __future__ import annotations

import dataclasses
import os
import re

import pytest

from comfy_host import PACK_NODE_IDS
from find_comfyui import PACK_ROOT
from harness import node_class

DOCS = PACK_ROOT / "web" / "docs"


def test_pyproject_says_what_the_registry_and_comfyui_read(host):
    from comfy_config import config_parser

    config = config_parser.extract_node_configuration(str(PACK_ROOT))
    project, comfy = config.project, config.tool_comfy
    assert project.name == "comfyui-pnp" and re.fullmatch(r"\d+\.\d+\.\d+", project.version)
    assert project.license.file == "LICENSE"
    licence = (PACK_ROOT / "LICENSE").read_text(encoding="utf-8")
    assert licence.lstrip().startswith("GNU GENERAL PUBLIC LICENSE") and "Version 3, 29 June 2007" in licence
    urls = project.urls
    assert urls.repository.startswith("https://github.com/") and urls.documentation and urls.issues
    assert project.supported_os == ["OS Independent"]
    assert project.supported_comfyui_version == f">={host.pack_module('pnp_hooks.host_api').MIN_COMFYUI}"
    assert comfy.publisher_id and comfy.display_name
    # the icon is a file of this repository, at the address the registry reads once the repository is published
    raw = urls.repository.replace("https://github.com/", "https://raw.githubusercontent.com/") + "/main/"
    assert comfy.icon.startswith(raw) and (PACK_ROOT / comfy.icon.removeprefix(raw)).is_file(), comfy.icon


def test_the_web_folder_is_served_under_the_name_the_frontend_asks_for_help_with(host):
    """ComfyUI serves WEB_DIRECTORY at /extensions/<the pack folder's name>/; the frontend asks a custom node's
    help at /extensions/<the second part of its python_module>/docs/<node id>/<locale>.md: the same name."""
    import nodes

    for node_id in PACK_NODE_IDS:
        folder = node_class(node_id).RELATIVE_PYTHON_MODULE.split(".")[1]
        assert nodes.EXTENSION_WEB_DIRS[folder] == str(PACK_ROOT / "web"), node_id


@pytest.mark.parametrize("node_id", PACK_NODE_IDS)
def test_help_page_documents_every_input_and_output(host, node_id):
    page = (DOCS / node_id / "en.md").read_text(encoding="utf-8")
    schema = node_class(node_id).GET_SCHEMA()
    assert page.startswith(f"# {schema.display_name.split(' (')[0]}\n"), page[:60]
    missing = [i.id for i in schema.inputs if f"`{i.id}`" not in page]
    missing += [o.display_name for o in schema.outputs if f"`{o.display_name}`" not in page]
    assert not missing, f"docs/{node_id}/en.md does not mention {missing}"
    for picture in re.findall(r"!\[[^\]]*\]\(([^)\s]+)", page):  # the frontends resolve them against docs/
        assert (DOCS / picture).is_file(), picture
    # the side panel is ~285 px wide: no table (a 3-column one needs ~400 px and scrolls sideways)
    assert not re.search(r"^\s*\|", page, re.M), f"docs/{node_id}/en.md has a table"
    assert "README" not in page  # the UI cannot open it
    assert not (DOCS / f"{node_id}.md").exists(), "one copy of each page: docs/<node id>/en.md"


def test_every_output_has_a_display_name_the_host_sends(host):
    """ComfyUI 0.3.64 labels an output with its type and 0.33 with its id unless it has a display name; the V1
    info (what /object_info sends) carries it as output_name on both."""
    for node_id in PACK_NODE_IDS:
        cls = node_class(node_id)
        names = [o.display_name for o in cls.GET_SCHEMA().outputs]
        assert all(names), node_id
        assert list(cls.RETURN_NAMES) == names == cls.GET_NODE_INFO_V1()["output_name"], node_id


def test_search_aliases_only_where_the_host_schema_has_them(host):
    from comfy_api.v0_0_2 import io

    types = host.pack_module("nodes.types")
    host_has_them = "search_aliases" in {field.name for field in dataclasses.fields(io.Schema)}
    for node_id in PACK_NODE_IDS:
        info = node_class(node_id).GET_NODE_INFO_V1()
        if host_has_them:
            assert info["search_aliases"] == list(types.SEARCH_ALIASES), node_id
        else:
            assert "search_aliases" not in info, node_id
    for query in ("plug and play", "plug-and-play", "translation", "structure"):
        assert any(query in alias for alias in types.SEARCH_ALIASES), query


def test_bank_folder_exists_from_start_up_and_an_empty_one_says_how_to_make_a_bank(host, monkeypatch, tmp_path):
    import folder_paths

    files = host.pack_module("nodes.files")
    assert os.path.isdir(os.path.join(folder_paths.models_dir, "pnp_banks"))  # made when ComfyUI loaded the pack
    empty = tmp_path / "pnp_banks"
    empty.mkdir()
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "pnp_banks", ([str(empty)], {".safetensors"}))
    monkeypatch.setattr(folder_paths, "models_dir", str(tmp_path))
    loader = node_class("PnP_LoadFeatures")
    bank_name = next(i for i in loader.GET_SCHEMA().inputs if i.id == "bank_name")
    assert bank_name.options == [files.NO_BANK_YET]  # not an empty list, which the frontend shows as "undefined"
    assert loader.validate_inputs(bank_name=files.NO_BANK_YET) == files.NO_BANK_YET_MESSAGE
    assert "PnP Save Feature Bank" in files.NO_BANK_YET_MESSAGE and "(R)" in files.NO_BANK_YET_MESSAGE
