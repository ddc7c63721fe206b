"""python -m trainer location pretrain|dpo|eval|default: the location model of seed 001.

- pretrain: positive boxes only, next-token likelihood (OPA layout, optionally PIPE-style
  removal pairs too);
- dpo: every positive/negative box pair of the same background and class, against the
  frozen pretrained model: -log sigmoid(beta * ((log pi(w) - log ref(w)) - (log pi(l) - log ref(l))))
  over whole-box log-likelihoods, plus an optional likelihood term on the winner;
- eval: the seed's TPR-FPR curve (N = 10..100 samples per test image), as PNG and JSON, and,
  on scene-world data, the share of top-1 proposals the world judges plausible;
- default: the embedded default, end to end (data, pretrain, dpo, eval).

Pretrain and dpo run on the trainer's one skeleton (trainer/loop.py); their losses are in
emplace/location/losses.py.
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

from emplace.location.model import (
    LocationConfig,
    LocationModel,
    load_location_model,
    save_location_model,
)
from emplace.location.losses import box_dpo_loss, pretrain_loss
from emplace.location.tokens import boxes_to_tokens

from .config import TrainingConfig, add_config_arguments, config_from_args, setting
from .loop import Run, batch_indices, phase, start
from .loop import train as train_loop


@dataclass(kw_only=True)
class LocationTrainingConfig(TrainingConfig):
    """What pretraining and DPO share."""

    data: Path = setting(help="an OPA-layout folder (e.g. from `scenes location`)")
    out: Path = setting(help="the model file to write (.safetensors)")
    work: Path | None = setting(None, "checkpoints, TensorBoard logs, curves (default: beside out)")
    steps: int = setting(2000, "optimisation steps", low=0)
    batch: int = setting(64, "boxes per process and step", low=1)
    lr: float = setting(3e-4, "peak learning rate", low=0.0)
    warmup: int = setting(100, "linear warm-up steps (at most a tenth of the run)", low=0)
    checkpoint_every: int = setting(500, "steps between checkpoints (also one at the end)", low=1)
    log_every: int = setting(1, "steps between TensorBoard points", low=1)
    flip: bool = setting(True, "random horizontal flips (they keep a ground-plane scene plausible)")

    def validate(self) -> None:
        if self.work is None:
            self.work = self.out.with_name(self.out.stem + "_work")


@dataclass(kw_only=True)
class PretrainConfig(LocationTrainingConfig):
    pipe: Path | None = setting(None, "also PIPE-style removal pairs (pairs.jsonl) as positives")
    width: int = setting(128, "decoder width", low=8)
    layers: int = setting(4, "decoder layers", low=1)
    heads: int = setting(4, "attention heads", low=1)
    bins: int = setting(128, "coordinate bins per axis", low=2)
    image_size: int = setting(64, "the background's size for the image encoder", low=8)
    patch: int = setting(8, "pixels per image token side", choices=(4, 8, 16, 32))


@dataclass(kw_only=True)
class BoxDPOConfig(LocationTrainingConfig):
    init: Path = setting(help="the pretrained model (.safetensors)")
    steps: int = setting(600, "optimisation steps", low=0)
    lr: float = setting(5e-5, "peak learning rate", low=0.0)
    beta: float = setting(0.5, "-log sigmoid(beta * margin), margin over whole-box log-likelihoods", low=0.0)
    nll_weight: float = setting(0.25, "weight of the winner's likelihood term (0.25: the top-1 sweep's choice, "
                                      "bench/location_top1.py)", low=0.0)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("location", help="train and evaluate the location (box proposal) model")
    stage = p.add_subparsers(dest="stage", required=True, metavar="stage")

    q = stage.add_parser("pretrain", help="positives only: next-token likelihood")
    add_config_arguments(q, PretrainConfig)
    q.set_defaults(run=run_pretrain)

    q = stage.add_parser("dpo", help="positive vs negative boxes against the frozen pretrained model")
    add_config_arguments(q, BoxDPOConfig)
    q.set_defaults(run=run_dpo)

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


# --- the runs ---------------------------------------------------------------------------------


def train_boxes(model: LocationModel, boxes: BoxSet, items: list, config: LocationTrainingConfig, name: str,
                reference: LocationModel | None = None, resume: bool = False) -> LocationModel:
    """Pretraining (no reference: positives) or DPO (a reference: winner/loser pairs) on the skeleton."""
    if not items:
        raise ValueError(f"{config.data}: nothing to train {name} on (no positive boxes, or no positive/negative "
                         f"pairs for dpo)")
    accelerator = start(config)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr,
                                  weight_decay=config.weight_decay)
    wrapped, optimizer = accelerator.prepare(model, optimizer)
    if reference is not None:
        reference.to(accelerator.device)
    world, rank = accelerator.num_processes, accelerator.process_index

    def step(index: int) -> dict[str, torch.Tensor]:
        idx = batch_indices(index, len(items), config.batch, config.seed, rank, world)
        # flips: drawn for the whole step's batch (all processes), so they follow the items whatever the
        # number of processes, and are the same after a resume
        g = torch.Generator().manual_seed(config.seed * 1_000_003 + index)
        flips = (torch.rand(config.batch * world, generator=g) < 0.5)[rank::world] & config.flip
        images, labels, columns = boxes.batch([items[i] for i in idx], flips)
        if reference is None:
            return pretrain_loss(wrapped(images, labels, columns[0]))
        n = len(idx)
        pair_images, pair_labels, both = torch.cat([images, images]), labels + labels, torch.cat(columns)
        policy = wrapped(pair_images, pair_labels, both)
        with torch.no_grad():
            ref = reference(pair_images, pair_labels, both)
        return box_dpo_loss(policy[:n], policy[n:], ref[:n], ref[n:], config.beta, config.nll_weight)

    panels = [["loss"], ["nll"]] if reference is None else [["loss"], ["accuracy"], ["winner_logp", "loser_logp"]]
    train_loop(config, accelerator, Run(name=name, model=wrapped, optimizer=optimizer, step=step,
                                        checkpointed={"model": accelerator.unwrap_model(wrapped)}, panels=panels,
                                        checkpoint_extra={"stage": name}), resume=resume)
    return accelerator.unwrap_model(wrapped).eval()


def run_pretrain(args, config: PretrainConfig | None = None) -> int:
    config = config or config_from_args(PretrainConfig, args)
    began = time.time()
    examples = load_examples(config.data, "train", config.pipe)
    labels = sorted({e.category for e in examples})
    model_config = LocationConfig(labels=labels, bins=config.bins, width=config.width, layers=config.layers,
                                  heads=config.heads, image_size=config.image_size,
                                  image_encoder={"kind": "conv", "patch": config.patch})
    torch.manual_seed(config.seed)
    model = LocationModel(model_config)
    boxes = BoxSet.build(examples, model)
    print(f"pretrain on {len(boxes.positives)} positive boxes in {len(examples)} images, {len(labels)} labels")
    model = train_boxes(model, boxes, boxes.positives, config, "pretrain", resume=args.resume is not None)
    config.out.parent.mkdir(parents=True, exist_ok=True)
    save_location_model(model, config.out)
    print(f"wrote {config.out} after {config.steps} steps ({(time.time() - began) / 60:.1f} min); curves in "
          f"{config.work / 'pretrain_curves.png'}")
    return 0


def run_dpo(args, config: BoxDPOConfig | None = None) -> int:
    config = config or config_from_args(BoxDPOConfig, args)
    began = time.time()
    reference = load_location_model(config.init)
    reference.requires_grad_(False)
    model = copy.deepcopy(reference).make_trainable()
    boxes = BoxSet.build(load_examples(config.data, "train"), model)
    print(f"dpo on {len(boxes.pairs)} positive/negative pairs, beta {config.beta}")
    model = train_boxes(model, boxes, boxes.pairs, config, "dpo", reference, resume=args.resume is not None)
    config.out.parent.mkdir(parents=True, exist_ok=True)
    save_location_model(model, config.out)
    print(f"wrote {config.out} after {config.steps} steps ({(time.time() - began) / 60:.1f} min); curves in "
          f"{config.work / 'dpo_curves.png'}")
    return 0


# --- evaluation -------------------------------------------------------------------------------


def evaluate_models(data: Path, models: dict[str, Path], out: Path, split: str = "test", iou: float = 0.5,
                    temperature: float = 1.0, seed: int = 0) -> dict:
    """Curves of each model on `split`, written to out/curves.png and out/curves.json; on scene-world
    data (scenes.jsonl present) also the share of top-1 proposals the world judges plausible."""
    from emplace.location.evaluate import compare_curves, save_curves, tpr_fpr_curve
    from emplace.location.evaluate import plot_tpr_fpr
    from emplace.location.sample import propose

    examples = [e for e in load_examples(data, split) if len(e.positives) or len(e.negatives)]
    records = _scene_records(data)
    curves, summary = {}, {}
    for name, path in models.items():
        with phase(f"evaluating {name} on {data.name}/{split} ({len(examples)} images)"):
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
    from emplace.scenes.placement_judge import load_scene_records

    return load_scene_records(data)


def top1_verdicts(model, examples, records: dict, temperature: float = 1.0, seed: int = 0, n: int = 20,
                  reference=None) -> list[bool]:
    """Per test background: does the scene world judge the top-1 of n proposals plausible? Ranked by the
    model's likelihood, or, given the reference (pretrained) model, by DPO's implicit reward of each box,
    log p(box) - log ref(box): what DPO raised on plausible boxes rather than what is likeliest."""
    from emplace.location.sample import propose
    from emplace.location.tokens import boxes_to_tokens
    from emplace.scenes.placement_judge import judge_box

    from tqdm import tqdm

    verdicts = []
    for e in tqdm(examples, desc="top-1 proposals judged by the scene world", unit="image", leave=False):
        image = e.image()
        proposals = propose(model, image, e.category, n, temperature=temperature, seed=seed)
        best = proposals.boxes[0]
        if reference is not None:
            samples = proposals.samples
            tokens = boxes_to_tokens(samples, image.shape[-1], image.shape[-2], model.config.bins)
            batch, labels = image[None].expand(len(tokens), -1, -1, -1), [e.category] * len(tokens)
            with torch.no_grad():
                reward = model.log_prob(batch, labels, tokens) - reference.log_prob(batch, labels, tokens)
            best = samples[int(reward.argmax())]
        verdicts.append(judge_box(records[e.image_path.stem], e.category, best.tolist()))  # bg_id
    return verdicts


def top1_plausible(model, examples, records: dict, temperature: float, seed: int, n: int = 20) -> float:
    """The share of test backgrounds whose most likely of n proposals the scene world judges plausible."""
    verdicts = top1_verdicts(model, examples, records, temperature, seed, n)
    return sum(verdicts) / max(1, len(verdicts))


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

    began = time.time()
    work, data = args.work, args.work / "data"
    reused = []  # steps skipped because their output was already in --work (training.json says so)
    if (data / "test_set.csv").is_file():
        reused.append("data")
    else:
        data.mkdir(parents=True, exist_ok=True)
        print(KINDS["location"].write(data, args.n, args.seed, 64))  # the encoder sees 64 px anyway
    fresh = argparse.Namespace(resume=None)
    pre = work / "pretrain.safetensors"
    if pre.is_file():
        reused.append("pretrain")
    else:
        run_pretrain(fresh, PretrainConfig(data=data, out=pre, work=work / "pretrain", steps=args.pretrain_steps,
                                           seed=args.seed, patch=16))
    dpo = work / "dpo.safetensors"
    run_dpo(fresh, BoxDPOConfig(data=data, out=dpo, work=work / "dpo", init=pre, steps=args.dpo_steps,
                                seed=args.seed))
    summary = evaluate_models(data, {"pretrain": pre, "dpo": dpo}, work / "eval")
    args.out.mkdir(parents=True, exist_ok=True)
    for suffix in (".safetensors", ".json"):
        shutil.copyfile(dpo.with_suffix(suffix), (args.out / "scene_world").with_suffix(suffix))
    shutil.copyfile(work / "eval" / "curves.png", args.out / "curves.png")
    (args.out / "training.json").write_text(json.dumps({
        "command": f"python -m trainer location default --n {args.n} --pretrain-steps {args.pretrain_steps} "
                   f"--dpo-steps {args.dpo_steps} --seed {args.seed}",
        "minutes": round((time.time() - began) / 60, 1), "reused": reused,
        "top1_plausible": {k: summary[k].get("top1_plausible") for k in ("pretrain", "dpo")},
        "comparison": summary.get("comparison")}, indent=1))
    print(f"embedded default written to {args.out} in {(time.time() - began) / 60:.1f} min")
    return 0
