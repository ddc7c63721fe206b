"""python -m trainer dpo --config run.toml: preference pairs -> a LoRA that ComfyUI loads fully.

In order: set-up (accelerate, model, LoRA through peft) -> data (pairs.jsonl, encoded once
and cached) -> the step (the same noise and timestep for winner, loser and the reference
pass; the reference is the same UNet with the adapter disabled) -> the method's loss, looked
up by name in emplace/preference/losses.py's METHODS; the trainer's one loop (loop.py) runs
the steps, logs and checkpoints -> evaluation on the pairs -> the LoRA in the kohya form with
the pack's metadata -> validation images.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from emplace.families import FLOW
from emplace.files import load_image
from emplace.preference import losses
from emplace.weights import load_safetensors, save_safetensors

from .config import ConfigError, TrainingConfig, add_config_arguments, config_from_args, setting
from .loop import Run, batch_indices, phase, start
from .lora_training import TARGETS, TEXT_TARGETS, add_lora, save_trained_lora
from .loop import train as run_loop

# Per-method defaults, from the scene-world table with error bars (README): training at low noise only
# lifts asymmetric and commonality (plausibility and masked PSNR); in the sweep it costs mask-dpo.
TIMESTEP_HIGH_BY_METHOD = {"asymmetric": 0.6, "commonality": 0.6}
TIMESTEP_HIGH_DEFAULT = 1.0


@dataclass(kw_only=True)
class DPOConfig(TrainingConfig):
    model: Path = setting(help="a diffusers folder (SD1.5/SDXL, 4- or 9-channel; Flux, Flux Fill, SD3), a "
                               "single-file SD checkpoint, or a toy model folder")
    data: Path = setting(help="a folder with pairs.jsonl, or Pick-a-Pic rows (.parquet or rows.jsonl)")
    output: Path = setting(help="the LoRA .safetensors to write")
    model_config: Path | None = setting(None, "for a single-file checkpoint: a local diffusers folder with its configs")
    method: str = setting("dpo", "the preference method", choices=tuple(losses.METHODS))
    beta: float = setting(1250.0, "the coefficient on the margin (a difference of per-pixel means) in every "
                                  "sigmoid link: -log sigmoid(beta * margin); diffusers' --beta_dpo / 2", low=0.0)
    beta_target: float = setting(0.0, "automatic beta: hold the batch mean of sigmoid(-beta * margin) near this "
                                      "(e.g. 0.3; 0: beta stays fixed)", low=0.0, high=0.49)
    consistency: float = setting(300.0, "anchor: weight of E over the unmasked pixels of (policy - reference "
                                        "prediction)^2 (the scene-world table's winner; nothing where there is no "
                                        "mask and winner and loser differ everywhere)", low=0.0)
    consistency_in_mask: float = setting(0.0, "anchor: the same inside the inpaint mask, a trust region where "
                                              "the preference acts", low=0.0)
    sft_weight: float = setting(0.0, "anchor: weight of the winner's plain denoising loss", low=0.0)
    sft_region: str = setting("image", "where that loss is measured (object: the winner's object mask only, as "
                                       "mask-dpo's object term, for any method)", choices=("image", "object"))
    preference_region: str = setting("image", "where the preference term is measured (mask: inside the inpaint "
                                              "mask only; off-object: everywhere but the winner's object, where "
                                              "mask-dpo measures it; for pairs with object masks)",
                                     choices=("image", "mask", "off-object"))
    timestep_low: float = setting(0.0, "timesteps are drawn uniformly from [low, high) of the training schedule",
                                  low=0.0, high=1.0)
    timestep_high: float | None = setting(
        None, "see timestep_low (unset: " + ", ".join(f"{v} for {m}" for m, v in TIMESTEP_HIGH_BY_METHOD.items())
        + f", {TIMESTEP_HIGH_DEFAULT} for the other methods)", low=0.0, high=1.0)
    fixed_timesteps: str = setting("", "draw each pair's timestep from these fractions of the schedule instead "
                                       "(comma-separated; flow models: these sigmas), e.g. 0.25,0.5,0.75")
    loser_kinds: str = setting("", "train only on pairs whose 'kind' is one of these (comma-separated; "
                                   "empty: every pair)")
    heldout: Path | None = setting(None, "a second pairs folder, never trained on, whose implicit accuracy is "
                                         "measured at the end (eval.json)")
    lam: float = setting(1.0, "mask-dpo: weight of the object's denoising loss", low=0.0)
    alpha: float = setting(10.0, "asap: weight of the degraded region", low=0.0)
    tau: float = setting(0.5, "asap: target margin, in units of the weighted mean error", low=0.0)
    link: str = setting("target", "asap: the link", choices=("target", "sigmoid"))
    rank: int = setting(8, "LoRA rank", low=1)
    lora_alpha: float = setting(0.0, "LoRA alpha (0: equal to the rank, scale 1)", low=0.0)
    targets: str = setting("attention", "which layers get a LoRA", choices=tuple(TARGETS))
    lr: float = setting(1e-5, "peak learning rate", low=0.0)
    train_text_encoder: bool = setting(False, "also a LoRA on the text encoder(s) (attention projections)")
    text_lr: float = setting(0.0, "the text encoders' learning rate (0: the same as lr)", low=0.0)
    resolution: int = setting(0, "training size in pixels (0: the model's own)", low=0)
    gradient_checkpointing: bool = setting(False, "trade compute for memory")
    work: Path = setting(Path("runs/dpo"), "checkpoints, latent cache, TensorBoard logs, curves, validation images")
    empty_prompt: float = setting(0.0, "share of prompts dropped to \"\"", low=0.0, high=1.0)
    validation: int = setting(0, "at the end, sample this many pairs' prompts (and masks) without and with the LoRA",
                              low=0)
    validation_steps: int = setting(25, "sampling steps of the validation images", low=1)
    validation_guidance: float = setting(5.0, "guidance scale of the validation images", low=0.0)
    cache: bool = setting(True, "cache the encoded pairs on disk")

    def __post_init__(self):
        if self.timestep_high is None:
            self.timestep_high = TIMESTEP_HIGH_BY_METHOD.get(self.method, TIMESTEP_HIGH_DEFAULT)

    @property
    def fixed_timestep_values(self) -> tuple[float, ...]:
        return tuple(float(v) for v in self.fixed_timesteps.split(",") if v.strip())

    def validate(self) -> None:
        super().validate()
        problems = []
        try:
            if not all(0 <= v <= 1 for v in self.fixed_timestep_values):
                problems.append(f"'fixed_timesteps' ({self.fixed_timesteps}) must be fractions between 0 and 1")
        except ValueError:
            problems.append(f"'fixed_timesteps' ({self.fixed_timesteps!r}) must be numbers separated by commas")
        if self.timestep_low >= self.timestep_high:
            problems.append(f"'timestep_low' ({self.timestep_low}) must be below 'timestep_high' "
                            f"({self.timestep_high})")
        if self.beta_target and self.method == "asap" and self.link == "target":
            problems.append("'beta_target' needs a sigmoid link; asap's 'target' link has no beta (set link = "
                            "\"sigmoid\")")
        if problems:
            raise ConfigError("; ".join(problems))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dpo", help="train a preference LoRA (dpo, mask-dpo, asymmetric, commonality, asap)")
    add_config_arguments(p, DPOConfig)
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
        all_winners = losses.METHODS[self.config.method].all_winners
        out = {k: v.to(device) for k, v in collate([self[i] for i in indices], all_winners).items()}
        out["index"], out["prompts"] = torch.tensor(indices), [self.pairs[i].prompt for i in indices]
        out["empty_text"] = self.empty_text[None].to(device)
        return out


def collate(items: list[dict], all_winners: bool) -> dict:
    k = max(it["winners"].shape[0] for it in items) if all_winners else 1
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


def per_sample(cond: dict, rep) -> dict:
    """The prompts' conditioning with one row per sample (each pair's winners, then the losers)."""
    out = {"encoder_hidden_states": rep(cond["encoder_hidden_states"])}
    if cond.get("added_cond_kwargs"):
        out["added_cond_kwargs"] = {k: rep(v) for k, v in cond["added_cond_kwargs"].items()}
    return out


def preference_step(unet, backend, batch: dict, config: DPOConfig, step: int, reference_unet,
                    beta: float | None = None) -> losses.PreferenceLoss:
    """One batch's loss: the method's preference term (at `beta`, default the config's) plus the
    anchors, with the diagnostics (gradient factor, error ratios inside and outside the mask)."""
    method = losses.METHODS[config.method]
    winners, loser, mask = batch["winners"], batch["loser"], batch["mask"]
    device = loser.device
    b, k = winners.shape[:2]
    # one generator per pair and step: the draws do not depend on how pairs are spread over processes,
    # nor on the device (drawn on the CPU, then moved)
    gens = [torch.Generator().manual_seed(config.seed * 1_000_003 + step * 100_003 + int(i)) for i in batch["index"]]
    noise = torch.stack([torch.randn(loser.shape[1:], generator=g) for g in gens]).to(device)
    t = backend.draw_timesteps(gens, config.timestep_low, config.timestep_high,
                                 config.fixed_timestep_values).to(device)
    # some prompts replaced by the empty prompt, as the Diffusion-DPO code does
    dropped = torch.cat([torch.rand(1, generator=g) for g in gens]) < config.empty_prompt
    inpaint = batch.get("inpaint")
    w_extra = l_extra = inpaint
    w_mask = l_mask = mask
    w_object = batch["object"]
    within = {"image": None, "mask": mask, "off-object": 1 - w_object}[config.preference_region]
    if method.differential_crops:  # the winner and the loser through differently cropped views
        boxes = [losses.differential_crop_boxes(*loser.shape[-2:], g) for g in gens]
        crop = lambda x, which: torch.stack([crop_resize(x[i:i + 1], boxes[i][which])[0] for i in range(b)])  # noqa
        winners = torch.stack([crop_resize(winners[i], boxes[i][0]) for i in range(b)])
        loser, w_mask, l_mask = crop(loser, 1), crop(mask, 0), crop(mask, 1)
        if config.sft_weight and config.sft_region == "object":  # cropped only where the anchor reads it
            w_object = crop(w_object, 0)
        if within is not None:  # each side's region through its own view
            within = (crop(within, 0), crop(within, 1))
        if inpaint is not None:
            w_extra, l_extra = crop(inpaint, 0), crop(inpaint, 1)
    x0 = torch.cat([winners.flatten(0, 1), loser])
    noise_all = torch.cat([noise.repeat_interleave(k, 0), noise])
    t_all = torch.cat([t.repeat_interleave(k), t])
    noisy, target = backend.noised(x0, noise_all, t_all)
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
    policy_cond, reference_cond = per_sample(policy_cond, rep), per_sample(reference_cond, rep)

    with torch.no_grad(), adapters_disabled([reference_unet]):
        # the reference first: toggling the adapter must not touch the policy's graph
        ref = backend.predict(reference_unet, noisy, t_all, reference_cond)
    ref_err = (ref.float() - target.float()) ** 2
    pred = backend.predict(unet, noisy, t_all, policy_cond)
    err = (pred.float() - target.float()) ** 2
    e_w, e_l = err[: b * k].unflatten(0, (b, k)), err[b * k:]
    r_w, r_l = ref_err[: b * k].unflatten(0, (b, k)), ref_err[b * k:]
    regions = {"mask": mask, "object": batch["object"], "within": within}
    beta = config.beta if beta is None else beta
    settings = replace(config, beta=beta) if beta != config.beta else config
    out = method.loss(e_w, e_l, r_w, r_l, regions, settings)
    masks_all = torch.cat([w_mask.repeat_interleave(k, 0), l_mask])
    if config.consistency:
        out.loss = out.loss + config.consistency * losses.reference_consistency(pred, ref, 1 - masks_all)
    if config.consistency_in_mask:
        out.loss = out.loss + config.consistency_in_mask * losses.reference_consistency(pred, ref, masks_all)
    if config.sft_weight:
        region = w_object if config.sft_region == "object" else None
        out.loss = out.loss + config.sft_weight * losses.weighted_mean(e_w[:, 0], region).mean()
    out.diagnostics = {"gradient_factor": losses.gradient_factor(out.delta, beta).mean(),
                       **losses.error_ratios(e_w[:, 0], e_l, r_w[:, 0], r_l, w_mask)}
    return out


# --- the run ----------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    return train(config_from_args(DPOConfig, args), resume=args.resume is not None)


def train(config: DPOConfig, resume: bool = False) -> int:
    accelerator = start(config)  # first: it checks that peft and transformers work together

    from emplace.diffusion import load_backend
    from emplace.lora import TrainingRecord
    from emplace.preference.pairs import load_pairs

    main = accelerator.is_main_process
    data_folder = config.data
    if config.data.suffix == ".parquet" or (config.data / "rows.jsonl").is_file():  # Pick-a-Pic rows
        from emplace.preference.pickapic import convert_pickapic

        data_folder = config.work / "pickapic"
        with accelerator.main_process_first():  # converted once, by the first process
            if not (data_folder / "pairs.jsonl").is_file():
                accelerator.print(f"Pick-a-Pic rows -> {data_folder}: {convert_pickapic(config.data, data_folder)}")
    pairs = select_loser_kinds(load_pairs(data_folder), config.loser_kinds, data_folder)  # every bad line first
    if config.preference_region == "off-object" and not any(p.object_mask for p in pairs):
        # without object masks the object is the region where winner and loser differ: nothing would be left
        raise ConfigError(f"'preference_region' = \"off-object\" needs pairs with an \"object_mask\"; none in "
                          f"{data_folder / 'pairs.jsonl'} has one")
    heldout_pairs = load_pairs(config.heldout) if config.heldout is not None else []
    with phase(f"loading {config.model}", main):
        backend = load_backend(config.model, config.resolution or None, config.model_config)
    if config.train_text_encoder and backend.family in FLOW:
        raise ConfigError(f"'train_text_encoder' is for SD1.5/SDXL; {backend.family} trains its transformer only")
    for module in (backend.unet, *backend.text_encoders()):
        module.requires_grad_(False)
    lora_alpha = config.lora_alpha or config.rank
    trainables = {"lora": add_lora(backend.unet, config.rank, lora_alpha, TARGETS[config.targets])}
    if config.gradient_checkpointing:
        backend.unet.enable_gradient_checkpointing()
    groups = [{"params": list(trainables["lora"].params.values()), "lr": config.lr}]
    if config.train_text_encoder:
        for i, encoder in enumerate(backend.text_encoders()):
            trainables[f"text_lora_{i}"] = add_lora(encoder, config.rank, lora_alpha, TEXT_TARGETS)
            groups.append({"params": list(trainables[f"text_lora_{i}"].params.values()),
                           "lr": config.text_lr or config.lr})
    optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
    unet, optimizer = accelerator.prepare(backend.unet, optimizer)
    backend.to(accelerator.device)
    data = EncodedPairs(pairs, backend, config)
    auto_beta = losses.AutoBeta(config.beta, config.beta_target) if config.beta_target else None
    if auto_beta is not None:
        trainables["auto_beta"] = auto_beta  # checkpointed with the weights: resuming is exact
    if main:
        print(f"{config.method} on {len(pairs)} pairs, beta {config.beta} on the margin of per-pixel means"
              f"{f' (automatic, gradient factor held near {config.beta_target})' if auto_beta else ''}, "
              f"{sum(p.numel() for g in groups for p in g['params']):,} LoRA parameters")

    def step(index: int) -> dict[str, torch.Tensor]:
        idx = batch_indices(index, len(pairs), config.batch, config.seed, accelerator.process_index,
                            accelerator.num_processes)
        beta = auto_beta.beta if auto_beta else config.beta
        out = preference_step(unet, backend, data.batch(idx), config, index, accelerator.unwrap_model(unet), beta)
        if auto_beta is not None:  # every process takes the same step
            auto_beta.update(float(accelerator.reduce(out.diagnostics["gradient_factor"].detach(), reduction="mean")))
        return {"loss": out.loss, "accuracy": out.accuracy, "margin": out.delta.mean(), "beta": torch.tensor(beta),
                "policy_winner": out.policy_winner, "policy_loser": out.policy_loser,
                "reference_winner": out.reference_winner, "reference_loser": out.reference_loser,
                **out.diagnostics}

    start_time = time.time()
    history = run_loop(config, accelerator, Run(
        name="dpo", model=unet, optimizer=optimizer, step=step, checkpointed=trainables,
        panels=[["loss"], ["accuracy", "gradient_factor"],
                ["winner_in", "winner_out", "loser_in", "loser_out"]],
        outside_ddp=[p for g in groups[1:] for p in g["params"]],  # the text encoders run through the backend
        checkpoint_extra={"data": str(config.data)}), resume=resume)
    if not main:
        return 0
    steps_done = history[-1]["step"] if history else 0
    final_beta = auto_beta.beta if auto_beta else config.beta
    final = evaluate_pairs(accelerator.unwrap_model(unet), backend, data, config, len(pairs), final_beta,
                           "the training pairs")
    final["beta"] = final_beta
    if heldout_pairs:
        final["heldout"] = evaluate_pairs(accelerator.unwrap_model(unet), backend,
                                          EncodedPairs(heldout_pairs, backend, config), config, len(heldout_pairs),
                                          final_beta, "the held-out pairs")
    (config.work / "eval.json").write_text(json.dumps(final))
    for name, scores in (("training", final), ("held-out", final.get("heldout"))):
        if scores:
            print(f"on the {name} pairs (fixed noise): loss {scores['loss']:.4f} (log 2 = 0.6931 before training), "
                  f"implicit accuracy {scores['accuracy']:.2f}, margin {scores['margin']:.3g}, winner error / "
                  f"reference {scores['winner_in']:.3f} inside the mask, {scores['winner_out']:.3f} outside")

    with phase(f"writing {config.output}"):
        modules = {"unet": accelerator.unwrap_model(unet)}
        if config.train_text_encoder:
            modules |= dict(zip(("text_encoder", "text_encoder_2"), backend.text_encoders()))
        record = TrainingRecord(method=config.method, family=backend.family, resolution=data.size, rank=config.rank,
                                alpha=float(lora_alpha), beta=final_beta, steps=steps_done,
                                data_summary=f"{len(pairs)} pairs from {config.data.name}", title=config.output.stem)
        lora = save_trained_lora(config.output, modules, config.rank, lora_alpha, record)
    if config.validation:
        validation_sheet(accelerator.unwrap_model(unet), backend, data, config, config.work / "validation.png")
        print(f"validation images (input, without the LoRA, with it, winner): {config.work / 'validation.png'}")
    print(f"wrote {config.output}: {len(lora.modules)} LoRA layers after {steps_done} steps "
          f"({(time.time() - start_time) / 60:.1f} min); curves in {config.work / 'dpo_curves.png'}")
    return 0


@torch.no_grad()
def evaluate_pairs(unet, backend, data: EncodedPairs, config: DPOConfig, n: int, beta: float, what: str,
                   draws: int = 4, most: int = 64) -> dict:
    """The preference loss over (at most `most` of) the pairs with fixed noise draws, and the error
    ratios: before training (the LoRA starts at zero, so policy = reference) the loss is exactly
    log 2, the accuracy 0 and every ratio 1."""
    from tqdm import tqdm

    totals: dict[str, float] = {}
    chosen = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed))[:most].tolist()
    work = [(draw, i) for draw in range(draws) for i in chosen]
    for draw, i in tqdm(work, desc=f"evaluating on {what} (fixed noise)", unit="pair"):
        out = preference_step(unet, backend, data.batch([i]), config, 10**9 + draw * n + i, unet, beta)
        for key, value in {"loss": out.loss, "accuracy": out.accuracy, "margin": out.delta.mean(),
                           **out.diagnostics}.items():
            totals[key] = totals.get(key, 0.0) + value.item()
    return {k: v / len(work) for k, v in totals.items()}


def select_loser_kinds(pairs: list, kinds: str, folder: Path) -> list:
    """The pairs whose loser 'kind' (the pair generator's provenance key) is listed; all when empty."""
    wanted = [k.strip() for k in kinds.split(",") if k.strip()]
    if not wanted:
        return pairs
    known = sorted({str(p.extra.get("kind")) for p in pairs if "kind" in p.extra})
    if not known:
        raise ConfigError(f"'loser_kinds' needs pairs with a \"kind\" key; {folder / 'pairs.jsonl'} has none")
    unknown = [k for k in wanted if k not in known]
    if unknown:
        raise ConfigError(f"'loser_kinds': no pair in {folder / 'pairs.jsonl'} has kind {', '.join(unknown)} "
                          f"(its kinds: {', '.join(known)})")
    return [p for p in pairs if p.extra.get("kind") in wanted]


@torch.no_grad()
def validation_sheet(unet, backend, data: EncodedPairs, config: DPOConfig, path: Path) -> None:
    """One row per pair: the masked input, a sample without the LoRA, with it (same seed), the winner."""
    from tqdm import tqdm

    from emplace.files import image_grid, save_image

    pairs = data.pairs[: config.validation]
    loaded = [data.images_and_mask(p) for p in pairs]
    winners = torch.stack([images[0] for images, _ in loaded])
    masks = torch.stack([mask for _, mask in loaded])
    prompts = [p.prompt for p in pairs]
    modules = [unet, *(backend.text_encoders() if config.train_text_encoder else [])]
    without, with_lora = [], []
    for i in tqdm(range(len(pairs)), desc="validation images (without and with the LoRA)", unit="pair"):
        sample = lambda: backend.sample(prompts[i:i + 1], winners[i:i + 1], masks[i:i + 1], config.validation_steps,
                                        config.validation_guidance, config.seed)[0]  # noqa: E731
        with adapters_disabled(modules):
            without.append(sample())
        with_lora.append(sample())
    shown = winners * (1 - masks[:, None]) + 0.5 * masks[:, None]
    rows = [[shown[i], without[i], with_lora[i], winners[i]] for i in range(len(pairs))]
    save_image(image_grid(rows, max(1, 256 // data.size)), path)
