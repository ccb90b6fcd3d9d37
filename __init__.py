"""comfyui-pnp: Plug-and-Play Diffusion Features (Tumanyan et al., CVPR 2023) for ComfyUI.

Registration only; see nodes/ and pnp_hooks/.
"""
from __future__ import annotations

from comfy_api.v0_0_2 import ComfyExtension, io

from .nodes import NODES
from .nodes.files import register_bank_folder


class PnPExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> PnPExtension:
    register_bank_folder()  # models/pnp_banks, listed by PnP Load Feature Bank
    return PnPExtension()
