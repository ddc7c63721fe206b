"""python -m trainer toy-inpaint: train the scene world's toy inpainting model (the embedded default).

One linear loop: render the data once (cached), build the model, then
noise -> timestep -> v-prediction -> loss weighted towards the masked region, with an EMA
of the weights, tqdm progress, TensorBoard scalars, atomic checkpoints and --resume latest.
Stops at --steps or --minutes, whichever comes first, and writes the EMA weights.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import torch

from emplace.weights import load_safetensors, save_safetensors

from .checkpoints import latest_checkpoint, load_checkpoint, save_checkpoint

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "emplace" / "defaults" / "toy_inpaint"
COMPLETE_PROMPT = "complete the image"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("toy-inpaint", help="train the scene world's toy inpainting model")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="model folder to write (default: the embedded one)")
    p.add_argument("--work", type=Path, default=Path("runs/toy_inpaint"), help="data cache, checkpoints, logs")
    p.add_argument("--samples", type=int, default=8000, help="rendered training examples")
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--minutes", type=float, default=50.0, help="stop training after this long")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-every", type=int, default=250)
    p.add_argument("--resume", choices=["latest"], help="continue from the newest checkpoint in --work")
    p.set_defaults(run=train)


def training_data(work: Path, n: int, seed: int, size: int) -> dict:
    """Rendered once and cached: target images, backgrounds, masks (uint8) and prompts."""
    path = work / f"data-{n}-{seed}-{size}.safetensors"
    if path.is_file():
        tensors, meta = load_safetensors(path, "training data cache")
        return {**tensors, "prompts": json.loads(meta["prompts"])}
    from tqdm import tqdm

    from emplace.scenes.samples import insertion_examples

    examples = []
    chunk = 256
    for start in tqdm(range(0, n, chunk), desc="rendering training scenes", unit="chunk"):
        examples += insertion_examples(min(chunk, n - start), seed=seed * 100_003 + start, size=size)
    to8 = lambda x: (x * 255).round().to(torch.uint8)  # noqa: E731
    data = {"images": to8(torch.stack([e.image for e in examples])),
            "backgrounds": to8(torch.stack([e.background for e in examples])),
            "masks": to8(torch.stack([e.mask for e in examples]))}
    save_safetensors(path, data, {"prompts": json.dumps([e.prompt for e in examples])})
    return {**data, "prompts": [e.prompt for e in examples]}


def batch_of(data: dict, idx: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, ...]:
    images = data["images"][idx].float() / 255
    backgrounds = data["backgrounds"][idx].float() / 255
    masks = data["masks"][idx].float() / 255
    prompts = [data["prompts"][i] for i in idx.tolist()]
    flip = torch.rand(len(idx), generator=g) < 0.5  # mirror images: the world is symmetric
    images[flip], backgrounds[flip], masks[flip] = images[flip].flip(-1), backgrounds[flip].flip(-1), masks[flip].flip(-1)
    # 15%: paint the background back over the box (object removal, background passes)
    complete = torch.rand(len(idx), generator=g) < 0.15
    images[complete] = backgrounds[complete]
    # 10%: no prompt, for classifier-free guidance
    drop = torch.rand(len(idx), generator=g) < 0.10
    prompts = ["" if d else (COMPLETE_PROMPT if c else p) for p, c, d in zip(prompts, complete.tolist(), drop.tolist())]
    return images, backgrounds, masks, prompts


def train(args: argparse.Namespace) -> int:
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    from emplace.scenes.toy_inpaint import ToyConfig, ToyInpaintModel

    torch.manual_seed(args.seed)
    config = ToyConfig()
    args.work.mkdir(parents=True, exist_ok=True)
    data = training_data(args.work, args.samples, args.seed, config.image_size)
    model = ToyInpaintModel.create(config, seed=args.seed)
    modules = {"unet": model.unet, "text_encoder": model.text_encoder}
    params = [p for m in modules.values() for p in m.parameters()]
    ema_models = {n: copy.deepcopy(m).requires_grad_(False) for n, m in modules.items()}
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    g = torch.Generator().manual_seed(args.seed + 1)
    step = 0
    if args.resume:
        ckpt = latest_checkpoint(args.work / "checkpoints")
        if ckpt is None:
            raise FileNotFoundError(f"--resume latest: no checkpoint in {args.work / 'checkpoints'}")
        step, _ = load_checkpoint(ckpt, {**modules, **{f"ema_{n}": m for n, m in ema_models.items()}}, optimizer, {"data": g})
        print(f"resumed from {ckpt} at step {step}")

    sched = model.scheduler
    writer = SummaryWriter(str(args.work / "logs"))
    start, n = time.time(), data["images"].shape[0]
    bar = tqdm(total=args.steps, initial=step, desc="toy-inpaint", unit="step")
    last_loss = math.nan
    while step < args.steps and (time.time() - start) < args.minutes * 60:
        images, backgrounds, masks, prompts = batch_of(data, torch.randint(n, (args.batch,), generator=g), g)
        x0 = model.to_model_space(images)
        noise = torch.randn_like(x0)
        t = torch.randint(0, sched.config.num_train_timesteps, (args.batch,))
        noisy = sched.add_noise(x0, noise, t)
        target = sched.get_velocity(x0, noise, t)
        inp = torch.cat([noisy, model.conditioning(backgrounds, masks)], 1)
        pred = model.unet(inp, t, model.encode_prompts(prompts)).sample
        weight = 0.1 + 0.9 * torch.nn.functional.max_pool2d(masks[:, None], config.unshuffle)
        loss = (weight * (pred - target) ** 2).mean()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at step {step}; the last checkpoint is kept")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        for group in optimizer.param_groups:
            group["lr"] = args.lr * min(1.0, (step + 1) / 200)
        optimizer.step()
        step += 1
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for name, m in modules.items():
                for pe, p in zip(ema_models[name].parameters(), m.parameters()):
                    pe.lerp_(p, 1 - decay)
        last_loss = loss.item()
        bar.update(1)
        bar.set_postfix(loss=f"{last_loss:.4f}")
        if step % 20 == 0:
            writer.add_scalar("loss", last_loss, step)
        if step % args.checkpoint_every == 0:
            save_checkpoint(args.work / "checkpoints", step, {**modules, **{f"ema_{n}": m for n, m in ema_models.items()}},
                            optimizer, {"loss": last_loss}, {"data": g})
    bar.close()
    writer.close()

    model.unet, model.text_encoder = ema_models["unet"].eval(), ema_models["text_encoder"].eval()
    model.save(args.out)
    minutes = (time.time() - start) / 60
    (args.out / "training.json").write_text(json.dumps({
        "steps": step, "batch": args.batch, "samples": args.samples, "lr": args.lr, "seed": args.seed,
        "train_minutes_this_run": round(minutes, 1), "last_loss": last_loss,
        "command": f"python -m trainer toy-inpaint --samples {args.samples} --minutes {args.minutes} --seed {args.seed}",
    }, indent=1))
    print(f"wrote {args.out} after {step} steps ({minutes:.1f} min of training), last loss {last_loss:.4f}")
    return 0
