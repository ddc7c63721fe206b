"""python -m trainer scenes <kind> --out DIR --n N --seed S: render a data set from the scene world."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    from emplace.scenes.datasets import KINDS

    p = sub.add_parser("scenes", help="render a data set from the synthetic scene world")
    p.add_argument("kind", choices=sorted(KINDS), help="which data set")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--n", type=int, default=100, help="how many (per skill and split for layout)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=128, help="image size in pixels (64 to 256)")
    p.add_argument("--loser-kinds", help="preference only: comma-separated loser kinds to draw from (default "
                                         "floating, too_large, too_small, no_shadow, blur, colour_shift, warp; "
                                         "also wrong_shape)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from emplace.scenes.datasets import KINDS

    if not 64 <= args.size <= 256:
        raise ValueError(f"--size must be between 64 and 256 pixels, got {args.size}")
    if args.n < 1:
        raise ValueError(f"--n must be at least 1, got {args.n}")
    options = {}
    if args.loser_kinds is not None:
        if args.kind != "preference":
            raise ValueError(f"--loser-kinds applies to preference data only, not {args.kind}")
        options["loser_kinds"] = tuple(k.strip() for k in args.loser_kinds.split(",") if k.strip())
    args.out.mkdir(parents=True, exist_ok=True)
    summary = KINDS[args.kind].write(args.out, args.n, args.seed, args.size, **options)
    (args.out / "summary.json").write_text(json.dumps({"kind": args.kind, "n": args.n, "seed": args.seed,
                                                       "size": args.size, **summary}, indent=1))
    print(f"wrote {args.kind} data to {args.out}: {summary}")
    return 0
