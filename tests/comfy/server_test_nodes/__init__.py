"""A test-only custom node for the headless server: a tiny Flux Fill MODEL, CLIP and VAE built from ComfyUI's classes.

ComfyUI 0.3.64's loaders infer only full-width Flux (and a real Flux Fill with its T5 is tens of GB), so the Flux Fill
workflow test swaps the workflow's three loaders for this node and runs everything after them as shipped.
"""

import os
import sys

sys.path.insert(0, os.environ["EMPLACE_TEST_HELPERS"])  # tests/comfy: tiny_flux, tiny_comfy


class EmplaceTestTinyFluxFill:
    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    FUNCTION = "load"
    CATEGORY = "testing"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def load(self):
        from tiny_comfy import tiny_clip
        from tiny_flux import tiny_flux, tiny_flux_vae

        return tiny_flux(in_channels=96, vec_in_dim=64), tiny_clip(), tiny_flux_vae()


NODE_CLASS_MAPPINGS = {"EmplaceTestTinyFluxFill": EmplaceTestTinyFluxFill}
