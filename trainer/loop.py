"""What every training loop here shares: which items make a step's batch, and the curves PNG."""

from __future__ import annotations

import math
from pathlib import Path

import torch


def batch_indices(step: int, n: int, batch: int, seed: int, rank: int, world: int) -> list[int]:
    """The pairs of one optimisation step, the same whatever was run before (so resuming is exact)."""
    per_epoch = max(1, n // (batch * world))
    epoch, offset = divmod(step, per_epoch)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + epoch)).tolist()
    chunk = order[offset * batch * world:(offset + 1) * batch * world]
    chunk = (chunk + order)[: batch * world]
    return chunk[rank::world]



def scheduled_lr(lr: float, step: int, steps: int, warmup: int, schedule: str = "constant") -> float:
    """A linear warm-up over `warmup` steps, then `lr` held ("constant") or decayed to zero at `steps`
    ("cosine"). A function of the step alone, so a resumed run follows the same schedule without
    saving any scheduler state."""
    if step < warmup:
        return lr * (step + 1) / warmup
    if schedule == "constant":
        return lr
    if schedule == "cosine":
        return lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))
    raise ValueError(f"unknown learning-rate schedule '{schedule}' (constant or cosine)")


def plot_curves(history: list[dict], path: Path, title: str, panels: list[list[str]]) -> None:
    """A PNG with one panel per group of `panels` keys against the step, each smoothed over 1/20 of the run."""
    if not history:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2), squeeze=False)
    for ax, keys in zip(axes[0], panels):
        for key in keys:
            values = [h[key] for h in history]
            window = max(1, len(values) // 20)
            smooth = [sum(values[max(0, i - window + 1):i + 1]) / len(values[max(0, i - window + 1):i + 1])
                      for i in range(len(values))]
            ax.plot(steps, smooth, label=key)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
