"""The scene-world preference table with error bars, and the sweep that chooses the trainer's defaults.

    python -m bench.scene_preference --out runs/scene_preference                  # the table
    python -m bench.scene_preference --out runs/scene_preference --sweep          # the sweep
    python -m bench.scene_preference --out runs/scene_preference --sweep --methods dpo --variants base-recipe lr5e-5

Data, made once in --out (every step is skipped when its output exists, so an interrupted run
goes on where it stopped):
- training pairs: `python -m trainer scenes preference` (--examples scenes at the toy model's
  64 px, seed 0, two pairs each; --pair-kinds chooses the loser kinds they are drawn from, e.g. the
  default seven plus wrong_shape, and is fixed for that --out);
- a held-out pair split (seed 7, never trained on): its implicit accuracy and error ratios are
  in each run's work/eval.json;
- validation scenes (held-out scenes of `demo --seed 1`) for the sweep, and evaluation scenes
  (`demo --seed 0`, as `python -m trainer demo --eval N --mask region` scores) for the table.
  The sweep never sees the evaluation scenes.

The table: the base and each method with the trainer's defaults (plus --set overrides),
trained with each of --seeds, each LoRA inpainting the same --eval scenes (the mask covers the
object and its shadow, as in the pairs); per-scene verdicts are kept in each eval.json.
Rates are mean ± std over the seeds; p-values are exact McNemar tests on the verdicts pooled
over seeds (every seed's scenes against the base's on the same scenes, and against dpo's of
the same seed).

The sweep: each variant in SWEEP (overrides on the trainer's defaults) is trained with seed 0
for each method, and scored on the validation scenes and the held-out pairs. A variant (at each
of --strengths, the LoRA's strength when loaded) is eligible when its masked PSNR is within 0.5 dB
and its "found" within 2 points of the base's on the validation scenes; the chosen one has the
highest plausible rate among those.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from trainer.config import toml_value

ROOT = Path(__file__).resolve().parents[1]
TOY = ROOT / "emplace" / "defaults" / "toy_inpaint"
METHODS = ["dpo", "mask-dpo", "asymmetric", "commonality", "asap"]
EVALUATION_SEED, VALIDATION_SEED = 0, 1
DEFAULT_GUIDANCE = 3.0

# The sweep's variants: overrides on the trainer's defaults (trainer/dpo.py DPOConfig). The first is
# the recipe of the earlier README table (lr 5e-4 on every layer, no anchors).
# timestep_high is written out: the recorded rows of every method were made at 1.0 (since then the trainer's
# default for asymmetric and commonality is 0.6)
ANCHORED = {"lr": 5e-4, "targets": "all", "warmup": 40, "consistency": 300.0, "sft_weight": 300.0,
            "timestep_high": 1.0}
"""Anchors on the scale of the preference term: its gradient is beta * sigmoid(-beta * margin) (about
1250 * 0.25) times the gradient of a per-pixel mean error, so an anchor of weight 1 is ~300x weaker."""
SWEEP: dict[str, dict] = {
    "base-recipe": {"lr": 5e-4, "targets": "all", "consistency": 0.0},
    "sft-only": {"lr": 5e-4, "targets": "all", "warmup": 40, "beta": 0.0, "sft_weight": 1.0, "consistency": 0.0},
    "lr5e-4+anchors1": {"lr": 5e-4, "targets": "all", "warmup": 40, "consistency": 1.0, "sft_weight": 1.0},
    "anchored": ANCHORED,
    "lr5e-5": {"lr": 5e-5, "targets": "all", "warmup": 40, "consistency": 0.0},
    "lr5e-5+anchored": ANCHORED | {"lr": 5e-5},
    "anchored-consistency-only": ANCHORED | {"sft_weight": 0.0},
    "anchored+attention-only": ANCHORED | {"targets": "attention"},
    "anchored+in-mask": ANCHORED | {"preference_region": "mask"},
    "anchored+judged-kinds": ANCHORED | {"loser_kinds": "floating,too_large,too_small,no_shadow"},
}
# The recipe of the table with error bars (consistency only, no sft), and what the sweep tries on top of it.
CONSISTENCY = SWEEP["anchored-consistency-only"]
SWEEP |= {
    "consistency+auto-beta": CONSISTENCY | {"beta_target": 0.3},
    "consistency+low-noise": CONSISTENCY | {"timestep_high": 0.6},
    "consistency+lr5e-5": CONSISTENCY | {"lr": 5e-5},
    "consistency+in-mask": CONSISTENCY | {"preference_region": "mask"},
    "consistency+sigmoid-tau0.1": CONSISTENCY | {"link": "sigmoid", "tau": 0.1},  # asap only
    # the unconditional prediction, which guidance scales up, is otherwise never trained nor anchored;
    # the toy model itself was trained with 10 % of its prompts dropped
    "consistency+empty-prompt": CONSISTENCY | {"empty_prompt": 0.1},
}
# the gain per loser kind: the error-bar recipe on pairs of one kind only
KIND_VARIANTS = ("floating", "too_large", "too_small", "no_shadow", "blur", "colour_shift", "warp",
                 "wrong_shape")  # wrong_shape needs an --out made with --pair-kinds that include it
SWEEP |= {f"only-{kind}": CONSISTENCY | {"loser_kinds": kind} for kind in KIND_VARIANTS}
# the best single changes together: low noise, and the two loser kinds with the largest gain alone
SWEEP |= {
    "low-noise+only-too_large": CONSISTENCY | {"timestep_high": 0.6, "loser_kinds": "too_large"},
    "low-noise+warp+too_large": CONSISTENCY | {"timestep_high": 0.6, "loser_kinds": "warp,too_large"},
    # the shape loser (which keeps "found") with the kind that gains the most plausibility alone
    "wrong_shape+too_large": CONSISTENCY | {"loser_kinds": "wrong_shape,too_large"},
    "low-noise+wrong_shape+too_large": CONSISTENCY | {"timestep_high": 0.6, "loser_kinds": "wrong_shape,too_large"},
}
# the rest of the recipe, one setting at a time: warm-up, which layers, beta (1250 = diffusers' 2500)
SWEEP |= {
    "consistency+no-warmup": CONSISTENCY | {"warmup": 0},
    "consistency+attention-only": CONSISTENCY | {"targets": "attention"},
    "consistency+beta300": CONSISTENCY | {"beta": 300.0},
    "consistency+beta5000": CONSISTENCY | {"beta": 5000.0},
}
# mask-dpo's object term (the winner's denoising loss on its object, weight lam = 1) as an anchor for the
# other methods: mask-dpo is the one method that keeps PSNR
SWEEP |= {
    "consistency+object-sft": CONSISTENCY | {"sft_weight": 1.0, "sft_region": "object"},
    "consistency+no-object-term": CONSISTENCY | {"lam": 0.0},  # mask-dpo: its preference off the object alone
    "wrong_shape+too_large+no-object-term": CONSISTENCY | {"loser_kinds": "wrong_shape,too_large", "lam": 0.0},
}
# the other half of mask-dpo, its preference measured off the object, for the other methods (for dpo it is
# mask-dpo with lam 0)
SWEEP |= {
    "consistency+off-object": CONSISTENCY | {"preference_region": "off-object"},
    "wrong_shape+too_large+off-object": CONSISTENCY | {"loser_kinds": "wrong_shape,too_large",
                                                       "preference_region": "off-object"},
}
# a trust region inside the mask too, against the drift inside it that costs PSNR (winner error / reference
# 1.3 there for dpo)
SWEEP |= {f"consistency+in-mask-anchor{w}": CONSISTENCY | {"consistency_in_mask": float(w)} for w in (10, 30, 100)}


def trainer(*args: str) -> None:
    print("$ python -m trainer", " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "trainer", *args], cwd=ROOT, check=True)


def config_text(settings: dict) -> str:
    """The trainer's run.toml for these settings."""
    return "".join(f"{k} = {toml_value(v)}\n" for k, v in settings.items())


def train_lora(folder: Path, settings: dict) -> Path:
    """One trainer run (resumed when interrupted); returns the LoRA."""
    lora = folder / "lora.safetensors"
    if not lora.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        config = folder / "run.toml"
        config.write_text(config_text(settings))
        resume = ["--resume"] if (folder / "work" / "checkpoints").is_dir() else []
        trainer("dpo", "--config", str(config), *resume)
    return lora


class Scorer:
    """Held-out scenes rendered once, inpainted by the toy model without or with a LoRA."""

    def __init__(self, n: int, seed: int, steps: int, guidance: float):
        from dataclasses import replace

        from emplace.scenes.evaluate import HELD_OUT_SEED
        from emplace.scenes.samples import insertion_examples
        from trainer.loop import phase

        with phase(f"rendering {n} held-out scenes (demo seed {seed})"):
            examples = insertion_examples(n, HELD_OUT_SEED + seed, size=64)
        self.examples = [replace(e, mask=e.region_mask()) for e in examples]
        self.seed, self.steps, self.guidance = seed, steps, guidance

    def at(self, folder: Path, name: str, strength: float = 1.0) -> Path:
        """Where a LoRA's scores at this strength (and this scorer's guidance) are kept; at strength 1 and the
        default guidance, the plain name."""
        return folder / (name + ("" if strength == 1 else f"-strength{strength:g}")
                         + ("" if self.guidance == DEFAULT_GUIDANCE else f"-guidance{self.guidance:g}") + ".json")

    def __call__(self, lora: Path | None, path: Path, strength: float = 1.0) -> dict:
        if path.is_file():
            return json.loads(path.read_text())
        from emplace.scenes.evaluate import evaluate_toy_inpainting, truth_scores
        from emplace.toy_inpaint import ToyInpaintModel
        from trainer.demo import lora_applied

        model = ToyInpaintModel.load(TOY)
        with lora_applied(model, lora, strength):
            summary, _ = evaluate_toy_inpainting(model, self.examples, self.steps, self.guidance, seed=self.seed,
                                                 desc=f"scoring {lora.parent.name if lora else 'the base'}"
                                                      f"{strength_label(strength)}")
        summary |= {"truth": truth_scores(self.examples), "lora": str(lora) if lora else None, "strength": strength,
                    "seed": self.seed, "steps": self.steps, "guidance": self.guidance, "mask": "region"}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(summary))
        return summary


def strength_label(strength: float) -> str:
    return "" if strength == 1 else f" at strength {strength:g}"


def common_settings(out: Path, folder: Path, method: str, seed: int, args) -> dict:
    return {"model": str(TOY), "data": str(out / "pairs"), "heldout": str(out / "heldout_pairs"),
            "output": str(folder / "lora.safetensors"), "work": str(folder / "work"), "method": method,
            "steps": args.steps, "batch": args.batch, "seed": seed, "checkpoint_every": 100}


def parse_sets(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def pct(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1%}"
    return f"{statistics.mean(values):.1%} ± {statistics.stdev(values):.1%}"


def db(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def pooled_p(runs: list[dict], against: list[dict], key: str) -> float:
    from emplace.scenes.evaluate import mcnemar_p

    a = [s[key] for r in runs for s in r["scenes"]]
    b = [s[key] for r in against for s in r["scenes"]]
    return mcnemar_p(a, b)


def sweep(out: Path, args) -> None:
    score = Scorer(args.validate, VALIDATION_SEED, args.sample_steps, args.guidance)
    base = score(None, score.at(out / "sweep" / "base", "validation"))
    rows = ["| method | variant | found | plausible | p vs base | masked PSNR (dB) | held-out accuracy | winner error / "
            "reference, in / out of the mask (held-out) | eligible |", "|---|---|---|---|---|---|---|---|---|",
            f"| base | – | {base['found_rate']:.1%} | {base['plausible_rate']:.1%} | – | {base['masked_psnr']:.2f} | – "
            "| – | – |"]
    chosen = {}
    for method in args.methods:
        best = None
        for name in args.variants or SWEEP:
            folder = out / "sweep" / method / name
            settings = common_settings(out, folder, method, 0, args) | SWEEP[name]
            lora = train_lora(folder, settings)
            held = json.loads((folder / "work" / "eval.json").read_text())["heldout"]
            for strength in args.strengths:
                r = score(lora, score.at(folder, "validation", strength), strength)
                ok = (r["masked_psnr"] >= base["masked_psnr"] - 0.5 and r["found_rate"] >= base["found_rate"] - 0.02)
                rows.append(f"| {method} | {name}{strength_label(strength)} | {r['found_rate']:.1%} | "
                            f"{r['plausible_rate']:.1%} | {pooled_p([r], [base], 'plausible'):.2f} | "
                            f"{r['masked_psnr']:.2f} | {held['accuracy']:.2f} | "
                            f"{held['winner_in']:.2f} / {held['winner_out']:.2f} | {'yes' if ok else 'no'} |")
                if ok and (best is None or r["plausible_rate"] > best[1]):
                    best = (name + strength_label(strength), r["plausible_rate"])
        chosen[method] = best[0] if best else None
    table = "\n".join(rows) + "\n\nchosen (highest plausible among the eligible): " + json.dumps(chosen)
    (out / "sweep.md").write_text(table + "\n")
    print(table)


def table(out: Path, args) -> None:
    score = Scorer(args.eval, EVALUATION_SEED, args.sample_steps, args.guidance)
    base = score(None, score.at(out / "base", "eval"))
    overrides = parse_sets(args.set)
    results: dict[tuple[str, float], list[dict]] = {}
    for method in args.methods:
        for seed in args.seeds:
            folder = out / method / f"seed{seed}"
            lora = train_lora(folder, common_settings(out, folder, method, seed, args) | overrides)
            held = json.loads((folder / "work" / "eval.json").read_text())["heldout"]
            for strength in args.strengths:
                r = score(lora, score.at(folder, "eval", strength), strength) | {"heldout": held}
                results.setdefault((method, strength), []).append(r)
    truth = base["truth"]
    rows = ["| model | prompted object found | judged plausible | masked PSNR (dB) | p plausible vs base | "
            "p vs dpo | held-out implicit accuracy |", "|---|---|---|---|---|---|---|",
            f"| base | {base['found_rate']:.1%} | {base['plausible_rate']:.1%} | {base['masked_psnr']:.2f} | – | – | – |"]
    for (method, strength), runs in results.items():
        vs_base = pooled_p(runs, [base] * len(runs), "plausible")
        dpo = results.get(("dpo", strength), [])
        vs_dpo = (f"{pooled_p(runs, dpo, 'plausible'):.3f}" if method != "dpo" and len(dpo) == len(runs) else "–")
        acc = [r["heldout"]["accuracy"] for r in runs]
        rows.append(f"| + {method} LoRA{strength_label(strength)} | {pct([r['found_rate'] for r in runs])} | "
                    f"{pct([r['plausible_rate'] for r in runs])} | {db([r['masked_psnr'] for r in runs])} | "
                    f"{vs_base:.3f} | {vs_dpo} | {statistics.mean(acc):.2f} |")
    rows.append(f"| true renders (ceiling) | {truth['found_rate']:.1%} | {truth['plausible_rate']:.1%} | – | – | – | – |")
    text = "\n".join(rows)
    (out / "table.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps({"base": base, **{f"{m}{strength_label(s)}": runs
                                                                    for (m, s), runs in results.items()}}))
    print(text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/scene_preference"))
    p.add_argument("--examples", type=int, default=800, help="scenes for training pairs (two pairs each)")
    p.add_argument("--heldout-examples", type=int, default=100, help="scenes for the held-out pair split")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--eval", type=int, default=500, help="evaluation scenes (the table)")
    p.add_argument("--validate", type=int, default=200, help="validation scenes (the sweep)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (the table)")
    p.add_argument("--sample-steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE,
                   help="the sampler's guidance scale (other than 3: scores kept in their own files)")
    p.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="table: trainer settings for every run")
    p.add_argument("--strengths", type=float, nargs="+", default=[1.0],
                   help="score every LoRA at each of these strengths (as the loader node's strength)")
    p.add_argument("--sweep", action="store_true", help="run the sweep instead of the table")
    p.add_argument("--variants", nargs="+", choices=list(SWEEP), help="sweep: only these variants")
    p.add_argument("--pair-kinds", help="the loser kinds the pairs are made with (comma-separated; the pair "
                                        "generator's default unless given); fixed when --out's pairs are made")
    args = p.parse_args()
    out = args.out.resolve()
    for name, n, seed in (("pairs", args.examples, 0), ("heldout_pairs", args.heldout_examples, 7)):
        if not (out / name / "pairs.jsonl").is_file():
            kinds = ["--loser-kinds", args.pair_kinds] if args.pair_kinds else []
            trainer("scenes", "preference", "--out", str(out / name), "--n", str(n), "--size", "64", "--seed",
                    str(seed), *kinds)
        check_pair_kinds(out / name, args.pair_kinds)
    (sweep if args.sweep else table)(out, args)


def check_pair_kinds(folder: Path, asked: str | None) -> None:
    """Runs in one --out share its pairs: asking for other kinds than they were made with is an error."""
    from emplace.scenes.datasets.preference import DEFAULT_KINDS

    made = json.loads((folder / "summary.json").read_text()).get("loser_kinds", list(DEFAULT_KINDS))
    wanted = [k.strip() for k in asked.split(",") if k.strip()] if asked else list(DEFAULT_KINDS)
    if made != wanted:
        raise SystemExit(f"--pair-kinds: the pairs in {folder} were made with {','.join(made)}, not "
                         f"{','.join(wanted)}; use another --out")


if __name__ == "__main__":
    main()
