"""The seed paper's evaluation of a location model: sample N boxes per test image, count what they find.

A sampled box counts toward its best-overlapping ground-truth box (positives and negatives of that
example together) when their IoU reaches the threshold (0.5): a true positive when that box is a
positive, a false positive when it is a negative; a sample that overlaps nothing enough is not
counted. At equal IoU the positive wins.

The curve traces N = 10, 20, ..., 100 samples per example:

    TPR(N) = positive boxes found by at least one of the first N samples of their example
             / all positive boxes (of the examples that have one)
    FPR(N) = negative boxes found the same way / all negative boxes (of the examples that have one,
             including examples with negatives only)

The paper shows such curves built by increasing N but does not publish how it normalises them;
counting ground-truth boxes found (so both rates lie in 0..1 and grow with N) is our choice. Each
point also keeps the raw numbers of true- and false-positive samples (tp, fp). To be fair across N
and cheap, each example is sampled once with max(N) boxes and the first N of them count for N, so a
curve never goes down as N grows.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from ..boxes import iou_matrix
from ..files import write_atomically
from .data import LocationExample

DEFAULT_NS = tuple(range(10, 101, 10))


class EvaluationError(ValueError):
    """Evaluation inputs that do not fit together; the message says which."""


def count_hits(samples: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor,
               iou_threshold: float = 0.5) -> tuple[int, int, torch.Tensor, torch.Tensor]:
    """(tp, fp, hit_pos [k] bool, hit_neg [m] bool) for sampled boxes [n, 4] against one example's
    positives [k, 4] and negatives [m, 4] (all xyxy pixels); see the module docstring."""
    k, m = len(positives), len(negatives)
    hit_pos, hit_neg = torch.zeros(k, dtype=torch.bool), torch.zeros(m, dtype=torch.bool)
    if len(samples) == 0 or k + m == 0:
        return 0, 0, hit_pos, hit_neg
    truth = torch.cat([positives.reshape(-1, 4).double().cpu(), negatives.reshape(-1, 4).double().cpu()])
    best, which = iou_matrix(samples.reshape(-1, 4).double().cpu(), truth).max(1)  # ties: the first, a positive
    counted = best >= iou_threshold
    to_positive, to_negative = counted & (which < k), counted & (which >= k)
    hit_pos[which[to_positive]] = True
    hit_neg[which[to_negative] - k] = True
    return int(to_positive.sum()), int(to_negative.sum()), hit_pos, hit_neg


@dataclass
class CurvePoint:
    n: int  # samples per example
    tpr: float
    fpr: float
    tp: int  # samples that found a positive, over all examples
    fp: int  # samples that found a negative


def tpr_fpr_curve(sample_fn: Callable[[LocationExample, int], torch.Tensor], examples: Sequence[LocationExample],
                  ns: Sequence[int] = DEFAULT_NS, iou_threshold: float = 0.5, progress: bool = True) -> list[CurvePoint]:
    """One CurvePoint per n in `ns`; sample_fn(example, n) returns [n, 4] xyxy boxes in the example's pixels."""
    ns = sorted({int(n) for n in ns})
    if not ns or ns[0] <= 0:
        raise EvaluationError(f"ns must be positive sample counts, got {ns}")
    examples = [e for e in examples if len(e.positives) + len(e.negatives) > 0]
    all_pos = sum(len(e.positives) for e in examples)
    all_neg = sum(len(e.negatives) for e in examples)
    if all_pos == 0 or all_neg == 0:
        raise EvaluationError(f"a TPR-FPR curve needs positive and negative boxes; the {len(examples)} examples "
                              f"have {all_pos} positive and {all_neg} negative boxes")
    found_pos, found_neg = [0] * len(ns), [0] * len(ns)
    tp, fp = [0] * len(ns), [0] * len(ns)
    for example in tqdm(examples, desc="evaluate", unit="example", disable=not progress):
        samples = _samples(sample_fn, example, ns[-1])
        for j, n in enumerate(ns):
            t, f, hit_pos, hit_neg = count_hits(samples[:n], example.positives, example.negatives, iou_threshold)
            tp[j] += t
            fp[j] += f
            found_pos[j] += int(hit_pos.sum())
            found_neg[j] += int(hit_neg.sum())
    return [CurvePoint(n, found_pos[j] / all_pos, found_neg[j] / all_neg, tp[j], fp[j]) for j, n in enumerate(ns)]


def _samples(sample_fn, example: LocationExample, n: int) -> torch.Tensor:
    samples = sample_fn(example, n)
    if not isinstance(samples, torch.Tensor) or samples.dim() != 2 or samples.shape[1] != 4 or len(samples) < n:
        shape = tuple(samples.shape) if isinstance(samples, torch.Tensor) else type(samples).__name__
        raise EvaluationError(f"sample_fn returned {shape} for example {example.key}; expected [{n}, 4] boxes")
    return samples[:n].detach().double().cpu()


# --- comparing curves -------------------------------------------------------------------------------


def _envelope(curve: Sequence[CurvePoint]) -> tuple[list[float], list[float]]:
    """The curve's FPRs in order and their TPRs; at an FPR reached more than once, its highest TPR."""
    xs: list[float] = []
    ys: list[float] = []
    for x, y in sorted((p.fpr, p.tpr) for p in curve):
        if xs and x == xs[-1]:
            ys[-1] = max(ys[-1], y)
        else:
            xs.append(x)
            ys.append(y)
    return xs, ys


def tpr_at_fpr(curve: Sequence[CurvePoint], fpr: float) -> float:
    """The curve's TPR at this FPR, linearly interpolated between its points (the highest TPR where the
    curve rises at one FPR). An FPR outside the curve's range is an error: the curve says nothing there."""
    if not curve:
        raise EvaluationError("tpr_at_fpr: the curve has no points")
    xs, ys = _envelope(curve)
    if not xs[0] - 1e-12 <= fpr <= xs[-1] + 1e-12:
        raise EvaluationError(f"FPR {fpr:.4f} is outside the curve's range {xs[0]:.4f}..{xs[-1]:.4f}")
    for i in range(1, len(xs)):
        if fpr <= xs[i]:
            t = (fpr - xs[i - 1]) / (xs[i] - xs[i - 1])
            return ys[i - 1] + max(t, 0.0) * (ys[i] - ys[i - 1])
    return ys[-1]


def compare_curves(a: Sequence[CurvePoint], b: Sequence[CurvePoint]) -> dict:
    """Both curves' TPRs at every FPR that either curve reaches within the FPR range they share.

    Returns {"fpr": [...], "tpr_a": [...], "tpr_b": [...], "fpr_range": [lo, hi] or None,
    "a_higher_at_every_fpr": bool, "b_higher_at_every_fpr": bool} (both False when they share no range).
    """
    xa, xb = _envelope(a)[0], _envelope(b)[0]
    if not xa or not xb:
        raise EvaluationError("compare_curves: a curve has no points")
    lo, hi = max(xa[0], xb[0]), min(xa[-1], xb[-1])
    fprs = sorted(x for x in set(xa) | set(xb) if lo <= x <= hi)
    tpr_a = [tpr_at_fpr(a, x) for x in fprs]
    tpr_b = [tpr_at_fpr(b, x) for x in fprs]
    return {"fpr": fprs, "tpr_a": tpr_a, "tpr_b": tpr_b, "fpr_range": [lo, hi] if fprs else None,
            "a_higher_at_every_fpr": bool(fprs) and all(p > q for p, q in zip(tpr_a, tpr_b)),
            "b_higher_at_every_fpr": bool(fprs) and all(q > p for p, q in zip(tpr_a, tpr_b))}


# --- files -------------------------------------------------------------------------------------------


def plot_tpr_fpr(curves: dict[str, Sequence[CurvePoint]], path: Path, title: str) -> Path:
    """A PNG of TPR against FPR, one line per model, each point marked with its n."""
    from matplotlib.figure import (
        Figure,  # a bare Figure draws with Agg and leaves pyplot's backend alone
    )

    fig = Figure(figsize=(5.5, 4.5))
    ax = fig.subplots()
    for name, curve in curves.items():
        line, = ax.plot([p.fpr for p in curve], [p.tpr for p in curve], marker="o", markersize=4, label=name)
        for p in curve:
            ax.annotate(str(p.n), (p.fpr, p.tpr), textcoords="offset points", xytext=(3, -9), fontsize=6,
                        color=line.get_color())
    ax.set_xlabel("FPR (negative boxes found)")
    ax.set_ylabel("TPR (positive boxes found)")
    ax.set_ylim(0, 1.02)
    ax.set_xlim(0, max([p.fpr for c in curves.values() for p in c] + [0.05]) * 1.1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return write_atomically(Path(path), lambda tmp: fig.savefig(tmp, dpi=120, format="png"))


def save_curves(curves: dict[str, Sequence[CurvePoint]], path: Path) -> Path:
    """{model name: [{n, tpr, fpr, tp, fp}, ...]} as JSON."""
    text = json.dumps({name: [asdict(p) for p in curve] for name, curve in curves.items()}, indent=1)
    return write_atomically(Path(path), lambda tmp: tmp.write_text(text + "\n"))


def load_curves(path: Path) -> dict[str, list[CurvePoint]]:
    """What save_curves wrote."""
    try:
        data = json.loads(Path(path).read_text())
        return {name: [CurvePoint(**p) for p in curve] for name, curve in data.items()}
    except (OSError, ValueError, TypeError, AttributeError) as e:
        raise EvaluationError(f"{path} is not a curves file written by save_curves: {e}") from None
