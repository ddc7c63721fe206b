"""ComfyUI adapters over the emplace library (V3 node API). The work happens in emplace/."""

from comfy_api.latest import ComfyExtension, io

from .boxes import EmplaceBoxes, EmplaceBoxesToMask, EmplaceDrawBoxes
from .inpaint import EmplaceIterativeInpaint
from .proposals import EmplaceLoadLocationModel, EmplaceProposeLocations, EmplaceSelectBoxes
from .lora import EmplaceLoadPreferenceLora, EmplaceRegionalPreferenceLora
from .multiview import EmplaceMultiViewContext
from .multiview_context import EmplaceMultiViewConditioning, EmplaceSideBySideContext, EmplaceSideBySideSplit

NODES: list[type[io.ComfyNode]] = [
    EmplaceLoadPreferenceLora,
    EmplaceRegionalPreferenceLora,
    EmplaceBoxes,
    EmplaceBoxesToMask,
    EmplaceDrawBoxes,
    EmplaceIterativeInpaint,
    EmplaceLoadLocationModel,
    EmplaceProposeLocations,
    EmplaceSelectBoxes,
    EmplaceMultiViewContext,
    EmplaceSideBySideContext,
    EmplaceSideBySideSplit,
    EmplaceMultiViewConditioning,
]


class EmplaceExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)
