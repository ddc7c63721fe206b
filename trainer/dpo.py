"""python -m trainer dpo --config run.toml: preference pairs -> a LoRA that ComfyUI loads fully.

One linear loop, as in the diffusers training examples:
set-up (accelerate, model, LoRA through peft) -> data (pairs.jsonl, encoded once and cached)
-> the step (the same noise and timestep for winner, loser and the reference pass; the
reference is the same UNet with the adapter disabled) -> the method's loss
(emplace/preference/losses.py) -> logging (tqdm, TensorBoard) -> checkpoints -> the LoRA in
the kohya form with the pack's metadata, and a PNG of the curves.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path

import tomllib
import torch
import torch.nn.functional as F

from emplace.files import load_image
from emplace.preference import losses
from emplace.weights import load_safetensors, save_safetensors

from .checkpoints import latest_checkpoint, load_checkpoint, save_checkpoint
from .loop import batch_indices, plot_curves

TARGETS = {
    "attention": ["to_q", "to_k", "to_v", "to_out.0"],
    "attention+ff": ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2"],
    "all": ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out", "conv1", "conv2"],
}
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


@dataclass
class DPOConfig:
    model: Path  # a diffusers folder or single-file checkpoint (SD1.5/SDXL, 4- or 9-channel), or a toy model folder
    data: Path  # a folder with pairs.jsonl
    output: Path  # the LoRA .safetensors to write
    model_config: Path | None = None  # for a single-file checkpoint: a local diffusers folder with its configs
    method: str = "dpo"  # dpo | mask-dpo | asymmetric | commonality | asap
    beta: float = 2500.0
    lam: float = 1.0  # mask-dpo: weight of the object's denoising loss
    alpha: float = 10.0  # asap: weight of the degraded region
    tau: float = 0.5  # asap: target margin, in units of the weighted mean error
    link: str = "target"  # asap: target | sigmoid
    rank: int = 8
    lora_alpha: float = 0.0  # 0: equal to the rank (scale 1)
    targets: str = "attention"  # attention | attention+ff | all
    lr: float = 1e-5
    train_text_encoder: bool = False  # also a LoRA on the text encoder(s) (attention projections)
    text_lr: float = 0.0  # 0: the same as lr
    batch: int = 1
    grad_accum: int = 1
    steps: int = 1000
    seed: int = 0
    resolution: int = 0  # 0: the model's own
    mixed_precision: str = "no"  # no | fp16 | bf16
    gradient_checkpointing: bool = False
    checkpoint_every: int = 250
    log_every: int = 10
    work: Path = Path("runs/dpo")
    empty_prompt: float = 0.0  # share of prompts dropped to ""
    validation: int = 0  # at the end, sample this many pairs' prompts (and masks) without and with the LoRA
    validation_steps: int = 25
    validation_guidance: float = 5.0
    cache: bool = True

    @classmethod
    def load(cls, path: Path, overrides: dict | None = None) -> DPOConfig:
        raw = tomllib.loads(path.read_text()) if path else {}
        raw |= overrides or {}
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise ValueError(f"{path}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(known)}")
        missing = [k for k in ("model", "data", "output") if k not in raw]
        if missing:
            raise ValueError(f"{path}: missing {', '.join(missing)}")
        base = path.parent if path else Path(".")
        for k in ("model", "model_config", "data", "output", "work"):
            if k in raw:
                raw[k] = (base / raw[k]) if not Path(raw[k]).is_absolute() else Path(raw[k])
        config = cls(**raw)
        config.validate()
        return config

    def validate(self) -> None:
        if self.method not in losses.METHODS:
            raise ValueError(f"method must be one of {', '.join(losses.METHODS)}, got '{self.method}'")
        if self.targets not in TARGETS:
            raise ValueError(f"targets must be one of {', '.join(TARGETS)}, got '{self.targets}'")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"mixed_precision must be no, fp16 or bf16, got '{self.mixed_precision}'")
        for name in ("rank", "batch", "grad_accum", "steps", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dpo", help="train a preference LoRA (dpo, mask-dpo, asymmetric, commonality, asap)")
    p.add_argument("--config", type=Path, required=True, help="a TOML file of DPOConfig settings")
    p.add_argument("--resume", choices=["latest"], help="continue from the newest checkpoint in the work folder")
    p.add_argument("--steps", type=int, help="override the config's steps")
    p.set_defaults(run=run)


# --- data -----------------------------------------------------------------------------------


def load_mask(path: Path | None, size: int) -> torch.Tensor | None:
    return None if path is None else (load_image(path, size).mean(0) > 0.5).float()


class EncodedPairs:
    """Each pair encoded once (latents, inpainting inputs, masks at latent size, prompt
    conditioning) and cached on disk, keyed by the files' contents and the model."""

    def __init__(self, pairs, backend, config: DPOConfig):
        self.pairs, self.backend, self.config = pairs, backend, config
        self.size = config.resolution or backend.resolution
        self.folder = config.work / "cache" / backend.key
        self.memory: dict[int, dict] = {}
        with torch.no_grad():
            self.empty_text = backend.encode_prompts([""])["encoder_hidden_states"][0].float().cpu()

    def _key(self, pair) -> str:
        h = hashlib.sha1(f"{self.size}|{pair.prompt}".encode())
        for p in (*pair.winners, pair.loser, pair.mask, pair.object_mask):
            h.update(p.read_bytes() if p is not None else b"-")
        return h.hexdigest()

    def images_and_mask(self, pair) -> tuple[torch.Tensor, torch.Tensor]:
        """The winners and the loser [K + 1, 3, S, S], and the inpaint mask [S, S]."""
        images = torch.stack([load_image(p, self.size) for p in (*pair.winners, pair.loser)])
        mask = load_mask(pair.mask, self.size)
        if mask is None:  # no inpaint mask: the region is where winner and loser differ
            mask = ((images[0] - images[-1]).abs().amax(0) > 0.03).float()
        return images, mask

    @torch.no_grad()
    def _encode(self, pair) -> dict:
        b = self.backend
        images, mask = self.images_and_mask(pair)
        latents = b.encode_images(images)
        obj = load_mask(pair.object_mask, self.size)
        size = latents.shape[-2:]
        small = lambda m: F.interpolate(m[None, None], size=size, mode="area")[0]
        out = {"winners": latents[:-1], "loser": latents[-1], "mask": small(mask),
               "object": small(obj if obj is not None else mask)}
        if b.is_inpainting:
            out["inpaint"] = b.inpaint_inputs(images[:1], mask[None])[0]
        cond = b.encode_prompts([pair.prompt])
        out["text"] = cond["encoder_hidden_states"][0]
        for k, v in (cond.get("added_cond_kwargs") or {}).items():
            out[f"added.{k}"] = v[0]
        return {k: v.float().cpu().contiguous() for k, v in out.items()}

    def __getitem__(self, i: int) -> dict:
        if i in self.memory:
            return self.memory[i]
        pair = self.pairs[i]
        path = self.folder / f"{self._key(pair)}.safetensors"
        if self.config.cache and path.is_file():
            item, _ = load_safetensors(path, "latent cache")
        else:
            item = self._encode(pair)
            if self.config.cache:
                save_safetensors(path, item)
        self.memory[i] = item
        return item

    def batch(self, indices: list[int]) -> dict:
        """The step's inputs on the training device."""
        device = self.backend.unet.device
        out = {k: v.to(device) for k, v in collate([self[i] for i in indices], self.config.method == "commonality").items()}
        out["index"], out["prompts"] = torch.tensor(indices), [self.pairs[i].prompt for i in indices]
        out["empty_text"] = self.empty_text[None].to(device)
        return out


def collate(items: list[dict], commonality: bool) -> dict:
    k = max(it["winners"].shape[0] for it in items) if commonality else 1
    winners = torch.stack([it["winners"][torch.arange(k) % it["winners"].shape[0]] for it in items])
    out = {"winners": winners, "loser": torch.stack([it["loser"] for it in items])}
    for key in items[0]:
        if key not in ("winners", "loser"):
            out[key] = torch.stack([it[key] for it in items])
    return out


def crop_resize(x: torch.Tensor, box: tuple[int, int, int, int]) -> torch.Tensor:
    x0, y0, x1, y1 = box
    return F.interpolate(x[..., y0:y1, x0:x1], size=x.shape[-2:], mode="bilinear", align_corners=False)


# --- the step --------------------------------------------------------------------------------


@contextmanager
def adapters_disabled(modules):
    """The reference model: the same modules with their LoRA switched off (never a second copy)."""
    for m in modules:
        m.disable_adapters()
    try:
        yield
    finally:
        for m in modules:
            m.enable_adapters()


def unet_conditioning(cond: dict, rep) -> dict:
    kwargs = {"encoder_hidden_states": rep(cond["encoder_hidden_states"])}
    if cond.get("added_cond_kwargs"):
        kwargs["added_cond_kwargs"] = {k: rep(v) for k, v in cond["added_cond_kwargs"].items()}
    return kwargs


def preference_step(unet, backend, batch: dict, config: DPOConfig, step: int, reference_unet) -> losses.PreferenceLoss:
    sched = backend.scheduler
    winners, loser = batch["winners"], batch["loser"]
    device = loser.device
    b, k = winners.shape[:2]
    # one generator per pair and step: the draws do not depend on how pairs are spread over processes,
    # nor on the device (drawn on the CPU, then moved)
    gens = [torch.Generator().manual_seed(config.seed * 1_000_003 + step * 100_003 + int(i)) for i in batch["index"]]
    noise = torch.stack([torch.randn(loser.shape[1:], generator=g) for g in gens]).to(device)
    t = torch.cat([torch.randint(0, sched.config.num_train_timesteps, (1,), generator=g) for g in gens]).to(device)
    # some prompts replaced by the empty prompt, as the Diffusion-DPO code does
    dropped = torch.cat([torch.rand(1, generator=g) for g in gens]) < config.empty_prompt
    inpaint = batch.get("inpaint")
    w_extra = l_extra = inpaint
    if config.method == "asymmetric":  # the winner and the loser through differently cropped views
        boxes = [losses.differential_crop_boxes(*loser.shape[-2:], g) for g in gens]
        winners = torch.stack([crop_resize(winners[i], boxes[i][0]) for i in range(b)])
        loser = torch.stack([crop_resize(loser[i:i + 1], boxes[i][1])[0] for i in range(b)])
        if inpaint is not None:
            w_extra = torch.stack([crop_resize(inpaint[i:i + 1], boxes[i][0])[0] for i in range(b)])
            l_extra = torch.stack([crop_resize(inpaint[i:i + 1], boxes[i][1])[0] for i in range(b)])
    x0 = torch.cat([winners.flatten(0, 1), loser])
    noise_all = torch.cat([noise.repeat_interleave(k, 0), noise])
    t_all = torch.cat([t.repeat_interleave(k), t])
    noisy = sched.add_noise(x0, noise_all, t_all)
    target = sched.get_velocity(x0, noise_all, t_all) if sched.config.prediction_type == "v_prediction" else noise_all
    if w_extra is not None:
        noisy = torch.cat([noisy, torch.cat([w_extra.repeat_interleave(k, 0), l_extra])], 1)
    rep = lambda x: torch.cat([x.repeat_interleave(k, 0), x])

    if config.train_text_encoder:  # the prompts go through the text encoder(s) and their LoRA every step
        prompts = ["" if drop else p for p, drop in zip(batch["prompts"], dropped.tolist())]
        policy_cond = backend.encode_prompts(prompts)
        with torch.no_grad(), adapters_disabled(backend.text_encoders()):
            reference_cond = backend.encode_prompts(prompts)
    else:  # the cached embeddings
        text = torch.where(dropped.to(device)[:, None, None], batch["empty_text"][:1], batch["text"])
        added = {key.split(".", 1)[1]: v for key, v in batch.items() if key.startswith("added.")}
        policy_cond = reference_cond = {"encoder_hidden_states": text, "added_cond_kwargs": added}
    kwargs, reference_kwargs = unet_conditioning(policy_cond, rep), unet_conditioning(reference_cond, rep)

    with torch.no_grad(), adapters_disabled([reference_unet]):
        # the reference first: toggling the adapter must not touch the policy's graph
        ref = reference_unet(noisy, t_all, **reference_kwargs).sample
    ref_err = (ref.float() - target.float()) ** 2
    pred = unet(noisy, t_all, **kwargs).sample
    err = (pred.float() - target.float()) ** 2
    e_w, e_l = err[: b * k].unflatten(0, (b, k)), err[b * k:]
    r_w, r_l = ref_err[: b * k].unflatten(0, (b, k)), ref_err[b * k:]
    m = config.method
    if m == "commonality":
        return losses.commonality(e_w, e_l, r_w, r_l, config.beta)
    if m == "mask-dpo":
        return losses.mask_dpo(e_w[:, 0], e_l, r_w[:, 0], r_l, batch["object"], config.beta, config.lam)
    if m == "asap":
        return losses.asap(e_w[:, 0], e_l, r_w[:, 0], r_l, batch["mask"], config.alpha, config.tau, config.link,
                           config.beta)
    return losses.dpo(e_w[:, 0], e_l, r_w[:, 0], r_l, config.beta)


class TrainableParameters:
    """The LoRA parameters as one checkpointable unit."""

    def __init__(self, module: torch.nn.Module):
        self.params = {n: p for n, p in module.named_parameters() if p.requires_grad}

    def state_dict(self) -> dict:
        return {n: p.detach().clone() for n, p in self.params.items()}

    def load_state_dict(self, sd: dict) -> None:
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(sd[n])


# --- the run ----------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    config = DPOConfig.load(args.config, {"steps": args.steps} if args.steps else None)
    return train(config, resume=args.resume is not None)


def train(config: DPOConfig, resume: bool = False) -> int:
    from accelerate import Accelerator
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    from emplace.diffusion import load_backend
    from emplace.lora import TrainingRecord, build_metadata, save_lora, to_kohya
    from emplace.preference.pairs import load_pairs

    accelerator = Accelerator(mixed_precision=config.mixed_precision, gradient_accumulation_steps=config.grad_accum,
                              cpu=not torch.cuda.is_available())
    torch.manual_seed(config.seed)
    data_folder = config.data
    if config.data.suffix == ".parquet" or (config.data / "rows.jsonl").is_file():  # Pick-a-Pic rows
        from emplace.preference.pickapic import convert_pickapic

        data_folder = config.work / "pickapic"
        with accelerator.main_process_first():  # converted once, by the first process
            if not (data_folder / "pairs.jsonl").is_file():
                accelerator.print(f"Pick-a-Pic rows -> {data_folder}: {convert_pickapic(config.data, data_folder)}")
    pairs = load_pairs(data_folder)  # every bad line is reported before anything loads
    backend = load_backend(config.model, config.resolution or None, config.model_config)
    for module in (backend.unet, *backend.text_encoders()):
        module.requires_grad_(False)
    lora_alpha = config.lora_alpha or config.rank
    backend.unet.add_adapter(LoraConfig(r=config.rank, lora_alpha=lora_alpha, init_lora_weights="gaussian",
                                        target_modules=TARGETS[config.targets]))
    if config.gradient_checkpointing:
        backend.unet.enable_gradient_checkpointing()
    trainables = {"lora": TrainableParameters(backend.unet)}
    groups = [{"params": list(trainables["lora"].params.values()), "lr": config.lr}]
    if config.train_text_encoder:
        for i, encoder in enumerate(backend.text_encoders()):
            encoder.add_adapter(LoraConfig(r=config.rank, lora_alpha=lora_alpha, init_lora_weights="gaussian",
                                           target_modules=TEXT_TARGETS))
            trainables[f"text_lora_{i}"] = TrainableParameters(encoder)
            groups.append({"params": list(trainables[f"text_lora_{i}"].params.values()),
                           "lr": config.text_lr or config.lr})
    params = [p for group in groups for p in group["params"]]
    optimizer = torch.optim.AdamW(groups, weight_decay=1e-2)
    unet, optimizer = accelerator.prepare(backend.unet, optimizer)
    backend.to(accelerator.device)
    data = EncodedPairs(pairs, backend, config)

    work = config.work
    step = 0
    if resume:
        ckpt = latest_checkpoint(work / "checkpoints")
        if ckpt is None:
            raise FileNotFoundError(f"--resume latest: no checkpoint in {work / 'checkpoints'}")
        step, _ = load_checkpoint(ckpt, trainables, optimizer)
        accelerator.print(f"resumed from {ckpt} at step {step}")

    main = accelerator.is_main_process
    writer = SummaryWriter(str(work / "logs")) if main else None
    history: list[dict] = []
    bar = tqdm(total=config.steps, initial=step, desc=f"dpo ({config.method})", unit="step", disable=not main)
    start = time.time()
    while step < config.steps:
        for micro in range(config.grad_accum):
            idx = batch_indices(step * config.grad_accum + micro, len(pairs), config.batch, config.seed,
                                accelerator.process_index, accelerator.num_processes)
            batch = data.batch(idx)
            with accelerator.accumulate(unet):
                out = preference_step(unet, backend, batch, config, step * config.grad_accum + micro,
                                      accelerator.unwrap_model(unet))
                if not torch.isfinite(out.loss):
                    raise FloatingPointError(
                        f"the loss became {out.loss.item()} at step {step}; stopping. The last good checkpoint is "
                        f"in {work / 'checkpoints'} (lower lr or beta, then --resume latest)")
                accelerator.backward(out.loss)
                if accelerator.sync_gradients:
                    if config.train_text_encoder and accelerator.num_processes > 1:
                        # the text encoders run outside DDP (through the backend): average their grads here
                        for p in params[len(groups[0]["params"]):]:
                            if p.grad is not None:  # (SDXL never reads its first encoder's last layer)
                                p.grad = accelerator.reduce(p.grad, reduction="mean")
                    accelerator.clip_grad_norm_(params, 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        step += 1
        stats = {"loss": out.loss.item(), "accuracy": out.accuracy.item(), "margin": out.delta.mean().item(),
                 "policy_winner": out.policy_winner.item(), "policy_loser": out.policy_loser.item(),
                 "reference_winner": out.reference_winner.item(), "reference_loser": out.reference_loser.item()}
        history.append({"step": step, **stats})
        bar.update(1)
        bar.set_postfix(loss=f"{stats['loss']:.4f}", acc=f"{stats['accuracy']:.2f}")
        if main and step % config.log_every == 0:
            for k, v in stats.items():
                writer.add_scalar(k, v, step)
        if step % config.checkpoint_every == 0:
            accelerator.wait_for_everyone()
            if main:
                save_checkpoint(work / "checkpoints", step, trainables, optimizer, {"config": str(config.data)})
    bar.close()
    accelerator.wait_for_everyone()
    if not main:
        return 0
    writer.close()

    final = evaluate_pairs(accelerator.unwrap_model(unet), backend, data, config, len(pairs))
    (work / "eval.json").write_text(json.dumps(final))
    print(f"on the training pairs (fixed noise): loss {final['loss']:.4f} (log 2 = 0.6931 before training), "
          f"implicit accuracy {final['accuracy']:.2f}, margin {final['margin']:.3g}")

    peft_sd = {f"unet.{k}": v for k, v in get_peft_model_state_dict(accelerator.unwrap_model(unet)).items()}
    if config.train_text_encoder:
        for name, encoder in zip(("text_encoder", "text_encoder_2"), backend.text_encoders()):
            peft_sd |= {f"{name}.{k}": v for k, v in get_peft_model_state_dict(encoder).items()}
    lora = to_kohya(peft_sd, {"r": config.rank, "lora_alpha": lora_alpha}, what="trained LoRA")
    record = TrainingRecord(method=config.method, family=backend.family, resolution=data.size, rank=config.rank,
                            alpha=float(lora_alpha), beta=config.beta, steps=step,
                            data_summary=f"{len(pairs)} pairs from {config.data.name}", title=config.output.stem)
    save_lora(config.output, lora, build_metadata(record))
    (work / "history.json").write_text(json.dumps(history))
    plot_curves(history, work / "curves.png", f"{config.method}: {config.data.name}",
                [["loss"], ["accuracy"], ["policy_winner", "policy_loser", "reference_winner", "reference_loser"]])
    if config.validation:
        validation_sheet(accelerator.unwrap_model(unet), backend, data, config, work / "validation.png")
        print(f"validation images (input, without the LoRA, with it, winner): {work / 'validation.png'}")
    print(f"wrote {config.output}: {len(lora.modules)} LoRA layers after {step} steps "
          f"({(time.time() - start) / 60:.1f} min); curves in {work / 'curves.png'}")
    return 0


@torch.no_grad()
def evaluate_pairs(unet, backend, data: EncodedPairs, config: DPOConfig, n: int, draws: int = 4,
                   most: int = 64) -> dict:
    """The preference loss over (at most `most` of) the pairs with fixed noise draws: before training
    (the LoRA starts at zero, so policy = reference) it is exactly log 2 with accuracy 0."""
    totals = {"loss": 0.0, "accuracy": 0.0, "margin": 0.0}
    count = 0
    chosen = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed))[:most].tolist()
    for draw in range(draws):
        for i in chosen:
            batch = data.batch([i])
            out = preference_step(unet, backend, batch, config, 10**9 + draw * n + i, unet)
            totals["loss"] += out.loss.item()
            totals["accuracy"] += out.accuracy.item()
            totals["margin"] += out.delta.mean().item()
            count += 1
    return {k: v / count for k, v in totals.items()}


@torch.no_grad()
def validation_sheet(unet, backend, data: EncodedPairs, config: DPOConfig, path: Path) -> None:
    """One row per pair: the masked input, a sample without the LoRA, with it (same seed), the winner."""
    from emplace.files import image_grid, save_image

    pairs = data.pairs[: config.validation]
    loaded = [data.images_and_mask(p) for p in pairs]
    winners = torch.stack([images[0] for images, _ in loaded])
    masks = torch.stack([mask for _, mask in loaded])
    prompts = [p.prompt for p in pairs]
    sample = lambda: backend.sample(prompts, winners, masks, config.validation_steps,
                                    config.validation_guidance, config.seed)
    modules = [unet, *(backend.text_encoders() if config.train_text_encoder else [])]
    with adapters_disabled(modules):
        without = sample()
    with_lora = sample()
    shown = winners * (1 - masks[:, None]) + 0.5 * masks[:, None]
    rows = [[shown[i], without[i], with_lora[i], winners[i]] for i in range(len(pairs))]
    save_image(image_grid(rows, max(1, 256 // data.size)), path)
