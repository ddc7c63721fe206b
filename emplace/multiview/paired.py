"""Reference attention with each target's own reference views (training batches, scene-world evaluation).

`MultiViewContext` serves one set of views to the whole batch, as a ComfyUI graph does;
a training batch pairs every target with its own views. The record pass also stops once
the last banking site has recorded, since nothing after it is read.
"""

from __future__ import annotations

import torch

from .bank import ReferenceBank
from .context import MultiViewContext, MultiViewOptions
from .schedule import add_noise


class Recorded(Exception):
    """Raised after the last site that banks tokens: the rest of a record pass is not needed."""


class PairedBank(ReferenceBank):
    """Each target's V views' keys and values as one sequence per target (no hide mask)."""

    def __init__(self, views: int):
        super().__init__()
        self.per_target = views

    def record(self, site: tuple, k: torch.Tensor, v: torch.Tensor) -> None:
        self.tokens[site] = tuple(t.reshape(-1, self.per_target * t.shape[1], t.shape[-1]) for t in (k, v))

    def serve(self, site: tuple, batch: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        kv = self.tokens.get(site)
        return None if kv is None else tuple(t.repeat(batch // t.shape[0], 1, 1) for t in kv)


class PairedContext(MultiViewContext):
    """MultiViewContext with each target's own reference views: `reference` is [B * V, C, h, w], V views
    per target in target order, and target b attends to its V views only (the library's context serves
    one set of views to the whole batch). No hide mask. A batch of k * B (cond/uncond chunks) serves
    each chunk the same targets' views."""

    def __init__(self, reference: torch.Tensor, views: int, options: MultiViewOptions = MultiViewOptions()):
        super().__init__(reference, options)
        self.bank = PairedBank(views)
        self.last_site: tuple | None = None  # learnt on the first complete record pass

    def set_reference(self, reference: torch.Tensor) -> None:
        self.reference, self._fitted = reference, None
        self.bank.clear()

    def recorded(self, site: tuple) -> None:
        if site == self.last_site:
            raise Recorded

    def record(self, x, level, run, condition=None, noise_scaling=None) -> None:
        """MultiViewContext.record, with the record pass stopping after the last banking site."""
        recording = lambda latent, at, pass_: self.run_record(lambda: run(latent, at, pass_))  # noqa: E731
        super().record(x, level, recording, condition, noise_scaling or add_noise)

    def run_record(self, call) -> None:
        """call() runs the model on the reference views in the record pass; stops early once it can."""
        try:
            call()
        except Recorded:
            return
        if self.bank.tokens and self.last_site is None:
            self.last_site = next(reversed(self.bank.tokens))
