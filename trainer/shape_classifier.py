"""python -m trainer shape-classifier: train the scene detector's shape classifier on fresh renders."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch

from emplace.scenes.detector import DEFAULT_WEIGHTS, ShapeClassifier, colour_map, crop_for_classifier
from emplace.weights import save_safetensors

from .config import TrainingConfig, add_config_arguments, config_from_args, setting
from .loop import Run, batch_indices, start
from .loop import train as train_loop


@dataclass(kw_only=True)
class ShapeClassifierConfig(TrainingConfig):
    out: Path = setting(DEFAULT_WEIGHTS, "the weights file to write")
    work: Path = setting(Path("runs/shape_classifier"), "checkpoints, logs, curves")
    scenes: int = setting(3000, "scenes rendered for crops", low=16)
    steps: int = setting(1800, "optimisation steps (about 24 passes over 3,000 scenes' crops)", low=0)
    batch: int = setting(128, "crops per step", low=1)
    lr: float = setting(3e-3, "peak learning rate", low=0.0)
    schedule: str = setting("cosine", "after the warm-up: held, or cosine decay to zero", choices=("constant", "cosine"))
    weight_decay: float = setting(0.0, "AdamW weight decay", low=0.0)
    max_grad_norm: float = setting(0.0, "gradients are clipped to this norm (0: not clipped)", low=0.0)
    checkpoint_every: int = setting(1000, "steps between checkpoints (also one at the end)", low=1)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("shape-classifier", help="train the scene detector's shape classifier")
    add_config_arguments(p, ShapeClassifierConfig)
    p.set_defaults(run=run)


def labelled_crops(n_scenes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Crops of every visible object, as the detector will see them, at 64 and 128 px."""
    from tqdm import tqdm

    from emplace.boxes import box_from_mask
    from emplace.scenes.render import render
    from emplace.scenes.world import sample_camera, sample_scene

    g = torch.Generator().manual_seed(seed)
    crops, labels = [], []
    for first in tqdm(range(0, n_scenes, 16), desc="rendering", unit="batch"):
        size = 64 if (first // 16) % 2 == 0 else 128
        scenes = [sample_scene(g, (1, 6)) for _ in range(16)]
        cams = [sample_camera(g) for _ in range(16)]
        r = render(scenes, cams, size)
        for i, scene in enumerate(scenes):
            colours = colour_map(r.image[i])
            for k, o in enumerate(scene.objects):
                mask = (r.object_index[i] == k) & (colours == o.colour)
                if int(mask.sum()) >= 6:
                    crops.append(crop_for_classifier(r.image[i], mask, box_from_mask(mask)))
                    labels.append(o.shape)
    return torch.stack(crops), torch.tensor(labels)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(ShapeClassifierConfig, args)
    accelerator = start(config)
    x, y = labelled_crops(config.scenes, config.seed)
    held = len(x) // 10  # the first tenth is held out
    model = ShapeClassifier()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    wrapped, optimizer = accelerator.prepare(model, optimizer)

    def step(index: int) -> dict[str, torch.Tensor]:
        idx = torch.tensor(batch_indices(index, len(x) - held, config.batch, config.seed, 0, 1)) + held
        return {"loss": torch.nn.functional.cross_entropy(wrapped(x[idx]), y[idx])}

    train_loop(config, accelerator, Run(name="shape-classifier", model=wrapped, optimizer=optimizer, step=step,
                                        checkpointed={"model": model}, panels=[["loss"]]),
               resume=args.resume is not None)
    with torch.no_grad():
        acc = (model(x[:held]).argmax(-1) == y[:held]).float().mean().item()
    save_safetensors(config.out, model.state_dict(), {"held_out_accuracy": f"{acc:.4f}", "crops": str(len(x))})
    print(f"wrote {config.out} ({len(x)} crops, held-out accuracy {acc:.3f})")
    return 0
