"""When and at what noise the reference is seen: plain functions over noise levels.

A noise level is what the host's model is called with and what decreases along sampling:
ComfyUI's sigma (k-diffusion convention, before input scaling) or a diffusers timestep.
The reference latent is noised to a level with the same fixed noise every time, so two calls
at the same level see the same reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def add_noise(level: torch.Tensor, noise: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
    """x_t = x + sigma * noise: the EPS / k-diffusion convention (ComfyUI's model_sampling.noise_scaling
    for EPS and v-prediction models; flow models use (1 - sigma) x + sigma * noise: pass theirs)."""
    return latent + level.reshape(-1, *[1] * (latent.dim() - 1)).to(latent) * noise


def in_range(level: float, start: float, end: float) -> bool:
    """Whether `level` lies in the active span [end, start] (start is the noisier end, as in
    ComfyUI's percent_to_sigma: start_percent 0 -> a huge sigma, end_percent 1 -> 0)."""
    return end <= level <= start


def reference_noise(shape: torch.Size | tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """The fixed noise for a reference latent of `shape` (float32, CPU): the same for every step."""
    return torch.randn(tuple(shape), generator=torch.Generator().manual_seed(seed))


def fit_latent(latent: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The reference latent [V, C, h, w] at the target's spatial `size` (bilinear; unchanged if it fits)."""
    if tuple(latent.shape[-2:]) == tuple(size):
        return latent
    return F.interpolate(latent, size=tuple(size), mode="bilinear", align_corners=False)
