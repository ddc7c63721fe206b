"""Location proposals per second: 100 boxes per image, with the KV cache and without.

    python -m bench.location_sampling [--model emplace/defaults/location/scene_world.safetensors]
                                      [--samples 100] [--images 10] [--device cpu|cuda]

Both ways draw the same boxes (same seeds; the test suite checks it); without the cache,
each of the four coordinate steps runs the decoder over the whole sequence again (the
background's patch tokens, the class token and the coordinates so far), which is what the
cache saves. Timed in one process, alternating, best of --repeats.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from emplace.location.model import DEFAULT_MODEL, load_location_model
from emplace.location.sample import propose


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    p.add_argument("--samples", type=int, default=100)
    p.add_argument("--images", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()

    model = load_location_model(args.model, args.device)
    label = model.labels[0]
    images = torch.rand(args.images, 3, 128, 128, generator=torch.Generator().manual_seed(0))

    def run(use_cache: bool) -> float:
        start = time.perf_counter()
        for i, image in enumerate(images):
            propose(model, image, label, args.samples, seed=i, use_cache=use_cache)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start

    run(True), run(False)  # warm-up
    best = {True: float("inf"), False: float("inf")}
    for _ in range(args.repeats):
        for use_cache in (True, False):
            best[use_cache] = min(best[use_cache], run(use_cache))
    rate = {k: args.images * args.samples / v for k, v in best.items()}
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    print(f"{args.model.name} ({model.prefix_length} prefix tokens, {model.config.layers} layers, width "
          f"{model.config.width}), {args.samples} samples per image, {args.images} images, {where}, best of "
          f"{args.repeats}:")
    print(f"| way | proposals/s | ms per image |\n|---|---|---|\n"
          f"| KV cache | {rate[True]:.0f} | {1000 * best[True] / args.images:.1f} |\n"
          f"| no cache | {rate[False]:.0f} | {1000 * best[False] / args.images:.1f} |")
    print(f"the KV cache is {rate[True] / rate[False]:.1f}x faster (aim: 5x or more)")


if __name__ == "__main__":
    main()
