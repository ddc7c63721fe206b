"""The location model's training losses, as pure functions of whole-box log-likelihoods.

A box is four tokens (x0, y0, x1, y1); log p(box) is the sum of their log-probabilities given
the background and the class (`LocationModel.forward`). Per batch of B boxes:

    pretraining:  L = -mean_b log p(box_b) / 4                       (mean per-token NLL)

    DPO, winner w (a plausible box) and loser l (an implausible one) of the same background
    and class, policy p against the frozen pretrained reference r (seed 001):

        margin_b = (log p(w_b) - log r(w_b)) - (log p(l_b) - log r(l_b))
        L = -mean_b log sigmoid(beta * margin_b) - nll_weight * mean_b log p(w_b) / 4

    The second term (weight 0.25 in the trainer, chosen by bench/location_top1.py) keeps the
    winner's own likelihood from falling while the margin grows, so the likeliest box stays a good
    one. The implicit accuracy is the share of pairs with margin > 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pretrain_loss(log_p: torch.Tensor) -> dict[str, torch.Tensor]:
    """log_p [B]: whole-box log-likelihoods of positive boxes."""
    nll = -log_p.mean() / 4
    return {"loss": nll, "nll": nll.detach()}


def box_dpo_loss(policy_winner: torch.Tensor, policy_loser: torch.Tensor, reference_winner: torch.Tensor,
                 reference_loser: torch.Tensor, beta: float, nll_weight: float = 0.0) -> dict[str, torch.Tensor]:
    """Each argument [B]: whole-box log-likelihoods of the pair's winner and loser boxes."""
    margin = (policy_winner - reference_winner) - (policy_loser - reference_loser)
    loss = -F.logsigmoid(beta * margin).mean() - nll_weight * policy_winner.mean() / 4
    return {"loss": loss, "accuracy": (margin > 0).float().mean(), "margin": margin.mean().detach(),
            "winner_logp": policy_winner.mean().detach(), "loser_logp": policy_loser.mean().detach()}
