"""The reference bank: each attention site's reference keys and values, recorded once and served to the target.

A site is a tuple whose first item says where it is in the UNet: 'input', 'middle' or 'output'
(ComfyUI: (block name, block number, block_index, transformer_index); diffusers: (kind, module
name)). What is banked is the reference views' keys and values as the site's own projections
made them in the record pass: appending them equals appending the views' normalised hidden
states before the projections (the projections act token by token), and each step's read pass
then need not project the views again, once per batch element.

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
    """Reference keys and values per site, for a batch of V views, flattened into one sequence per site."""

    def __init__(self, hide_mask: torch.Tensor | None = None):
        self.hide_mask = hide_mask  # [1 or V, H, W] in pixels, or None (every token visible)
        self.tokens: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}  # site -> (keys, values)
        self.latent_size: tuple[int, int] | None = None
        self.key = None  # what the tokens were recorded for (the controller decides when to record again)
        self._visible: dict[tuple, torch.Tensor] = {}  # flat indices of the visible tokens, per grid and device

    def clear(self, latent_size: tuple[int, int] | None = None) -> None:
        self.tokens, self.latent_size, self.key = {}, latent_size, None

    def record(self, site: tuple, k: torch.Tensor, v: torch.Tensor) -> None:
        """k, v [V, N, C]: one site's keys and values for the V views; the hidden tokens are dropped here."""
        def flat(t):  # views in order, each view's tokens in order
            t = t.reshape(1, -1, t.shape[-1])
            if self.hide_mask is not None:
                t = t.index_select(1, self.visible_index(k.shape[0], k.shape[1], k.device))
            return t

        self.tokens[site] = (flat(k), flat(v))

    def visible_index(self, views: int, n_tokens: int, device) -> torch.Tensor:
        """Flat indices of the visible tokens of `views` views of `n_tokens` tokens (computed once per grid)."""
        if self.latent_size is None:
            raise RuntimeError("clear(latent_size) before recording with a hide mask")
        key = (views, n_tokens, self.latent_size, str(device))
        if key not in self._visible:
            visible = visible_tokens(self.hide_mask, token_grid(n_tokens, self.latent_size)).expand(views, -1)
            self._visible[key] = visible.flatten().nonzero()[:, 0].to(device)
        return self._visible[key]

    def serve(self, site: tuple, batch: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(keys, values) [batch, M, C]: every view's visible tokens for `site`, the same for each batch element."""
        kv = self.tokens.get(site)
        return None if kv is None else (kv[0].expand(batch, -1, -1), kv[1].expand(batch, -1, -1))
