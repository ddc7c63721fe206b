"""Preference losses for diffusion models: Diffusion-DPO and its spatial variants, as pure functions.

Notation. For winner w and loser l, with the same noise and timestep for both and for the
reference pass, e(x) is the per-pixel squared error of the noise (or v) prediction:
policy errors e_w, e_l and reference errors r_w, r_l, each [B, C, H, W]. A weight map W
([B, 1, H, W] or broadcastable) and a per-sample reduction give scalars

    E(e) = sum(W * e) / sum(W * 1)          (a weighted mean over C, H, W; "mean, not sum")

and the margin the policy gains over the reference is

    delta = -((E(e_w) - E(r_w)) - (E(e_l) - E(r_l)))

(positive when the policy moved towards the winner more than towards the loser). Links:

    sigmoid:  loss = -log sigmoid(beta * delta)              (Diffusion-DPO)
    target:   loss = (delta / E(r_w) - tau)^2                (IPO-style, pulls delta to tau, not to infinity)
    clipped:  loss = -log sigmoid(beta * min(delta, tau * E(r_w)))   (ASAP's bounded sigmoid option)

One beta convention: `beta` is the coefficient on delta, for every method and link, and delta
is a difference of per-pixel means (mean over C, H, W, weighted as above). diffusers'
train_diffusion_dpo.py scripts put 0.5 * beta_dpo on the same margin (also a mean over
C, H, W), so beta = beta_dpo / 2: their default 2500 is beta 1250 here, and a value
carried over from a script that sums over pixels must be divided by C * H * W too.

The gradient of the sigmoid link with respect to delta is beta * sigmoid(-beta * delta):
the factor sigmoid(-beta * delta) (`gradient_factor`) is 1/2 where the policy equals the
reference and falls to 0 as a pair is learnt. `AutoBeta` adjusts beta from step to step to
hold its batch mean near a target, since the size of delta differs between models,
prediction types and timesteps.

Anchors against drift, available to every method (winner and loser agree outside the
inpaint mask M, so their gradients there cancel in delta, and nothing else holds the
prediction where they agree):
- `reference_consistency` over (1 - M): E there of (pred_policy - pred_reference)^2, on every
  sample of the batch (weight `consistency` in the trainer);
- the same over M (weight `consistency_in_mask`): a trust region where the preference acts, which
  holds back the drift winner and loser share (both errors growing keeps the margin) and leaves
  the part that differs between them to the preference;
- the winner's plain denoising loss E(e_w) (`sft_weight`), or over the winner's object only
  (`sft_region = "object"`): mask-dpo's object term, lam * E_obj(e_w), for any method;
- the preference restricted to a region (`preference_region`): every method's weight map multiplied
  by M (the mask), or by 1 - M_obj (off the object: the winner's object kept out of the preference,
  as mask-dpo does; dpo measured there with lam = 0 is mask-dpo without its object term).
The preference term's gradient is beta * sigmoid(-beta * delta) times that of a per-pixel
mean error (about 1250 * 0.25 at the default beta), so an anchor weighs the same as the
preference at a weight in the hundreds, not at 1.

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

import math
from dataclasses import dataclass, field
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
    diagnostics: dict[str, torch.Tensor] = field(default_factory=dict)  # the trainer's extra scalars to log


def weighted_mean(error: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample weighted mean over every dimension but the first: [B, ...] -> [B]."""
    if weight is None:
        return error.flatten(1).mean(1)
    weight = weight.expand_as(error)
    return (weight * error).flatten(1).sum(1) / weight.flatten(1).sum(1).clamp(min=1e-8)


def margin(e_w, e_l, r_w, r_l, weight=None) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """weight: one map for all four errors, or (the winner's, the loser's) where the two are seen
    through different crops."""
    w_weight, l_weight = weight if isinstance(weight, tuple) else (weight, weight)
    reduced = (weighted_mean(e_w, w_weight), weighted_mean(e_l, l_weight), weighted_mean(r_w, w_weight),
               weighted_mean(r_l, l_weight))
    pw, pl, rw, rl = reduced
    return -((pw - rw) - (pl - rl)), reduced


def _finish(loss_per_sample: torch.Tensor, delta: torch.Tensor, reduced) -> PreferenceLoss:
    pw, pl, rw, rl = reduced
    return PreferenceLoss(loss_per_sample.mean(), delta, (delta > 0).float().mean(), pw.mean(), pl.mean(), rw.mean(),
                          rl.mean())


def sigmoid_link(delta: torch.Tensor, beta: float) -> torch.Tensor:
    return -F.logsigmoid(beta * delta)


def gradient_factor(delta: torch.Tensor, beta: float) -> torch.Tensor:
    """sigmoid(-beta * delta), the sigmoid link's per-sample gradient factor: 1/2 untrained, 0 learnt."""
    return torch.sigmoid(-beta * delta.detach())


def dpo(e_w, e_l, r_w, r_l, beta: float = 1250.0, weight=None) -> PreferenceLoss:
    delta, reduced = margin(e_w, e_l, r_w, r_l, weight)
    return _finish(sigmoid_link(delta, beta), delta, reduced)


def mask_dpo(e_w, e_l, r_w, r_l, object_mask: torch.Tensor, beta: float = 1250.0, lam: float = 1.0,
             weight=None) -> PreferenceLoss:
    """object_mask [B, 1, H, W]: 1 on the object, whose pixels are kept out of the preference term."""
    background = (1 - object_mask) * (1 if weight is None else weight)
    delta, reduced = margin(e_w, e_l, r_w, r_l, background)
    keep_object = weighted_mean(e_w, object_mask)
    return _finish(sigmoid_link(delta, beta) + lam * keep_object, delta, reduced)


def asymmetric(e_w, e_l, r_w, r_l, beta: float = 1250.0, weight=None) -> PreferenceLoss:
    """The global preference term over whole (differently cropped) views; weight, if any, is a pair of
    maps, each cropped with its own view."""
    return dpo(e_w, e_l, r_w, r_l, beta, weight)


def commonality(e_ws, e_l, r_ws, r_l, beta: float = 1250.0, weight=None) -> PreferenceLoss:
    """e_ws, r_ws: [B, K, C, H, W] errors of K winners; their mean is the common component."""
    return dpo(e_ws.mean(1), e_l, r_ws.mean(1), r_l, beta, weight)


def asap(e_w, e_l, r_w, r_l, region: torch.Tensor, alpha: float = 10.0, tau: float = 0.5,
         link: str = "target", beta: float = 1250.0, weight=None) -> PreferenceLoss:
    """region [B, 1, H, W]: the degraded region M. tau is in units of the weighted mean error of the
    reference on the winner, so it means the same at every noise level."""
    weight = (1 + alpha * region) * (1 if weight is None else weight)
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


# --- anchors and diagnostics -----------------------------------------------------------------


def reference_consistency(pred: torch.Tensor, reference_pred: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """E over a region of (pred - reference_pred)^2, averaged over the batch: holds the policy to the
    reference there (over 1 - M: where winner and loser agree). pred, reference_pred [N, C, H, W];
    region [N, 1, H, W]."""
    return weighted_mean((pred.float() - reference_pred.float()) ** 2, region).mean()


def error_ratios(e_w, e_l, r_w, r_l, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Policy error over reference error, for winner and loser, inside and outside the mask (1 = the
    reference's error; below 1 the policy predicts better there). A drifting recipe shows here as a
    winner ratio above 1 outside the mask."""
    out = {}
    for name, region in (("in", mask), ("out", 1 - mask)):
        for who, policy, reference in (("winner", e_w, r_w), ("loser", e_l, r_l)):
            out[f"{who}_{name}"] = weighted_mean(policy, region).sum() / weighted_mean(reference, region).sum().clamp(
                min=1e-12)
    return out


class AutoBeta:
    """Holds the batch mean of the sigmoid link's gradient factor sigmoid(-beta * delta) near `target`
    by a multiplicative step on beta after every micro-step (up when the pairs are far from learnt
    and the factor is above the target, down when they saturate). Bounded to [low, high]; its state
    is checkpointed, so resuming is exact."""

    def __init__(self, beta: float, target: float, rate: float = 0.05, low: float = 1.0, high: float = 1e6):
        self.beta, self.target, self.rate, self.low, self.high = float(beta), target, rate, low, high

    def update(self, mean_factor: float) -> None:
        self.beta = min(self.high, max(self.low, self.beta * math.exp(self.rate * (mean_factor - self.target) / 0.5)))

    def state_dict(self) -> dict:
        return {"beta": torch.tensor(self.beta, dtype=torch.float64)}

    def load_state_dict(self, state: dict) -> None:
        self.beta = float(state["beta"])


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
    "dpo": Method(lambda e_w, e_l, r_w, r_l, regions, s: dpo(
        e_w[:, 0], e_l, r_w[:, 0], r_l, s.beta, regions.get("within"))),
    "mask-dpo": Method(lambda e_w, e_l, r_w, r_l, regions, s: mask_dpo(
        e_w[:, 0], e_l, r_w[:, 0], r_l, regions["object"], s.beta, s.lam, regions.get("within"))),
    "asymmetric": Method(lambda e_w, e_l, r_w, r_l, regions, s: asymmetric(
        e_w[:, 0], e_l, r_w[:, 0], r_l, s.beta, regions.get("within")), differential_crops=True),
    "commonality": Method(lambda e_w, e_l, r_w, r_l, regions, s: commonality(
        e_w, e_l, r_w, r_l, s.beta, regions.get("within")), all_winners=True),
    "asap": Method(lambda e_w, e_l, r_w, r_l, regions, s: asap(
        e_w[:, 0], e_l, r_w[:, 0], r_l, regions["mask"], s.alpha, s.tau, s.link, s.beta, regions.get("within"))),
}
"""regions["within"] (optional, [B, 1, H, W]) restricts the preference term to a region (the trainer's
`preference_region`: the inpaint mask, or everything but the winner's object); for the asymmetric method,
which sees winner and loser through different crops, it is a pair: the region cropped with each view."""
