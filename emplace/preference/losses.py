"""Preference losses for diffusion models: Diffusion-DPO and its spatial variants, as pure functions.

Notation. For winner w and loser l, with the same noise and timestep for both and for the
reference pass, e(x) is the per-pixel squared error of the noise (or v) prediction:
policy errors e_w, e_l and reference errors r_w, r_l, each [B, C, H, W]. A weight map W
([B, 1, H, W] or broadcastable) and a per-sample reduction give scalars

    E(e) = sum(W * e) / sum(W * 1)          (a weighted mean over C, H, W; "mean, not sum")

and the margin the policy gains over the reference is

    delta = -((E(e_w) - E(r_w)) - (E(e_l) - E(r_l)))

(positive when the policy moved towards the winner more than towards the loser). Links:

    sigmoid:  loss = -log sigmoid(beta / 2 * delta)        (Diffusion-DPO; beta about 2000-5000)
    target:   loss = (delta - tau)^2                        (IPO-style, pulls delta to tau, not to infinity)
    clipped:  loss = -log sigmoid(beta * min(delta, tau))   (ASAP's bounded sigmoid option)

Methods (the seeds leave details open; what was chosen is written here):
- `dpo`: W = 1, sigmoid link. The implicit accuracy is the share of samples with delta > 0.
- `mask_dpo` (InpaintDPO's MaskDPO): W = 1 - M_obj (the background only) for the preference
  term, plus lam * E_obj(e_w), the plain denoising loss of the winner on the object region,
  so the object is kept while the preference shapes its surroundings.
- `asymmetric` (conditional asymmetric preference optimisation): a global term, W = 1 over the
  whole image; the asymmetry is in the data: winner and loser come through differently
  cropped views (`differential_crop_boxes`), which the trainer applies before encoding.
- `commonality` (shared commonality preference optimisation): K winners per condition,
  errors [B, K, C, H, W]; their common component, the mean per-pixel error over the K winners
  (policy and reference alike), is preferred against the loser.
- `asap`: W = 1 + alpha * M (M the degraded region, alpha about 10), target link with tau in
  units of the weighted mean error (the default 0.5 asks the policy to beat the reference on
  the loser by half an average per-pixel error), or the clipped sigmoid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import torch
import torch.nn.functional as F


@dataclass
class PreferenceLoss:
    loss: torch.Tensor  # scalar, what is minimised
    delta: torch.Tensor  # [B] the margin above
    accuracy: torch.Tensor  # scalar: share of samples with delta > 0 (implicit accuracy)
    policy_winner: torch.Tensor  # scalar E(e_w), for logging
    policy_loser: torch.Tensor
    reference_winner: torch.Tensor
    reference_loser: torch.Tensor


def weighted_mean(error: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample weighted mean over every dimension but the first: [B, ...] -> [B]."""
    if weight is None:
        return error.flatten(1).mean(1)
    weight = weight.expand_as(error)
    return (weight * error).flatten(1).sum(1) / weight.flatten(1).sum(1).clamp(min=1e-8)


def margin(e_w, e_l, r_w, r_l, weight=None) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    reduced = tuple(weighted_mean(e, weight) for e in (e_w, e_l, r_w, r_l))
    pw, pl, rw, rl = reduced
    return -((pw - rw) - (pl - rl)), reduced


def _finish(loss_per_sample: torch.Tensor, delta: torch.Tensor, reduced) -> PreferenceLoss:
    pw, pl, rw, rl = reduced
    return PreferenceLoss(loss_per_sample.mean(), delta, (delta > 0).float().mean(), pw.mean(), pl.mean(), rw.mean(),
                          rl.mean())


def sigmoid_link(delta: torch.Tensor, beta: float) -> torch.Tensor:
    return -F.logsigmoid(beta / 2 * delta)


def dpo(e_w, e_l, r_w, r_l, beta: float = 2500.0, weight=None) -> PreferenceLoss:
    delta, reduced = margin(e_w, e_l, r_w, r_l, weight)
    return _finish(sigmoid_link(delta, beta), delta, reduced)


def mask_dpo(e_w, e_l, r_w, r_l, object_mask: torch.Tensor, beta: float = 2500.0, lam: float = 1.0) -> PreferenceLoss:
    """object_mask [B, 1, H, W]: 1 on the object, whose pixels are kept out of the preference term."""
    background = 1 - object_mask
    delta, reduced = margin(e_w, e_l, r_w, r_l, background)
    keep_object = weighted_mean(e_w, object_mask)
    return _finish(sigmoid_link(delta, beta) + lam * keep_object, delta, reduced)


def asymmetric(e_w, e_l, r_w, r_l, beta: float = 2500.0) -> PreferenceLoss:
    """The global preference term over whole (differently cropped) views."""
    return dpo(e_w, e_l, r_w, r_l, beta)


def commonality(e_ws, e_l, r_ws, r_l, beta: float = 2500.0, weight=None) -> PreferenceLoss:
    """e_ws, r_ws: [B, K, C, H, W] errors of K winners; their mean is the common component."""
    return dpo(e_ws.mean(1), e_l, r_ws.mean(1), r_l, beta, weight)


def asap(e_w, e_l, r_w, r_l, region: torch.Tensor, alpha: float = 10.0, tau: float = 0.5,
         link: str = "target", beta: float = 2500.0) -> PreferenceLoss:
    """region [B, 1, H, W]: the degraded region M. tau is in units of the weighted mean error of the
    reference on the winner, so it means the same at every noise level."""
    weight = 1 + alpha * region
    delta, reduced = margin(e_w, e_l, r_w, r_l, weight)
    scale = reduced[2].detach().clamp(min=1e-8)  # E(r_w): the unit of tau
    if link == "target":
        per_sample = (delta / scale - tau) ** 2
    elif link == "sigmoid":
        per_sample = -F.logsigmoid(beta * torch.minimum(delta, tau * scale))
    else:
        raise ValueError(f"asap link must be 'target' or 'sigmoid', got {link!r}")
    return _finish(per_sample, delta, reduced)


def differential_crop_boxes(height: int, width: int, g: torch.Generator, min_keep: float = 0.8
                            ) -> tuple[tuple[int, int, int, int], tuple[int, int, int, int]]:
    """Two different random crops (x0, y0, x1, y1) keeping at least min_keep of each side: the
    winner is seen through one and the loser through the other (conditional asymmetric PO)."""
    def crop() -> tuple[int, int, int, int]:
        keep = min_keep + (1 - min_keep) * float(torch.rand((), generator=g))
        h, w = max(1, round(height * keep)), max(1, round(width * keep))
        y0 = int(torch.randint(height - h + 1, (), generator=g))
        x0 = int(torch.randint(width - w + 1, (), generator=g))
        return (x0, y0, x0 + w, y0 + h)

    return crop(), crop()


# --- the methods, by name -------------------------------------------------------------------------


class Settings(Protocol):
    """The loss settings a method reads (the trainer's config has them all)."""

    beta: float
    lam: float
    alpha: float
    tau: float
    link: str


@dataclass(frozen=True)
class Method:
    """How a method prepares a pair and scores it. `loss` takes the errors of every winner
    ([B, K, C, H, W] policy and reference), of the loser ([B, C, H, W]), the pair's regions at
    latent size ({"mask": inpaint mask, "object": object mask}, each [B, 1, H, W]) and the settings."""

    loss: Callable[..., PreferenceLoss]
    all_winners: bool = False  # K winners per pair (else only the first is used)
    differential_crops: bool = False  # winner and loser seen through different random crops


METHODS: dict[str, Method] = {
    "dpo": Method(lambda e_w, e_l, r_w, r_l, regions, s: dpo(e_w[:, 0], e_l, r_w[:, 0], r_l, s.beta)),
    "mask-dpo": Method(lambda e_w, e_l, r_w, r_l, regions, s: mask_dpo(
        e_w[:, 0], e_l, r_w[:, 0], r_l, regions["object"], s.beta, s.lam)),
    "asymmetric": Method(lambda e_w, e_l, r_w, r_l, regions, s: asymmetric(e_w[:, 0], e_l, r_w[:, 0], r_l, s.beta),
                         differential_crops=True),
    "commonality": Method(lambda e_w, e_l, r_w, r_l, regions, s: commonality(e_w, e_l, r_w, r_l, s.beta),
                          all_winners=True),
    "asap": Method(lambda e_w, e_l, r_w, r_l, regions, s: asap(
        e_w[:, 0], e_l, r_w[:, 0], r_l, regions["mask"], s.alpha, s.tau, s.link, s.beta)),
}
