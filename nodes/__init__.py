"""ComfyUI adapters over the emplace library (V3 node API). The work happens in emplace/."""

from comfy_api.latest import ComfyExtension, io

from .lora import EmplaceLoadPreferenceLora, EmplaceRegionalPreferenceLora

NODES: list[type[io.ComfyNode]] = [
    EmplaceLoadPreferenceLora,
    EmplaceRegionalPreferenceLora,
]


class EmplaceExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)
