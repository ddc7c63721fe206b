"""Preference losses against values worked out by hand."""

import math

import pytest
import torch

from emplace.preference.losses import (METHODS, AutoBeta, asap, asymmetric, commonality, differential_crop_boxes, dpo,
                                       error_ratios, gradient_factor, mask_dpo, reference_consistency, weighted_mean)


def const(*values):
    """[B, 1, 2, 2] error maps, one constant value per sample."""
    return torch.tensor(values, dtype=torch.float64)[:, None, None, None].expand(-1, 1, 2, 2).clone()


def test_dpo_matches_the_formula():
    # policy: winner 0.10, loser 0.30; reference: 0.20, 0.20 -> delta = -((0.10-0.20) - (0.30-0.20)) = 0.2
    out = dpo(const(0.10), const(0.30), const(0.20), const(0.20), beta=10.0)
    assert out.delta.item() == pytest.approx(0.2)
    assert out.loss.item() == pytest.approx(-math.log(1 / (1 + math.exp(-10 * 0.2))))  # beta on the margin itself
    assert out.accuracy.item() == 1.0


def test_dpo_is_log2_at_the_reference_and_prefers_the_winner():
    same = dpo(const(0.2), const(0.2), const(0.2), const(0.2))
    assert same.loss.item() == pytest.approx(math.log(2)) and same.accuracy.item() == 0.0
    e_w = const(0.2).requires_grad_()
    dpo(e_w, const(0.2), const(0.2), const(0.2), beta=10.0).loss.backward()
    assert e_w.grad.sum() > 0  # lowering the winner's error lowers the loss


def test_weighted_mean_is_a_mean_not_a_sum():
    e = torch.tensor([[[[1.0, 3.0], [5.0, 7.0]]]])
    w = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
    assert weighted_mean(e).item() == 4.0 and weighted_mean(e, w).item() == 2.0


def test_mask_dpo_ignores_the_object_in_the_preference_and_keeps_it_by_denoising():
    obj = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]], dtype=torch.float64)
    e_w = torch.tensor([[[[9.0, 0.1], [0.1, 0.1]]]], dtype=torch.float64)  # a big error on the object pixel only
    out = mask_dpo(e_w, const(0.3), const(0.2), const(0.2), obj, beta=10.0, lam=0.5)
    # background: winner 0.1 vs ref 0.2, loser 0.3 vs ref 0.2 -> delta 0.2; object term 0.5 * 9
    assert out.delta.item() == pytest.approx(0.2)
    assert out.loss.item() == pytest.approx(-math.log(1 / (1 + math.exp(-2.0))) + 4.5)


def test_commonality_prefers_the_winners_mean():
    e_ws = torch.stack([const(0.1), const(0.3)], 1)  # [B, K, ...]: mean 0.2
    r_ws = torch.stack([const(0.2), const(0.2)], 1)
    out = commonality(e_ws, const(0.4), r_ws, const(0.2), beta=10.0)
    assert out.delta.item() == pytest.approx(0.2)  # -((0.2-0.2) - (0.4-0.2))


def test_asap_weights_the_region_and_pulls_the_margin_to_tau():
    region = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]], dtype=torch.float64)
    e_l = torch.tensor([[[[1.3, 0.2], [0.2, 0.2]]]], dtype=torch.float64)
    # W = [11, 1, 1, 1]: E(e_l) = (11*1.3 + 0.6) / 14 = 1.0643; winner and references 0.2 -> delta = 0.8643
    out = asap(const(0.2), e_l, const(0.2), const(0.2), region, alpha=10.0, tau=0.5)
    delta = (11 * 1.3 + 0.6) / 14 - 0.2
    assert out.delta.item() == pytest.approx(delta)
    assert out.loss.item() == pytest.approx((delta / 0.2 - 0.5) ** 2)
    clipped = asap(const(0.2), e_l, const(0.2), const(0.2), region, tau=0.5, link="sigmoid", beta=10.0)
    assert clipped.loss.item() == pytest.approx(-math.log(1 / (1 + math.exp(-10 * 0.1))))  # min(delta, 0.5*0.2)
    with pytest.raises(ValueError, match="asap link"):
        asap(const(0.2), e_l, const(0.2), const(0.2), region, link="nope")


def test_asymmetric_is_the_global_term_over_views_cropped_differently():
    assert asymmetric(const(0.1), const(0.3), const(0.2), const(0.2), beta=10.0).delta.item() == pytest.approx(0.2)
    a, b = differential_crop_boxes(64, 48, torch.Generator().manual_seed(0))
    assert a != b
    for x0, y0, x1, y1 in (a, b):
        assert 0 <= x0 < x1 <= 48 and 0 <= y0 < y1 <= 64 and (x1 - x0) >= 0.8 * 48 - 1


def test_one_beta_convention_for_every_sigmoid_link():
    """beta multiplies the margin in dpo's link and in asap's clipped sigmoid alike (diffusers' beta_dpo = 2 beta)."""
    region = torch.zeros(1, 1, 2, 2, dtype=torch.float64)
    plain = dpo(const(0.1), const(0.3), const(0.2), const(0.2), beta=10.0)
    clipped = asap(const(0.1), const(0.3), const(0.2), const(0.2), region, alpha=0.0, tau=10.0, link="sigmoid",
                   beta=10.0)  # tau far above the margin: no clipping
    assert clipped.loss.item() == pytest.approx(plain.loss.item())
    assert gradient_factor(plain.delta, 10.0).item() == pytest.approx(1 / (1 + math.exp(10 * 0.2)))


def test_the_preference_can_be_restricted_to_the_mask():
    """Outside the mask the winner is much better than the reference; restricted to the mask that counts for nothing."""
    mask = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]], dtype=torch.float64)
    e_w = torch.tensor([[[[0.2, 0.2], [0.0, 0.0]]]], dtype=torch.float64)
    regions = {"mask": mask, "object": mask}
    settings = type("S", (), {"beta": 10.0, "lam": 0.0, "alpha": 10.0, "tau": 0.5, "link": "sigmoid"})()
    args = (e_w[:, None], const(0.2), const(0.2)[:, None], const(0.2))
    assert METHODS["dpo"].loss(*args, regions, settings).delta.item() == pytest.approx(0.1)
    for name in ("dpo", "commonality", "asap"):
        within = METHODS[name].loss(*args, regions | {"within": mask}, settings)
        assert within.delta.item() == pytest.approx(0.0), name


def test_the_consistency_anchor_counts_only_pixels_of_its_region():
    mask = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    pred, ref = torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)
    pred[..., 0, 0] = 5.0  # inside the mask: free for the outside anchor
    assert reference_consistency(pred, ref, 1 - mask).item() == 0.0
    assert reference_consistency(pred, ref, mask).item() == pytest.approx(25.0)
    pred[..., 1, 1] = 3.0  # outside: (3^2) / 3 unmasked pixels
    assert reference_consistency(pred, ref, 1 - mask).item() == pytest.approx(3.0)
    assert reference_consistency(pred, ref, mask).item() == pytest.approx(25.0)


def test_error_ratios_split_inside_and_outside_the_mask():
    mask = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
    e_w = torch.tensor([[[[0.1, 0.1], [0.4, 0.4]]]])
    ratios = error_ratios(e_w, const(0.2).float(), const(0.2).float(), const(0.2).float(), mask)
    assert ratios["winner_in"].item() == pytest.approx(0.5) and ratios["winner_out"].item() == pytest.approx(2.0)
    assert ratios["loser_in"].item() == pytest.approx(1.0) and ratios["loser_out"].item() == pytest.approx(1.0)


def test_auto_beta_rises_while_pairs_are_unlearnt_falls_when_they_saturate_and_resumes():
    up = AutoBeta(100.0, target=0.3)
    for _ in range(10):
        up.update(0.5)  # untrained: the factor is 1/2, above the target
    assert up.beta > 100.0
    down = AutoBeta(100.0, target=0.3)
    down.update(0.05)  # saturated
    assert down.beta < 100.0
    again = AutoBeta(1.0, target=0.3)
    again.load_state_dict(up.state_dict())
    assert again.beta == up.beta
    capped = AutoBeta(100.0, target=0.3, high=120.0)
    for _ in range(100):
        capped.update(0.5)
    assert capped.beta == 120.0
