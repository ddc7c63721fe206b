"""python -m trainer toy-inpaint: train the scene world's toy inpainting models (the embedded defaults).

Render the data once (cached), build the model (or start from --init), then, on the trainer's
one skeleton (trainer/loop.py): noise -> timestep -> v-prediction -> loss weighted towards the
masked region, with an exponential moving average of the weights. Stops at --steps or
--minutes, whichever comes first, and writes the averaged weights.

Tasks:
- insert: paint an object into a rendered scene (the inpainting model, `toy_inpaint`);
- layout: IterInpaint's two tasks from a blank canvas (seed 003) besides insertion: the
  foreground task paints one object's box (sometimes two or three at once) on a grey canvas
  that holds some of the other objects already, and the background task paints everything
  outside the objects' boxes (`toy_layout`, layout-to-image).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from emplace.weights import load_safetensors, save_safetensors

from .config import TrainingConfig, add_config_arguments, config_from_args, setting
from .loop import Run, batch_indices, phase, start
from .loop import train as train_loop

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "emplace" / "defaults" / "toy_inpaint"
COMPLETE_PROMPT = "complete the image"
LAYOUT_SHARES = {"insert": 0.3, "foreground": 0.45, "background": 0.25}  # IterInpaint trains both passes


@dataclass(kw_only=True)
class ToyInpaintConfig(TrainingConfig):
    out: Path = setting(DEFAULT_OUT, "model folder to write (default: the embedded one)")
    work: Path = setting(Path("runs/toy_inpaint"), "data cache, checkpoints, logs")
    samples: int = setting(8000, "rendered training examples", low=1)
    steps: int = setting(100_000, "optimisation steps", low=0)
    minutes: float = setting(50.0, "stop training after this long (0: no limit)", low=0.0)
    batch: int = setting(32, "examples per step", low=1)
    lr: float = setting(1e-3, "peak learning rate", low=0.0)
    warmup: int = setting(200, "linear warm-up steps (at most a tenth of the run)", low=0)
    log_every: int = setting(20, "steps between TensorBoard points", low=1)
    ema: float = setting(0.999, "the written weights are this exponential moving average", low=0.0, high=1.0)
    tasks: str = setting("insert", "insert: objects into rendered scenes; layout: also IterInpaint's foreground and "
                                   "background passes on a blank canvas", choices=("insert", "layout"))
    init: Path | None = setting(None, "start from this toy model folder's weights (e.g. emplace/defaults/toy_inpaint)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("toy-inpaint", help="train the scene world's toy inpainting model")
    add_config_arguments(p, ToyInpaintConfig)
    p.set_defaults(run=run)


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
    for first in tqdm(range(0, n, chunk), desc="rendering training scenes", unit="chunk"):
        examples += insertion_examples(min(chunk, n - first), seed=seed * 100_003 + first, size=size)
    to8 = lambda x: (x * 255).round().to(torch.uint8)  # noqa: E731
    data = {"images": to8(torch.stack([e.image for e in examples])),
            "backgrounds": to8(torch.stack([e.background for e in examples])),
            "masks": to8(torch.stack([e.mask for e in examples]))}
    save_safetensors(path, data, {"prompts": json.dumps([e.prompt for e in examples])})
    return {**data, "prompts": [e.prompt for e in examples]}


def batch_of(data: dict, idx: list[int], g: torch.Generator) -> tuple[torch.Tensor, ...]:
    idx = torch.tensor(idx)
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


MAX_OBJECTS = 4  # the in-distribution layouts' most objects


def layout_data(work: Path, n: int, seed: int, size: int) -> dict:
    """Rendered once and cached: in-distribution layouts (1-4 objects, all visible) with every object's box."""
    path = work / f"layouts-{n}-{seed}-{size}.safetensors"
    if path.is_file():
        tensors, meta = load_safetensors(path, "layout data cache")
        return {**tensors, "prompts": json.loads(meta["prompts"])}
    from tqdm import tqdm

    from emplace.scenes.datasets.layout import layouts

    g = torch.Generator().manual_seed(seed * 100_003 + 17)
    images, boxes, prompts = [], torch.full((n, MAX_OBJECTS, 4), -1.0), []
    for i, (_, _, image, objs) in enumerate(tqdm(layouts(n, "number", "id", g, size), total=n,
                                                 desc="rendering training layouts", unit="layout")):
        images.append(image)
        boxes[i, : len(objs)] = torch.tensor([a.box.xyxy for a in objs])
        prompts.append([a.prompt for a in objs])
    data = {"images": (torch.stack(images) * 255).round().to(torch.uint8), "boxes": boxes}
    save_safetensors(path, data, {"prompts": json.dumps(prompts)})
    return {**data, "prompts": prompts}


def layout_example(image: torch.Tensor, boxes: torch.Tensor, prompts: list[str], task: str,
                   g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, str]:
    """One IterInpaint training example from a layout: (target, canvas, mask, prompt).

    foreground: a random subset of the objects is already on the grey canvas (their grown boxes
    pasted from the render) and one more (30 %: two or three) is to be painted in its box;
    background: every object is on the canvas and the rest is to be painted.
    """
    from emplace.boxes import Box, box_mask
    from emplace.inpaint.plan import BLANK_CANVAS_BACKGROUND, BLANK_CANVAS_GREY, OBJECT_TEMPLATE

    size = image.shape[-1]
    masks = [box_mask(Box(*b.tolist()), size, size, grow=2) for b in boxes[: len(prompts)]]
    order = torch.randperm(len(prompts), generator=g).tolist()
    if task == "background":
        painted, targets = order, []
    else:
        k = int(torch.randint(len(order), (), generator=g))
        several = float(torch.rand((), generator=g)) < 0.3
        m = 1 + int(torch.randint(2, (), generator=g)) if several else 1
        painted, targets = order[:k], order[k:k + m]
    canvas = torch.full_like(image, BLANK_CANVAS_GREY)
    for j in painted:
        canvas = torch.where(masks[j].bool(), image, canvas)
    if task == "background":
        mask = 1 - torch.stack(masks).amax(0)
        prompt = BLANK_CANVAS_BACKGROUND
    else:
        mask = torch.stack([masks[j] for j in targets]).amax(0)
        prompt = OBJECT_TEMPLATE.replace("{prompt}", " and ".join(prompts[j] for j in targets))
    return torch.where(mask.bool(), image, canvas), canvas, mask, prompt


def layout_batch(data: dict, idx: list[int], tasks: list[str], g: torch.Generator) -> tuple[torch.Tensor, ...]:
    examples = []
    for i, task in zip(idx, tasks):
        image = data["images"][i].float() / 255
        examples.append(layout_example(image, data["boxes"][i], data["prompts"][i], task, g))
    target, canvas, mask, prompts = zip(*examples)
    return torch.stack(target), torch.stack(canvas), torch.stack(mask), list(prompts)


class ExponentialAverage(torch.nn.Module):
    """A running average of some modules' weights, updated after each optimizer step."""

    def __init__(self, modules: dict[str, torch.nn.Module], decay: float):
        super().__init__()
        self.sources, self.decay = modules, decay
        self.averages = torch.nn.ModuleDict({n: copy.deepcopy(m).requires_grad_(False) for n, m in modules.items()})

    @torch.no_grad()
    def update(self, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))  # short memory early on
        for name, m in self.sources.items():
            for pe, p in zip(self.averages[name].parameters(), m.parameters()):
                pe.lerp_(p, 1 - decay)


def run(args: argparse.Namespace) -> int:
    return train(config_from_args(ToyInpaintConfig, args), resume=args.resume is not None)


def train(config: ToyInpaintConfig, resume: bool = False) -> int:
    from emplace.scenes.vocabulary import words
    from emplace.toy_inpaint import ToyConfig, ToyInpaintModel

    accelerator = start(config)
    toy = ToyConfig()
    data = training_data(config.work, config.samples, config.seed, toy.image_size)
    layout = layout_data(config.work, config.samples, config.seed, toy.image_size) if config.tasks == "layout" else None
    if config.init is not None:
        with phase(f"loading the starting weights from {config.init}"):
            model = ToyInpaintModel.load(config.init)
        toy = model.config
        model.unet.train(), model.text_encoder.train()
    else:
        model = ToyInpaintModel.create(words(), toy, seed=config.seed)
    modules = torch.nn.ModuleDict({"unet": model.unet, "text_encoder": model.text_encoder}).to(accelerator.device)
    ema = ExponentialAverage(dict(modules.items()), config.ema)
    # single-process by design (a 4M-parameter model); the optimizer is prepared for mixed precision
    optimizer = accelerator.prepare(torch.optim.AdamW(modules.parameters(), lr=config.lr,
                                                      weight_decay=config.weight_decay))
    sched, n = model.scheduler, data["images"].shape[0]

    def step(index: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(config.seed * 1_000_003 + index)  # the step's draws, the same on resume
        idx = batch_indices(index, n, config.batch, config.seed, 0, 1)
        images, backgrounds, masks, prompts = batch_of(data, idx, g)
        if layout is not None:  # the insertion examples' places go to the layout tasks by the shares
            draws = torch.rand(len(idx), generator=g).tolist()
            shares = LAYOUT_SHARES["insert"], LAYOUT_SHARES["insert"] + LAYOUT_SHARES["foreground"]
            tasks = ["insert" if r < shares[0] else "foreground" if r < shares[1] else "background" for r in draws]
            chosen = [j for j, t in enumerate(tasks) if t != "insert"]
            if chosen:
                picks = batch_indices(index, layout["images"].shape[0], config.batch, config.seed + 1, 0, 1)
                lt, lc, lm, lp = layout_batch(layout, [picks[j] for j in chosen], [tasks[j] for j in chosen], g)
                images[chosen], backgrounds[chosen], masks[chosen] = lt, lc, lm
                for j, p in zip(chosen, lp):
                    prompts[j] = "" if prompts[j] == "" else p  # the 10 % unconditional draw stands
        images, backgrounds, masks = (x.to(accelerator.device) for x in (images, backgrounds, masks))
        x0 = model.to_model_space(images)
        noise = torch.randn(x0.shape, generator=g).to(x0)
        t = torch.randint(0, sched.config.num_train_timesteps, (len(idx),), generator=g).to(x0.device)
        noisy = sched.add_noise(x0, noise, t)
        target = sched.get_velocity(x0, noise, t)
        inp = torch.cat([noisy, model.conditioning(backgrounds, masks)], 1)
        pred = model.unet(inp, t, model.encode_prompts(prompts)).sample
        weight = 0.1 + 0.9 * torch.nn.functional.max_pool2d(masks[:, None], toy.unshuffle)  # the masked region
        return {"loss": (weight * (pred - target) ** 2).mean()}

    history = train_loop(config, accelerator, Run(
        name="toy-inpaint", model=modules, optimizer=optimizer, step=step, panels=[["loss"]],
        checkpointed={**modules, **{f"ema_{k}": m for k, m in ema.averages.items()}},
        after_step=ema.update), resume=resume)
    steps_done = history[-1]["step"] if history else 0
    last_loss = history[-1]["loss"] if history else math.nan
    with phase(f"writing the averaged weights to {config.out}"):
        model.unet, model.text_encoder = ema.averages["unet"].eval(), ema.averages["text_encoder"].eval()
        model.save(config.out)
        (config.out / "training.json").write_text(json.dumps({
            "steps": steps_done, "batch": config.batch, "samples": config.samples, "lr": config.lr,
            "seed": config.seed, "tasks": config.tasks, "last_loss": last_loss,
            "init": str(config.init) if config.init else None,
            "command": f"python -m trainer toy-inpaint --samples {config.samples} --minutes {config.minutes} "
                       f"--seed {config.seed} --tasks {config.tasks}"
                       + (f" --init {config.init} --lr {config.lr} --warmup {config.warmup} --out {config.out}"
                          if config.init else ""),
        }, indent=1))
    print(f"wrote {config.out} after {steps_done} steps, last loss {last_loss:.4f}")
    return 0
