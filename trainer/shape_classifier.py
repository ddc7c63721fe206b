"""python -m trainer shape-classifier: train the scene detector's shape classifier on fresh renders."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from emplace.scenes.detector import DEFAULT_WEIGHTS, ShapeClassifier, colour_map, crop_for_classifier
from emplace.weights import save_safetensors


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("shape-classifier", help="train the scene detector's shape classifier")
    p.add_argument("--out", type=Path, default=DEFAULT_WEIGHTS)
    p.add_argument("--scenes", type=int, default=3000)
    p.add_argument("--epochs", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=run)


def labelled_crops(n_scenes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Crops of every visible object, as the detector will see them, at 64 and 128 px."""
    from tqdm import tqdm

    from emplace.boxes import box_from_mask
    from emplace.scenes.render import render
    from emplace.scenes.world import sample_camera, sample_scene

    g = torch.Generator().manual_seed(seed)
    crops, labels = [], []
    for start in tqdm(range(0, n_scenes, 16), desc="rendering", unit="batch"):
        size = 64 if (start // 16) % 2 == 0 else 128
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
    torch.manual_seed(args.seed)
    x, y = labelled_crops(args.scenes, args.seed)
    held = len(x) // 10
    model = ShapeClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.epochs)
    for epoch in range(args.epochs):
        order = torch.randperm(len(x) - held) + held
        for idx in order.split(128):
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        decay.step()
        with torch.no_grad():
            acc = (model(x[:held]).argmax(-1) == y[:held]).float().mean().item()
        print(f"epoch {epoch + 1}: loss {loss.item():.3f}, held-out accuracy {acc:.3f}")
    save_safetensors(args.out, model.state_dict(), {"held_out_accuracy": f"{acc:.4f}", "crops": str(len(x))})
    print(f"wrote {args.out} ({len(x)} crops, held-out accuracy {acc:.3f})")
    return 0
