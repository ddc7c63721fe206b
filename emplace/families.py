"""Base-model families (SD1.5, SD2, SDXL; Flux, Flux Fill, SD3) and how other tools name them.

A UNet family is recognised by the width of the UNet's cross-attention context: the text
embedding that every attn2.to_k / to_v layer reads (768 for SD1.5, 1024 for SD2,
2048 for SDXL). Any other width is a custom model, named by its width. The flow-matching
DiTs (Flux, SD3) all read T5's 4096-wide embedding, so they are told apart by architecture
(ComfyUI's model class), never by that width.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    key: str  # what Emplace writes in its own metadata
    name: str  # what people call it
    context_dim: int
    resolution: int
    kohya_base_version: str  # ss_base_model_version
    modelspec_architecture: str  # modelspec.architecture, before "/lora"
    multiple: int = 8  # image sides snap to this: the VAE's 8 pixels per latent, times a DiT's 2x2 patches
    guidance: float | None = None  # the distilled guidance it was trained at (Flux's FluxGuidance); None: none

    def __str__(self) -> str:
        return self.name

    @property
    def described(self) -> str:
        if self.key in (f.key for f in FLOW):
            return self.name  # every DiT here reads the same T5 width: the architecture is what tells them apart
        return f"{self.name} (cross-attention width {self.context_dim})"


SD15 = Family("sd15", "SD1.5", 768, 512, "sd_v1", "stable-diffusion-v1")
SD2 = Family("sd2", "SD2", 1024, 768, "sd_v2", "stable-diffusion-v2-768-v")
SDXL = Family("sdxl", "SDXL", 2048, 1024, "sdxl_base_v1-0", "stable-diffusion-xl-v1-base")
KNOWN = (SD15, SD2, SDXL)
FLUX = Family("flux", "Flux", 4096, 1024, "flux1", "flux-1-dev", multiple=16, guidance=3.5)
FLUX_FILL = Family("flux-fill", "Flux Fill", 4096, 1024, "flux1", "flux-1-fill-dev", multiple=16, guidance=30.0)
SD3 = Family("sd3", "SD3", 4096, 1024, "sd3", "stable-diffusion-v3-medium", multiple=16)
FLOW = (FLUX, FLUX_FILL, SD3)  # recognised by architecture: see the module's docstring


def custom_family(context_dim: int) -> Family:
    """A model outside the known families (the tiny test models, for instance)."""
    return Family(f"context{context_dim}", "a custom model",
                  context_dim, 0, "", "")


def family_for_context_dim(context_dim: int) -> Family:
    for family in KNOWN:
        if family.context_dim == context_dim:
            return family
    return custom_family(context_dim)


def family_from_name(text: str) -> Family | None:
    """Recognise a family from Emplace, kohya (ss_base_model_version: sd_v1, sdxl_base_v1-0, flux1, sd3) or
    modelspec names (stable-diffusion-xl-v1-base, flux-1-dev, stable-diffusion-v3-medium, ...)."""
    t = text.lower()
    for family in (FLUX_FILL, FLUX, SD3):  # first: "stable-diffusion-v3" holds "v3", not "v1"
        if t == family.key or t.startswith(family.modelspec_architecture):
            return family
    if "flux" in t:
        return FLUX_FILL if "fill" in t else FLUX
    if "sd3" in t or "stable-diffusion-3" in t or "v3" in t:
        return SD3
    for family in KNOWN:
        if t == family.key or t.startswith(family.kohya_base_version) or t.startswith(family.modelspec_architecture):
            return family
    if t.startswith("context") and t[len("context"):].isdigit():
        return custom_family(int(t[len("context"):]))
    if "xl" in t:
        return SDXL
    if "v2" in t or "sd2" in t:
        return SD2
    if "v1" in t or "sd1" in t:
        return SD15
    return None


def same_base(a: Family, b: Family) -> bool:
    """Can a LoRA made for `a` patch `b`? UNets by their context width; DiTs by architecture, Flux Fill counting as
    Flux (their layers match but for the input projection, which the shape check catches)."""
    if (a in FLOW) != (b in FLOW):
        return False
    if a in FLOW:
        return (a.key in (FLUX.key, FLUX_FILL.key)) == (b.key in (FLUX.key, FLUX_FILL.key))
    return a.context_dim == b.context_dim
