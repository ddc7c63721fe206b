"""python -m trainer location pretrain|dpo|eval|default: the location model of seed 001.

- pretrain: positive boxes only, next-token likelihood (OPA layout, optionally PIPE-style
  removal pairs too);
- dpo: every positive/negative box pair of the same background and class, against the
  frozen pretrained model: -log sigmoid(beta * ((log pi(w) - log ref(w)) - (log pi(l) - log ref(l))))
  over whole-box log-likelihoods, plus an optional likelihood term on the winner;
- eval: the seed's TPR-FPR curve (N = 10..100 samples per test image), as PNG and JSON, and,
  on scene-world data, the share of top-1 proposals the world judges plausible;
- default: the embedded default, end to end (data, pretrain, dpo, eval).

One loop serves pretrain and dpo, as the preference trainer's does: accelerate (devices,
mixed precision, several processes), a deterministic batch order, atomic checkpoints and
exact `--resume`, tqdm, TensorBoard, a curves PNG, a NaN guard.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from emplace.location.model import (
    LocationConfig,
    LocationModel,
    load_location_model,
    save_location_model,
)
from emplace.location.tokens import boxes_to_tokens

from .checkpoints import latest_checkpoint, load_checkpoint, save_checkpoint
from .loop import batch_indices, plot_curves, scheduled_lr


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("location", help="train and evaluate the location (box proposal) model")
    stage = p.add_subparsers(dest="stage", required=True, metavar="stage")

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--data", type=Path, required=True, help="OPA-layout folder (e.g. from `scenes location`)")
        q.add_argument("--out", type=Path, required=True, help="the model file to write (.safetensors)")
        q.add_argument("--work", type=Path, help="checkpoints, TensorBoard logs, curves (default: beside --out)")
        q.add_argument("--steps", type=int, default=2000)
        q.add_argument("--batch", type=int, default=64)
        q.add_argument("--lr", type=float, default=3e-4)
        q.add_argument("--seed", type=int, default=0)
        q.add_argument("--no-flip", dest="flip", action="store_false", help="no horizontal flips (they keep a "
                       "ground-plane scene plausible)")
        q.add_argument("--checkpoint-every", type=int, default=500)
        q.add_argument("--resume", action="store_true", help="go on from the latest checkpoint in --work")
        q.add_argument("--mixed-precision", default="no", choices=["no", "fp16", "bf16"])
        q.add_argument("--schedule", default="constant", choices=["constant", "cosine"],
                       help="the learning rate after a short warm-up: held, or decayed to zero at the last step")

    q = stage.add_parser("pretrain", help="positives only: next-token likelihood")
    common(q)
    q.add_argument("--pipe", type=Path, help="also PIPE-style removal pairs (pairs.jsonl) as positives")
    q.add_argument("--width", type=int, default=128)
    q.add_argument("--layers", type=int, default=4)
    q.add_argument("--heads", type=int, default=4)
    q.add_argument("--bins", type=int, default=128)
    q.add_argument("--image-size", type=int, default=64, help="the background's size for the image encoder")
    q.add_argument("--patch", type=int, default=8, help="pixels per image token side (4, 8, 16 or 32)")
    q.set_defaults(run=run_pretrain)

    q = stage.add_parser("dpo", help="positive vs negative boxes against the frozen pretrained model")
    common(q)
    q.add_argument("--init", type=Path, required=True, help="the pretrained model (.safetensors)")
    q.add_argument("--beta", type=float, default=0.5)
    q.add_argument("--nll-weight", type=float, default=0.0, help="weight of the winner's likelihood term")
    q.set_defaults(run=run_dpo, lr=5e-5, steps=600)

    q = stage.add_parser("eval", help="TPR-FPR curves on the test split (PNG + JSON)")
    q.add_argument("--data", type=Path, required=True)
    q.add_argument("--model", type=Path, action="append", required=True, help="repeat to compare models")
    q.add_argument("--name", action="append", help="a name per --model for the plot")
    q.add_argument("--out", type=Path, required=True, help="a folder for curves.png and curves.json")
    q.add_argument("--split", default="test")
    q.add_argument("--iou", type=float, default=0.5)
    q.add_argument("--temperature", type=float, default=1.0)
    q.add_argument("--seed", type=int, default=0)
    q.set_defaults(run=run_eval)

    q = stage.add_parser("default", help="the embedded default from nothing: data, pretrain, dpo, eval")
    q.add_argument("--out", type=Path, default=Path("emplace/defaults/location"))
    q.add_argument("--work", type=Path, default=Path("runs/location_default"))
    q.add_argument("--n", type=int, default=3000, help="scene-world backgrounds to render")
    q.add_argument("--pretrain-steps", type=int, default=3500)
    q.add_argument("--dpo-steps", type=int, default=400)
    q.add_argument("--seed", type=int, default=0)
    q.set_defaults(run=run_default)


# --- data -------------------------------------------------------------------------------------


@dataclass
class BoxSet:
    """Every image once at the model's input size (uint8), and the boxes as tokens."""

    images: torch.Tensor  # [I, 3, S, S] uint8
    labels: list[str]  # per image
    positives: list[tuple[int, torch.Tensor]]  # (image index, tokens [4])
    pairs: list[tuple[int, torch.Tensor, torch.Tensor]]  # (image index, winner tokens, loser tokens)
    bins: int

    @classmethod
    def build(cls, examples, model: LocationModel) -> BoxSet:
        from tqdm import tqdm

        from emplace.location.data import dpo_pairs

        bins = model.config.bins
        images, labels, positives, tokens = [], [], [], []
        for e in tqdm(examples, desc="images", unit="image", leave=False):
            images.append((model.prepare(e.image()[None])[0].clamp(0, 1) * 255).round().to(torch.uint8))
            labels.append(model.check_label(e.category))
            w, h = e.size
            tokens.append((boxes_to_tokens(e.positives, w, h, bins), boxes_to_tokens(e.negatives, w, h, bins)))
            positives += [(len(images) - 1, t) for t in tokens[-1][0]]
        pairs = [(i, tokens[i][0][p], tokens[i][1][q]) for i, p, q in dpo_pairs(examples)]
        return cls(torch.stack(images), labels, positives, pairs, bins)

    def batch(self, items: list[tuple], flips: torch.Tensor) -> tuple[torch.Tensor, list[str], list[torch.Tensor]]:
        """Images (flipped where `flips`), labels, and each token column of `items` flipped alike."""
        idx = torch.tensor([it[0] for it in items])
        images = self.images[idx].float() / 255
        images = torch.where(flips[:, None, None, None], images.flip(-1), images)
        columns = [torch.stack([it[k] for it in items]) for k in range(1, len(items[0]))]
        return images, [self.labels[i] for i in idx.tolist()], [flip_tokens(t, flips, self.bins) for t in columns]


def flip_tokens(tokens: torch.Tensor, flips: torch.Tensor, bins: int) -> torch.Tensor:
    """Mirror boxes left-right in token space (exact: x0 <- bins-1-x1, x1 <- bins-1-x0)."""
    mirrored = torch.stack([bins - 1 - tokens[:, 2], tokens[:, 1], bins - 1 - tokens[:, 0], tokens[:, 3]], 1)
    return torch.where(flips[:, None], mirrored, tokens)


def load_examples(data: Path, split: str, pipe: Path | None = None) -> list:
    from emplace.location.data import load_opa, load_pipe

    examples = load_opa(data, split)
    if pipe is not None:
        examples += load_pipe(pipe)
    return examples


# --- the loop ---------------------------------------------------------------------------------


def pretrain_loss(model, boxes: BoxSet, items, flips) -> dict:
    images, labels, (tokens,) = boxes.batch(items, flips)
    nll = -model(images, labels, tokens).mean() / 4
    return {"loss": nll, "nll": nll.detach()}


def dpo_loss(model, boxes: BoxSet, items, flips, beta: float, reference, nll_weight: float) -> dict:
    images, labels, (winner, loser) = boxes.batch(items, flips)
    both = torch.cat([winner, loser])
    policy = model(torch.cat([images, images]), labels + labels, both)
    with torch.no_grad():
        ref = reference(torch.cat([images, images]), labels + labels, both)
    n = len(items)
    margin = (policy[:n] - ref[:n]) - (policy[n:] - ref[n:])
    loss = -F.logsigmoid(beta * margin).mean() - nll_weight * policy[:n].mean() / 4
    return {"loss": loss, "accuracy": (margin > 0).float().mean(), "margin": margin.mean().detach(),
            "winner_logp": policy[:n].mean().detach(), "loser_logp": policy[n:].mean().detach()}


def train_loop(model: LocationModel, boxes: BoxSet, items: list, loss_fn, args, work: Path, what: str,
               **loss_args) -> LocationModel:
    from accelerate import Accelerator
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    if not items:
        raise ValueError(f"{args.data}: nothing to train {what} on (no positive boxes, or no positive/negative "
                         f"pairs for dpo)")
    accelerator = Accelerator(mixed_precision=args.mixed_precision, cpu=not torch.cuda.is_available())
    torch.manual_seed(args.seed)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.01)
    model, optimizer = accelerator.prepare(model, optimizer)
    if "reference" in loss_args:
        loss_args["reference"].to(accelerator.device)
    step = 0
    if args.resume:
        ckpt = latest_checkpoint(work / "checkpoints")
        if ckpt is None:
            raise FileNotFoundError(f"--resume: no checkpoint in {work / 'checkpoints'}")
        step, _ = load_checkpoint(ckpt, {"model": accelerator.unwrap_model(model)}, optimizer)
        accelerator.print(f"resumed from {ckpt} at step {step}")
    main = accelerator.is_main_process
    writer = SummaryWriter(str(work / "logs" / what)) if main else None
    history: list[dict] = []
    bar = tqdm(total=args.steps, initial=step, desc=f"location {what}", unit="step", disable=not main)
    model.train()
    while step < args.steps:
        idx = batch_indices(step, len(items), args.batch, args.seed, accelerator.process_index,
                            accelerator.num_processes)
        # flips: drawn for the whole step's batch (all processes), so they follow the items whatever the
        # number of processes, and are the same after a resume
        g = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        world = accelerator.num_processes
        flips = (torch.rand(args.batch * world, generator=g) < 0.5)[accelerator.process_index::world] & args.flip
        out = loss_fn(model, boxes, [items[i] for i in idx], flips, **loss_args)
        if not torch.isfinite(out["loss"]):
            raise FloatingPointError(f"the loss became {out['loss'].item()} at step {step}; the last good checkpoint "
                                     f"is in {work / 'checkpoints'} (lower --lr, then --resume)")
        accelerator.backward(out["loss"])
        accelerator.clip_grad_norm_(model.parameters(), 1.0)
        for group in optimizer.param_groups:
            group["lr"] = scheduled_lr(args.lr, step, args.steps, min(100, args.steps // 10), args.schedule)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        stats = {k: float(v.detach()) for k, v in out.items()} | {"lr": optimizer.param_groups[0]["lr"]}
        history.append({"step": step, **stats})
        bar.update(1)
        bar.set_postfix(loss=f"{stats['loss']:.4f}")
        if main:
            for k, v in stats.items():
                writer.add_scalar(f"{what}/{k}", v, step)
        if step % args.checkpoint_every == 0 or step == args.steps:
            accelerator.wait_for_everyone()
            if main:
                save_checkpoint(work / "checkpoints", step, {"model": accelerator.unwrap_model(model)}, optimizer,
                                {"stage": what})
    bar.close()
    if main:
        writer.close()
        panels = [["loss"], ["nll"]] if what == "pretrain" else [["loss"], ["accuracy"], ["winner_logp", "loser_logp"]]
        plot_curves(history, work / f"{what}_curves.png", f"location {what}: {args.data.name}", panels)
        (work / f"{what}_history.json").write_text(json.dumps(history))
    return accelerator.unwrap_model(model).eval()


def _work(args) -> Path:
    work = args.work or args.out.with_suffix("").with_name(args.out.stem + "_work")
    work.mkdir(parents=True, exist_ok=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    return work


def run_pretrain(args) -> int:
    start = time.time()
    work = _work(args)
    examples = load_examples(args.data, "train", args.pipe)
    labels = sorted({e.category for e in examples})
    config = LocationConfig(labels=labels, bins=args.bins, width=args.width, layers=args.layers, heads=args.heads,
                            image_size=args.image_size, image_encoder={"kind": "conv", "patch": args.patch})
    torch.manual_seed(args.seed)
    model = LocationModel(config)
    boxes = BoxSet.build(examples, model)
    print(f"pretrain on {len(boxes.positives)} positive boxes in {len(examples)} images, {len(labels)} labels")
    model = train_loop(model, boxes, boxes.positives, pretrain_loss, args, work, "pretrain")
    save_location_model(model, args.out)
    print(f"wrote {args.out} after {args.steps} steps ({(time.time() - start) / 60:.1f} min); curves in "
          f"{work / 'pretrain_curves.png'}")
    return 0


def run_dpo(args) -> int:
    start = time.time()
    work = _work(args)
    reference = load_location_model(args.init)
    reference.requires_grad_(False)
    model = copy.deepcopy(reference).make_trainable()
    boxes = BoxSet.build(load_examples(args.data, "train"), model)
    print(f"dpo on {len(boxes.pairs)} positive/negative pairs, beta {args.beta}")
    model = train_loop(model, boxes, boxes.pairs, dpo_loss, args, work, "dpo", beta=args.beta, reference=reference,
                       nll_weight=args.nll_weight)
    save_location_model(model, args.out)
    print(f"wrote {args.out} after {args.steps} steps ({(time.time() - start) / 60:.1f} min); curves in "
          f"{work / 'dpo_curves.png'}")
    return 0


# --- evaluation -------------------------------------------------------------------------------


def evaluate_models(data: Path, models: dict[str, Path], out: Path, split: str = "test", iou: float = 0.5,
                    temperature: float = 1.0, seed: int = 0) -> dict:
    """Curves of each model on `split`, written to out/curves.png and out/curves.json; on scene-world
    data (scenes.jsonl present) also the share of top-1 proposals the world judges plausible."""
    from emplace.location.evaluate import compare_curves, save_curves, tpr_fpr_curve
    from emplace.location.evaluate import plot_curves as plot_tpr_fpr
    from emplace.location.sample import propose

    examples = [e for e in load_examples(data, split) if len(e.positives) or len(e.negatives)]
    records = _scene_records(data)
    curves, summary = {}, {}
    for name, path in models.items():
        model = load_location_model(path)

        def sample(example, n, model=model):
            return propose(model, example.image(), example.category, n, temperature=temperature, seed=seed,
                           nms_iou=1.0).samples

        curves[name] = tpr_fpr_curve(sample, examples, iou_threshold=iou)
        summary[name] = {"curve": [vars(p) for p in curves[name]]}
        if records:
            summary[name]["top1_plausible"] = top1_plausible(model, examples, records, temperature, seed)
    out.mkdir(parents=True, exist_ok=True)
    plot_tpr_fpr(curves, out / "curves.png", f"location proposals on {data.name}/{split} (IoU {iou})")
    save_curves(curves, out / "curves.json")
    if len(curves) == 2:
        summary["comparison"] = compare_curves(*curves.values())
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def _scene_records(data: Path) -> dict:
    if not (data / "scenes.jsonl").is_file():
        return {}
    from emplace.scenes.locations import load_scene_records

    return load_scene_records(data)


def top1_plausible(model, examples, records: dict, temperature: float, seed: int, n: int = 20) -> float:
    """The share of test backgrounds whose most likely of n proposals the scene world judges plausible."""
    from emplace.location.sample import propose
    from emplace.scenes.locations import judge_box

    good = 0
    for e in examples:
        best = propose(model, e.image(), e.category, n, temperature=temperature, seed=seed).boxes[0]
        good += judge_box(records[e.image_path.stem], e.category, best.tolist())  # bg_id
    return good / max(1, len(examples))


def run_eval(args) -> int:
    names = args.name or [p.stem for p in args.model]
    if len(names) != len(args.model):
        raise ValueError(f"give one --name per --model ({len(args.model)} models, {len(names)} names)")
    summary = evaluate_models(args.data, dict(zip(names, args.model)), args.out, args.split, args.iou,
                              args.temperature, args.seed)
    for name in names:
        curve = summary[name]["curve"]
        line = ", ".join(f"N={p['n']}: TPR {p['tpr']:.3f} FPR {p['fpr']:.3f}" for p in curve[::3])
        extra = f"; top-1 plausible {summary[name]['top1_plausible']:.1%}" if "top1_plausible" in summary[name] else ""
        print(f"{name}: {line}{extra}")
    print(f"curves: {args.out / 'curves.png'}, numbers: {args.out / 'curves.json'}, {args.out / 'summary.json'}")
    return 0


# --- the embedded default ---------------------------------------------------------------------


def run_default(args) -> int:
    """Render scene-world location data, pretrain, DPO, evaluate both; copy the DPO model to --out."""
    from emplace.scenes.datasets import KINDS

    start = time.time()
    work, data = args.work, args.work / "data"
    if not (data / "test_set.csv").is_file():
        data.mkdir(parents=True, exist_ok=True)
        print(KINDS["location"].write(data, args.n, args.seed, 64))  # the encoder sees 64 px anyway
    base = {"data": data, "batch": 64, "seed": args.seed, "flip": True, "checkpoint_every": 500, "resume": False,
            "mixed_precision": "no", "schedule": "constant"}
    pre = work / "pretrain.safetensors"
    if not pre.is_file():
        run_pretrain(argparse.Namespace(**base, out=pre, work=work / "pretrain", steps=args.pretrain_steps, lr=3e-4,
                                        pipe=None, width=128, layers=4, heads=4, bins=128, image_size=64, patch=16))
    dpo = work / "dpo.safetensors"
    run_dpo(argparse.Namespace(**base, out=dpo, work=work / "dpo", steps=args.dpo_steps, lr=5e-5, init=pre,
                               beta=0.5, nll_weight=0.0))
    summary = evaluate_models(data, {"pretrain": pre, "dpo": dpo}, work / "eval")
    args.out.mkdir(parents=True, exist_ok=True)
    for suffix in (".safetensors", ".json"):
        shutil.copyfile(dpo.with_suffix(suffix), (args.out / "scene_world").with_suffix(suffix))
    shutil.copyfile(work / "eval" / "curves.png", args.out / "curves.png")
    (args.out / "training.json").write_text(json.dumps({
        "command": f"python -m trainer location default --n {args.n} --pretrain-steps {args.pretrain_steps} "
                   f"--dpo-steps {args.dpo_steps} --seed {args.seed}",
        "minutes": round((time.time() - start) / 60, 1),
        "top1_plausible": {k: summary[k].get("top1_plausible") for k in ("pretrain", "dpo")},
        "comparison": summary.get("comparison")}, indent=1))
    print(f"embedded default written to {args.out} in {(time.time() - start) / 60:.1f} min")
    return 0
