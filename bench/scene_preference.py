"""The scene-world table: does each preference method make the toy model's insertions more plausible?

    python -m bench.scene_preference --out runs/scene_preference

1. `python -m trainer scenes preference` renders pairs at the toy model's 64 px (held-in seeds);
2. `python -m trainer dpo` trains one LoRA per method on them, with the same settings;
3. `python -m trainer demo --eval N --mask region` inpaints N held-out scenes (the mask covers the
   object and its shadow, as in the pairs) without a LoRA and with each, and scores them.
Writes table.md and results.json in --out. Every step is skipped when its output exists, so an
interrupted run continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOY = ROOT / "emplace" / "defaults" / "toy_inpaint"
METHODS = ["dpo", "mask-dpo", "asymmetric", "commonality", "asap"]


def trainer(*args: str) -> None:
    command = [sys.executable, "-m", "trainer", *args]
    print("$ python -m trainer", " ".join(args), flush=True)
    subprocess.run(command, cwd=ROOT, check=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/scene_preference"))
    p.add_argument("--examples", type=int, default=800, help="scenes for pairs (two pairs each)")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--targets", default="all")
    p.add_argument("--eval", type=int, default=200, help="held-out scenes")
    p.add_argument("--methods", nargs="+", default=METHODS)
    args = p.parse_args()
    out = args.out.resolve()
    pairs = out / "pairs"
    if not (pairs / "pairs.jsonl").is_file():
        trainer("scenes", "preference", "--out", str(pairs), "--n", str(args.examples), "--size", "64", "--seed", "0")

    results = {}
    runs = [("base", None)] + [(m, out / m / "lora.safetensors") for m in args.methods]
    for name, lora in runs:
        if lora is not None and not lora.is_file():
            config = out / name / "run.toml"
            config.parent.mkdir(parents=True, exist_ok=True)
            config.write_text(f'model = "{TOY}"\ndata = "{pairs}"\noutput = "{lora}"\nwork = "{out / name / "work"}"\n'
                              f'method = "{name}"\nsteps = {args.steps}\nbatch = {args.batch}\nlr = {args.lr}\n'
                              f'targets = "{args.targets}"\ncheckpoint_every = 100\nvalidation = 4\n')
            trainer("dpo", "--config", str(config), *(["--resume", "latest"] if (config.parent / "work" / "checkpoints").
                                                        is_dir() else []))
        scored = out / name / "eval"
        if not (scored / "eval.json").is_file():
            trainer("demo", "--eval", str(args.eval), "--mask", "region", "--out", str(scored),
                    *(["--lora", str(lora)] if lora else []))
        results[name] = json.loads((scored / "eval.json").read_text())
        if lora is not None:
            results[name]["pairs"] = json.loads((out / name / "work" / "eval.json").read_text())

    truth = results["base"]["truth"]
    rows = ["| model | prompted object found | judged plausible | masked PSNR (dB) | pair accuracy (train) |",
            "|---|---|---|---|---|"]
    for name, r in results.items():
        acc = f"{r['pairs']['accuracy']:.2f}" if "pairs" in r else "–"
        rows.append(f"| {name if name == 'base' else f'base + {name} LoRA'} | {r['found_rate']:.1%} | "
                    f"{r['plausible_rate']:.1%} | {r['masked_psnr']:.1f} | {acc} |")
    rows.append(f"| true renders (ceiling) | {truth['found_rate']:.1%} | {truth['plausible_rate']:.1%} | – | – |")
    table = "\n".join(rows)
    (out / "table.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(table)


if __name__ == "__main__":
    main()
