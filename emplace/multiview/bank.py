"""The reference bank: each attention site's reference tokens, recorded once and served to the target.

A site is a tuple whose first item says where it is in the UNet: 'input', 'middle' or 'output'
(ComfyUI: (block name, block number, block_index, transformer_index); diffusers: (kind, module
name)). The tokens are the normalised hidden states entering the site's self-attention, before
its key/value projections, so the layer projects them with its own weights.

The hide mask (1 = the reference's pixels that must not be attended to) is resized to each
site's token grid: a token is hidden when its cell holds a pixel with hide >= 0.5. Hidden
tokens are dropped, which gives them exactly zero attention weight.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

SITE_KINDS = ("input", "middle", "output")


def token_grid(n_tokens: int, latent_size: tuple[int, int]) -> tuple[int, int]:
    """The (h, w) grid of a site with `n_tokens` tokens in a UNet fed a latent of `latent_size`.

    Each UNet level halves the grid, rounding up (stride-2 convolutions with padding 1).
    """
    h, w = latent_size
    for level in range(8):
        grid = (math.ceil(h / 2 ** level), math.ceil(w / 2 ** level))
        if grid[0] * grid[1] == n_tokens:
            return grid
    raise ValueError(f"{n_tokens} tokens is no downsampled grid of a {h}x{w} latent")


def visible_tokens(hide_mask: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """hide_mask [V, H, W] (1 = hide) -> bool [V, h * w]: the tokens of each view that may be attended to."""
    hidden = F.adaptive_max_pool2d(hide_mask[:, None].float(), grid)[:, 0] >= 0.5
    return ~hidden.flatten(1)


class ReferenceBank:
    """Reference tokens per site, for a batch of V views, flattened into one sequence per site."""

    def __init__(self, hide_mask: torch.Tensor | None = None):
        self.hide_mask = hide_mask  # [1 or V, H, W] in pixels, or None (every token visible)
        self.tokens: dict[tuple, torch.Tensor] = {}
        self.latent_size: tuple[int, int] | None = None
        self.key = None  # what the tokens were recorded for (the controller decides when to record again)
        self._visible: dict[tuple, torch.Tensor] = {}  # flat indices of the visible tokens, per grid and device

    def clear(self, latent_size: tuple[int, int] | None = None) -> None:
        self.tokens, self.latent_size, self.key = {}, latent_size, None

    def record(self, site: tuple, n: torch.Tensor) -> None:
        """n [V, N, C]: one site's tokens for the V views; the hidden ones are dropped here."""
        flat = n.reshape(1, -1, n.shape[-1])  # views in order, each view's tokens in order
        if self.hide_mask is not None:
            flat = flat.index_select(1, self.visible_index(n.shape[0], n.shape[1], n.device))
        self.tokens[site] = flat

    def visible_index(self, views: int, n_tokens: int, device) -> torch.Tensor:
        """Flat indices of the visible tokens of `views` views of `n_tokens` tokens (computed once per grid)."""
        if self.latent_size is None:
            raise RuntimeError("clear(latent_size) before recording with a hide mask")
        key = (views, n_tokens, self.latent_size, str(device))
        if key not in self._visible:
            visible = visible_tokens(self.hide_mask, token_grid(n_tokens, self.latent_size)).expand(views, -1)
            self._visible[key] = visible.flatten().nonzero()[:, 0].to(device)
        return self._visible[key]

    def serve(self, site: tuple, batch: int) -> torch.Tensor | None:
        """[batch, M, C]: every view's visible tokens for `site`, the same for each batch element."""
        tokens = self.tokens.get(site)
        return None if tokens is None else tokens.expand(batch, -1, -1)
