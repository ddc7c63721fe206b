"""The location model's top-1 proposal after DPO: the sweep that chooses the recipe, and the table with error bars.

    python -m trainer location default --work runs/location_default   # data + the pretrained model (once)
    python -m bench.location_top1 --work runs/location_default --out runs/location_top1 --sweep
    python -m bench.location_top1 --work runs/location_default --out runs/location_top1 --variant NAME

A user takes the likeliest proposal. DPO without the winner-likelihood term found more plausible
boxes at every FPR, but its likeliest box was judged plausible less often than the pretrained
model's (66.3 % vs 70.3 %, one seed). Candidates: the winner-likelihood term (`nll_weight`), beta, steps, and ranking the samples
by DPO's implicit reward (log p - log ref) instead of the likelihood.

The sweep: each variant in VARIANTS is trained with seed 0 from the same pretrained model and
scored on validation backgrounds (`scenes location` seed 1, never trained on, not the test split):
top-1 plausibility under both rankings, and the TPR-FPR curve. Eligible: the curve is at or above
the pretrained model's at every shared FPR; chosen: the highest top-1 among the eligible.

The table: the pretrained model (three sampling seeds) and the chosen variant (three training
seeds, each sampled with the same seed) on the test split of --work's data: top-1 plausibility
mean ± std, the exact McNemar p of the per-background verdicts pooled over seeds, and TPR/FPR at
N = 10, 20, 50, 100. Every trained model and every score is kept in --out, so a rerun skips them.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

VARIANTS: dict[str, dict] = {
    "nll0": {"nll_weight": 0.0},  # beta 0.5, lr 5e-5, 400 steps: the recipe of the embedded default before
    "nll0.25": {"nll_weight": 0.25},
    "nll1": {"nll_weight": 1.0},
    "beta0.1": {"beta": 0.1},
    "beta2": {"beta": 2.0},
    "steps150": {"steps": 150},
    "beta2+nll1": {"beta": 2.0, "nll_weight": 1.0},
}
RANKINGS = ("likelihood", "reward")
NS = (10, 20, 50, 100)


def train(work: Path, folder: Path, seed: int, overrides: dict) -> Path:
    from trainer.location_trainer import BoxDPOConfig, run_dpo

    out = folder / "dpo.safetensors"
    if not out.is_file():
        settings = {"steps": 400} | overrides
        config = BoxDPOConfig(data=work / "data", init=work / "pretrain.safetensors", out=out, work=folder / "work",
                              seed=seed, **settings)
        config.validate()
        run_dpo(argparse.Namespace(resume=None), config)
    return out


def score(model_path: Path, data: Path, split: str, seed: int, reference_path: Path | None, path: Path) -> dict:
    """Top-1 verdicts under each ranking (reward needs the reference) and the TPR-FPR curve; kept in `path`."""
    if path.is_file():
        return json.loads(path.read_text())
    from emplace.location.evaluate import tpr_fpr_curve
    from emplace.location.model import load_location_model
    from emplace.location.sample import propose
    from trainer.location_trainer import _scene_records, load_examples, top1_verdicts
    from trainer.loop import phase

    examples = [e for e in load_examples(data, split) if len(e.positives) or len(e.negatives)]
    records = _scene_records(data)
    model = load_location_model(model_path)
    result: dict = {"model": str(model_path), "seed": seed, "images": len(examples)}
    with phase(f"scoring {model_path.parent.name}/{model_path.name} on {data.name}/{split} (seed {seed})"):
        result["likelihood"] = top1_verdicts(model, examples, records, seed=seed)
        if reference_path is not None:
            reference = load_location_model(reference_path)
            result["reward"] = top1_verdicts(model, examples, records, seed=seed, reference=reference)

        def sample(example, n):
            return propose(model, example.image(), example.category, n, seed=seed, nms_iou=1.0).samples

        result["curve"] = [vars(p) for p in tpr_fpr_curve(sample, examples, progress=False)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result))
    return result


def rate(verdicts: list[bool]) -> float:
    return sum(verdicts) / max(1, len(verdicts))


def curve_at_or_above(candidate: list[dict], baseline: list[dict]) -> bool:
    from emplace.location.evaluate import CurvePoint, compare_curves

    c = compare_curves([CurvePoint(**p) for p in candidate], [CurvePoint(**p) for p in baseline])
    return bool(c["fpr"]) and all(a >= b - 1e-9 for a, b in zip(c["tpr_a"], c["tpr_b"]))


def validation_data(out: Path, n: int) -> Path:
    from emplace.scenes.datasets import KINDS
    from trainer.loop import phase

    data = out / "validation"
    if not (data / "test_set.csv").is_file():
        with phase(f"rendering {n} validation backgrounds (scenes location, seed 1)"):
            data.mkdir(parents=True, exist_ok=True)
            KINDS["location"].write(data, n, 1, 64)
    return data


def sweep(work: Path, out: Path, args) -> None:
    data = validation_data(out, args.validate)
    pre = work / "pretrain.safetensors"
    # the validation render's train split: backgrounds the models never saw (another seed)
    base = score(pre, data, "train", 0, None, out / "sweep" / "pretrain.json")
    rows = ["| variant | top-1 plausible, likelihood | top-1 plausible, reward | curve at or above pretrain | "
            "TPR / FPR at N = 20 |", "|---|---|---|---|---|",
            f"| pretrained | {rate(base['likelihood']):.1%} | – | – | {point(base['curve'], 20)} |"]
    best = None
    for name in args.variants or VARIANTS:
        folder = out / "sweep" / name
        r = score(train(work, folder, 0, VARIANTS[name]), data, "train", 0, pre, folder / "validation.json")
        ok = curve_at_or_above(r["curve"], base["curve"])
        rows.append(f"| {name} | {rate(r['likelihood']):.1%} | {rate(r['reward']):.1%} | {'yes' if ok else 'no'} | "
                    f"{point(r['curve'], 20)} |")
        for ranking in RANKINGS:
            if ok and (best is None or rate(r[ranking]) > best[2]):
                best = (name, ranking, rate(r[ranking]))
    text = "\n".join(rows) + f"\n\nchosen (highest top-1 among the eligible): {best}\n"
    (out / "sweep.md").write_text(text)
    print(text)


def point(curve: list[dict], n: int) -> str:
    p = next(p for p in curve if p["n"] == n)
    return f"{p['tpr']:.3f} / {p['fpr']:.3f}"


def spread(values: list[float], fmt: str) -> str:
    return f"{statistics.mean(values):{fmt}} ± {statistics.stdev(values):{fmt}}" if len(values) > 1 else \
        f"{values[0]:{fmt}}"


def table(work: Path, out: Path, args) -> None:
    from emplace.scenes.evaluate import mcnemar_p

    data, pre = work / "data", work / "pretrain.safetensors"
    base = [score(pre, data, "test", s, None, out / "pretrain" / f"seed{s}.json") for s in args.seeds]
    runs = [score(train(work, out / args.variant / f"seed{s}", s, VARIANTS[args.variant]), data, "test", s, pre,
                  out / args.variant / f"seed{s}" / "test.json") for s in args.seeds]
    header = ("| model | ranking | top-1 plausible | p vs pretrained | "
              + " | ".join(f"TPR / FPR, N = {n}" for n in NS) + " |")
    rows = [header, "|" + "---|" * (4 + len(NS))]

    def row(name: str, ranking: str, results: list[dict]) -> str:
        verdicts = [v for r in results for v in r[ranking]]
        base_verdicts = [v for r in base for v in r["likelihood"]]
        p = "–" if results is base else f"{mcnemar_p(verdicts, base_verdicts):.3f}"
        cells = []
        for n in NS:
            pts = [next(q for q in r["curve"] if q["n"] == n) for r in results]
            cells.append(f"{spread([q['tpr'] for q in pts], '.3f')} / {spread([q['fpr'] for q in pts], '.3f')}")
        return (f"| {name} | {ranking} | {spread([rate(r[ranking]) for r in results], '.1%')} | {p} | "
                + " | ".join(cells) + " |")

    rows.append(row("pretrained", "likelihood", base))
    for ranking in RANKINGS:
        rows.append(row(f"+ DPO ({args.variant})", ranking, runs))
    text = "\n".join(rows) + "\n"
    (out / "table.md").write_text(text)
    print(text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=Path("runs/location_default"),
                   help="the folder of `python -m trainer location default --work W` (data/, pretrain.safetensors)")
    p.add_argument("--out", type=Path, default=Path("runs/location_top1"))
    p.add_argument("--sweep", action="store_true", help="run the sweep instead of the table")
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), help="sweep: only these variants")
    p.add_argument("--variant", default="nll0.25", choices=list(VARIANTS), help="table: the recipe")
    p.add_argument("--validate", type=int, default=300, help="backgrounds rendered for the sweep (its nine tenths "
                   "in the train split are scored)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = p.parse_args()
    if not (args.work / "pretrain.safetensors").is_file() or not (args.work / "data" / "test_set.csv").is_file():
        raise SystemExit(f"{args.work} has no pretrained model and data: run `python -m trainer location default "
                         f"--work {args.work}` first")
    (sweep if args.sweep else table)(args.work, args.out, args)


if __name__ == "__main__":
    main()
