"""Multi-view inpainting on the scene world: does another view tell the toy model what belongs in the mask?

    python -m bench.multiview_scene --n 200 --out runs/multiview_scene [--lora multiview.safetensors]

Held-out `scenes multiview` scenes at 64 px (a seed far from training's); the target view's
masked object is inpainted with a prompt that does not name it (""), so only the other view
can tell. Configurations, each on the same scenes, noise and steps:
- no reference: the toy model alone;
- side-by-side: a 128 x 64 canvas, the reference left of the target, sampled at native scale
  (the toy UNet is convolutional; it was trained on 64 x 64 only, so this is out of its
  training distribution) and the target split back out;
- exact: reference attention, the reference recorded at every step's timestep;
- cached: recorded once at the timestep 90% of the way through sampling, reused;
- exact + LoRA: exact with a LoRA from `python -m trainer multiview` merged in (--lora).
Scores against the true render of view 0: masked PSNR and SSIM, and "right object": the
scene detector finds the masked object's colour and shape centred in the mask (chance about
1 in 24). The truth row scores the true render itself (the detector's ceiling).
With prompt "" the conditional and unconditional predictions are the same, so there is no
classifier-free guidance: one model call per step (two with the reference: record + read).

Measured (2026-12-04, one H200; 200 held-out scenes, 25 steps; LoRA: `trainer multiview` on 1800
scenes, batch 128, rank 16, lr 1e-3, empty_prompt 0.8, 1109 steps in 3 min): masked PSNR / SSIM /
right object: no reference 14.60 / 0.286 / 11.5%, side-by-side 14.52 / 0.293 / 11.5%, exact
14.61 / 0.287 / 12.5%, cached 14.57 / 0.286 / 11.5%, exact + LoRA 16.32 / 0.396 / 27.5%
(the detector finds 91.5% on the true renders).
"""

from __future__ import annotations

import argparse
import json
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from emplace.files import image_grid, save_image
from emplace.multiview import RECORD, MultiViewOptions
from emplace.multiview.side_by_side import side_by_side, split
from emplace.scenes.detector import detect
from emplace.scenes.evaluate import HELD_OUT_SEED
from emplace.scenes.metrics import masked_psnr, masked_ssim
from emplace.scenes.vocabulary import COLOUR_NAMES, SHAPES

TOY = Path(__file__).resolve().parents[1] / "emplace" / "defaults" / "toy_inpaint"
CONFIGS = ("no reference", "side-by-side", "exact", "cached", "exact + LoRA")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=200, help="held-out scenes")
    p.add_argument("--out", type=Path, default=Path("runs/multiview_scene"))
    p.add_argument("--data", type=Path, help="a `scenes multiview` folder (default: rendered into OUT/heldout)")
    p.add_argument("--seed", type=int, default=HELD_OUT_SEED, help="of the rendered held-out scenes")
    p.add_argument("--lora", type=Path, help="a LoRA from `python -m trainer multiview` (else no LoRA row)")
    p.add_argument("--model", type=Path, default=TOY)
    p.add_argument("--prompt", default="", help="the prompt (should not name the object)")
    p.add_argument("--steps", type=int, default=25, help="DDIM steps")
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--pictures", type=int, default=8, help="scenes shown in the PNG")
    p.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated, from: " + ", ".join(CONFIGS))
    return p.parse_args(argv)


# --- the sampler --------------------------------------------------------------------------------


class Sampler:
    """DDIM on the toy model with reference attention available: one `inpaint` per configuration."""

    def __init__(self, model, prompt: str, steps: int, device):
        from diffusers import DDIMScheduler

        from emplace.multiview.diffusers_processor import set_multiview_processors
        from emplace.multiview.paired import PairedContext

        self.model, self.device = model, device
        self.scheduler = DDIMScheduler.from_config(model.scheduler.config)
        self.scheduler.set_timesteps(steps)
        self.cache_level = float(self.scheduler.timesteps[min(steps - 1, int(0.9 * steps))])
        with torch.no_grad():
            self.text = model.encode_prompts([prompt]).to(device)
        self.context = PairedContext(torch.zeros(1, 1, 1, 1), views=1)
        set_multiview_processors(model.unet, self.context)

    @torch.no_grad()
    def inpaint(self, images, masks, seed: int, references=None, mode: str = "exact") -> torch.Tensor:
        """images [B, 3, H, W], masks [B, H, W]; references [B, 3, h, w] (one view per target) or None."""
        m, unet, dev = self.model, self.model.unet, self.device
        images, masks = images.to(dev), masks.to(dev)
        b = images.shape[0]
        cond = m.conditioning(images, masks)
        shape = (b, m.config.channels, *cond.shape[-2:])
        x = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dev)
        text = lambda k: self.text.expand(k, -1, -1)  # noqa: E731
        if references is not None:
            refs = references.to(dev)
            ref_cond = m.conditioning(refs, torch.zeros_like(refs[:, 0]))
            options = MultiViewOptions(mode=mode, cache_level=self.cache_level if mode == "cached" else None,
                                       seed=seed + 1)
            self.context.options = options
            self.context.set_reference(m.to_model_space(refs))
        sched = self.scheduler

        def run(latent, t, pass_):
            c = ref_cond if pass_ == RECORD else cond
            return unet(torch.cat([latent, c], 1), t, text(len(latent))).sample

        noising = lambda t, noise, latent: sched.add_noise(latent, noise, t.long())  # noqa: E731
        for t in sched.timesteps:
            level = t.reshape(1).to(dev)
            v = run(x, level, "plain") if references is None else self.context.denoise(x, level, run,
                                                                                     noise_scaling=noising)
            x = sched.step(v, t, x).prev_sample
        self.context.reset()
        out = m.from_model_space(x).clamp(0, 1)
        mk = masks[:, None].float()
        return (images * (1 - mk) + out * mk).cpu()


def side_by_side_inpaint(sampler: Sampler, images, masks, references, seed: int) -> torch.Tensor:
    """The reference left of the target on one canvas, sampled at once; the target split back out."""
    canvas, canvas_mask, layout = side_by_side(images, references[:, None], masks)
    return split(sampler.inpaint(canvas, canvas_mask, seed), layout, images, masks)


@contextmanager
def lora_merged(lora, name: str, unet, device):
    """emplace.lora.apply.merged adds the update where the LoRA's tensors are (the CPU): merge there, then move."""
    from emplace.lora.apply import merged

    unet.to("cpu")
    with merged(lora, 1.0, name, unet):
        unet.to(device)
        yield
    unet.to(device)


# --- scores -------------------------------------------------------------------------------------


def right_object(image: torch.Tensor, mask: torch.Tensor, label: str) -> bool:
    """The detector finds the labelled object's colour and shape with its box centre inside the mask."""
    colour, shape = label.split()
    colour, shape = COLOUR_NAMES.index(colour), SHAPES.index(shape)
    for d in detect(image):
        cx, cy = int((d.box.x0 + d.box.x1) / 2), int((d.box.y0 + d.box.y1) / 2)
        if d.colour == colour and d.shape == shape and 0 <= cy < mask.shape[0] and 0 <= cx < mask.shape[1] \
                and mask[cy, cx] > 0:
            return True
    return False


def score(results: torch.Tensor, truths: torch.Tensor, masks: torch.Tensor, labels: list[str]) -> dict:
    psnr = [masked_psnr(r, t, m > 0.5) for r, t, m in zip(results, truths, masks)]
    finite = [p for p in psnr if p != float("inf")]
    return {"masked_psnr": sum(finite) / max(1, len(finite)),
            "masked_ssim": sum(masked_ssim(r, t, m > 0.5) for r, t, m in zip(results, truths, masks)) / len(masks),
            "right_object": sum(right_object(r, m, lab) for r, m, lab in zip(results, masks, labels)) / len(masks),
            "scenes": len(masks)}


def table(rows: dict[str, dict]) -> str:
    lines = ["| configuration | masked PSNR (dB) | masked SSIM | right object | s / scene |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for name, r in rows.items():
        secs = f"{r['seconds_per_scene']:.3f}" if "seconds_per_scene" in r else "-"
        psnr, ssim = (("-", "-") if r["masked_psnr"] is None
                      else (f"{r['masked_psnr']:.2f}", f"{r['masked_ssim']:.3f}"))
        lines.append(f"| {name} | {psnr} | {ssim} | {r['right_object']:.1%} | {secs} |")
    return "\n".join(lines)


# --- the run ------------------------------------------------------------------------------------


def held_out(args) -> Path:
    if args.data is not None:
        return args.data
    folder = args.out / "heldout"
    if not (folder / "records.jsonl").is_file():
        from emplace.scenes.datasets import multiview

        multiview.write(folder, args.n, seed=args.seed, size=64)
    return folder


def main(argv=None) -> int:
    from tqdm import tqdm

    from emplace.toy_inpaint import ToyInpaintModel
    from trainer.multiview import MultiViewImages, load_records

    args = parse_args(argv)
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        raise SystemExit(f"unknown configuration(s) {unknown}; choose from {', '.join(CONFIGS)}")
    if "exact + LoRA" in configs and args.lora is None:
        configs.remove("exact + LoRA")
        print("no --lora: the 'exact + LoRA' row is skipped")
    args.out.mkdir(parents=True, exist_ok=True)
    records = [r for r in load_records(held_out(args)) if r.label][: args.n]
    data = MultiViewImages(records, 64)
    n = len(records)
    truths = torch.stack(data.targets).float() / 255
    masks = torch.stack(data.masks).float() / 255
    references = torch.stack([r[0] for r in data.references]).float() / 255
    labels = [r.label for r in records]
    inputs = truths * (1 - masks[:, None]) + 0.5 * masks[:, None]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = ToyInpaintModel.load(args.model)
    model.unet.to(device)
    model.text_encoder.to(device)
    sampler = Sampler(model, args.prompt, args.steps, device)
    lora = None
    if args.lora is not None:
        from emplace.lora import load_lora

        lora = load_lora(args.lora)

    def run_config(name: str) -> torch.Tensor:
        from contextlib import nullcontext

        out = []
        merge = lora_merged(lora, args.lora.name, model.unet, device) if name == "exact + LoRA" else nullcontext()
        with merge:
            for s in tqdm(range(0, n, args.batch), desc=name, unit="batch"):
                sl = slice(s, s + args.batch)
                seed = 1000 + s  # the same noise in every configuration
                if name == "no reference":
                    out.append(sampler.inpaint(inputs[sl], masks[sl], seed))
                elif name == "side-by-side":
                    out.append(side_by_side_inpaint(sampler, inputs[sl], masks[sl], references[sl], seed))
                else:
                    mode = "cached" if name == "cached" else "exact"
                    out.append(sampler.inpaint(inputs[sl], masks[sl], seed, references[sl], mode))
        return torch.cat(out)

    rows, results = {}, {}
    for name in configs:
        began = time.time()
        results[name] = run_config(name)
        seconds = time.time() - began
        rows[name] = score(results[name], truths, masks, labels) | {"seconds_per_scene": seconds / n,
                                                                     "seconds": seconds}
    rows["truth (ceiling)"] = score(truths, truths, masks, labels) | {"masked_psnr": None, "masked_ssim": None}
    text = table(rows)
    print(f"\n{n} held-out scenes at 64 px, prompt {args.prompt!r}, {args.steps} DDIM steps, on {device}\n")
    print(text)
    (args.out / "table.md").write_text(text + "\n")
    (args.out / "results.json").write_text(json.dumps({
        "scenes": n, "prompt": args.prompt, "steps": args.steps, "device": str(device), "seed": args.seed,
        "lora": str(args.lora) if args.lora else None, "rows": rows}, indent=1))
    shown = [c for c in ("no reference", "exact", "exact + LoRA") if c in results]
    k = min(args.pictures, n)
    grid = image_grid([[inputs[i], references[i], *(results[c][i] for c in shown), truths[i]] for i in range(k)], 3)
    save_image(grid, args.out / "examples.png")
    print(f"\nwrote {args.out / 'table.md'}, {args.out / 'results.json'} and {args.out / 'examples.png'} "
          f"(columns: target input, reference, {', '.join(shown)}, truth)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
