"""Emplace Iterative Inpaint in ComfyUI: crop-and-stitch against full-image passes, and the pack's overhead.

    python -m bench.iterative_inpaint [--size 512] [--crop 256] [--steps 2] [--repeats 2]   (from the repo root)

Runs in a real ComfyUI in library mode ($COMFYUI_PATH or ~/ComfyUI) on an SD1.5-shaped
random checkpoint (320-channel UNet with a 768 context, CLIP-L-shaped text model, TAESD;
see tests/comfy/sd15_checkpoint.py), 4 boxes on a size x size image, in one process:
- node: Emplace Iterative Inpaint, each object in a crop sampled at --crop;
- full image: what people do without crop-and-stitch, one inpaint pass per object over the
  whole image (core InpaintModelConditioning + KSampler, the box as the noise mask);
- bare: the node's own core calls (CLIP text encoding of each prompt once, then
  InpaintModelConditioning, KSampler, VAE decode on the same crops and seeds) replayed without
  the pack around them. The pack's overhead is its own work inside the node (planning,
  cropping, stitching, colour match: the node's time less the time in its model step) against
  the bare calls; node / bare - 1 is printed too, but on a busy CPU it mostly measures the
  sampler's run-to-run noise (runs alternate so both see the same spells).
Defaults are for this 2-core CPU; on a GPU use --size 1024 --crop 512 --steps 20.
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

BOXES = "a red cube: 0.1 0.55 0.3 0.8\na blue ball: 0.4 0.5 0.55 0.65\na lamp: 0.6 0.2 0.8 0.6\na cup: 0.8 0.7 0.95 0.9"


def best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()

    # the tier-2 test helpers, imported before ComfyUI's folder (which has a `tests` package of its own) is on the path
    from tests.comfy.conftest import COMFYUI, PACK_ROOT, SKIP_REASON
    from tests.comfy.sd15_checkpoint import write_sd15_checkpoint

    if COMFYUI is None:
        sys.exit(SKIP_REASON)
    sys.path.insert(0, str(COMFYUI))  # ComfyUI itself is no installed package
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import comfy.sd

    import nodes

    assert asyncio.run(nodes.load_custom_node(str(PACK_ROOT))), "the pack failed to load"

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = write_sd15_checkpoint(Path(tmp) / "sd15.safetensors")
        model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(str(ckpt))
    node = nodes.NODE_CLASS_MAPPINGS["EmplaceIterativeInpaint"]
    image = torch.rand(1, args.size, args.size, 3, generator=torch.Generator().manual_seed(0))
    (boxes,) = nodes.NODE_CLASS_MAPPINGS["EmplaceBoxes"].execute(spec=BOXES, width=512, height=512, image=image).args
    settings = dict(model=model, clip=clip, vae=vae, image=image, boxes=boxes, prompt_template="{prompt}",
                    negative_prompt="", seed=1, steps=args.steps, cfg=5.0, sampler_name="euler", scheduler="normal",
                    denoise=1.0, context_padding=0.5, target_resolution=args.crop, grow=4, feather=8, order="given",
                    colour_match=True, background_pass=False, background_prompt="", background_denoise=1.0)
    encode = lambda text: clip.encode_from_tokens_scheduled(clip.tokenize(text))
    negative = encode("")

    # the node's own core calls (inpaint conditioning, KSampler, VAE decode), recorded once, replayed bare
    calls = []
    condition, sample = nodes.InpaintModelConditioning.encode, nodes.common_ksampler

    def recording_condition(self, *a, **k):
        calls.append(("condition", a, k))
        return condition(self, *a, **k)

    def recording_sample(*a, **k):
        calls.append(("sample", a, k))
        return sample(*a, **k)

    nodes.InpaintModelConditioning.encode, nodes.common_ksampler = recording_condition, recording_sample
    node.execute(**settings)
    nodes.InpaintModelConditioning.encode, nodes.common_ksampler = condition, sample

    def bare():
        for b in boxes:  # what a core graph's CLIPTextEncode nodes do: each prompt and the negative once
            encode(b.prompt or b.label)
        encode("")
        for kind, a, k in calls:
            if kind == "condition":
                condition(nodes.InpaintModelConditioning(), *a, **k)
            else:
                vae.decode(sample(*a, **k)[0]["samples"])

    def full_image():
        from emplace.boxes import box_mask

        for i, b in enumerate(boxes):
            mask = box_mask(b, args.size, args.size, grow=4)[None]
            positive, neg, latent = nodes.InpaintModelConditioning().encode(encode(b.prompt or b.label), negative,
                                                                            image, vae, mask, noise_mask=True)
            (samples,) = sample(model, 1 + i, args.steps, 5.0, "euler", "normal", positive, neg, latent)
            vae.decode(samples["samples"])

    # the pack's own time: the node's total less the time inside its model step (text encoding,
    # conditioning, KSampler, decode), timed by wrapping the step the node builds
    node_module = sys.modules[node.__module__]
    build_step, in_model = node_module.comfy_inpaint, [0.0]

    def timed_step(*a, **k):
        step = build_step(*a, **k)

        def run(*sa, **sk):
            start = time.perf_counter()
            try:
                return step(*sa, **sk)
            finally:
                in_model[0] += time.perf_counter() - start

        return run

    node_module.comfy_inpaint = timed_step
    node_times, bare_times, own_times = [], [], []
    for _ in range(args.repeats):  # interleaved, so a slow spell of the machine hits both alike
        in_model[0] = 0.0
        node_times.append(best_of(1, lambda: node.execute(**settings)))
        own_times.append(node_times[-1] - in_model[0])
        bare_times.append(best_of(1, bare))
    node_module.comfy_inpaint = build_step
    t_node, t_bare, t_own = min(node_times), min(bare_times), min(own_times)
    t_full = best_of(args.repeats, full_image)
    print(f"{len(boxes)} objects on a {args.size} px image, crops at {args.crop} px, {args.steps} steps, "
          f"{'CUDA' if torch.cuda.is_available() else f'CPU ({torch.get_num_threads()} threads)'}, best of "
          f"{args.repeats}:")
    print(f"| way | seconds |\n|---|---|\n| Emplace Iterative Inpaint (crop and stitch) | {t_node:.2f} |\n"
          f"| its core calls alone (text encoding, conditioning, KSampler, decode) | {t_bare:.2f} |\n"
          f"| the pack's own work inside the node (plan, crop, stitch, colour match) | {t_own:.3f} |\n"
          f"| full-image inpaint per object | {t_full:.2f} |")
    print(f"crop-and-stitch is {t_full / t_node:.1f}x faster than full-image passes (aim: 3x or more)")
    paired = statistics.median(n / b for n, b in zip(node_times, bare_times)) - 1
    print(f"the pack's overhead: its own work is {100 * t_own / t_bare:.1f} % of the core calls' time (aim: under 5 %); "
          f"median of the paired node / bare - 1 = {100 * paired:.1f} % (includes the machine's run-to-run noise: "
          f"node runs {', '.join(f'{t:.1f}' for t in node_times)} s, bare {', '.join(f'{t:.1f}' for t in bare_times)} s)")

if __name__ == "__main__":
    main()
