"""The help pages as the real server (main.py) serves them to each frontend language.

The frontends ask ``docs/<node id>/<locale>.md`` first, then ``docs/<node id>.md``;
the pages exist once, in English, at ``web/docs/<node id>/en.md``. The English
frontend gets the page at its first request (ComfyUI serves ``web/``), every
other language at its second (the pack's route), and nothing else is served.
"""
from __future__ import annotations

import urllib.error
import urllib.request

import pytest

import browser
from find_comfyui import PACK_ROOT

PAGES = PACK_ROOT / "web" / "docs"
NODE_IDS = sorted(page.parent.name for page in PAGES.glob("*/en.md"))


@pytest.fixture(scope="module")
def server(host, tmp_path_factory):
    with browser.ComfyServer(tmp_path_factory.mktemp("help-server"), {}, {}) as srv:
        yield srv


def _get(server, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"{server.url}/extensions/comfyui-pnp/docs/{path}", timeout=30) as answer:
            return answer.status, answer.read().decode("utf-8")
    except urllib.error.HTTPError as error:
        return error.code, ""


def test_every_language_gets_the_english_page(server):
    assert len(NODE_IDS) == 13
    for node_id in NODE_IDS:
        english = (PAGES / node_id / "en.md").read_text(encoding="utf-8")
        assert _get(server, f"{node_id}/en.md") == (200, english), node_id  # English: the first request
        assert _get(server, f"{node_id}/zh.md")[0] == 404  # another language: its first request fails ...
        assert _get(server, f"{node_id}.md") == (200, english), node_id  # ... and its second gets the page


@pytest.mark.parametrize("path", ["PnP_Nothing.md", "KSampler.md", "images.md", "PnP_Sampler.json"])
def test_nothing_but_the_pages_is_served_at_the_second_url(server, path):
    assert _get(server, path)[0] == 404
