"""The one training skeleton every trainer command runs on.

A command builds its model and optimizer on the accelerator `start` gives it, then hands
`train` a `Run`: the wrapped model, the optimizer, what a checkpoint holds, and its step
(a function from the micro-step's global index to a dict of scalars with "loss"). The
skeleton owns the rest, once:
- a seeded data order (`batch_indices`) that depends on the step alone, so resuming is exact;
- gradient accumulation, clipping, a linear warm-up then a constant or cosine learning rate;
- a NaN guard that stops before a bad step is taken and points at the last good checkpoint;
- atomic checkpoints every `checkpoint_every` steps and at the end, and `--resume`;
- tqdm progress, TensorBoard scalars, and at the end `<name>_history.json` and `<name>_curves.png`;
- a time limit (`minutes`).
Long phases before and after training announce themselves with `phase`.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from .checkpoints import latest_checkpoint, load_checkpoint, save_checkpoint
from .config import TrainingConfig


def batch_indices(step: int, n: int, batch: int, seed: int, rank: int, world: int) -> list[int]:
    """The items of one micro-step on process `rank`, the same whatever was run before (so resuming is exact)."""
    per_epoch = max(1, n // (batch * world))
    epoch, offset = divmod(step, per_epoch)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + epoch)).tolist()
    chunk = order[offset * batch * world:(offset + 1) * batch * world]
    chunk = (chunk + order)[: batch * world]
    return chunk[rank::world]


def scheduled_lr(lr: float, step: int, steps: int, warmup: int, schedule: str = "constant") -> float:
    """A linear warm-up over `warmup` steps, then `lr` held ("constant") or decayed to zero at `steps`
    ("cosine"). A function of the step alone, so a resumed run follows the same schedule without
    saving any scheduler state."""
    if step < warmup:
        return lr * (step + 1) / warmup
    if schedule == "constant":
        return lr
    if schedule == "cosine":
        return lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))
    raise ValueError(f"unknown learning-rate schedule '{schedule}' (constant or cosine)")


def start(config: TrainingConfig):
    """The accelerator for a run (devices, processes, mixed precision), with torch seeded."""
    from .dependencies import check_training_dependencies

    check_training_dependencies()  # before accelerate or peft is imported: one clear line, not an ImportError
    from accelerate import Accelerator

    accelerator = Accelerator(mixed_precision=config.mixed_precision, gradient_accumulation_steps=config.grad_accum,
                              cpu=not torch.cuda.is_available())
    torch.manual_seed(config.seed)
    return accelerator


@contextmanager
def phase(what: str, main: bool = True):
    """Says what a long phase outside the training steps is doing, and how long it took."""
    began = time.time()
    if main:
        print(f"{what} ...", flush=True)
    yield
    if main:
        print(f"{what}: done in {time.time() - began:.0f} s", flush=True)


@dataclass
class Run:
    """What a command hands the skeleton."""

    name: str  # progress bar, TensorBoard folder, history and curves file names
    model: torch.nn.Module  # as accelerator.prepare returned it (DDP-wrapped on several processes)
    optimizer: torch.optim.Optimizer  # prepared too; its param groups' "lr" are scaled by the schedule
    step: Callable[[int], dict[str, torch.Tensor]]  # global micro-step index -> {"loss": ..., other scalars}
    checkpointed: dict[str, Any]  # name -> anything with state_dict / load_state_dict
    panels: list[list[str]]  # the curves PNG: one panel per list of stat names
    params: list[torch.nn.Parameter] = field(default_factory=list)  # clipped; default: the optimizer's
    outside_ddp: list[torch.nn.Parameter] = field(default_factory=list)  # trained outside the DDP model:
    # their gradients are averaged over processes here
    after_step: Callable[[int], None] | None = None  # after each optimizer step (e.g. an EMA update)
    checkpoint_extra: dict = field(default_factory=dict)


def train(config: TrainingConfig, accelerator, run: Run, resume: bool = False) -> list[dict]:
    """Run the optimisation from step 0 (or the latest checkpoint) to `config.steps`; returns the history."""
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    work, main = config.work, accelerator.is_main_process
    work.mkdir(parents=True, exist_ok=True)
    folder = work / "checkpoints"
    params = run.params or [p for g in run.optimizer.param_groups for p in g["params"]]
    peak_lrs = [g["lr"] for g in run.optimizer.param_groups]
    warmup = min(config.warmup, config.steps // 10)
    step = 0
    if resume:
        ckpt = latest_checkpoint(folder)
        if ckpt is None:
            raise FileNotFoundError(f"--resume: no checkpoint in {folder}")
        step, _ = load_checkpoint(ckpt, run.checkpointed, run.optimizer)
        accelerator.print(f"resumed from {ckpt} at step {step}")
    history: list[dict] = []
    history_path = work / f"{run.name}_history.json"
    if resume and history_path.is_file():
        history = [h for h in json.loads(history_path.read_text()) if h["step"] <= step]
    writer = SummaryWriter(str(work / "logs" / run.name)) if main else None
    bar = tqdm(total=config.steps, initial=step, desc=run.name, unit="step", disable=not main)
    began = time.time()
    run.model.train()
    while step < config.steps:
        for group, peak in zip(run.optimizer.param_groups, peak_lrs):
            group["lr"] = scheduled_lr(peak, step, config.steps, warmup, config.schedule)
        for micro in range(config.grad_accum):
            with accelerator.accumulate(run.model):
                out = run.step(step * config.grad_accum + micro)
                loss = out["loss"]
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"{run.name}: the loss became {loss.item()} at step {step}; stopping before the bad step. "
                        f"The last good checkpoint is in {folder} (lower lr, then --resume)")
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    if accelerator.num_processes > 1:
                        for p in run.outside_ddp:
                            if p.grad is not None:  # (some layers never take part, e.g. SDXL's last text layer)
                                p.grad = accelerator.reduce(p.grad, reduction="mean")
                    if config.max_grad_norm:
                        accelerator.clip_grad_norm_(params, config.max_grad_norm)
                run.optimizer.step()
                run.optimizer.zero_grad(set_to_none=True)
        step += 1
        if run.after_step is not None:
            run.after_step(step)
        stats = {k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in out.items()}
        stats["lr"] = run.optimizer.param_groups[0]["lr"]
        history.append({"step": step, **stats})
        bar.update(1)
        bar.set_postfix({k: f"{v:.4g}" for k, v in stats.items() if k in ("loss", "accuracy")})
        if main and step % config.log_every == 0:
            for k, v in stats.items():
                writer.add_scalar(f"{run.name}/{k}", v, step)
        if step % config.checkpoint_every == 0 or step == config.steps:
            accelerator.wait_for_everyone()
            if main:
                bar.set_description(f"{run.name} (saving a checkpoint)")
                save_checkpoint(folder, step, run.checkpointed, run.optimizer, run.checkpoint_extra)
                bar.set_description(run.name)
        if config.minutes and step < config.steps and out_of_time(accelerator, began, config.minutes):
            accelerator.print(f"\n{run.name}: stopping at step {step}, the {config.minutes} min limit "
                              f"(--resume goes on from here)")
            if main and step % config.checkpoint_every:  # (else it was just saved)
                save_checkpoint(folder, step, run.checkpointed, run.optimizer, run.checkpoint_extra)
            break
    bar.close()
    accelerator.wait_for_everyone()
    run.model.eval()
    if main:
        writer.close()
        history_path.write_text(json.dumps(history))
        plot_curves(history, work / f"{run.name}_curves.png", run.name, run.panels)
    return history


def out_of_time(accelerator, began: float, minutes: float) -> bool:
    """Whether any process is past the limit: all processes stop at the same step."""
    late = torch.tensor(float(time.time() - began > minutes * 60), device=accelerator.device)
    return bool(accelerator.reduce(late, reduction="sum") > 0)


def plot_curves(history: list[dict], path: Path, title: str, panels: list[list[str]]) -> None:
    """A PNG with one panel per group of `panels` keys against the step, each smoothed over 1/20 of the run."""
    if not history:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2), squeeze=False)
    for ax, keys in zip(axes[0], panels):
        for key in keys:
            values = [h[key] for h in history]
            window = max(1, len(values) // 20)
            smooth = [sum(values[max(0, i - window + 1):i + 1]) / len(values[max(0, i - window + 1):i + 1])
                      for i in range(len(values))]
            ax.plot(steps, smooth, label=key)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
