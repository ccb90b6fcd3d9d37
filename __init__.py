"""comfyui-pnp: Plug-and-Play Diffusion Features (Tumanyan et al., CVPR 2023) for ComfyUI.

Registration only; see nodes/ and pnp_hooks/. On a ComfyUI too old for the
pack, one error line says which version is needed and no node is registered.
"""
from __future__ import annotations

import logging
import os

from .pnp_hooks.host_api import host_problem

_HOST_PROBLEM = host_problem()
# Served by ComfyUI at /extensions/<this folder's name>/: the nodes' help pages (docs/<node id>/en.md, what the
# frontend's help opens: the node library's "?", Node Info) and the frontend extensions (what a bank holds on the
# bank nodes, the templates' order and opening view).
WEB_DIRECTORY = "./web"

if _HOST_PROBLEM:
    logging.getLogger("comfyui_pnp").error(_HOST_PROBLEM)
    NODE_CLASS_MAPPINGS: dict = {}
else:
    from comfy_api.v0_0_2 import ComfyExtension, io

    from .nodes import NODES
    from .nodes.files import register_bank_folder
    from .nodes.help_pages import serve_english_help_for_every_locale

    class PnPExtension(ComfyExtension):
        async def get_node_list(self) -> list[type[io.ComfyNode]]:
            return list(NODES)

    async def comfy_entrypoint() -> PnPExtension:
        register_bank_folder()  # models/pnp_banks, listed by PnP Load Feature Bank
        serve_english_help_for_every_locale(os.path.basename(os.path.dirname(os.path.abspath(__file__))))
        return PnPExtension()
