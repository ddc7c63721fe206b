"""Multi-view reference attention over a sampling run: record the reference views, then read them.

Each model call at a noise level inside [end, start] becomes two passes of the host's model:
- record: the reference latent, noised to a level with fixed noise, runs through the model
  while every enabled self-attention site banks its keys and values;
- read: the target runs through the model while every enabled site appends the banked
  keys and values to its own (attention.reference_attention blends with the plain output).

Modes: 'exact' records at the current level on every call (the reference is as noisy as the
target; costs one more model call per step for V views); 'cached' records once at
`cache_level` (a low noise) and reuses the bank for the rest of the run. Two calls at the
same level (cond and uncond batched apart) record once.

The host supplies the model step, `run(latent, level, pass_)`, and has each self-attention
call `attend(site, q, k, v, heads)` with its projected queries, keys and values.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .attention import Attention, Strength, reference_attention, sdpa
from .bank import SITE_KINDS, ReferenceBank
from .schedule import add_noise, fit_latent, in_range, reference_noise

PLAIN, RECORD, READ = "plain", "record", "read"
MODES = ("exact", "cached")
COND, UNCOND = 0, 1  # ComfyUI's cond_or_uncond chunk labels

Run = Callable[[torch.Tensor, torch.Tensor, str], torch.Tensor]
NoiseScaling = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class MultiViewOptions:
    strength: float = 1.0  # 0: the plain model; 1: the extended attention
    uncond_strength: float | None = None  # for the unconditional chunks; None: `strength`; 0: they see no reference
    sites: tuple[str, ...] = SITE_KINDS  # which UNet parts attend to the reference
    mode: str = "exact"
    start: float = math.inf  # the active span of noise levels, noisiest first
    end: float = 0.0
    cache_level: float | None = None  # 'cached': the level the reference is recorded at
    seed: int = 0  # of the reference's fixed noise

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got '{self.mode}'")
        if self.mode == "cached" and self.cache_level is None:
            raise ValueError("mode 'cached' needs a cache_level")
        bad = [s for s in self.sites if s not in SITE_KINDS]
        if bad or not self.sites:
            raise ValueError(f"sites must be some of {SITE_KINDS}, got {self.sites}")

    @property
    def uncond(self) -> float:
        return self.strength if self.uncond_strength is None else self.uncond_strength


def _same_condition(recorded: torch.Tensor | None, condition: torch.Tensor | None) -> bool:
    if condition is None:  # a call without a cond chunk takes the bank as it is
        return True
    return recorded is not None and recorded.shape == condition.shape and torch.equal(recorded, condition)


class MultiViewContext:
    """The state of multi-view reference attention: options, the reference views and their bank."""

    def __init__(self, reference: torch.Tensor, options: MultiViewOptions = MultiViewOptions(),
                 hide_mask: torch.Tensor | None = None):
        if reference.dim() != 4 or reference.shape[0] == 0:
            raise ValueError(f"reference must be a latent batch [V, C, h, w] with V >= 1, got {tuple(reference.shape)}")
        if hide_mask is not None and (hide_mask.dim() != 3 or hide_mask.shape[0] not in (1, reference.shape[0])):
            raise ValueError(f"hide_mask must be [1 or {reference.shape[0]} (views), H, W], "
                             f"got {tuple(hide_mask.shape)}")
        self.reference, self.options = reference, options
        self.bank = ReferenceBank(hide_mask)
        self.pass_, self.chunks = PLAIN, None
        self._fitted: tuple[tuple, torch.Tensor, torch.Tensor] | None = None  # (where, latent, noise) on the device

    @property
    def views(self) -> int:
        return self.reference.shape[0]

    def reset(self) -> None:
        """Forget the bank (at the start of a sampling run)."""
        self.bank.clear()

    def active(self, level: float) -> bool:
        o = self.options
        return (o.strength != 0 or o.uncond != 0) and in_range(level, o.start, o.end)

    # -- the step ---------------------------------------------------------------------------
    def denoise(self, x: torch.Tensor, level: torch.Tensor, run: Run, condition: torch.Tensor | None = None,
                chunks: list[int] | None = None, noise_scaling: NoiseScaling = add_noise) -> torch.Tensor:
        """One model call on x [B, C, h, w] at `level` [B] with the reference in view.

        run(latent, level, pass_): the host's model. For RECORD it gets the V reference views
        and must condition them as one target element (prompt; for inpainting models a
        complete image: nothing masked); for READ and PLAIN it runs x as given.
        `condition` (the prompt embedding the record pass uses) decides when to record again;
        `chunks` lists the batch's cond/uncond chunks (COND/UNCOND), equal in size.
        """
        if not self.active(float(level.flatten()[0])):
            return run(x, level, PLAIN)
        self.record(x, level, run, condition, noise_scaling)
        self.pass_, self.chunks = READ, chunks
        try:
            return run(x, level, READ)
        finally:
            self.pass_, self.chunks = PLAIN, None

    def record(self, x: torch.Tensor, level: torch.Tensor, run: Run, condition: torch.Tensor | None = None,
               noise_scaling: NoiseScaling = add_noise) -> None:
        """Fill the bank for a target like x at `level`, unless it already holds that."""
        o = self.options
        at = level.flatten()[:1] if o.mode == "exact" else torch.tensor([o.cache_level], dtype=level.dtype)
        size = tuple(x.shape[-2:])
        key = (float(at), size, x.dtype, x.device)
        if self.bank.key is not None and self.bank.key[0] == key and _same_condition(self.bank.key[1], condition):
            return
        latent, noise = self.reference_at(size, x.device, x.dtype)
        at = at.to(level.device).repeat(self.views)
        self.bank.clear(size)
        self.pass_ = RECORD
        try:
            run(noise_scaling(at, noise, latent), at, RECORD)
        finally:
            self.pass_ = PLAIN
        self.bank.key = (key, condition)

    def reference_at(self, size: tuple[int, int], device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The reference latent at the target's `size` and its fixed noise, kept on the device between steps."""
        where = (tuple(size), torch.device(device), dtype)
        if self._fitted is None or self._fitted[0] != where:
            latent = fit_latent(self.reference.to(device, dtype), size)
            noise = reference_noise(latent.shape, self.options.seed).to(device, dtype)
            self._fitted = (where, latent, noise)
        return self._fitted[1], self._fitted[2]

    # -- the hook ---------------------------------------------------------------------------
    def attend(self, site: tuple, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
               attention: Attention = sdpa) -> torch.Tensor:
        """In place of the self-attention at `site` (projected q, k, v [B, N, heads * d]): bank k and v
        (record pass), or attend to the banked views' keys and values too (read pass)."""
        if site[0] in self.options.sites:
            if self.pass_ == RECORD:
                self.bank.record(site, k, v)
                self.recorded(site)
            elif self.pass_ == READ and (kv := self.bank.serve(site, q.shape[0])) is not None:
                k_ref, v_ref = (t.to(k) for t in kv)
                return reference_attention(q, torch.cat([k, k_ref], 1), torch.cat([v, v_ref], 1), k.shape[1], heads,
                                           self.strengths(q.shape[0]), attention)
        return attention(q, k, v, heads)

    def recorded(self, site: tuple) -> None:
        """Called once a site has banked its keys and values (a subclass may stop the record pass there)."""

    def strengths(self, batch: int) -> Strength:
        s, u = self.options.strength, self.options.uncond
        if self.chunks is None or s == u:
            return s
        if batch % len(self.chunks):
            raise ValueError(f"a batch of {batch} does not split into the {len(self.chunks)} cond/uncond chunks")
        per_chunk = [u if c == UNCOND else s for c in self.chunks]
        return torch.tensor(per_chunk).repeat_interleave(batch // len(self.chunks))
