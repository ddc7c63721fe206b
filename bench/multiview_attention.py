"""Emplace Multi-View Context in ComfyUI: what reference attention costs at sampling time.

    python -m bench.multiview_attention [--size 256] [--steps 4] [--repeats 3] [--views 1]   (from the repo root)

Runs in a real ComfyUI in library mode ($COMFYUI_PATH or ~/ComfyUI) on an SD1.5-shaped random
checkpoint (320-channel UNet with a 768 context, CLIP-L-shaped text model, TAESD; see
tests/comfy/sd15_checkpoint.py), in one process. Each way inpaints the same size x size
target (core InpaintModelConditioning, a square mask, core KSampler, cfg 5 so the cond and
uncond passes batch together, euler) with the same seed:
- plain: the checkpoint's MODEL as it is;
- exact: Emplace Multi-View Context, mode exact (the views re-recorded at each step's sigma:
  one more model call per step on the views, and every self-attention attends to their tokens);
- cached: the same in mode cached (the views recorded once per run, then only the extended
  attention).
Only the KSampler call is timed (the node's one-off VAE encode of the views is not sampling).
The ways alternate within each repeat, so a slow spell of a busy machine hits all alike. Two
ratios per way: best / best (a busy machine only adds time, so the fastest run of each way is
the least disturbed) and the median over repeats of its time / the plain time of the same
repeat. Aims: exact <= 2.1x, cached <= 1.3x, on both. Defaults are for a 2-core CPU; on a GPU use --size 512
or more and --steps 20. Uses CUDA when torch sees it, else the CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

WAYS = ("plain", "exact", "cached")
AIMS = {"exact": 2.1, "cached": 1.3}


def timed(fn, *args) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn(*args)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--views", type=int, default=1, help="reference views (a batch)")
    args = p.parse_args()

    # the tier-2 test helpers, imported before ComfyUI's folder (which has a `tests` package of its own) is on the path
    from tests.comfy.conftest import COMFYUI, PACK_ROOT, SKIP_REASON
    from tests.comfy.sd15_checkpoint import write_sd15_checkpoint

    if COMFYUI is None:
        sys.exit(SKIP_REASON)
    sys.path.insert(0, str(COMFYUI))  # ComfyUI itself is no installed package
    import comfy.cli_args

    comfy.cli_args.args.cpu = not torch.cuda.is_available()  # before anything imports comfy.model_management
    import comfy.sd

    import nodes

    assert asyncio.run(nodes.load_custom_node(str(PACK_ROOT))), "the pack failed to load"

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = write_sd15_checkpoint(Path(tmp) / "sd15.safetensors")
        model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(str(ckpt))
    g = torch.Generator().manual_seed(0)
    target = torch.rand(1, args.size, args.size, 3, generator=g)
    reference = torch.rand(args.views, args.size, args.size, 3, generator=g)
    mask = torch.zeros(1, args.size, args.size)
    mask[:, args.size // 4:3 * args.size // 4, args.size // 4:3 * args.size // 4] = 1

    with torch.inference_mode():  # as ComfyUI runs nodes
        encode = lambda text: nodes.CLIPTextEncode().encode(clip, text)[0]
        positive, negative, latent = nodes.InpaintModelConditioning().encode(
            encode("a wooden chair, the same room as in the other view"), encode(""), target, vae, mask)
        node = nodes.NODE_CLASS_MAPPINGS["EmplaceMultiViewContext"]
        models = {"plain": model}
        for mode in ("exact", "cached"):
            models[mode] = node.execute(model=model, vae=vae, reference=reference, strength=1.0, start_percent=0.0,
                                        end_percent=1.0, mode=mode, sites="all", cond_only=False).args[0]

        def sample(way: str):
            return nodes.common_ksampler(models[way], 1, args.steps, 5.0, "euler", "normal", positive, negative,
                                         latent)

        for way in WAYS:  # warm-up: model loading onto the device, first-call allocations
            sample(way)
        times = {way: [] for way in WAYS}
        for r in range(args.repeats):
            order = WAYS[r % 3:] + WAYS[:r % 3]  # a different way first in each repeat
            for way in order:
                times[way].append(timed(sample, way))

    paired = {way: statistics.median(t / p for t, p in zip(times[way], times["plain"])) for way in WAYS}
    best = {way: min(times[way]) / min(times["plain"]) for way in WAYS}
    device = (torch.cuda.get_device_name() if torch.cuda.is_available()
              else f"CPU ({torch.get_num_threads()} threads)")
    print(f"{args.views} reference view{'s' * (args.views > 1)}, {args.size} px target, {args.steps} steps, cfg 5, "
          f"{device}, {args.repeats} alternating repeats:")
    print("| way | best run (s) | all runs (s) | best / best plain | median of paired run / plain | aim |\n"
          "|---|---|---|---|---|---|")
    for way in WAYS:
        aim = f"<= {AIMS[way]}x" if way in AIMS else ""
        print(f"| {way} | {min(times[way]):.2f} | {', '.join(f'{t:.2f}' for t in times[way])} | {best[way]:.2f}x | "
              f"{paired[way]:.2f}x | {aim} |")
    print("; ".join(f"{way} {best[way]:.2f}x / {paired[way]:.2f}x: "
                    f"{'meets' if max(best[way], paired[way]) <= aim else 'misses'} its aim ({aim}x)"
                    for way, aim in AIMS.items()))

if __name__ == "__main__":
    main()
