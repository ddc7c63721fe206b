"""Reference attention: a self-attention whose keys and values also hold other views' tokens.

For the target's queries q, its own keys/values k, v and the reference views' k_ref, v_ref
(every view's tokens concatenated):

    plain    = softmax(q k^T / sqrt(d)) v                          (the model as it is)
    extended = softmax(q [k; k_ref]^T / sqrt(d)) [v; v_ref]        (itself and the other views)
    out      = plain + s (extended - plain)                        (s = strength, per batch element)

s = 0 returns `plain` exactly (no arithmetic touches it) and s = 1 returns `extended`.
Tensors are laid out as the attention layers hold them: [batch, tokens, heads * head_dim].
The attention function is a parameter so that a host can pass its own kernel (ComfyUI's
optimized_attention), which keeps the s = 0 path bit-identical to the unpatched model.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

Attention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]
Strength = float | torch.Tensor  # a number, or one per batch element [B]


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Multi-head scaled dot-product attention, [B, N, heads * d] in and out (as diffusers' AttnProcessor2_0)."""
    b, d = q.shape[0], q.shape[-1] // heads
    split = lambda t: t.view(b, -1, heads, d).transpose(1, 2)  # noqa: E731
    out = F.scaled_dot_product_attention(split(q), split(k), split(v), dropout_p=0.0, is_causal=False)
    return out.transpose(1, 2).reshape(b, -1, heads * d)


def _per_element(strength: Strength, batch: int) -> Strength:
    if isinstance(strength, torch.Tensor):
        if strength.numel() != batch:
            raise ValueError(f"strength has {strength.numel()} values for a batch of {batch}")
        if bool((strength == strength.flatten()[0]).all()):
            return float(strength.flatten()[0])
    return strength


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n_own: int, heads: int,
                        strength: Strength = 1.0, attention: Attention = sdpa) -> torch.Tensor:
    """Attention where k and v hold the target's own `n_own` tokens first, then the reference's.

    Returns plain + strength * (extended - plain) (module docstring); with no reference tokens
    (k.shape[1] == n_own) or strength 0 it is the plain attention, computed once.
    """
    if k.shape[1] == n_own:
        return attention(q, k, v, heads)
    s = _per_element(strength, q.shape[0])
    if isinstance(s, float) and s == 0.0:
        return attention(q, k[:, :n_own], v[:, :n_own], heads)
    extended = attention(q, k, v, heads)
    if isinstance(s, float) and s == 1.0:
        return extended
    plain = attention(q, k[:, :n_own], v[:, :n_own], heads)
    if isinstance(s, torch.Tensor):
        s = s.to(plain).view(-1, *[1] * (plain.dim() - 1))
    return plain + s * (extended - plain)


def extended_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_ref: torch.Tensor, v_ref: torch.Tensor,
                       heads: int, strength: Strength = 1.0, attention: Attention = sdpa) -> torch.Tensor:
    """`reference_attention` with the reference keys/values given apart ([B or 1, M, heads * d])."""
    k_ref, v_ref = (t.expand(q.shape[0], -1, -1) for t in (k_ref, v_ref))
    return reference_attention(q, torch.cat([k, k_ref], 1), torch.cat([v, v_ref], 1), k.shape[1], heads, strength,
                               attention)
