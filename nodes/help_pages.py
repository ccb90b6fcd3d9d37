"""The help pages for every frontend language.

The frontends ask ``/extensions/<pack>/docs/<node id>/<locale>.md`` first, then
``/extensions/<pack>/docs/<node id>.md``. The pages are written once, in English,
at ``web/docs/<node id>/en.md``: the English frontend finds them at its first
request, and this route answers every other language's second request with the
same page (ComfyUI serves ``web/`` itself, but has no page at the second URL).
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

HELP_PAGES = Path(__file__).resolve().parent.parent / "web" / "docs"
NODE_ID = re.compile(r"PnP_[A-Za-z]+")


def english_page(node_id: str) -> Path | None:
    """The English help page of ``node_id``, or None if the pack has none by that name."""
    page = HELP_PAGES / node_id / "en.md"
    return page if NODE_ID.fullmatch(node_id) and page.is_file() else None


def serve_english_help_for_every_locale(extension_name: str) -> None:
    """Answer ``/extensions/<extension_name>/docs/<node id>.md`` with the English page. Does nothing where no web
    server runs (ComfyUI used in-process: nothing asks for help pages there)."""
    server = sys.modules.get("server")
    prompt_server = getattr(getattr(server, "PromptServer", None), "instance", None)
    if prompt_server is None:
        return
    from aiohttp import web

    @prompt_server.routes.get(f"/extensions/{extension_name}/docs/{{node_id}}.md")
    async def help_page(request):
        page = english_page(request.match_info["node_id"])
        if page is None:
            raise web.HTTPNotFound()
        return web.FileResponse(page, headers={"Content-Type": "text/markdown; charset=utf-8"})
