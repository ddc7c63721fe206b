"""Scenes per second of the scene-world ray caster at 128 px (issue 3 aims at 50 or more on 2 CPU cores).

    python -m bench.scene_render [--size 128] [--batch 16] [--repeats 5]

Times whole batches (scene sampling excluded) after one warm-up batch, for 1 ray per pixel and
for 2x2 supersampling (the data sets' default), and prints both with their ratio.
"""

from __future__ import annotations

import argparse
import time

import torch

from emplace.scenes.render import render
from emplace.scenes.world import sample_camera, sample_scene


def scenes_per_second(size: int, batch: int, repeats: int, supersample: int) -> float:
    g = torch.Generator().manual_seed(0)
    batches = [([sample_scene(g) for _ in range(batch)], [sample_camera(g) for _ in range(batch)])
               for _ in range(repeats + 1)]
    render(*batches[0], size, supersample)
    start = time.perf_counter()
    for scenes, cams in batches[1:]:
        render(scenes, cams, size, supersample)
    return batch * repeats / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.size} px, batch {args.batch}, "
          "2-6 objects per scene")
    one = scenes_per_second(args.size, args.batch, args.repeats, 1)
    four = scenes_per_second(args.size, args.batch, args.repeats, 2)
    print(f"1 ray per pixel:      {one:7.1f} scenes/s")
    print(f"2x2 supersampling:    {four:7.1f} scenes/s  ({one / four:.1f}x the cost)")


if __name__ == "__main__":
    main()
