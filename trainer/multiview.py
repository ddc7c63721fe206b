"""python -m trainer multiview --config run.toml: multi-view pairs -> a LoRA that copies what another view shows.

In order: set-up (accelerate, model, LoRA through peft, the reference-attention processor on
every self-attention) -> data (records.jsonl, every line checked first, the images read once)
-> the step -> the trainer's one loop (loop.py) -> the LoRA in the kohya form with metadata
(method "multiview").

The step, per target (InConDiff's training, through emplace/multiview's reference attention):
- record: each reference view, noised to the target's timestep t with its own noise, runs
  through the UNet as a complete image (nothing masked); every self-attention banks its
  normalised hidden states (the pass stops after the last site that banks);
- read: the masked target (the inpainting input: mask + masked image) at t, its self-attentions
  also attending to its own references' tokens;
- loss = mean(w * (prediction - target)^2), target = v (v-prediction) or the noise (epsilon),
  as the scheduler says; w = 1 inside the mask and `outside_weight` elsewhere.
Gradients flow through both passes. The prompt is "" for a share `empty_prompt` of targets,
so the model must learn to read the reference for what belongs in the mask.

Data: a folder with records.jsonl, as `python -m trainer scenes multiview` writes it, or your own:

    my_pairs/
      records.jsonl
      kitchen/front.jpg  kitchen/side.jpg  kitchen/mask.png
      ...
    records.jsonl, one scene a line (paths relative to the folder):
      {"views": ["kitchen/front.jpg", "kitchen/side.jpg"], "target_view": 0, "mask": "kitchen/mask.png",
       "prompt": "a red kettle"}

Two or more views of one scene; `target_view` (default 0) is the one to inpaint, the others
are its references; the mask (white = inpaint) belongs to the target view; `prompt` may be "".
Images are resized to the training resolution (square). Other keys (id, label, box,
cameras, input) are allowed and ignored.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from emplace.multiview import PLAIN, READ, RECORD
from emplace.multiview.paired import PairedContext

from .config import TrainingConfig, add_config_arguments, config_from_args, setting
from .loop import Run, batch_indices, phase, start
from .loop import train as run_loop
from .lora_training import TARGETS, add_lora, save_trained_lora

TOY = Path(__file__).resolve().parents[1] / "emplace" / "defaults" / "toy_inpaint"
RECORDS_WHAT = "multi-view records, as `scenes multiview` writes them (views, target_view, mask, prompt)"


@dataclass(kw_only=True)
class MultiViewConfig(TrainingConfig):
    data: Path = setting(help="a folder with records.jsonl (two or more views of a scene, a mask, a prompt)")
    output: Path = setting(help="the LoRA .safetensors to write")
    model: Path = setting(TOY, "an inpainting model: a toy model folder, or a diffusers SD inpainting folder")
    model_config: Path | None = setting(None, "for a single-file checkpoint: a local diffusers folder with its configs")
    work: Path = setting(Path("runs/multiview"), "checkpoints, TensorBoard logs, curves")
    steps: int = setting(2000, "optimisation steps", low=0)
    batch: int = setting(16, "targets per process and micro-step", low=1)
    lr: float = setting(5e-4, "peak learning rate", low=0.0)
    rank: int = setting(8, "LoRA rank", low=1)
    lora_alpha: float = setting(0.0, "LoRA alpha (0: equal to the rank, scale 1)", low=0.0)
    targets: str = setting("all", "which layers get a LoRA", choices=tuple(TARGETS))
    references: int = setting(1, "reference views per target (records with fewer other views are refused)", low=1)
    empty_prompt: float = setting(0.7, "share of prompts dropped to \"\" (then only the reference tells what "
                                       "belongs in the mask)", low=0.0, high=1.0)
    outside_weight: float = setting(0.1, "loss weight outside the mask (1 inside)", low=0.0, high=1.0)
    flip: bool = setting(True, "mirror half the scenes (target, mask and references together)")
    resolution: int = setting(0, "training size in pixels (0: the model's own)", low=0)

    def validate(self) -> None:
        from .config import ConfigError

        if self.output.suffix != ".safetensors":
            raise ConfigError(f"'output' must end in .safetensors, got {self.output}")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("multiview", help="train a LoRA that inpaints what another view of the scene shows")
    add_config_arguments(p, MultiViewConfig)
    p.set_defaults(run=run)


# --- data -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MultiViewRecord:
    views: tuple[Path, ...]
    target: int  # which view is inpainted
    mask: Path
    prompt: str
    label: str | None = None  # the masked object's class, when known ("red cube")

    @property
    def references(self) -> tuple[Path, ...]:
        return tuple(v for i, v in enumerate(self.views) if i != self.target)


def _file(folder: Path, value, key: str) -> Path:
    from emplace.files import why_not_a_file

    if not isinstance(value, str) or not value:
        raise ValueError(f"'{key}' must be a path (text), got {value!r}")
    path = folder / value
    if why := why_not_a_file(path):
        raise ValueError(f"'{key}': {value} {why}")
    return path


def parse_record(row: dict, folder: Path, references: int = 1) -> MultiViewRecord:
    """One records.jsonl row, checked; ValueError says what is wrong."""
    views = row.get("views")
    if not isinstance(views, list) or len(views) < 2:
        raise ValueError(f"'views' must be a list of two or more image paths, got {views!r}")
    if len(views) - 1 < references:
        raise ValueError(f"{len(views) - 1} reference view(s), fewer than the {references} asked for ('references')")
    target = row.get("target_view", 0)
    if not isinstance(target, int) or isinstance(target, bool) or not 0 <= target < len(views):
        raise ValueError(f"'target_view' must be a view index 0..{len(views) - 1}, got {target!r}")
    prompt = row.get("prompt", "")
    if not isinstance(prompt, str):
        raise ValueError(f"'prompt' must be text, got {prompt!r}")
    label = row.get("label")
    return MultiViewRecord(tuple(_file(folder, v, f"views[{i}]") for i, v in enumerate(views)), target,
                           _file(folder, row.get("mask"), "mask"), prompt, label if isinstance(label, str) else None)


def load_records(data: Path, references: int = 1) -> list[MultiViewRecord]:
    """Every line of `data`/records.jsonl checked before anything loads; all bad lines reported at once."""
    from emplace.files import read_jsonl

    path = data / "records.jsonl" if data.is_dir() else data
    problems: list[str] = []
    records = []
    for number, row in read_jsonl(path, RECORDS_WHAT, problems=problems):
        try:
            records.append(parse_record(row, path.parent, references))
        except ValueError as e:
            problems.append(f"line {number}: {e}")
    if problems:
        raise ValueError(f"{path}: {len(problems)} bad line(s) ({RECORDS_WHAT}):\n  " + "\n  ".join(problems))
    if not records:
        raise ValueError(f"{path} holds no records ({RECORDS_WHAT})")
    return records


class MultiViewImages:
    """Every record's views and mask read once, at the training size, as uint8 in memory."""

    def __init__(self, records: list[MultiViewRecord], size: int, main: bool = True):
        from tqdm import tqdm

        from emplace.files import load_image

        to8 = lambda x: (x * 255).round().to(torch.uint8)  # noqa: E731
        self.records, self.size = records, size
        self.targets, self.references, self.masks = [], [], []
        for r in tqdm(records, desc="reading the views", unit="scene", disable=not main):
            self.targets.append(to8(load_image(r.views[r.target], size)))
            self.references.append(torch.stack([to8(load_image(v, size)) for v in r.references]))
            self.masks.append(to8((load_image(r.mask, size).mean(0) > 0.5).float()))

    def __len__(self) -> int:
        return len(self.records)

    def batch(self, indices: list[int], references: int, g: torch.Generator, flip: bool):
        """(targets [B, 3, S, S], references [B, R, 3, S, S], masks [B, S, S], prompts), floats in 0..1;
        each target's R references drawn from its other views, half the scenes mirrored when `flip`."""
        targets = torch.stack([self.targets[i] for i in indices]).float() / 255
        masks = torch.stack([self.masks[i] for i in indices]).float() / 255
        refs = []
        for i in indices:
            views = self.references[i]
            refs.append(views[torch.randperm(len(views), generator=g)[:references]])
        refs = torch.stack(refs).float() / 255
        if flip:
            m = torch.rand(len(indices), generator=g) < 0.5
            targets[m], masks[m], refs[m] = targets[m].flip(-1), masks[m].flip(-1), refs[m].flip(-1)
        return targets, refs, masks, [self.records[i].prompt for i in indices]


# --- the step -----------------------------------------------------------------------------------


def multiview_step(unet, backend, context: PairedContext, images: MultiViewImages, idx: list[int],
                   config: MultiViewConfig, g: torch.Generator) -> dict[str, torch.Tensor]:
    device = backend.unet.device
    sched = backend.scheduler
    targets, refs, masks, prompts = images.batch(idx, config.references, g, config.flip)
    b, r = refs.shape[:2]
    dropped = (torch.rand(b, generator=g) < config.empty_prompt).tolist()
    prompts = ["" if d else p for p, d in zip(prompts, dropped)]
    targets, refs, masks = targets.to(device), refs.flatten(0, 1).to(device), masks.to(device)
    with torch.no_grad():
        x0 = backend.encode_images(targets)
        ref0 = backend.encode_images(refs)
        cond = backend.inpaint_inputs(targets, masks)
        ref_cond = backend.inpaint_inputs(refs, torch.zeros_like(refs[:, 0]))  # complete views: nothing masked
        text = backend.encode_prompts(prompts)["encoder_hidden_states"]
    noise = torch.randn(x0.shape, generator=g).to(x0)
    ref_noise = torch.randn(ref0.shape, generator=g).to(x0)  # the references' own noise
    t = torch.randint(0, sched.config.num_train_timesteps, (b,), generator=g).to(device)
    t_ref = t.repeat_interleave(r)
    noisy = sched.add_noise(x0, noise, t)
    target = sched.get_velocity(x0, noise, t) if sched.config.prediction_type == "v_prediction" else noise
    context.set_reference(ref0)
    context.bank.clear(tuple(x0.shape[-2:]))
    try:
        context.pass_ = RECORD
        context.run_record(lambda: unet(torch.cat([sched.add_noise(ref0, ref_noise, t_ref), ref_cond], 1), t_ref,
                                        text.repeat_interleave(r, 0)))
        context.pass_ = READ
        pred = unet(torch.cat([noisy, cond], 1), t, text).sample
    finally:
        context.pass_ = PLAIN
    small = F.adaptive_max_pool2d(masks[:, None], x0.shape[-2:])
    weight = config.outside_weight + (1 - config.outside_weight) * small
    err = (pred.float() - target.float()) ** 2
    inside = (err * small).sum() / (small.sum() * err.shape[1]).clamp(min=1)
    return {"loss": (weight * err).mean(), "mask_error": inside.detach()}


# --- the run ----------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    return train(config_from_args(MultiViewConfig, args), resume=args.resume is not None)


def train(config: MultiViewConfig, resume: bool = False) -> int:
    records = load_records(config.data, config.references)  # every bad line is reported before anything loads
    accelerator = start(config)

    from emplace.diffusion import load_backend
    from emplace.lora import TrainingRecord
    from emplace.multiview.diffusers_processor import set_multiview_processors

    main = accelerator.is_main_process
    with phase(f"loading {config.model}", main):
        backend = load_backend(config.model, config.resolution or None, config.model_config)
    if not backend.is_inpainting:
        raise ValueError(f"'{config.model}' is not an inpainting model (its UNet takes "
                         f"{backend.unet.config.in_channels} channels); multiview trains an inpainting model")
    for module in (backend.unet, *backend.text_encoders()):
        module.requires_grad_(False)
    lora_alpha = config.lora_alpha or config.rank
    trainables = {"lora": add_lora(backend.unet, config.rank, lora_alpha, TARGETS[config.targets])}
    context = PairedContext(torch.zeros(config.references, 1, 1, 1), config.references)
    sites = set_multiview_processors(backend.unet, context)
    optimizer = torch.optim.AdamW(list(trainables["lora"].params.values()), lr=config.lr,
                                  weight_decay=config.weight_decay)
    unet, optimizer = accelerator.prepare(backend.unet, optimizer)
    backend.to(accelerator.device)
    images = MultiViewImages(records, config.resolution or backend.resolution, main)
    if main:
        print(f"multiview on {len(records)} scenes, {config.references} reference view(s) per target, "
              f"{sites} self-attention sites, {sum(p.numel() for p in trainables['lora'].params.values()):,} "
              f"LoRA parameters, empty prompt {config.empty_prompt:.0%}")

    def step(index: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(config.seed * 1_000_003 + index)  # the step's draws, the same on resume
        idx = batch_indices(index, len(records), config.batch, config.seed, accelerator.process_index,
                            accelerator.num_processes)
        return multiview_step(unet, backend, context, images, idx, config, g)

    began = time.time()
    history = run_loop(config, accelerator, Run(
        name="multiview", model=unet, optimizer=optimizer, step=step, checkpointed=trainables,
        panels=[["loss"], ["mask_error"]], checkpoint_extra={"data": str(config.data)}), resume=resume)
    if not main:
        return 0
    steps_done = history[-1]["step"] if history else 0
    with phase(f"writing {config.output}"):
        record = TrainingRecord(method="multiview", family=backend.family, resolution=images.size, rank=config.rank,
                                alpha=float(lora_alpha), steps=steps_done,
                                data_summary=f"{len(records)} multi-view scenes from {config.data.name}",
                                title=config.output.stem)
        lora = save_trained_lora(config.output, {"unet": accelerator.unwrap_model(unet)}, config.rank, lora_alpha,
                                 record)
    print(f"wrote {config.output}: {len(lora.modules)} LoRA layers after {steps_done} steps "
          f"({(time.time() - began) / 60:.1f} min); curves in {config.work / 'multiview_curves.png'}")
    return 0
