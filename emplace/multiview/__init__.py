"""Multi-view reference attention (InConDiff-style, training-free): the target's self-attention
also attends to the tokens of other views of the scene.

attention.py  the math (extended keys/values, the strength blend)
bank.py       reference keys/values per attention site, the hide mask on each site's grid
schedule.py   noise levels: noising the reference, the active span, resizing its latent
context.py    a sampling run: record the reference, then read it (the host supplies the model step)
diffusers_processor.py  the same on a diffusers UNet (attn1 processors)
side_by_side.py  the other way: the views shown to the model as images (canvas, DiT reference views)

ComfyUI drives it from nodes/multiview.py through attn1 replacements and an APPLY_MODEL wrapper.
"""

from .attention import extended_attention, reference_attention, sdpa
from .bank import SITE_KINDS, ReferenceBank, token_grid, visible_tokens
from .context import COND, MODES, PLAIN, READ, RECORD, UNCOND, MultiViewContext, MultiViewOptions
from .schedule import add_noise, fit_latent, in_range, reference_noise

__all__ = ["COND", "MODES", "PLAIN", "READ", "RECORD", "SITE_KINDS", "UNCOND", "MultiViewContext",
           "MultiViewOptions", "ReferenceBank", "add_noise", "extended_attention", "fit_latent", "in_range",
           "reference_attention", "reference_noise", "sdpa", "token_grid", "visible_tokens"]
