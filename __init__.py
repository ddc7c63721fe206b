"""ComfyUI entry point for the Emplace node pack.

ComfyUI imports this file from custom_nodes/<any folder name>; pytest imports it too
when collecting tests below the repo root. So nothing at module level touches comfy,
torch or the library: the nodes are imported inside comfy_entrypoint().
"""

WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    from .nodes import EmplaceExtension

    return EmplaceExtension()
